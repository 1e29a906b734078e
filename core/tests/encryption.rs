//! Envelope encryption in aws-kms-ee's format: against the emulator's KMS, published events
//! carry ciphertext and an `eem`, and sources decrypt them before any pipeline runs, with data
//! keys cached; KMS errors (mocked) are classified: throttling retried, a denied key faulted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kms::error::ErrorMetadata;
use aws_sdk_kms::operation::decrypt::DecryptError;
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use futures::future::BoxFuture;
use lambda_stream::connectors::{Sqs, Wire};
use lambda_stream::encryption::{Encryption, Envelope, Kms, NewDataKey};
use lambda_stream::sources::from_sqs;
use lambda_stream::testing::*;
use lambda_stream::{Event, Handler, Outcome, Pipeline, StepError, UnitOfWork, aws};
use serde_json::{Value, json};

/// The emulator's KMS, counting the calls that reach it.
#[derive(Debug)]
struct Counted {
    client: aws_sdk_kms::Client,
    calls: AtomicUsize,
}

impl Kms for Counted {
    fn generate_data_key<'a>(
        &'a self,
        master_key: &'a str,
    ) -> BoxFuture<'a, Result<NewDataKey, StepError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Kms::generate_data_key(&self.client, master_key)
    }
    fn decrypt<'a>(&'a self, blob: Vec<u8>) -> BoxFuture<'a, Result<Vec<u8>, StepError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Kms::decrypt(&self.client, blob)
    }
}

async fn counted() -> Arc<Counted> {
    emulator().await;
    Arc::new(Counted {
        client: aws::kms().await.clone(),
        calls: AtomicUsize::new(0),
    })
}

fn recording(envelope: Envelope, faults: Arc<MemoryFaults>) -> (Handler, Arc<Mutex<Vec<Event>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let handler = Handler::builder(faults)
        .function_name("f")
        .envelope(envelope)
        .pipeline(Pipeline::new("p").map(move |u: UnitOfWork| {
            s.lock().unwrap().push(u.event().clone());
            Ok(u)
        }))
        .build()
        .unwrap();
    (handler, seen)
}

fn person(i: usize, key: &str) -> Event {
    Event::new(format!("e{i}"), "person-updated", 1_700_000_000_000 + i as i64)
        .with_partition_key(key)
        .with_entity(
            "person",
            json!({"id": key, "name": format!("Ada {i}"), "email": format!("ada{i}@example.com"), "age": 36}),
        )
}

#[tokio::test]
async fn fields_are_encrypted_on_publish_and_decrypted_before_the_pipelines() {
    let alias = create_master_key("events").await;
    let publisher_kms = counted().await;
    let encryption = Encryption {
        envelope: Envelope::new(publisher_kms.clone(), "us-east-1"),
        master_key: alias.clone(),
        fields: vec!["name".into(), "email".into()],
    };
    let queue = create_queue("encrypted").await;
    let sqs = Sqs::new(aws::sqs().await.clone(), &queue)
        .with_wire(Wire::default().encrypt(encryption.clone()));
    // many events on few keys, in two batches: one data key made for all of them
    let events: Vec<Event> = (0..12)
        .map(|i| person(i, ["p1", "p2", "p3"][i % 3]))
        .collect();
    for half in events.chunks(6) {
        assert!(sqs.send_message_batch(half).await.iter().all(Result::is_ok));
    }
    assert_eq!(publisher_kms.calls.load(Ordering::SeqCst), 1);

    let bodies: Vec<Value> = drain_queue(&queue).await;
    assert_eq!(bodies.len(), 12);
    for body in &bodies {
        let text = body.to_string();
        assert!(
            !text.contains("Ada") && !text.contains("example.com"),
            "{text}"
        );
        assert_eq!(body["person"]["age"], 36, "other fields stay readable");
        assert_eq!(body["eem"]["masterKeyAlias"], json!(alias));
        assert_eq!(body["eem"]["fields"], json!(["name", "email"]));
        assert!(body["eem"]["dataKeys"]["us-east-1"].is_string());
    }

    let reader_kms = counted().await;
    let faults = Arc::new(MemoryFaults::default());
    let (handler, seen) = recording(
        Envelope::new(reader_kms.clone(), "us-east-1"),
        faults.clone(),
    );
    let texts: Vec<String> = bodies.iter().map(Value::to_string).collect();
    let ctx = context(Duration::from_secs(30));
    let outcomes = handler
        .process(from_sqs(to_sqs_messages(&texts)), &handler.invocation(&ctx))
        .await;
    assert!(outcomes.outcomes().iter().all(|o| *o == Outcome::Done));
    assert!(faults.published().is_empty());
    // one data key, decrypted once for the whole batch
    assert_eq!(reader_kms.calls.load(Ordering::SeqCst), 1);
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_by_key(|e| e.timestamp);
    for (got, sent) in seen.iter().zip(&events) {
        assert_eq!(got.entity("person"), sent.entity("person"));
        assert!(got.eem.is_none());
    }
}

fn denied() -> DecryptError {
    DecryptError::generic(
        ErrorMetadata::builder()
            .code("AccessDeniedException")
            .message("not allowed to use this key")
            .build(),
    )
}

fn throttled() -> DecryptError {
    DecryptError::generic(
        ErrorMetadata::builder()
            .code("ThrottlingException")
            .message("slow down")
            .build(),
    )
}

/// An encrypted event, made with a real data key from the emulator.
async fn encrypted_event(i: usize, key: &str, alias: &str) -> Event {
    let envelope = Envelope::new(counted().await, "us-east-1");
    let mut value = serde_json::to_value(person(i, key)).unwrap();
    envelope
        .encrypt(&mut value, &["name".into()], alias)
        .await
        .unwrap();
    serde_json::from_value(value).unwrap()
}

