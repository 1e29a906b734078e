//! The schedule (cron), CloudWatch alarm and Kinesis Data Firehose sources, end to end through
//! `Handler::handle` (pure: the Lambda API the circuit breaker calls is mocked).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_lambda::operation::list_event_source_mappings::ListEventSourceMappingsOutput;
use aws_sdk_lambda::operation::update_event_source_mapping::UpdateEventSourceMappingOutput;
use aws_sdk_lambda::types::EventSourceMappingConfiguration;
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use base64::Engine;
use lambda_stream::connectors::Lambda;
use lambda_stream::flavors::{
    ALARM_STATE_CHANGE, CircuitBreakerRule, FirehoseTransform, SCHEDULED_EVENT,
};
use lambda_stream::sources::{
    Alarm, Cron, Firehose, FirehoseRecords, Source, from_alarm, from_cron,
};
use lambda_stream::testing::*;
use lambda_stream::{
    BatchError, Event, FaultEvent, FaultUow, Handler, Pipeline, StepError, UnitOfWork,
};
use serde_json::{Value, json};

fn ctx() -> lambda_runtime::Context {
    context(Duration::from_secs(30))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn fault_record(fault: &FaultEvent) -> &Value {
    match &fault.uow {
        FaultUow::Record { record } => record,
        FaultUow::Batch { .. } => panic!("a fault of one record expected"),
    }
}

// ---- the mocked Lambda API, for the circuit-breaker flavor ----

/// `update_event_source_mapping` calls: (uuid, enabled).
type Updates = Arc<Mutex<Vec<(String, Option<bool>)>>>;

/// A Lambda client with one mapping ("u1") in `state`, last changed `changed_ms` ago.
fn lambda(updates: &Updates, state: &'static str, changed_ms: u64) -> Lambda {
    let list =
        mock!(aws_sdk_lambda::Client::list_event_source_mappings).then_compute_output(move |_| {
            let modified = std::time::SystemTime::now() - Duration::from_millis(changed_ms);
            ListEventSourceMappingsOutput::builder()
                .event_source_mappings(
                    EventSourceMappingConfiguration::builder()
                        .uuid("u1")
                        .state(state)
                        .batch_size(100)
                        .last_modified(aws_sdk_lambda::primitives::DateTime::from(modified))
                        .build(),
                )
                .build()
        });
    let seen = updates.clone();
    let update = mock!(aws_sdk_lambda::Client::update_event_source_mapping).then_compute_output(
        move |req| {
            seen.lock()
                .unwrap()
                .push((req.uuid().unwrap_or_default().into(), req.enabled()));
            UpdateEventSourceMappingOutput::builder().build()
        },
    );
    Lambda::new(mock_client!(
        aws_sdk_lambda,
        RuleMode::MatchAny,
        [&list, &update]
    ))
}

fn breaker(updates: &Updates, state: &'static str, changed_ms: u64) -> Handler {
    let rule = CircuitBreakerRule::new("breaker", lambda(updates, state, changed_ms))
        .function("listener")
        .alarm("listener-stuck")
        .cool_down(Duration::from_secs(60));
    Handler::builder(MemoryFaults::default())
        .pipeline(rule)
        .build()
        .unwrap()
}

// ---- CloudWatch alarms, invoking the function directly ----

#[tokio::test]
async fn a_direct_alarm_drives_the_circuit_breaker_as_its_eventbridge_form_does() {
    // going to ALARM switches the enabled mapping off
    let updates = Updates::default();
    let h = breaker(&updates, "Enabled", 0);
    let action = to_alarm_action("listener-stuck", "ALARM", "OK");
    h.handle::<Alarm>(action, &ctx()).await.unwrap();
    assert_eq!(*updates.lock().unwrap(), [("u1".to_owned(), Some(false))]);

    // back to OK switches the disabled mapping on
    let updates = Updates::default();
    let h = breaker(&updates, "Disabled", 0);
    let action = to_alarm_action("listener-stuck", "OK", "ALARM");
    h.handle::<Alarm>(action, &ctx()).await.unwrap();
    assert_eq!(*updates.lock().unwrap(), [("u1".to_owned(), Some(true))]);

    // another alarm changes nothing
    let updates = Updates::default();
    let h = breaker(&updates, "Enabled", 0);
    h.handle::<Alarm>(to_alarm_action("other", "ALARM", "OK"), &ctx())
        .await
        .unwrap();
    assert!(updates.lock().unwrap().is_empty());

    // and the same change through EventBridge, decoded by the EventBridge source, acts alike
    let action = to_alarm_action("listener-stuck", "ALARM", "OK");
    let bus: aws_lambda_events::event::eventbridge::EventBridgeEvent<Value> =
        serde_json::from_value(json!({
            "version": "0", "id": "e1", "detail-type": ALARM_STATE_CHANGE,
            "source": "aws.cloudwatch", "time": "2024-08-05T00:00:00Z",
            "resources": [action["alarmArn"]], "detail": action["alarmData"],
        }))
        .unwrap();
    let updates = Updates::default();
    let h = breaker(&updates, "Enabled", 0);
    h.handle::<lambda_stream::sources::EventBridge>(bus, &ctx())
        .await
        .unwrap();
    assert_eq!(*updates.lock().unwrap(), [("u1".to_owned(), Some(false))]);
}

#[test]
fn a_direct_alarm_is_an_alarm_state_change_event() {
    let decoded = from_alarm(to_alarm_action("a", "ALARM", "OK"));
    let event = decoded.units()[0].event();
    assert_eq!(event.event_type, ALARM_STATE_CHANGE);
    let mut names: Vec<&str> = event.fields.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["alarmName", "configuration", "previousState", "state"]
    );
    assert_eq!(event.timestamp, 1_722_816_000_000);
}

