//! Connector error paths with aws-smithy-mocks: throttling, partial batch failures, rejected
//! entries, stale conditional writes. (Behaviour on the wire is tested against the emulator.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_sdk_dynamodb::types::error::ConditionalCheckFailedException;
use aws_sdk_eventbridge::error::ErrorMetadata;
use aws_sdk_eventbridge::operation::put_events::{PutEventsError, PutEventsOutput};
use aws_sdk_eventbridge::types::PutEventsResultEntry;
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use lambda_stream::connectors::{
    BatchLimits, DynamoDb, EVENTBRIDGE_LIMITS, EventBridge, UpdateRequest, Written,
};
use lambda_stream::expressions::update_expression;
use lambda_stream::{ErrorClass, Event, Retry};
use serde_json::json;

fn fast() -> BatchLimits {
    BatchLimits {
        retry: Retry {
            attempts: 3,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        },
        ..EVENTBRIDGE_LIMITS
    }
}

fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| Event::new(format!("e{i}"), "thing-created", i as i64))
        .collect()
}

fn ok_entry() -> PutEventsResultEntry {
    PutEventsResultEntry::builder().event_id("id").build()
}

fn failed_entry(code: &str) -> PutEventsResultEntry {
    PutEventsResultEntry::builder()
        .error_code(code)
        .error_message("entry failed")
        .build()
}

#[tokio::test]
async fn only_the_throttled_entry_is_sent_again() {
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let seen = sizes.clone();
    let rule = mock!(aws_sdk_eventbridge::Client::put_events).then_compute_output(move |req| {
        let n = req.entries().len();
        seen.lock().unwrap().push(n);
        let first = seen.lock().unwrap().len() == 1;
        let mut out = PutEventsOutput::builder();
        for i in 0..n {
            out = out.entries(if first && i == 1 {
                failed_entry("ThrottlingException")
            } else {
                ok_entry()
            });
        }
        out.failed_entry_count(if first { 1 } else { 0 }).build()
    });
    let client = mock_client!(aws_sdk_eventbridge, RuleMode::MatchAny, [&rule]);
    let eb = EventBridge::new(client, "bus").with_limits(fast());
    let results = eb.put_events(&events(3)).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(*sizes.lock().unwrap(), [3, 1]);
}

#[tokio::test]
async fn a_rejected_entry_is_poison_and_not_retried() {
    let rule = mock!(aws_sdk_eventbridge::Client::put_events).then_output(|| {
        PutEventsOutput::builder()
            .entries(ok_entry())
            .entries(failed_entry("ValidationException"))
            .failed_entry_count(1)
            .build()
    });
    let client = mock_client!(aws_sdk_eventbridge, RuleMode::MatchAny, [&rule]);
    let results = EventBridge::new(client, "bus")
        .with_limits(fast())
        .put_events(&events(2))
        .await;
    assert!(results[0].is_ok());
    let err = results[1].as_ref().unwrap_err();
    assert_eq!(err.class(), ErrorClass::Poison);
    assert_eq!(err.name(), "ValidationException");
    assert_eq!(rule.num_calls(), 1);
}

#[tokio::test]
async fn persistent_throttling_is_transient_after_bounded_retries() {
    let rule = mock!(aws_sdk_eventbridge::Client::put_events).then_error(|| {
        PutEventsError::generic(
            ErrorMetadata::builder()
                .code("ThrottlingException")
                .message("rate exceeded")
                .build(),
        )
    });
    let client = mock_client!(aws_sdk_eventbridge, RuleMode::MatchAny, [&rule]);
    let results = EventBridge::new(client, "bus")
        .with_limits(fast())
        .put_events(&events(2))
        .await;
    for r in &results {
        let e = r.as_ref().unwrap_err();
        assert_eq!(e.class(), ErrorClass::Transient, "{e}");
        assert!(e.to_string().contains("after 3 attempts"), "{e}");
    }
}

#[tokio::test]
async fn a_throttled_call_then_success_goes_through() {
    let rule = mock!(aws_sdk_eventbridge::Client::put_events)
        .sequence()
        .error(|| {
            PutEventsError::generic(ErrorMetadata::builder().code("ThrottlingException").build())
        })
        .output(|| {
            PutEventsOutput::builder()
                .entries(ok_entry())
                .failed_entry_count(0)
                .build()
        })
        .build();
    let client = mock_client!(aws_sdk_eventbridge, RuleMode::Sequential, [&rule]);
    let results = EventBridge::new(client, "bus")
        .with_limits(fast())
        .put_events(&events(1))
        .await;
    assert!(results[0].is_ok(), "{results:?}");
}

#[tokio::test]
async fn requests_hold_at_most_ten_entries() {
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let seen = sizes.clone();
    let rule = mock!(aws_sdk_eventbridge::Client::put_events).then_compute_output(move |req| {
        seen.lock().unwrap().push(req.entries().len());
        let mut out = PutEventsOutput::builder().failed_entry_count(0);
        for _ in req.entries() {
            out = out.entries(ok_entry());
        }
        out.build()
    });
    let client = mock_client!(aws_sdk_eventbridge, RuleMode::MatchAny, [&rule]);
    let results = EventBridge::new(client, "bus")
        .put_events(&events(25))
        .await;
    assert!(results.iter().all(Result::is_ok));
    let mut sizes = sizes.lock().unwrap().clone();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(sizes, [10, 10, 5]);
}

