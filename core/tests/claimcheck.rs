//! Claim-check and compression on the wire, against the emulator: an event too big for the bus,
//! a queue or a stream is stored in S3 and a pointer published in aws-lambda-stream's format;
//! sources redeem pointers before the pipelines run; a missing object is retried (with the
//! later records of its key), a malformed pointer is a fault.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use lambda_stream::claimcheck::ClaimCheck;
use lambda_stream::connectors::{EventBridge, Kinesis, Sqs, Wire};
use lambda_stream::sources::{self, from_eventbridge, from_sqs};
use lambda_stream::testing::*;
use lambda_stream::{Event, Handler, Outcome, Pipeline, UnitOfWork, aws};
use serde_json::{Value, json};

const REGION: &str = "us-east-1";

async fn claim_check(bucket: &str) -> ClaimCheck {
    ClaimCheck::new(Arc::new(aws::s3().await.clone()), bucket, REGION)
}

/// A handler whose one pipeline records every event it sees.
fn recording(faults: Arc<MemoryFaults>) -> (Handler, Arc<Mutex<Vec<Event>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let handler = Handler::builder(faults)
        .function_name("f")
        .pipeline(Pipeline::new("p").map(move |u: UnitOfWork| {
            s.lock().unwrap().push(u.event().clone());
            Ok(u)
        }))
        .build()
        .unwrap();
    (handler, seen)
}

fn big(id: &str, key: &str, len: usize) -> Event {
    Event::new(id, "thing-updated", 1_764_572_400_000)
        .with_partition_key(key)
        .with_entity("thing", json!({"id": key, "notes": incompressible(len)}))
}

#[tokio::test]
async fn an_event_over_the_bus_limit_is_claim_checked_and_redeemed_whole() {
    let bucket = create_bucket("claims").await;
    let (bus, queue) = bus_to_queue("cc", json!({"source": ["custom"]})).await;
    let eb = EventBridge::new(aws::eventbridge().await.clone(), &bus)
        .with_wire(Wire::default().claim_check(claim_check(&bucket).await));
    let original = big("e1", "t1", 400_000);
    let small = Event::new("e2", "thing-updated", 1).with_partition_key("t2");
    let results = eb.put_events(&[original.clone(), small.clone()]).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let mut delivered = drain_queue(&queue).await;
    delivered.sort_by_key(|m| m["detail"]["id"].as_str().unwrap_or_default().to_owned());
    assert_eq!(delivered.len(), 2);
    // the pointer carries exactly aws-lambda-stream's slim fields
    let pointer = &delivered[0]["detail"];
    let mut fields: Vec<&str> = pointer
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["id", "partitionKey", "s3", "tags", "timestamp", "type"]
    );
    assert_eq!(pointer["s3"]["bucket"], json!(bucket));
    let key = pointer["s3"]["key"].as_str().unwrap();
    let layout = regex::Regex::new(r"^us-east-1/claimchecks/\d{4}/\d{2}/\d{2}/\d{2}/e1$").unwrap();
    assert!(layout.is_match(key), "{key}");
    let stored = aws::s3()
        .await
        .get_object()
        .bucket(&bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    let mut stored: Value =
        serde_json::from_slice(&stored.body.collect().await.unwrap().into_bytes()).unwrap();
    // stored as it would have been published: its big field compressed
    assert!(stored["thing"].as_str().unwrap().starts_with("COMPRESSED"));
    lambda_stream::compression::decompress_value(&mut stored).unwrap();
    assert_eq!(stored["thing"], original.fields["thing"]);
    assert_eq!(delivered[1]["detail"]["id"], "e2");

    // the listener side: the pipeline sees the whole event, not the pointer
    let faults = Arc::new(MemoryFaults::default());
    let (handler, seen) = recording(faults.clone());
    let ctx = context(Duration::from_secs(30));
    for message in delivered {
        let record: EventBridgeEvent<Value> = serde_json::from_value(message).unwrap();
        let outcomes = handler
            .process(from_eventbridge(record), &handler.invocation(&ctx))
            .await;
        assert_eq!(outcomes.outcomes(), [Outcome::Done]);
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].entity("thing"), original.entity("thing"));
    assert_eq!(seen[0].partition_key.as_deref(), Some("t1"));
    assert!(seen[0].fields.get("s3").is_none());
    assert_eq!(seen[1].id, "e2");
    assert!(faults.published().is_empty());
}

