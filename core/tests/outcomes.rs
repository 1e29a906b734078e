//! The outcome contract: every record ends exactly one of done / faulted / retry; poison is
//! faulted, transient is retried; order per key; deadline awareness; partial batch responses;
//! faults published after the batch, and their records retried when publishing fails.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lambda_stream::sources;
use lambda_stream::testing::*;
use lambda_stream::{
    BatchError, Event, FaultEvent, Handler, Outcome, Pipeline, Retry, StepError, UnitOfWork,
};
use serde_json::json;

fn ev(i: usize, event_type: &str, key: &str) -> Event {
    Event::new(format!("e{i}"), event_type, 1_000 + i as i64).with_partition_key(key)
}

fn ctx() -> lambda_runtime::Context {
    context(Duration::from_secs(60))
}

/// A step that fails records whose entity says so.
async fn step(uow: UnitOfWork) -> Result<UnitOfWork, StepError> {
    match uow.event().entity("fail").and_then(|v| v.as_str()) {
        Some("poison") => Err(StepError::poison_msg(format!(
            "bad record {}",
            uow.event().id
        ))),
        Some("transient") => Err(StepError::transient("throttled")),
        _ => Ok(uow),
    }
}

fn failing(i: usize, key: &str, how: &str) -> Event {
    ev(i, "thing-created", key).with_entity("fail", json!(how))
}

fn handler(faults: Arc<MemoryFaults>, pipeline: Pipeline<UnitOfWork>) -> Handler {
    Handler::builder(faults)
        .function_name("listener")
        .pipeline(pipeline)
        .build()
        .unwrap()
}

#[tokio::test]
async fn poison_becomes_one_fault_event_and_the_batch_succeeds() {
    let faults = Arc::new(MemoryFaults::default());
    let h = handler(faults.clone(), Pipeline::new("p1").then(step));
    let events: Vec<Event> = (0..10)
        .map(|i| {
            if i == 4 {
                failing(i, "k4", "poison")
            } else {
                ev(i, "thing-created", &format!("k{i}"))
            }
        })
        .collect();
    let kinesis = to_kinesis_records(&events);
    let original = serde_json::to_value(&kinesis.records[4]).unwrap();
    let response = h.handle::<sources::Kinesis>(kinesis, &ctx()).await.unwrap();
    assert!(response.batch_item_failures.is_empty());

    let published = faults.published();
    assert_eq!(published.len(), 1);
    let f: &FaultEvent = &published[0];
    assert_eq!(f.event_type, "fault");
    assert_eq!(f.tag("functionname"), Some("listener"));
    assert_eq!(f.tag("pipeline"), Some("p1"));
    assert_eq!(f.err.name, "PoisonError");
    assert!(f.err.message.contains("bad record e4"));
    assert_eq!(f.partition_key.as_deref(), Some("k4"));
    // the original record, as Lambda delivered it, so it can be resubmitted
    assert_eq!(f.uow.records(), vec![&original]);
}

#[tokio::test]
async fn transient_error_reports_the_lowest_sequence_and_stops_its_key_only() {
    let faults = Arc::new(MemoryFaults::default());
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let p = Pipeline::new("p1").then(move |uow: UnitOfWork| {
        seen.lock().unwrap().push(uow.event().id.clone());
        step(uow)
    });
    let h = handler(faults.clone(), p);
    let events = vec![
        ev(0, "thing-created", "a"),
        ev(1, "thing-created", "b"),
        failing(2, "a", "transient"),
        ev(3, "thing-created", "a"), // same key after a retry: must not start
        ev(4, "thing-created", "b"),
        failing(5, "c", "transient"),
    ];
    let kinesis = to_kinesis_records(&events);
    let decoded = lambda_stream::sources::from_kinesis(kinesis.clone());
    let outcomes = h.process(decoded, &h.invocation(&ctx())).await;
    assert_eq!(
        outcomes.outcomes(),
        [
            Outcome::Done,
            Outcome::Done,
            Outcome::Retry,
            Outcome::Retry,
            Outcome::Done,
            Outcome::Retry
        ]
    );
    assert!(
        !calls.lock().unwrap().contains(&"e3".to_string()),
        "e3 must not start"
    );

    let response = outcomes.kinesis_response().unwrap();
    assert_eq!(response.batch_item_failures.len(), 1);
    assert_eq!(
        response.batch_item_failures[0].item_identifier.as_deref(),
        Some(kinesis.records[2].kinesis.sequence_number.as_str())
    );
    assert!(faults.published().is_empty());
}

