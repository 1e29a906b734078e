//! Test helpers (feature `testing`): real Lambda event shapes built from events, and an
//! in-memory fault publisher for pure pipeline tests.
//!
//! The events are built as the JSON Lambda sends and parsed with `aws_lambda_events`, so what
//! a test feeds a handler is what Lambda would.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    let records = events
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
        .map(|record| {
            // as the Kinesis source parses a record (its times to the millisecond)
            crate::sources::parse_kinesis_record(&record.to_string())
                .unwrap_or_else(|e| panic!("test helper built an invalid Kinesis record: {e}"))
        })
        .collect();
    let mut event = KinesisEvent::default();
    event.records = records;
    event
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
    /// The table whose stream carries it (default `entities`).
    pub table: Option<String>,
}

impl Change {
    fn of(event_name: &'static str, new: Option<Value>, old: Option<Value>) -> Self {
        Change {
            event_name,
            new,
            old,
            keys: vec!["pk", "sk"],
            ttl_expiry: false,
            table: None,
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

    /// Comes from `table`'s stream (its `eventSourceARN`).
    pub fn in_table(mut self, table: impl Into<String>) -> Self {
        self.table = Some(table.into());
        self
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
pub fn to_dynamodb_records(changes: &[Change]) -> crate::sources::DynamoDbRecords {
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
                    "eventSourceARN": format!(
                        "arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{}/stream/2024-01-01T00:00:00.000",
                        c.table.as_deref().unwrap_or("entities")
                    ),
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

/// Keeps published fault events in memory; can be told to fail, or to reject every fault for
/// good.
#[derive(Debug, Default)]
pub struct MemoryFaults {
    published: Mutex<Vec<FaultEvent>>,
    failing: AtomicBool,
    rejecting: AtomicBool,
    attempts: std::sync::atomic::AtomicUsize,
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

    /// From now on, every fault is rejected for good (or accepted again).
    pub fn reject(&self, rejecting: bool) {
        self.rejecting.store(rejecting, Ordering::SeqCst);
    }

    /// How many times `publish` was called.
    pub fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }
}

/// Keeps stored faults in memory, by key (a [`FaultStore`](crate::faults::FaultStore) for tests).
#[derive(Debug, Default)]
pub struct MemoryStore {
    stored: Mutex<std::collections::BTreeMap<String, Vec<u8>>>,
}

impl MemoryStore {
    /// Every stored fault, by key.
    pub fn stored(&self) -> std::collections::BTreeMap<String, FaultEvent> {
        self.stored
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), serde_json::from_slice(v).ok()?)))
            .collect()
    }
}

impl crate::faults::FaultStore for MemoryStore {
    fn store<'a>(
        &'a self,
        key: &'a str,
        json: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), crate::StepError>> {
        Box::pin(async move {
            self.stored
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key.to_owned(), json);
            Ok(())
        })
    }
}

/// Claim-checked events in memory, by bucket and key (a
/// [`ClaimCheckStore`](crate::claimcheck::ClaimCheckStore) for pure pipeline tests).
#[derive(Debug, Default)]
pub struct MemoryClaimChecks {
    objects: Mutex<std::collections::BTreeMap<(String, String), Vec<u8>>>,
}

impl MemoryClaimChecks {
    /// Every stored object, by (bucket, key).
    pub fn objects(&self) -> std::collections::BTreeMap<(String, String), Vec<u8>> {
        self.objects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl crate::claimcheck::ClaimCheckStore for MemoryClaimChecks {
    fn put<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        json: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), crate::StepError>> {
        Box::pin(async move {
            self.objects
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert((bucket.to_owned(), key.to_owned()), json);
            Ok(())
        })
    }

    fn get<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, crate::StepError>> {
        Box::pin(async move {
            Ok(self
                .objects
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&(bucket.to_owned(), key.to_owned()))
                .cloned())
        })
    }
}

impl crate::claimcheck::ClaimCheckStore for std::sync::Arc<MemoryClaimChecks> {
    fn put<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        json: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), crate::StepError>> {
        (**self).put(bucket, key, json)
    }

    fn get<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, crate::StepError>> {
        (**self).get(bucket, key)
    }
}