#[tokio::test]
async fn a_malformed_alarm_is_a_fault_with_a_clear_reason() {
    let faults = Arc::new(MemoryFaults::default());
    let h = Handler::builder(faults.clone())
        .function_name("breaker")
        .pipeline(Pipeline::new("any"))
        .build()
        .unwrap();
    let mut action = to_alarm_action("a", "ALARM", "OK");
    action["alarmData"]["state"] = json!({"reason": "no value"});
    // the Lambda event is any JSON: nothing fails before the source reads it
    let event: <Alarm as Source>::Event = serde_json::from_value(action.clone()).unwrap();
    h.handle::<Alarm>(event, &ctx()).await.unwrap();
    let published = faults.published();
    assert_eq!(published.len(), 1);
    let fault = &published[0];
    assert_eq!(fault.err.name, "DecodeError");
    assert!(
        fault
            .err
            .message
            .contains("`alarmData.state.value` is missing"),
        "{}",
        fault.err.message
    );
    assert_eq!(fault.tags["pipeline"], "from_alarm");
    assert_eq!(fault_record(fault), &action);
    assert_eq!(fault.timestamp, 1_722_816_000_000);

    // not even an object
    h.handle::<Alarm>(json!([1, 2, 3]), &ctx()).await.unwrap();
    let published = faults.published();
    assert!(
        published[1]
            .err
            .message
            .contains("must be a JSON object, not an array"),
        "{}",
        published[1].err.message
    );
}

// ---- schedules ----

#[tokio::test]
async fn a_schedule_drives_the_circuit_breakers_cool_down() {
    let updates = Updates::default();
    let h = breaker(&updates, "Disabled", 61_000);
    h.handle::<Cron>(to_scheduled_event("breaker-tick"), &ctx())
        .await
        .unwrap();
    assert_eq!(*updates.lock().unwrap(), [("u1".to_owned(), Some(true))]);
    // a constant input without a type is a scheduled event too
    let updates = Updates::default();
    let h = breaker(&updates, "Disabled", 61_000);
    h.handle::<Cron>(json!({"reason": "tick"}), &ctx())
        .await
        .unwrap();
    assert_eq!(*updates.lock().unwrap(), [("u1".to_owned(), Some(true))]);
}

#[tokio::test]
async fn a_constant_input_is_the_event_the_pipelines_see() {
    let seen: Arc<Mutex<Vec<Event>>> = Arc::default();
    let seen2 = seen.clone();
    let h = Handler::builder(MemoryFaults::default())
        .pipeline(
            Pipeline::new("jobs")
                .on_event_type("job-run")
                .tap(move |uow: &UnitOfWork| seen2.lock().unwrap().push(uow.event().clone())),
        )
        .build()
        .unwrap();
    let input = json!({"type": "job-run", "job": {"name": "purge"}});
    h.handle::<Cron>(input.clone(), &ctx()).await.unwrap();
    h.handle::<Cron>(to_scheduled_event("nightly"), &ctx())
        .await
        .unwrap(); // not a job-run
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].entity("job").unwrap()["name"], "purge");
    assert_eq!(seen[0].timestamp % 60_000, 0, "the minute it fired");
    assert!(!seen[0].id.is_empty());

    let envelope = from_cron(to_scheduled_event("nightly"));
    assert_eq!(envelope.units()[0].event().event_type, SCHEDULED_EVENT);
    assert_eq!(
        from_cron(json!({})).units()[0].event().event_type,
        SCHEDULED_EVENT
    );
}

