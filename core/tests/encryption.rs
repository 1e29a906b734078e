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