#[tokio::test]
async fn every_record_ends_exactly_one_outcome() {
    let faults = Arc::new(MemoryFaults::default());
    let h = handler(
        faults.clone(),
        Pipeline::new("p1")
            .on_event_type("thing-created")
            .then(step),
    );
    let events: Vec<Event> = (0..200)
        .map(|i| match i % 10 {
            3 => failing(i, &format!("k{i}"), "poison"),
            7 => ev(i, "other-type", &format!("k{i}")),
            _ => ev(i, "thing-created", &format!("k{i}")),
        })
        .collect();
    let outcomes = h
        .process(
            lambda_stream::sources::from_sqs(to_sqs_records(&events)),
            &h.invocation(&ctx()),
        )
        .await;
    let s = outcomes.summary();
    assert_eq!(s.records, 200);
    assert_eq!(s.done + s.faulted + s.retry, 200);
    assert_eq!((s.done, s.faulted, s.retry), (180, 20, 0));
    assert_eq!(faults.published().len(), 20);
}

#[tokio::test]
async fn sqs_reports_every_retry_message_and_faults_the_poison() {
    let faults = Arc::new(MemoryFaults::default());
    let h = handler(faults.clone(), Pipeline::new("p1").then(step));
    let events = vec![
        failing(0, "a", "transient"),
        ev(1, "thing-created", "b"),
        failing(2, "c", "poison"),
        failing(3, "d", "transient"),
    ];
    let response = h
        .handle::<sources::Sqs>(to_sqs_records(&events), &ctx())
        .await
        .unwrap();
    let ids: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(ids, ["msg-0", "msg-3"]);
    assert_eq!(faults.published().len(), 1);
}

#[tokio::test]
async fn all_done_returns_an_empty_response_for_every_source() {
    let faults = Arc::new(MemoryFaults::default());
    let h = handler(faults, Pipeline::new("p1").then(step));
    let events = [ev(0, "thing-created", "a")];
    assert!(
        h.handle::<sources::Kinesis>(to_kinesis_records(&events), &ctx())
            .await
            .unwrap()
            .batch_item_failures
            .is_empty()
    );
    assert!(
        h.handle::<sources::Sqs>(to_sqs_records(&events), &ctx())
            .await
            .unwrap()
            .batch_item_failures
            .is_empty()
    );
    let change = Change::insert(json!({"pk": "t1", "sk": "thing", "discriminator": "thing"}));
    assert!(
        h.handle::<sources::DynamoDb>(to_dynamodb_records(&[change]), &ctx())
            .await
            .unwrap()
            .batch_item_failures
            .is_empty()
    );
    h.handle::<sources::Sns>(to_sns_records(&events), &ctx())
        .await
        .unwrap();
    h.handle::<sources::S3>(to_s3_records(&[("b", "k")]), &ctx())
        .await
        .unwrap();
    h.handle::<sources::EventBridge>(to_eventbridge_record(&events[0]), &ctx())
        .await
        .unwrap();
}

