//! Test helpers (feature `testing`): real Lambda event shapes built from events, and an
//! in-memory fault publisher for pure pipeline tests.
//!
//! The events are built as the JSON Lambda sends and parsed with `aws_lambda_events`, so what
//! a test feeds a handler is what Lambda would.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::dynamodb::Event as DynamoDbEvent;
use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::kinesis::KinesisEvent;
use aws_lambda_events::event::s3::S3Event;
use aws_lambda_events::event::sns::SnsEvent;
use aws_lambda_events::event::sqs::SqsEvent;
use base64::Engine;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::event::{Event, FaultEvent};
use crate::faults::{FaultPublisher, PublishError};

const REGION: &str = "us-east-1";
const ACCOUNT: &str = "123456789012";

fn build<T: DeserializeOwned>(records: Vec<Value>) -> T {
    // the JSON is built here to Lambda's documented shape; failing to parse it is a bug in
    // this helper, not bad input
    serde_json::from_value(json!({ "Records": records }))
        .unwrap_or_else(|e| panic!("test helper built an invalid Lambda event: {e}"))
}

fn to_json(event: &Event) -> String {
    serde_json::to_string(event).unwrap_or_default()
}

/// The sequence number of the `i`th record: ascending, Kinesis-sized.
pub fn sequence_number(i: usize) -> String {
    format!("49590338271490256608559692538361571095921575989136{i:06}")
}

/// A Kinesis event carrying `events` (one record each, sequence numbers ascending).
pub fn to_kinesis_records(events: &[Event]) -> KinesisEvent {
    let b64 = base64::engine::general_purpose::STANDARD;
    build(
        events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let seq = sequence_number(i);
                json!({
                    "eventSource": "aws:kinesis",
                    "eventVersion": "1.0",
                    "eventID": format!("shardId-000000000000:{seq}"),
                    "eventName": "aws:kinesis:record",
                    "invokeIdentityArn": format!("arn:aws:iam::{ACCOUNT}:role/lambda-role"),
                    "awsRegion": REGION,
                    "eventSourceARN": format!("arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/events"),
                    "kinesis": {
                        "kinesisSchemaVersion": "1.0",
                        "partitionKey": e.partition_key.clone().unwrap_or_else(|| e.id.clone()),
                        "sequenceNumber": seq,
                        "data": b64.encode(to_json(e)),
                        "approximateArrivalTimestamp": 1_700_000_000.0 + i as f64 / 1000.0,
                    }
                })
            })
            .collect(),
    )
}

/// One change of a DynamoDB item, for [`to_dynamodb_records`]. Images are plain JSON.
#[derive(Debug, Clone)]
pub struct Change {
    /// INSERT, MODIFY or REMOVE.
    pub event_name: &'static str,
    /// The item after the change.
    pub new: Option<Value>,
    /// The item before the change.
    pub old: Option<Value>,
    /// The key attributes (default `pk` and `sk`, where the image has them).
    pub keys: Vec<&'static str>,
    /// Set for a REMOVE made by TTL expiry.
    pub ttl_expiry: bool,
}

impl Change {
    fn of(event_name: &'static str, new: Option<Value>, old: Option<Value>) -> Self {
        Change {
            event_name,
            new,
            old,
            keys: vec!["pk", "sk"],
            ttl_expiry: false,
        }
    }

    /// An item was written.
    pub fn insert(new: Value) -> Self {
        Change::of("INSERT", Some(new), None)
    }

    /// An item was updated.
    pub fn modify(old: Value, new: Value) -> Self {
        Change::of("MODIFY", Some(new), Some(old))
    }

    /// An item was deleted.
    pub fn remove(old: Value) -> Self {
        Change::of("REMOVE", None, Some(old))
    }

    /// An item expired (deleted by DynamoDB's TTL process).
    pub fn expire(old: Value) -> Self {
        Change {
            ttl_expiry: true,
            ..Change::remove(old)
        }
    }