/// `len` characters that gzip cannot shrink much (base64 of pseudo-random bytes, the same for
/// the same `len`): a payload that stays big after compression, for tests of size limits.
pub fn incompressible(len: usize) -> String {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ len as u64;
    let bytes: Vec<u8> = (0..len * 3 / 4 + 3)
        .map(|_| {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect();
    let mut s = base64::engine::general_purpose::STANDARD.encode(bytes);
    s.truncate(len);
    s
}

/// A new S3 bucket in the emulator; returns its name.
pub async fn create_bucket(prefix: &str) -> String {
    emulator().await;
    let bucket = unique(prefix).to_ascii_lowercase();
    crate::aws::s3()
        .await
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating bucket {bucket}: {e:?}"));
    bucket
}

/// Idempotency marks in memory (an [`IdempotencyStore`](crate::idempotency::IdempotencyStore)
/// for pure pipeline tests; the claim is atomic under a lock, as DynamoDB's condition is).
#[derive(Debug, Default)]
pub struct MemoryIdempotency {
    marks: Mutex<std::collections::BTreeMap<String, crate::idempotency::Mark>>,
    claims: std::sync::atomic::AtomicUsize,
    failing: AtomicBool,
}

impl MemoryIdempotency {
    /// Every mark, by id.
    pub fn marks(&self) -> std::collections::BTreeMap<String, crate::idempotency::Mark> {
        self.marks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// How many claims reached the store.
    pub fn claims(&self) -> usize {
        self.claims.load(Ordering::SeqCst)
    }

    /// From now on, every call fails transiently (or succeeds again).
    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), crate::StepError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(crate::StepError::transient(
                "memory idempotency store failing",
            ));
        }
        Ok(())
    }
}

impl crate::idempotency::IdempotencyStore for MemoryIdempotency {
    fn claim<'a>(
        &'a self,
        req: &'a crate::idempotency::ClaimRequest<'a>,
    ) -> BoxFuture<'a, Result<crate::idempotency::Claim, crate::StepError>> {
        use crate::idempotency::{Claim, Mark, Status};
        Box::pin(async move {
            self.claims.fetch_add(1, Ordering::SeqCst);
            self.check()?;
            let mut marks = self
                .marks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let previous = marks.get(req.id).cloned();
            if let Some(current) = previous
                .as_ref()
                .filter(|m| !m.claimable(req.now_ms) && m.owner.as_deref() != Some(req.owner))
            {
                return Ok(Claim::Held {
                    current: current.clone(),
                });
            }
            let kept = previous.clone();
            marks.insert(
                req.id.to_owned(),
                Mark {
                    status: Status::InProgress,
                    lock_expiry_ms: req.lock_expiry_ms,
                    expiration_s: req.expiration_s,
                    payload_hash: req
                        .payload_hash
                        .map(str::to_owned)
                        .or_else(|| kept.as_ref().and_then(|m| m.payload_hash.clone())),
                    attempts: kept.as_ref().map_or(0, |m| m.attempts),
                    last_error: kept.and_then(|m| m.last_error),
                    owner: Some(req.owner.to_owned()),
                },
            );
            Ok(Claim::Taken { previous })
        })
    }

    fn settle<'a>(
        &'a self,
        marks: &'a [(String, crate::idempotency::Mark)],
    ) -> BoxFuture<'a, Result<(), crate::StepError>> {
        Box::pin(async move {
            self.check()?;
            let mut stored = self
                .marks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (id, mark) in marks {
                stored.insert(id.clone(), mark.clone());
            }
            Ok(())
        })
    }

    fn release<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), crate::StepError>> {
        Box::pin(async move {
            self.check()?;
            let mut stored = self
                .marks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(m) = stored
                .get_mut(id)
                .filter(|m| m.owner.as_deref() == Some(owner))
            {
                m.status = crate::idempotency::Status::Failed;
                m.lock_expiry_ms = 0;
                m.owner = None;
            }
            Ok(())
        })
    }
}

impl crate::faults::FaultStore for std::sync::Arc<MemoryStore> {
    fn store<'a>(
        &'a self,
        key: &'a str,
        json: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), crate::StepError>> {
        (**self).store(key, json)
    }
}

impl FaultPublisher for MemoryFaults {
    fn publish<'a>(&'a self, faults: &'a [FaultEvent]) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            if self.rejecting.load(Ordering::SeqCst) {
                let all: Vec<usize> = (0..faults.len()).collect();
                return Err(
                    PublishError::some(all.clone(), "publisher told to reject").with_rejected(all)
                );
            }
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

/// The emulator's pinned package, shared with `scripts/with-emulator.sh`.
const REQUIREMENTS: &str = include_str!("../emulator/requirements.txt");
/// Waits for a started emulator, runs its Lambda without Docker, creates the tests' role and
/// prints its ARN; shared with `scripts/with-emulator.sh`.
const SETUP: &str = include_str!("../emulator/setup.py");