#[tokio::test]
async fn a_big_field_is_compressed_rather_than_claim_checked() {
    let bucket = create_bucket("claims").await;
    let queue = create_queue("compressed").await;
    let sqs = Sqs::new(aws::sqs().await.clone(), &queue)
        .with_wire(Wire::default().claim_check(claim_check(&bucket).await));
    // 300,000 repeated characters: 600 KB in aws-lambda-stream's estimate, a few hundred
    // bytes gzipped
    let event = Event::new("e1", "thing-updated", 1)
        .with_partition_key("t1")
        .with_entity("thing", json!({"notes": "x".repeat(300_000)}));
    assert!(sqs.send_message_batch(std::slice::from_ref(&event)).await[0].is_ok());
    let bodies: Vec<String> = drain_queue(&queue)
        .await
        .iter()
        .map(Value::to_string)
        .collect();
    assert!(bodies[0].len() < 2_000, "{} bytes", bodies[0].len());
    assert!(bodies[0].contains(r#""thing":"COMPRESSED"#));
    let listed = aws::s3()
        .await
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.key_count, Some(0), "nothing claim-checked");

    let (handler, seen) = recording(Arc::new(MemoryFaults::default()));
    let response = handler
        .handle::<sources::Sqs>(to_sqs_messages(&bodies), &context(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(
        seen.lock().unwrap()[0].entity("thing"),
        event.entity("thing")
    );
}

#[tokio::test]
async fn a_record_over_the_kinesis_limit_is_claim_checked() {
    let bucket = create_bucket("claims").await;
    let stream = create_stream("cc").await;
    let kinesis = Kinesis::new(aws::kinesis().await.clone(), &stream)
        .with_wire(Wire::default().claim_check(claim_check(&bucket).await));
    let original = big("k1", "t1", 1_200_000);
    assert!(kinesis.put_records(std::slice::from_ref(&original)).await[0].is_ok());
    let records = read_stream(&stream).await;
    let pointer: Value = serde_json::from_slice(&records[0]).unwrap();
    assert_eq!(pointer["s3"]["bucket"], json!(bucket));
    assert!(records[0].len() < 1_000);

    let (handler, seen) = recording(Arc::new(MemoryFaults::default()));
    let events: Vec<Event> = vec![serde_json::from_value(pointer).unwrap()];
    let response = handler
        .handle::<sources::Kinesis>(
            to_kinesis_records(&events),
            &context(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(
        seen.lock().unwrap()[0].entity("thing"),
        original.entity("thing")
    );
}

#[tokio::test]
async fn a_missing_claim_check_is_retried_with_its_key_and_a_malformed_one_faulted() {
    let bucket = create_bucket("claims").await;
    let pointer = |id: &str, key: &str, s3: Value| {
        let mut e = Event::new(id, "thing-updated", 1).with_partition_key(key);
        e.fields.insert("s3".into(), s3);
        e
    };
    let batch = [
        // t1: its claim check is not there (yet): it and t1's later event wait
        pointer(
            "a",
            "t1",
            json!({"bucket": bucket, "key": "us-east-1/claimchecks/none/a"}),
        ),
        Event::new("b", "thing-updated", 2).with_partition_key("t2"),
        Event::new("c", "thing-updated", 3).with_partition_key("t1"),
        // a pointer without a key can never be redeemed
        pointer("d", "t3", json!({"bucket": bucket})),
        Event::new("e", "thing-updated", 4).with_partition_key("t3"),
    ];
    let faults = Arc::new(MemoryFaults::default());
    let (handler, seen) = recording(faults.clone());
    let ctx = context(Duration::from_secs(30));
    let outcomes = handler
        .process(from_sqs(to_sqs_records(&batch)), &handler.invocation(&ctx))
        .await;
    use Outcome::{Done, Faulted, Retry};
    assert_eq!(outcomes.outcomes(), [Retry, Done, Retry, Faulted, Done]);
    let ids: Vec<String> = seen.lock().unwrap().iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, ["b", "e"]);
    let published = faults.published();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].err.name, "ClaimCheckMalformed");
    assert!(
        published[0]
            .err
            .message
            .contains("malformed claim-check pointer"),
        "{}",
        published[0].err.message
    );
}