#[tokio::test]
async fn dynamodb_response_reports_the_lowest_retry_sequence() {
    let faults = Arc::new(MemoryFaults::default());
    let p = Pipeline::new("p1").then(|uow: UnitOfWork| async move {
        match uow
            .event()
            .raw
            .as_ref()
            .and_then(|r| r["new"]["fail"].as_bool())
        {
            Some(true) => Err(StepError::transient("throttled")),
            _ => Ok(uow),
        }
    });
    let h = handler(faults, p);
    let item = |pk: &str, fail: bool| json!({"pk": pk, "sk": "thing", "discriminator": "thing", "fail": fail});
    let changes = [
        Change::insert(item("a", false)),
        Change::insert(item("b", true)),
        Change::insert(item("c", true)),
    ];
    let records = to_dynamodb_records(&changes);
    let sources::Lenient::Parsed(second) = &records.records[1] else {
        panic!("the helper's record did not parse")
    };
    let expected = second.sequence_number().map(str::to_owned);
    let response = h
        .handle::<sources::DynamoDb>(records, &ctx())
        .await
        .unwrap();
    assert_eq!(response.batch_item_failures.len(), 1);
    assert_eq!(response.batch_item_failures[0].item_identifier, expected);
}

#[tokio::test]
async fn sources_without_partial_responses_fail_the_invocation_on_retry() {
    let faults = Arc::new(MemoryFaults::default());
    let h = handler(faults.clone(), Pipeline::new("p1").then(step));
    let err = h
        .handle::<sources::Sns>(to_sns_records(&[failing(0, "a", "transient")]), &ctx())
        .await
        .unwrap_err();
    assert_eq!(err, BatchError::Retry(1));
    // poison is handled: the invocation succeeds
    h.handle::<sources::EventBridge>(to_eventbridge_record(&failing(0, "a", "poison")), &ctx())
        .await
        .unwrap();
    assert_eq!(faults.published().len(), 1);
}

#[tokio::test]
async fn failed_fault_publishing_turns_faulted_records_into_retry() {
    let faults = Arc::new(MemoryFaults::default());
    faults.fail(true);
    let h = handler(faults.clone(), Pipeline::new("p1").then(step));
    let events = vec![
        ev(0, "thing-created", "a"),
        failing(1, "b", "poison"),
        ev(2, "thing-created", "c"),
    ];
    let response = h
        .handle::<sources::Sqs>(to_sqs_records(&events), &ctx())
        .await
        .unwrap();
    let ids: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(ids, ["msg-1"]);
}

#[tokio::test]
async fn faults_after_a_stream_checkpoint_wait_for_redelivery() {
    // Kinesis redelivers everything from the checkpoint on, so a poison record after it would be
    // faulted twice if published now; it is retried and faults once, on redelivery.
    let faults = Arc::new(MemoryFaults::default());
    let h = handler(faults.clone(), Pipeline::new("p1").then(step));
    let events = vec![
        failing(0, "a", "poison"),
        failing(1, "b", "transient"),
        failing(2, "c", "poison"),
    ];
    let decoded = lambda_stream::sources::from_kinesis(to_kinesis_records(&events));
    let outcomes = h.process(decoded, &h.invocation(&ctx())).await;
    assert_eq!(
        outcomes.outcomes(),
        [Outcome::Faulted, Outcome::Retry, Outcome::Retry]
    );
    let published = faults.published();
    assert_eq!(published.len(), 1);
    assert!(published[0].err.message.contains("e0"));
}