fn timestamped() -> UpdateRequest {
    UpdateRequest {
        table: None,
        key: json!({"pk": "t1", "sk": "thing"}),
        expression: update_expression(&json!({"timestamp": 1}))
            .unwrap()
            .timestamp_condition()
            .unwrap(),
    }
}

#[tokio::test]
async fn a_failed_timestamp_condition_is_a_stale_success() {
    let rule = mock!(aws_sdk_dynamodb::Client::update_item).then_error(|| {
        UpdateItemError::ConditionalCheckFailedException(
            ConditionalCheckFailedException::builder().build(),
        )
    });
    let client = mock_client!(aws_sdk_dynamodb, [&rule]);
    assert_eq!(
        DynamoDb::new(client)
            .update("t", &timestamped())
            .await
            .unwrap(),
        Written::Stale
    );
}

fn throughput_exceeded() -> UpdateItemError {
    UpdateItemError::generic(
        aws_sdk_dynamodb::error::ErrorMetadata::builder()
            .code("ProvisionedThroughputExceededException")
            .build(),
    )
}

#[tokio::test]
async fn the_sdk_retries_throttling_within_the_call() {
    let rule = mock!(aws_sdk_dynamodb::Client::update_item)
        .sequence()
        .error(throughput_exceeded)
        .output(|| UpdateItemOutput::builder().build())
        .build();
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&rule]);
    assert_eq!(
        DynamoDb::new(client)
            .update("t", &timestamped())
            .await
            .unwrap(),
        Written::Applied
    );
    assert_eq!(rule.num_calls(), 2);
}

#[tokio::test]
async fn throttling_past_the_sdk_retries_is_transient() {
    let rule = mock!(aws_sdk_dynamodb::Client::update_item).then_error(throughput_exceeded);
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&rule]);
    let err = DynamoDb::new(client)
        .update("t", &timestamped())
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);
    assert_eq!(err.name(), "ProvisionedThroughputExceededException");
    assert!(rule.num_calls() > 1, "the SDK retried first");
}

#[tokio::test]
async fn kinesis_resends_only_throttled_records() {
    use aws_sdk_kinesis::operation::put_records::PutRecordsOutput;
    use aws_sdk_kinesis::types::PutRecordsResultEntry;
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let seen = sizes.clone();
    let rule = mock!(aws_sdk_kinesis::Client::put_records).then_compute_output(move |req| {
        let n = req.records().len();
        let first = {
            let mut s = seen.lock().unwrap();
            s.push(n);
            s.len() == 1
        };
        let entries: Vec<PutRecordsResultEntry> = (0..n)
            .map(|i| {
                if first && i % 2 == 0 {
                    PutRecordsResultEntry::builder()
                        .error_code("ProvisionedThroughputExceededException")
                        .error_message("slow down")
                        .build()
                } else {
                    PutRecordsResultEntry::builder()
                        .sequence_number("1")
                        .shard_id("s")
                        .build()
                }
            })
            .collect();
        PutRecordsOutput::builder()
            .set_records(Some(entries))
            .build()
            .unwrap()
    });
    let client = mock_client!(aws_sdk_kinesis, RuleMode::MatchAny, [&rule]);
    let limits = BatchLimits {
        retry: fast().retry,
        ..lambda_stream::connectors::KINESIS_LIMITS
    };
    let kinesis = lambda_stream::connectors::Kinesis::new(client, "stream").with_limits(limits);
    let results = kinesis.put_records(&events(5)).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(*sizes.lock().unwrap(), [5, 3]);
}

#[tokio::test]
async fn lambda_function_errors_are_poison_and_missing_functions_transient() {
    use aws_sdk_lambda::operation::invoke::{InvokeError, InvokeOutput};
    use aws_sdk_lambda::primitives::Blob;
    use aws_sdk_lambda::types::error::ResourceNotFoundException;
    let failing = mock!(aws_sdk_lambda::Client::invoke).then_output(|| {
        InvokeOutput::builder()
            .status_code(200)
            .function_error("Unhandled")
            .payload(Blob::new(r#"{"errorMessage":"boom"}"#))
            .build()
    });
    let client = mock_client!(aws_sdk_lambda, [&failing]);
    let err = lambda_stream::connectors::Lambda::new(client)
        .invoke("f", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Poison);
    assert_eq!(err.name(), "FunctionError");
    assert!(err.to_string().contains("boom"));

    let missing = mock!(aws_sdk_lambda::Client::invoke).then_error(|| {
        InvokeError::ResourceNotFoundException(
            ResourceNotFoundException::builder()
                .meta(
                    aws_sdk_lambda::error::ErrorMetadata::builder()
                        .code("ResourceNotFoundException")
                        .build(),
                )
                .build(),
        )
    });
    let client = mock_client!(aws_sdk_lambda, [&missing]);
    let err = lambda_stream::connectors::Lambda::new(client)
        .invoke("f", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
}
