//! The circuit breaker against the Lambda API (mocked with aws-smithy-mocks: what is checked is
//! which calls the breaker makes, and that its troubles never change a batch's answer).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_lambda::operation::list_event_source_mappings::ListEventSourceMappingsOutput;
use aws_sdk_lambda::operation::update_event_source_mapping::UpdateEventSourceMappingOutput;
use aws_sdk_lambda::types::EventSourceMappingConfiguration;
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use lambda_stream::breaker::{Action, Breaker, CircuitBreaker};
use lambda_stream::connectors::Lambda;
use lambda_stream::flavors::CircuitBreakerRule;
use lambda_stream::sources::{EventBridge, Kinesis};
use lambda_stream::testing::*;
use lambda_stream::{Event, Handler, Pipeline, StepError, UnitOfWork};
use serde_json::json;

/// What the breaker asked for: (call, uuid or function, enabled, batch size, source arn).
type Calls = Arc<Mutex<Vec<(String, String, Option<bool>, Option<i32>, Option<String>)>>>;

/// A Lambda client whose `mapping` ("u1") is in `state` with batch size 100, last changed
/// `changed_ms` ago, recording every call.
fn lambda(calls: &Calls, state: &'static str, changed_ms: i64, list_fails: bool) -> Lambda {
    let (c1, c2) = (calls.clone(), calls.clone());
    let list = mock!(aws_sdk_lambda::Client::list_event_source_mappings)
        .match_requests(move |_| !list_fails)
        .then_compute_output(move |req| {
            c1.lock().unwrap().push((
                "list".into(),
                req.function_name().unwrap_or_default().into(),
                None,
                None,
                req.event_source_arn().map(str::to_owned),
            ));
            let modified = std::time::SystemTime::now() - Duration::from_millis(changed_ms as u64);
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
    let failing = mock!(aws_sdk_lambda::Client::list_event_source_mappings)
        .match_requests(move |_| list_fails)
        .then_error(|| {
            aws_sdk_lambda::operation::list_event_source_mappings::ListEventSourceMappingsError::unhandled(
                "service unavailable",
            )
        });
    let update = mock!(aws_sdk_lambda::Client::update_event_source_mapping).then_compute_output(
        move |req| {
            c2.lock().unwrap().push((
                "update".into(),
                req.uuid().unwrap_or_default().into(),
                req.enabled(),
                req.batch_size(),
                None,
            ));
            UpdateEventSourceMappingOutput::builder().build()
        },
    );
    Lambda::new(mock_client!(
        aws_sdk_lambda,
        RuleMode::MatchAny,
        [&list, &failing, &update]
    ))
}

fn failing_pipeline() -> Pipeline<UnitOfWork> {
    Pipeline::new("down").then(|uow: UnitOfWork| async move {
        if uow.event().id.starts_with("bad") {
            return Err(StepError::transient("downstream unavailable"));
        }
        Ok::<_, StepError>(uow)
    })
}

async fn batch(h: &Handler, id: &str) -> usize {
    h.handle::<Kinesis>(
        to_kinesis_records(&[Event::new(id, "thing-updated", 1).with_partition_key("k")]),
        &context(Duration::from_secs(30)),
    )
    .await
    .unwrap()
    .batch_item_failures
    .len()
}

#[tokio::test]
async fn failed_batches_in_a_row_switch_off_the_functions_own_mapping() {
    let calls = Calls::default();
    let breaker = CircuitBreaker::new(
        lambda(&calls, "Enabled", 0, false),
        Breaker::default().after_failed_batches(2),
        Action::Disable,
        Duration::from_secs(300),
    );
    let h = Handler::builder(MemoryFaults::default())
        .function_name("listener")
        .circuit_breaker(breaker)
        .pipeline(failing_pipeline())
        .build()
        .unwrap();
    assert_eq!(batch(&h, "bad-1").await, 1);
    assert!(
        calls.lock().unwrap().is_empty(),
        "one failed batch is not enough"
    );
    assert_eq!(batch(&h, "ok-1").await, 0);
    assert_eq!(batch(&h, "bad-2").await, 1);
    assert!(
        calls.lock().unwrap().is_empty(),
        "a good batch started the count again"
    );
    assert_eq!(batch(&h, "bad-3").await, 1);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            (
                "list".into(),
                "listener".into(),
                None,
                None,
                Some("arn:aws:kinesis:us-east-1:123456789012:stream/events".into())
            ),
            ("update".into(), "u1".into(), Some(false), None, None),
        ]
    );
}