/// The emulator this process started, when none was given.
struct Started {
    endpoint: String,
    role_arn: String,
}

static STARTED: std::sync::OnceLock<Result<Started, String>> = std::sync::OnceLock::new();

/// `AWS_ENDPOINT_URL`, when set; a test never talks to anything but a loopback address.
fn given_endpoint() -> Option<String> {
    let url = std::env::var("AWS_ENDPOINT_URL").ok()?;
    if url.starts_with("http://127.")
        || url.starts_with("http://localhost")
        || url.starts_with("http://[::1]")
    {
        Some(url)
    } else {
        panic!(
            "AWS_ENDPOINT_URL={url} is not a loopback address: integration tests only talk to a local emulator"
        )
    }
}

fn started() -> &'static Started {
    match STARTED.get_or_init(start_emulator) {
        Ok(s) => s,
        Err(e) => panic!(
            "no AWS_ENDPOINT_URL, and the local emulator could not be started: {e}. \
             `make test` (or `scripts/with-emulator.sh cargo test ...`) starts one for a whole run"
        ),
    }
}

/// The project's root: the nearest directory above the crate under test with a `Cargo.lock`.
fn project_root() -> Result<std::path::PathBuf, String> {
    let start = std::env::var("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|_| std::env::current_dir())
        .map_err(|e| format!("no CARGO_MANIFEST_DIR nor current directory: {e}"))?;
    start
        .ancestors()
        .find(|d| d.join("Cargo.lock").exists())
        .map(std::path::Path::to_path_buf)
        .ok_or_else(|| format!("no Cargo.lock above {}", start.display()))
}

fn run(cmd: &mut std::process::Command) -> Result<std::process::Output, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .chars()
                .take(400)
                .collect::<String>()
        ))
    }
}

/// Creates the project-local virtualenv `.venv` with the pinned emulator, once, even when
/// several test processes start at the same time.
fn ensure_emulator_installed(root: &std::path::Path) -> Result<std::path::PathBuf, String> {
    let venv = root.join(".venv");
    let server = venv.join("bin/moto_server");
    if server.exists() {
        return Ok(venv);
    }
    let lock = std::fs::File::create(root.join(".venv.lock")).map_err(|e| e.to_string())?;
    lock.lock().map_err(|e| e.to_string())?;
    if !server.exists() {
        eprintln!(
            "emulator: installing {} into {}",
            REQUIREMENTS.trim(),
            venv.display()
        );
        run(std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv))?;
        run(std::process::Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(REQUIREMENTS.split_whitespace()))?;
    }
    Ok(venv)
}