#[tokio::test]
async fn a_denied_key_faults_the_record_and_throttling_retries_it_with_its_key() {
    let alias = create_master_key("events").await;
    let batch = [
        encrypted_event(0, "p1", &alias).await,
        person(1, "p1"),
        person(2, "p2"),
    ];

    let rule = mock!(aws_sdk_kms::Client::decrypt).then_error(denied);
    let kms = mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&rule]);
    let faults = Arc::new(MemoryFaults::default());
    let (handler, seen) = recording(Envelope::new(Arc::new(kms), "us-east-1"), faults.clone());
    let ctx = context(Duration::from_secs(30));
    let outcomes = handler
        .process(from_sqs(to_sqs_records(&batch)), &handler.invocation(&ctx))
        .await;
    use Outcome::{Done, Faulted, Retry};
    assert_eq!(outcomes.outcomes(), [Faulted, Done, Done]);
    let published = faults.published();
    assert_eq!(published[0].err.name, "AccessDeniedException");
    assert!(
        !format!("{published:?}").contains("Ada 0"),
        "no plaintext in the fault"
    );
    assert_eq!(seen.lock().unwrap().len(), 2);

    let rule = mock!(aws_sdk_kms::Client::decrypt).then_error(throttled);
    let kms = mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&rule]);
    let faults = Arc::new(MemoryFaults::default());
    let (handler, seen) = recording(Envelope::new(Arc::new(kms), "us-east-1"), faults.clone());
    let outcomes = handler
        .process(from_sqs(to_sqs_records(&batch)), &handler.invocation(&ctx))
        .await;
    // p1's later event waits with the one that could not be decrypted
    assert_eq!(outcomes.outcomes(), [Retry, Retry, Done]);
    assert!(faults.published().is_empty());
    assert_eq!(seen.lock().unwrap()[0].id, "e2");
}

/// A view written by materialize with `encrypt`: the row holds ciphertext and its `eem`, as
/// aws-lambda-stream's encryptData leaves a row; a trigger on the table (a DynamoDB source)
/// gets the row's images decrypted before its pipelines.
#[tokio::test]
async fn materialize_encrypts_rows_and_a_dynamodb_source_decrypts_their_images() {
    use lambda_stream::connectors::{DynamoDb, UpdateRequest};
    use lambda_stream::expressions::update_expression;
    use lambda_stream::flavors::Materialize;
    use lambda_stream::sources::{DynamoDbOptions, from_dynamodb};

    let alias = create_master_key("rows").await;
    let table = create_table("encrypted-views").await;
    let envelope = Envelope::new(Arc::new(aws::kms().await.clone()), "us-east-1");
    let to_update = |uow: &UnitOfWork| -> Result<UpdateRequest, StepError> {
        let p = uow.event().entity("person").cloned().unwrap_or_default();
        Ok(UpdateRequest {
            table: None,
            key: json!({"pk": p["id"], "sk": "person"}),
            expression: update_expression(&json!({
                "discriminator": "person", "name": p["name"], "contact": {"email": p["email"]},
                "age": p["age"], "timestamp": uow.event().timestamp,
            }))?
            .timestamp_condition()?,
        })
    };
    let rule = Materialize::new(
        "people",
        "person-updated",
        to_update,
        DynamoDb::shared().await,
    )
    .table(&table)
    .encrypt(Encryption {
        envelope: envelope.clone(),
        master_key: alias.clone(),
        fields: vec!["name".into(), "email".into()],
    });
    let handler = Handler::builder(MemoryFaults::default())
        .pipelines([rule])
        .build()
        .unwrap();
    let batch: Vec<Event> = (0..4).map(|i| person(i, ["p1", "p2"][i % 2])).collect();
    let response = handler
        .handle::<lambda_stream::sources::Kinesis>(
            to_kinesis_records(&batch),
            &context(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());

    let rows = aws::dynamodb()
        .await
        .scan()
        .table_name(&table)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    assert_eq!(rows.len(), 2);
    let mut rows: Vec<Value> = rows
        .into_iter()
        .map(|i| serde_dynamo::aws_sdk_dynamodb_1::from_item(i).unwrap())
        .collect();
    rows.sort_by_key(|r| r["pk"].as_str().unwrap_or_default().to_owned());
    let text = serde_json::to_string(&rows).unwrap();
    assert!(
        !text.contains("Ada") && !text.contains("example.com"),
        "{text}"
    );
    assert_eq!(rows[0]["age"], 36);
    assert_eq!(rows[0]["eem"]["masterKeyAlias"], json!(alias));

    // the table's stream, as a trigger sees it
    let changes: Vec<Change> = rows.iter().cloned().map(Change::insert).collect();
    let (reader, seen) = {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let handler = Handler::builder(MemoryFaults::default())
            .envelope(Envelope::new(
                Arc::new(aws::kms().await.clone()),
                "us-east-1",
            ))
            .pipeline(Pipeline::new("trigger").map(move |u: UnitOfWork| {
                s.lock().unwrap().push(u.event().clone());
                Ok(u)
            }))
            .build()
            .unwrap();
        (handler, seen)
    };
    let ctx = context(Duration::from_secs(30));
    let outcomes = reader
        .process(
            from_dynamodb(to_dynamodb_records(&changes), &DynamoDbOptions::default()),
            &reader.invocation(&ctx),
        )
        .await;
    assert!(outcomes.outcomes().iter().all(|o| *o == Outcome::Done));
    let seen = seen.lock().unwrap();
    let new = seen[0].raw.as_ref().unwrap()["new"].clone();
    // p1's newest event is e2
    assert_eq!(new["name"], "Ada 2");
    assert_eq!(new["contact"]["email"], "ada2@example.com");
    assert!(new.get("eem").is_none());
}