#[tokio::test]
async fn a_lowered_batch_size_is_restored_after_the_cool_down_by_a_good_batch() {
    let calls = Calls::default();
    let breaker = CircuitBreaker::new(
        lambda(&calls, "Enabled", 0, false),
        Breaker::default().after_failed_batches(1),
        Action::BatchSize(10),
        Duration::from_millis(200),
    );
    let h = Handler::builder(MemoryFaults::default())
        .function_name("listener")
        .circuit_breaker(breaker)
        .pipeline(failing_pipeline())
        .build()
        .unwrap();
    batch(&h, "bad-1").await;
    assert_eq!(batch(&h, "ok-1").await, 0, "within the cool-down");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(batch(&h, "ok-2").await, 0);
    let updates: Vec<_> = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.0 == "update")
        .map(|c| (c.2, c.3))
        .collect();
    assert_eq!(updates, [(None, Some(10)), (None, Some(100))]);
}

#[tokio::test]
async fn when_the_lambda_api_fails_the_batch_is_answered_as_it_would_be() {
    let calls = Calls::default();
    let breaker = CircuitBreaker::new(
        lambda(&calls, "Enabled", 0, true),
        Breaker::default().after_failed_batches(1),
        Action::Disable,
        Duration::from_secs(300),
    );
    let h = Handler::builder(MemoryFaults::default())
        .circuit_breaker(breaker)
        .pipeline(failing_pipeline())
        .build()
        .unwrap();
    assert_eq!(batch(&h, "bad-1").await, 1);
    assert_eq!(batch(&h, "ok-1").await, 0);
}

fn alarm(name: &str, state: &str) -> Event {
    let mut e = Event::new(format!("alarm-{state}"), "CloudWatch Alarm State Change", 1);
    e.fields.insert("alarmName".into(), json!(name));
    e.fields.insert("state".into(), json!({"value": state}));
    e
}

async fn flavor_calls(
    state: &'static str,
    changed_ms: i64,
    events: &[Event],
) -> Vec<(Option<bool>, Option<i32>)> {
    let calls = Calls::default();
    let rule = CircuitBreakerRule::new("breaker", lambda(&calls, state, changed_ms, false))
        .function("listener")
        .alarm("listener-stuck")
        .cool_down(Duration::from_secs(60));
    let faults = Arc::new(MemoryFaults::default());
    let h = Handler::builder(faults.clone())
        .pipeline(rule)
        .build()
        .unwrap();
    for e in events {
        h.handle::<EventBridge>(to_eventbridge_record(e), &context(Duration::from_secs(30)))
            .await
            .unwrap();
    }
    assert!(faults.published().is_empty());
    let calls = calls.lock().unwrap().clone();
    calls
        .into_iter()
        .filter(|c| c.0 == "update")
        .map(|c| (c.2, c.3))
        .collect()
}

#[tokio::test]
async fn the_flavor_switches_mappings_by_alarm_and_back_on_after_the_cool_down() {
    // an alarm going off switches an enabled mapping off; another alarm does nothing
    assert_eq!(
        flavor_calls("Enabled", 0, &[alarm("listener-stuck", "ALARM")]).await,
        [(Some(false), None)]
    );
    assert!(
        flavor_calls("Enabled", 0, &[alarm("other", "ALARM")])
            .await
            .is_empty()
    );
    // back to OK switches a disabled mapping on; an enabled one is left alone
    assert_eq!(
        flavor_calls("Disabled", 0, &[alarm("listener-stuck", "OK")]).await,
        [(Some(true), None)]
    );
    assert!(
        flavor_calls("Enabled", 0, &[alarm("listener-stuck", "OK")])
            .await
            .is_empty()
    );
    // a schedule switches on a mapping off for longer than the cool-down, not a fresh one
    let tick = Event::new("tick", "Scheduled Event", 1);
    assert_eq!(
        flavor_calls("Disabled", 61_000, std::slice::from_ref(&tick)).await,
        [(Some(true), None)]
    );
    assert!(flavor_calls("Disabled", 5_000, &[tick]).await.is_empty());
}