#[tokio::test]
async fn a_schedule_retry_fails_the_invocation_and_a_bad_input_is_a_fault() {
    let faults = Arc::new(MemoryFaults::default());
    let h = Handler::builder(faults.clone())
        .pipeline(Pipeline::new("flaky").then(|_: UnitOfWork| async {
            Err::<UnitOfWork, _>(StepError::transient("throttled"))
        }))
        .build()
        .unwrap();
    let err = h
        .handle::<Cron>(to_scheduled_event("nightly"), &ctx())
        .await
        .unwrap_err();
    assert_eq!(err, BatchError::Retry(1));
    h.handle::<Cron>(json!("run"), &ctx()).await.unwrap();
    let published = faults.published();
    assert_eq!(published.len(), 1);
    assert!(
        published[0]
            .err
            .message
            .contains("must be a JSON object, not a string")
    );
    assert_eq!(fault_record(&published[0]), &json!("run"));
}

// ---- Kinesis Data Firehose ----

fn thing(i: usize, event_type: &str) -> Event {
    Event::new(format!("e{i}"), event_type, 1_734_754_684_001 + i as i64)
        .with_partition_key(format!("t{}", i % 7))
        .with_entity(
            "thing",
            json!({"id": format!("{i}"), "name": format!("Thing {i}")}),
        )
}

fn transform(uow: &UnitOfWork) -> Result<Value, StepError> {
    let thing = uow
        .event()
        .entity("thing")
        .ok_or_else(|| StepError::poison_msg("no thing"))?;
    if thing["name"] == "poison" {
        return Err(StepError::poison_msg("cannot transform a poison thing"));
    }
    if thing["name"] == "throttled" {
        return Err(StepError::transient("lookup throttled"));
    }
    Ok(json!({"ID": thing["id"], "NM": thing["name"]}))
}

fn rules() -> [FirehoseTransform; 2] {
    [
        FirehoseTransform::new("ft1", "thing-created", transform).table("T1"),
        FirehoseTransform::new("ft2", "thing-updated", transform)
            .on(|uow| uow.event().entity("thing").is_some_and(|t| t["id"] != "13"))
            .newline_delimited(),
    ]
}

/// The Firehose event for `events`, with the record at `bad` replaced by data that is not an
/// event.
fn firehose_with_bad(events: &[Event], bad: usize) -> FirehoseRecords {
    let mut json = serde_json::to_value(to_firehose_records(events)).unwrap();
    json["records"][bad]["data"] = json!(b64(b"{not json"));
    serde_json::from_value(json).unwrap()
}