    /// Uses other key attributes.
    pub fn with_keys(mut self, keys: &[&'static str]) -> Self {
        self.keys = keys.to_vec();
        self
    }
}

fn dynamo_json(v: &Value) -> Value {
    let item: serde_dynamo::Item =
        serde_dynamo::to_item(v).unwrap_or_else(|e| panic!("test image is not a JSON object: {e}"));
    serde_json::to_value(item).unwrap_or_default()
}

/// A DynamoDB stream event carrying `changes` (NEW_AND_OLD_IMAGES, sequence numbers ascending).
pub fn to_dynamodb_records(changes: &[Change]) -> DynamoDbEvent {
    build(
        changes
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let image = c.new.as_ref().or(c.old.as_ref()).cloned().unwrap_or(json!({}));
                let keys: serde_json::Map<String, Value> = c
                    .keys
                    .iter()
                    .filter_map(|k| image.get(*k).map(|v| ((*k).to_owned(), v.clone())))
                    .collect();
                let mut change = json!({
                    "ApproximateCreationDateTime": 1_700_000_000 + i as i64,
                    "Keys": dynamo_json(&Value::Object(keys)),
                    "SequenceNumber": format!("{:021}", 100_000 + i),
                    "SizeBytes": 128,
                    "StreamViewType": "NEW_AND_OLD_IMAGES",
                });
                if let Some(new) = &c.new {
                    change["NewImage"] = dynamo_json(new);
                }
                if let Some(old) = &c.old {
                    change["OldImage"] = dynamo_json(old);
                }
                let mut record = json!({
                    "eventID": format!("ddb-{i}"),
                    "eventName": c.event_name,
                    "eventVersion": "1.1",
                    "eventSource": "aws:dynamodb",
                    "awsRegion": REGION,
                    "dynamodb": change,
                    "eventSourceARN": format!("arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/entities/stream/2024-01-01T00:00:00.000"),
                });
                if c.ttl_expiry {
                    record["userIdentity"] =
                        json!({"type": "Service", "principalId": "dynamodb.amazonaws.com"});
                }
                record
            })
            .collect(),
    )
}

fn sqs_message(i: usize, body: String, group: Option<&str>) -> Value {
    let mut attributes = json!({
        "ApproximateReceiveCount": "1",
        "SentTimestamp": (1_700_000_000_000_i64 + i as i64).to_string(),
        "SenderId": "AIDAEXAMPLE",
        "ApproximateFirstReceiveTimestamp": "1700000000100",
    });
    let mut queue = "queue".to_owned();
    if let Some(g) = group {
        attributes["MessageGroupId"] = json!(g);
        attributes["SequenceNumber"] = json!(format!("{:020}", i));
        queue = "queue.fifo".into();
    }
    json!({
        "messageId": format!("msg-{i}"),
        "receiptHandle": format!("handle-{i}"),
        "body": body,
        "attributes": attributes,
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}"),
        "awsRegion": REGION,
    })
}

/// An SQS event whose bodies are `events` (message ids `msg-0`, `msg-1`, ...).
pub fn to_sqs_records(events: &[Event]) -> SqsEvent {
    build(
        events
            .iter()
            .enumerate()
            .map(|(i, e)| sqs_message(i, to_json(e), None))
            .collect(),
    )
}

/// An SQS FIFO event: each event in its message group.
pub fn to_sqs_fifo_records(events: &[(&str, Event)]) -> SqsEvent {
    build(
        events
            .iter()
            .enumerate()
            .map(|(i, (g, e))| sqs_message(i, to_json(e), Some(g)))
            .collect(),
    )
}

/// An SQS event with these raw bodies.
pub fn to_sqs_messages(bodies: &[String]) -> SqsEvent {
    build(
        bodies
            .iter()
            .enumerate()
            .map(|(i, b)| sqs_message(i, b.clone(), None))
            .collect(),
    )
}