#[tokio::test]
async fn decode_failures_are_faults_named_after_the_source() {
    let faults = Arc::new(MemoryFaults::default());
    let h = handler(faults.clone(), Pipeline::new("p1").then(step));
    let response = h
        .handle::<sources::Sqs>(
            to_sqs_messages(&["not json".into(), r#"{"id":"x"}"#.into()]),
            &ctx(),
        )
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    let published = faults.published();
    assert_eq!(published.len(), 2);
    assert_eq!(published[0].err.name, "DecodeError");
    assert_eq!(published[0].tag("pipeline"), Some("from_sqs"));
    assert!(published[0].err.message.contains("msg-0"));
    assert_eq!(published[0].uow.records()[0]["body"], "not json");
}

#[tokio::test]
async fn fault_ids_are_deterministic_so_a_redelivered_fault_is_stored_once() {
    let events = vec![failing(0, "a", "poison")];
    let mut ids = Vec::new();
    for _ in 0..2 {
        let faults = Arc::new(MemoryFaults::default());
        let h = handler(faults.clone(), Pipeline::new("p1").then(step));
        h.handle::<sources::Kinesis>(to_kinesis_records(&events), &ctx())
            .await
            .unwrap();
        ids.push(faults.published()[0].id.clone());
    }
    assert_eq!(ids[0], ids[1]);
}

#[tokio::test]
async fn the_worst_outcome_across_pipelines_wins() {
    let faults = Arc::new(MemoryFaults::default());
    let poison = Pipeline::new("poison").then(|uow: UnitOfWork| async move {
        Err::<UnitOfWork, _>(StepError::poison_msg(format!("no {}", uow.event().id)))
    });
    let transient = Pipeline::new("transient")
        .on_event_type("b")
        .then(|_uow: UnitOfWork| async { Err::<UnitOfWork, _>(StepError::transient("busy")) });
    let h = Handler::builder(faults.clone())
        .pipeline(poison)
        .pipeline(transient)
        .build()
        .unwrap();
    let events = vec![ev(0, "a", "k0"), ev(1, "b", "k1")];
    let outcomes = h
        .process(
            lambda_stream::sources::from_sqs(to_sqs_records(&events)),
            &h.invocation(&ctx()),
        )
        .await;
    assert_eq!(outcomes.outcomes(), [Outcome::Faulted, Outcome::Retry]);
    // the record to be redelivered faults again then; publishing now would double it
    assert_eq!(faults.published().len(), 1);
}

#[tokio::test]
async fn a_panicking_step_is_a_fault_not_a_crash() {
    let faults = Arc::new(MemoryFaults::default());
    let p = Pipeline::new("p1").map(|uow: UnitOfWork| {
        if uow.event().id == "e1" {
            panic!("index out of bounds in mapping");
        }
        Ok(uow)
    });
    let h = handler(faults.clone(), p);
    let events = vec![ev(0, "t", "a"), ev(1, "t", "b")];
    let response = h
        .handle::<sources::Sqs>(to_sqs_records(&events), &ctx())
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    let published = faults.published();
    assert_eq!(published[0].err.name, "Panic");
    assert!(published[0].err.message.contains("index out of bounds"));
}

#[tokio::test(start_paused = true)]
async fn order_per_key_and_concurrency_across_keys_up_to_parallel() {
    let faults = Arc::new(MemoryFaults::default());
    let log = Arc::new(Mutex::new(Vec::<(String, &'static str)>::new()));
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (l, r, pk) = (log.clone(), running.clone(), peak.clone());
    let p = Pipeline::new("p1")
        .parallel(3)
        .then(move |uow: UnitOfWork| {
            let (l, r, pk) = (l.clone(), r.clone(), pk.clone());
            async move {
                let id = uow.event().id.clone();
                l.lock().unwrap().push((id.clone(), "start"));
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                pk.fetch_max(now, Ordering::SeqCst);
                // later records sleep less, so without ordering they would overtake
                let n: u64 = id[1..].parse().unwrap();
                tokio::time::sleep(Duration::from_millis(100 - n)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                l.lock().unwrap().push((id, "end"));
                Ok::<_, StepError>(uow)
            }
        });
    let h = handler(faults, p);
    let keys = ["a", "b", "c", "d", "e"];
    let events: Vec<Event> = (0..20).map(|i| ev(i, "t", keys[i % 5])).collect();
    let response = h
        .handle::<sources::Kinesis>(to_kinesis_records(&events), &ctx())
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    let log = log.lock().unwrap();
    for key in 0..5 {
        let ids: Vec<&str> = log
            .iter()
            .filter(|(id, what)| *what == "start" && id[1..].parse::<usize>().unwrap() % 5 == key)
            .map(|(id, _)| id.as_str())
            .collect();
        let expected: Vec<String> = (0..4).map(|j| format!("e{}", key + 5 * j)).collect();
        assert_eq!(ids, expected, "key {key} out of order");
        // each record of a key starts only after the previous one ended
        for pair in expected.windows(2) {
            let end = log
                .iter()
                .position(|(id, w)| *id == pair[0] && *w == "end")
                .unwrap();
            let start = log
                .iter()
                .position(|(id, w)| *id == pair[1] && *w == "start")
                .unwrap();
            assert!(end < start, "{} started before {} ended", pair[1], pair[0]);
        }
    }
    assert_eq!(
        peak.load(Ordering::SeqCst),
        3,
        "keys run concurrently up to parallel"
    );
}

#[tokio::test(start_paused = true)]
async fn no_new_work_starts_once_the_deadline_margin_is_reached() {
    let faults = Arc::new(MemoryFaults::default());
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let p = Pipeline::new("p1")
        .parallel(1)
        .then(move |uow: UnitOfWork| {
            s.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                Ok::<_, StepError>(uow)
            }
        });
    let h = Handler::builder(faults.clone())
        .deadline_margin(Duration::from_secs(1))
        .pipeline(p)
        .build()
        .unwrap();
    // 2 s left, 1 s margin: records 0, 1, 2 start (at 0, 400, 800 ms); 3 and 4 would start
    // after the 1 s mark, so they are retry
    let events: Vec<Event> = (0..5).map(|i| ev(i, "t", &format!("k{i}"))).collect();
    let kinesis = to_kinesis_records(&events);
    let seq3 = kinesis.records[3].kinesis.sequence_number.clone();
    let decoded = lambda_stream::sources::from_kinesis(kinesis);
    let invocation = h.invocation(&context(Duration::from_secs(2)));
    let outcomes = h.process(decoded, &invocation).await;
    assert_eq!(started.load(Ordering::SeqCst), 3);
    assert_eq!(
        outcomes.outcomes(),
        [
            Outcome::Done,
            Outcome::Done,
            Outcome::Done,
            Outcome::Retry,
            Outcome::Retry
        ]
    );
    let response = outcomes.kinesis_response().unwrap();
    assert_eq!(
        response.batch_item_failures[0].item_identifier.as_deref(),
        Some(seq3.as_str())
    );
}

#[tokio::test(start_paused = true)]
async fn transient_errors_are_retried_within_the_invocation_first() {
    let faults = Arc::new(MemoryFaults::default());
    let attempts = Arc::new(Mutex::new(std::collections::HashMap::<String, usize>::new()));
    let a = attempts.clone();
    let p = Pipeline::new("p1").then_retry(Retry::default(), move |uow: UnitOfWork| {
        let id = uow.event().id.clone();
        let n = {
            let mut m = a.lock().unwrap();
            let n = m.entry(id.clone()).or_default();
            *n += 1;
            *n
        };
        async move {
            match (id.as_str(), n) {
                ("e0", 1 | 2) => Err(StepError::transient("throttled")),
                ("e1", _) => Err(StepError::transient("still throttled")),
                _ => Ok(uow),
            }
        }
    });
    let h = handler(faults, p);
    let events = vec![ev(0, "t", "a"), ev(1, "t", "b")];
    let outcomes = h
        .process(
            lambda_stream::sources::from_sqs(to_sqs_records(&events)),
            &h.invocation(&ctx()),
        )
        .await;
    // e0 succeeds on its third attempt; e1 fails all three and is sent back
    assert_eq!(outcomes.outcomes(), [Outcome::Done, Outcome::Retry]);
    let attempts = attempts.lock().unwrap();
    assert_eq!((attempts["e0"], attempts["e1"]), (3, 3));
}

#[tokio::test]
async fn a_retry_without_an_id_fails_the_whole_batch() {
    // a malformed record whose fault cannot be published has no sequence number to report
    let faults = Arc::new(MemoryFaults::default());
    faults.fail(true);
    let h = handler(faults, Pipeline::new("p1").then(step));
    let batch: lambda_stream::sources::KinesisRecords =
        serde_json::from_value(json!({"Records": [{"kinesis": {"data": "%%"}}]})).unwrap();
    let err = h
        .handle::<sources::Kinesis>(batch, &ctx())
        .await
        .unwrap_err();
    assert_eq!(err, BatchError::Unidentifiable(0));
}