#[tokio::test]
async fn firehose_records_end_ok_dropped_or_processing_failed() {
    let n = 60;
    let mut events: Vec<Event> = (0..n)
        .map(|i| match i % 4 {
            0 | 1 => thing(i, "thing-created"),
            2 => thing(i, "thing-updated"), // 13 is not: the ft2 filter leaves it out
            _ => thing(i, "thing-deleted"), // no rule takes it
        })
        .collect();
    events[13] = thing(13, "thing-updated");
    events[21] =
        thing(21, "thing-created").with_entity("thing", json!({"id": "21", "name": "poison"}));
    let bad = 42; // not an event at all

    let faults = Arc::new(MemoryFaults::default());
    let counted = Arc::new(AtomicUsize::new(0));
    let c = counted.clone();
    let h = Handler::builder(faults.clone())
        .function_name("transformer")
        .pipelines(rules())
        // a pipeline that answers nothing changes nothing
        .pipeline(Pipeline::new("count").tap(move |_: &UnitOfWork| {
            c.fetch_add(1, Ordering::Relaxed);
        }))
        .build()
        .unwrap();
    let response = h
        .handle::<Firehose>(firehose_with_bad(&events, bad), &ctx())
        .await
        .unwrap();
    assert_eq!(counted.load(Ordering::Relaxed), n - 1);

    // every record, in order, by its id
    assert_eq!(response.records.len(), n);
    let original = to_firehose_records(&events);
    for (i, r) in response.records.iter().enumerate() {
        assert_eq!(r.record_id.as_deref(), Some(i.to_string().as_str()));
        let result = r.result.as_deref().unwrap();
        let expected = if i == bad || i == 21 {
            "ProcessingFailed"
        } else if i == 13 || i % 4 == 3 {
            "Dropped"
        } else {
            "Ok"
        };
        assert_eq!(result, expected, "record {i}");
        match result {
            "Ok" => {
                let data = std::str::from_utf8(&r.data.0).unwrap();
                let want = format!(r#"{{"ID":"{i}","NM":"Thing {i}"}}"#);
                if i % 4 == 2 {
                    // ft2: newline-delimited, no partition keys
                    assert_eq!(data, format!("{want}\n"));
                    assert!(r.metadata.partition_keys.is_empty());
                } else {
                    assert_eq!(data, want);
                    let keys = &r.metadata.partition_keys;
                    assert_eq!(keys["table"], "T1");
                    assert_eq!(
                        (keys["year"].as_str(), keys["hour"].as_str()),
                        ("2024", "04")
                    );
                }
            }
            // the rest carry their data back unchanged
            _ if i != bad => assert_eq!(r.data.0, original.records[i].data.0),
            _ => assert_eq!(r.data.0, b"{not json"),
        }
    }

    // a fault for the malformed record and for the poison one, nothing else
    let published = faults.published();
    assert_eq!(published.len(), 2);
    let by = |pipeline: &str| {
        published
            .iter()
            .find(|f| f.tags["pipeline"] == pipeline)
            .unwrap()
    };
    let (decode, poison) = (by("from_firehose"), by("ft1"));
    assert_eq!(decode.tags["pipeline"], "from_firehose");
    assert_eq!(decode.err.name, "DecodeError");
    assert!(
        decode
            .err
            .message
            .contains("record 42: data: payload is not JSON"),
        "{}",
        decode.err.message
    );
    assert_eq!(fault_record(decode)["recordId"], "42");
    assert_eq!(poison.tags["pipeline"], "ft1");
    assert!(
        poison
            .err
            .message
            .contains("cannot transform a poison thing")
    );
    assert_eq!(fault_record(poison)["recordId"], "21");
    assert_eq!(
        fault_record(poison)["data"],
        json!(b64(&original.records[21].data.0))
    );
}

#[tokio::test]
async fn a_transient_error_fails_the_invocation_and_defers_the_faults() {
    let mut events: Vec<Event> = (0..20).map(|i| thing(i, "thing-created")).collect();
    events[7] =
        thing(7, "thing-created").with_entity("thing", json!({"id": "7", "name": "throttled"}));
    events[9] =
        thing(9, "thing-created").with_entity("thing", json!({"id": "9", "name": "poison"}));
    let faults = Arc::new(MemoryFaults::default());
    let h = Handler::builder(faults.clone())
        .pipelines(rules())
        .build()
        .unwrap();
    let err = h
        .handle::<Firehose>(firehose_with_bad(&events, 3), &ctx())
        .await
        .unwrap_err();
    // Firehose retries the whole batch; the faults are raised again then, so not published now
    assert!(matches!(err, BatchError::Retry(_)), "{err:?}");
    assert!(faults.published().is_empty());
}

#[tokio::test]
async fn a_record_two_rules_answer_for_is_faulted() {
    let faults = Arc::new(MemoryFaults::default());
    let h = Handler::builder(faults.clone())
        .pipeline(FirehoseTransform::new("a", "thing-created", transform))
        .pipeline(FirehoseTransform::new("b", "thing-created", transform))
        .build()
        .unwrap();
    let events = [thing(0, "thing-created"), thing(1, "thing-deleted")];
    let response = h
        .handle::<Firehose>(to_firehose_records(&events), &ctx())
        .await
        .unwrap();
    let results: Vec<&str> = response
        .records
        .iter()
        .map(|r| r.result.as_deref().unwrap())
        .collect();
    assert_eq!(results, ["ProcessingFailed", "Dropped"]);
    let published = faults.published();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].err.name, "AnswerConflict");
    assert_eq!(published[0].tags["pipeline"], "b");
    assert!(
        published[0]
            .err
            .message
            .contains("pipeline `a` already answered")
    );
}

#[tokio::test]
async fn the_firehose_answer_is_the_json_firehose_reads() {
    let h = Handler::builder(MemoryFaults::default())
        .pipelines(rules())
        .build()
        .unwrap();
    // as Lambda hands it over, from aws-lambda-stream's toFirehoseRecords (no arrival time)
    let event: <Firehose as Source>::Event = serde_json::from_value(json!({
        "invocationId": "invocationIdExample",
        "deliveryStreamArn": "arn:aws:kinesis:TEST",
        "region": "us-west-2",
        "records": [
            {"recordId": "0", "data": b64(br#"{"type":"thing-updated","timestamp":1,"thing":{"id":"1","name":"One"}}"#)},
            {"recordId": "1", "data": b64(br#"{"type":"unknown-type"}"#)},
        ],
    }))
    .unwrap();
    let response = h.handle::<Firehose>(event, &ctx()).await.unwrap();
    assert_eq!(
        serde_json::to_value(&response).unwrap(),
        json!({"records": [
            {"recordId": "0", "result": "Ok", "data": b64(b"{\"ID\":\"1\",\"NM\":\"One\"}\n"),
                "metadata": {"partitionKeys": {}}},
            {"recordId": "1", "result": "Dropped", "data": b64(br#"{"type":"unknown-type"}"#),
                "metadata": {"partitionKeys": {}}},
        ]})
    );
}