/// Starts the emulator on a free loopback port for this process; it ends with the process.
fn start_emulator() -> Result<Started, String> {
    let root = project_root()?;
    let venv = ensure_emulator_installed(&root)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let logs = root.join("target");
    std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(logs.join(format!("emulator-{}.log", std::process::id())))
        .map_err(|e| e.to_string())?;
    let server = venv.join("bin/moto_server");
    let (tx, rx) = std::sync::mpsc::channel();
    // the emulator is tied to a thread that lives as long as the process: PR_SET_PDEATHSIG ends
    // it when that thread ends, so it must not be a test's thread
    std::thread::Builder::new()
        .name("emulator".into())
        .spawn(move || {
            let spawned = spawn_tied(&server, port, log);
            let _ = tx.send(spawned.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            let _child = spawned;
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| e.to_string())?;
    rx.recv().map_err(|e| e.to_string())??;
    let endpoint = format!("http://127.0.0.1:{port}");
    let out = run(std::process::Command::new(venv.join("bin/python"))
        .args(["-c", SETUP])
        .arg(&endpoint))?;
    let role_arn = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    eprintln!("emulator: moto server on {endpoint} for this test process");
    Ok(Started { endpoint, role_arn })
}

fn spawn_tied(
    server: &std::path::Path,
    port: u16,
    log: std::fs::File,
) -> std::io::Result<std::process::Child> {
    let err = log.try_clone()?;
    let mut cmd = std::process::Command::new(server);
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err);
    // the thread that starts it never ends before the process does
    dies_with_parent(&mut cmd);
    cmd.spawn()
}

/// Makes the kernel end the child `cmd` starts when the thread that started it ends, even by
/// SIGKILL, so that no emulator or function process outlives the tests or local stack that
/// started it (Linux; elsewhere a no-op).
pub fn dies_with_parent(cmd: &mut std::process::Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe, the only kind of call allowed between fork and exec
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// The local AWS emulator's address, for integration tests: `AWS_ENDPOINT_URL` when set (`make
/// test` starts one emulator for the whole run), else one this test process starts itself
/// from the project-local virtualenv `.venv` (created if missing), on a free loopback port,
/// and that ends with the process.
///
/// Panics when `AWS_ENDPOINT_URL` is not a loopback address, so a test can never reach a real
/// AWS account, and, saying why, when no emulator can be started.
pub fn emulator_endpoint() -> String {
    given_endpoint().unwrap_or_else(|| started().endpoint.clone())
}

/// The IAM role tests give the functions they create in the emulator.
pub fn test_role_arn() -> String {
    match std::env::var("LAMBDA_TEST_ROLE_ARN") {
        Ok(arn) if given_endpoint().is_some() => arn,
        _ => started().role_arn.clone(),
    }
}

/// The environment a child process needs to use the same emulator (for tests that run a
/// binary): endpoint, dummy credentials, region, and no other source of either.
pub fn emulator_env() -> Vec<(&'static str, String)> {
    let endpoint = emulator_endpoint();
    [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_SESSION_TOKEN", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect()
}

/// The shared AWS configuration, pointing at the local emulator (see [`emulator_endpoint`]):
/// with `AWS_ENDPOINT_URL` set it is the environment's; otherwise this process's own emulator
/// becomes the configuration every shared client uses.
///
/// Panics when a shared client was built before, from an environment without the emulator.
pub async fn emulator() -> &'static aws_config::SdkConfig {
    let endpoint = emulator_endpoint();
    if given_endpoint().is_none() {
        let credentials = aws_sdk_dynamodb::config::Credentials::new(
            "testing",
            "testing",
            Some("testing".into()),
            None,
            "lambda-stream-testing",
        );
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(credentials)
            .load()
            .await;
        // the first test to get here installs it; the others find it in place
        crate::aws::install(config);
    }
    let config = crate::aws::config().await;
    if config.endpoint_url() != Some(endpoint.as_str()) {
        panic!(
            "the shared AWS clients were built before the emulator was set up (endpoint {:?}, emulator {endpoint}): call `emulator().await` first",
            config.endpoint_url()
        );
    }
    config
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

/// Creates an idempotency table (key `id`, TTL on `expiration`) in the emulator, as
/// `template.yaml` declares it; returns its name.
pub async fn create_idempotency_table(prefix: &str) -> String {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        TimeToLiveSpecification,
    };
    let name = unique(prefix);
    emulator().await;
    let client = crate::aws::dynamodb().await;
    client
        .create_table()
        .table_name(&name)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating table {name}: {e:?}"));
    client
        .update_time_to_live()
        .table_name(&name)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name("expiration")
                .build()
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("TTL on {name}: {e:?}"));
    name
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

/// Creates a micro event store table (`pk`/`sk`, the `data` index as
/// [`DATA_INDEX`](crate::flavors::DATA_INDEX), a NEW_AND_OLD_IMAGES stream) in the emulator;
/// returns its name.
pub async fn create_event_store(prefix: &str) -> String {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
        Projection, ProjectionType, ScalarAttributeType, StreamSpecification, StreamViewType,
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
        .attribute_definitions(attr("data"))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(crate::flavors::DATA_INDEX)
                .key_schema(key("data", KeyType::Hash))
                .key_schema(key("sk", KeyType::Range))
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .unwrap_or_else(|e| panic!("{e}")),
        )
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

/// A new KMS key in the emulator under a new alias (`alias/<prefix>-…`); returns the alias.
pub async fn create_master_key(prefix: &str) -> String {
    emulator().await;
    let kms = crate::aws::kms().await;
    let key = kms
        .create_key()
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating a KMS key: {e:?}"));
    let id = key.key_metadata.map(|m| m.key_id).unwrap_or_default();
    let alias = format!("alias/{}", unique(prefix));
    kms.create_alias()
        .alias_name(&alias)
        .target_key_id(id)
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating alias {alias}: {e:?}"));
    alias
}

/// A new SQS queue in the emulator; returns its URL.
pub async fn create_queue(prefix: &str) -> String {
    emulator().await;
    crate::aws::sqs()
        .await
        .create_queue()
        .queue_name(unique(prefix))
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating queue: {e:?}"))
        .queue_url
        .unwrap_or_default()
}

/// A new one-shard Kinesis stream in the emulator; returns its name.
pub async fn create_stream(prefix: &str) -> String {
    emulator().await;
    let stream = unique(prefix);
    crate::aws::kinesis()
        .await
        .create_stream()
        .stream_name(&stream)
        .shard_count(1)
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating stream {stream}: {e:?}"));
    stream
}

/// The data of every record in the first shard of `stream`, from its start.
pub async fn read_stream(stream: &str) -> Vec<Vec<u8>> {
    let client = crate::aws::kinesis().await;
    let shards = client
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap_or_else(|e| panic!("listing shards: {e:?}"));
    let shard = shards
        .shards
        .unwrap_or_default()
        .into_iter()
        .next()
        .map(|s| s.shard_id)
        .unwrap_or_default();
    let mut iterator = client
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(shard)
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap_or_else(|e| panic!("shard iterator: {e:?}"))
        .shard_iterator;
    let mut read = Vec::new();
    while let Some(it) = iterator.take() {
        let out = client
            .get_records()
            .shard_iterator(it)
            .send()
            .await
            .unwrap_or_else(|e| panic!("reading records: {e:?}"));
        if out.records.is_empty() {
            break;
        }
        read.extend(out.records.into_iter().map(|r| r.data.into_inner()));
        iterator = out.next_shard_iterator;
    }
    read
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

/// A Kinesis Data Firehose transformation event carrying `events` (record ids `0`, `1`, ...,
/// arrival times ascending from 1 700 000 000 000 ms), as aws-lambda-stream's
/// `toFirehoseRecords` makes it.
///
/// ```
/// use lambda_stream::{Event, testing::to_firehose_records};
///
/// let event = to_firehose_records(&[Event::new("1", "thing-created", 1)]);
/// assert_eq!(event.records[0].record_id.as_deref(), Some("0"));
/// ```
pub fn to_firehose_records(
    events: &[Event],
) -> aws_lambda_events::event::firehose::KinesisFirehoseEvent {
    let b64 = base64::engine::general_purpose::STANDARD;
    let records: Vec<Value> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            json!({
                "recordId": i.to_string(),
                "approximateArrivalTimestamp": 1_700_000_000_000_i64 + i as i64,
                "data": b64.encode(to_json(e)),
            })
        })
        .collect();
    serde_json::from_value(json!({
        "invocationId": "invocationIdExample",
        "deliveryStreamArn": format!("arn:aws:firehose:{REGION}:{ACCOUNT}:deliverystream/events"),
        "region": REGION,
        "records": records,
    }))
    .unwrap_or_else(|e| panic!("test helper built an invalid Firehose event: {e}"))
}

/// The event an EventBridge schedule `rule` sends its target (the `Scheduled Event` envelope,
/// fired at 2024-08-05T00:00:00Z).
///
/// ```
/// let event = lambda_stream::testing::to_scheduled_event("nightly");
/// assert_eq!(event["detail-type"], "Scheduled Event");
/// ```
pub fn to_scheduled_event(rule: &str) -> Value {
    json!({
        "version": "0",
        "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT,
        "time": "2024-08-05T00:00:00Z",
        "region": REGION,
        "resources": [format!("arn:aws:events:{REGION}:{ACCOUNT}:rule/{rule}")],
        "detail": {},
    })
}

/// The event a CloudWatch alarm's action sends a function it invokes directly: alarm `name`
/// gone from `previous` to `state` (`ALARM`, `OK`, `INSUFFICIENT_DATA`) at
/// 2024-08-05T00:00:00Z.
///
/// ```
/// let event = lambda_stream::testing::to_alarm_action("listener-stuck", "ALARM", "OK");
/// assert_eq!(event["alarmData"]["state"]["value"], "ALARM");
/// ```
pub fn to_alarm_action(name: &str, state: &str, previous: &str) -> Value {
    let at = "2024-08-05T00:00:00.000+0000";
    json!({
        "source": "aws.cloudwatch",
        "alarmArn": format!("arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{name}"),
        "accountId": ACCOUNT,
        "time": at,
        "region": REGION,
        "alarmData": {
            "alarmName": name,
            "state": {"value": state, "reason": "test", "timestamp": at},
            "previousState": {"value": previous, "reason": "test", "timestamp": "2024-08-04T23:55:00.000+0000"},
            "configuration": {
                "description": "test alarm",
                "metrics": [{
                    "id": "m1",
                    "metricStat": {
                        "metric": {"namespace": "AWS/Lambda", "name": "IteratorAge",
                            "dimensions": {"FunctionName": "listener"}},
                        "period": 60,
                        "stat": "Maximum"
                    },
                    "returnData": true
                }]
            }
        }
    })
}