/// An SNS event whose messages are `events`.
pub fn to_sns_records(events: &[Event]) -> SnsEvent {
    build(
        events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                json!({
                    "EventSource": "aws:sns",
                    "EventVersion": "1.0",
                    "EventSubscriptionArn": format!("arn:aws:sns:{REGION}:{ACCOUNT}:topic:sub"),
                    "Sns": {
                        "Type": "Notification",
                        "MessageId": format!("sns-{i}"),
                        "TopicArn": format!("arn:aws:sns:{REGION}:{ACCOUNT}:topic"),
                        "Subject": null,
                        "Message": to_json(e),
                        "Timestamp": "2024-01-01T00:00:00.000Z",
                        "SignatureVersion": "1",
                        "Signature": "EXAMPLE",
                        "SigningCertUrl": "https://sns.example/cert.pem",
                        "UnsubscribeUrl": "https://sns.example/unsubscribe",
                        "MessageAttributes": {},
                    }
                })
            })
            .collect(),
    )
}

/// An S3 notification event: one `ObjectCreated:Put` per `(bucket, key)`.
pub fn to_s3_records(objects: &[(&str, &str)]) -> S3Event {
    build(
        objects
            .iter()
            .enumerate()
            .map(|(i, (bucket, key))| {
                json!({
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "awsRegion": REGION,
                    "eventTime": "2024-01-01T00:00:00.000Z",
                    "eventName": "ObjectCreated:Put",
                    "userIdentity": {"principalId": "EXAMPLE"},
                    "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                    "responseElements": {"x-amz-request-id": "EXAMPLE", "x-amz-id-2": "EXAMPLE"},
                    "s3": {
                        "s3SchemaVersion": "1.0",
                        "configurationId": "notify",
                        "bucket": {"name": bucket, "ownerIdentity": {"principalId": "EXAMPLE"}, "arn": format!("arn:aws:s3:::{bucket}")},
                        "object": {"key": key, "size": 1024, "eTag": "0123456789abcdef", "sequencer": format!("{i:016X}")},
                    }
                })
            })
            .collect(),
    )
}

/// An EventBridge event whose detail is `event`.
pub fn to_eventbridge_record(event: &Event) -> EventBridgeEvent<Value> {
    serde_json::from_value(json!({
        "version": "0",
        "id": "eb-0",
        "detail-type": event.event_type,
        "source": "custom",
        "account": ACCOUNT,
        "time": "2024-01-01T00:00:00Z",
        "region": REGION,
        "resources": [],
        "detail": event,
    }))
    .unwrap_or_else(|e| panic!("test helper built an invalid EventBridge event: {e}"))
}

/// A Lambda context whose deadline is `remaining` from now.
pub fn context(remaining: Duration) -> lambda_runtime::Context {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut ctx = lambda_runtime::Context::default();
    ctx.request_id = "test-request".into();
    ctx.deadline = (now + remaining).as_millis() as u64;
    ctx
}

/// Keeps published fault events in memory; can be told to fail.
#[derive(Debug, Default)]
pub struct MemoryFaults {
    published: Mutex<Vec<FaultEvent>>,
    failing: AtomicBool,
}

impl MemoryFaults {
    /// Every fault event published so far.
    pub fn published(&self) -> Vec<FaultEvent> {
        self.published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// From now on, publishing fails (or succeeds again).
    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

impl FaultPublisher for MemoryFaults {
    fn publish<'a>(&'a self, faults: &'a [FaultEvent]) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            if self.failing.load(Ordering::SeqCst) {
                return Err(PublishError::all("publisher told to fail"));
            }
            self.published
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(faults);
            Ok(())
        })
    }
}

/// Units of work keyed as given (`None`: no partition key), positions 0, 1, ...
#[cfg(test)]
pub(crate) fn units(keys: &[Option<&str>]) -> Vec<crate::UnitOfWork> {
    let events: Vec<Event> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let mut e = Event::new(format!("e{i}"), "t", 1);
            e.partition_key = k.map(str::to_owned);
            e
        })
        .collect();
    let mut out = Vec::new();
    for (i, e) in events.into_iter().enumerate() {
        let record = std::sync::Arc::new(crate::sources::SourceRecord::Raw(Value::Null));
        out.push(crate::UnitOfWork::new(i as u32, record, e, None, false));
    }
    out
}

/// The local AWS emulator's address (`AWS_ENDPOINT_URL`), for integration tests.
///
/// Panics, saying how to start the emulator, when it is not set; and when it is not a loopback
/// address, so a test can never reach a real AWS account.
pub fn emulator_endpoint() -> String {
    match std::env::var("AWS_ENDPOINT_URL") {
        Ok(url)
            if url.starts_with("http://127.")
                || url.starts_with("http://localhost")
                || url.starts_with("http://[::1]") =>
        {
            url
        }
        Ok(url) => panic!(
            "AWS_ENDPOINT_URL={url} is not a loopback address: integration tests only talk to a local emulator"
        ),
        Err(_) => panic!(
            "AWS_ENDPOINT_URL is not set: this test needs the local AWS emulator. \
             Run `make test`, or `scripts/with-emulator.sh cargo test ...` to start one on 127.0.0.1"
        ),
    }
}

/// The shared AWS configuration, after checking that it points at the local emulator.
pub async fn emulator() -> &'static aws_config::SdkConfig {
    emulator_endpoint();
    crate::aws::config().await
}

/// A resource name unique to this test run (tests share one emulator and run in parallel).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// Creates a `pk`/`sk` table with a NEW_AND_OLD_IMAGES stream in the emulator; returns its name.
pub async fn create_table(prefix: &str) -> String {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        StreamSpecification, StreamViewType,
    };
    let name = unique(prefix);
    let attr = |n: &str| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let key = |n: &str, t: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(n)
            .key_type(t)
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    emulator().await;
    crate::aws::dynamodb()
        .await
        .create_table()
        .table_name(&name)
        .attribute_definitions(attr("pk"))
        .attribute_definitions(attr("sk"))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .billing_mode(BillingMode::PayPerRequest)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating table {name}: {e:?}"));
    name
}

/// An EventBridge bus in the emulator with a rule delivering matching events to a new SQS
/// queue (moto delivers to SQS targets, not to Kinesis or Lambda). Returns (bus, queue url).
pub async fn bus_to_queue(prefix: &str, pattern: Value) -> (String, String) {
    emulator().await;
    let bus = unique(prefix);
    let eb = crate::aws::eventbridge().await;
    let sqs = crate::aws::sqs().await;
    eb.create_event_bus()
        .name(&bus)
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating bus: {e:?}"));
    let queue = sqs
        .create_queue()
        .queue_name(unique(prefix))
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating queue: {e:?}"));
    let url = queue.queue_url.unwrap_or_default();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap_or_else(|e| panic!("queue arn: {e:?}"))
        .attributes
        .and_then(|mut a| a.remove(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
        .unwrap_or_default();
    let rule = unique("rule");
    eb.put_rule()
        .name(&rule)
        .event_bus_name(&bus)
        .event_pattern(pattern.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating rule: {e:?}"));
    eb.put_targets()
        .rule(&rule)
        .event_bus_name(&bus)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("queue")
                .arn(arn)
                .build()
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating target: {e:?}"));
    (bus, url)
}

/// Every message now in the queue, as JSON (EventBridge envelopes for bus deliveries), deleted
/// as read.
pub async fn drain_queue(url: &str) -> Vec<Value> {
    let sqs = crate::aws::sqs().await;
    let mut out = Vec::new();
    loop {
        let got = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap_or_else(|e| panic!("receiving: {e:?}"));
        let messages = got.messages.unwrap_or_default();
        if messages.is_empty() {
            return out;
        }
        for m in messages {
            out.push(serde_json::from_str(m.body().unwrap_or("null")).unwrap_or(Value::Null));
            if let Some(handle) = m.receipt_handle() {
                let _ = sqs
                    .delete_message()
                    .queue_url(url)
                    .receipt_handle(handle)
                    .send()
                    .await;
            }
        }
    }
}
