//! Wire compatibility, proven against aws-lambda-stream itself: its own test helpers and
//! `compress` make events (compressed fields included) that our sources decode as its `from*`
//! functions do; and what our connectors publish (compressed, claim-checked) its `from*`
//! functions decode to the original events, redeeming claim checks from the emulator's S3.
//!
//! The package is pinned in `core/tests/peer/package-lock.json` and installed there on first
//! use (`npm ci`, project-local); Node 20 runs it.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use lambda_stream::claimcheck::ClaimCheck;
use lambda_stream::connectors::{Kinesis, Sqs, Wire};
use lambda_stream::encryption::{Encryption, Envelope};
use lambda_stream::sources::{Decoded, from_eventbridge};
use lambda_stream::testing::*;
use lambda_stream::{Event, Handler, Outcome, Pipeline, UnitOfWork, aws};
use serde_json::{Value, json};

fn peer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peer")
}

/// Installs the pinned package once per test process.
fn installed() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    static INSTALL: Mutex<()> = Mutex::new(());
    DIR.get_or_init(|| {
        let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = peer_dir();
        if !dir
            .join("node_modules/aws-lambda-stream/package.json")
            .exists()
        {
            let status = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                .status()
                .expect("npm (Node 20) is needed for the peer tests");
            assert!(status.success(), "npm ci in {}", dir.display());
        }
        dir
    })
}

/// Runs `node peer.cjs args...` with `input` on its standard input; its JSON answer.
fn peer(args: &[&str], input: &Value) -> Value {
    let dir = installed();
    let mut child = Command::new("node")
        .arg("peer.cjs")
        .args(args)
        .current_dir(dir)
        .envs(emulator_env())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node");
    let mut stdin = child.stdin.take().unwrap();
    let bytes = serde_json::to_vec(input).unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&bytes));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "peer.cjs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What a pipeline sees of a decoded batch, claim checks redeemed, as JSON.
async fn ours(decoded: Decoded) -> Vec<Value> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let faults = Arc::new(MemoryFaults::default());
    let handler = Handler::builder(faults.clone())
        .function_name("peer")
        .pipeline(Pipeline::new("p").map(move |u: UnitOfWork| {
            s.lock()
                .unwrap()
                .push(serde_json::to_value(u.event()).unwrap());
            Ok(u)
        }))
        .build()
        .unwrap();
    let ctx = context(Duration::from_secs(30));
    let outcomes = handler.process(decoded, &handler.invocation(&ctx)).await;
    let reasons: Vec<String> = faults
        .published()
        .iter()
        .map(|f| f.err.message.clone())
        .collect();
    assert!(
        outcomes.outcomes().iter().all(|o| *o == Outcome::Done),
        "{:?}: {reasons:?}",
        outcomes.outcomes()
    );
    seen.lock().unwrap().clone()
}

/// Our events serialize `tags` even when empty; aws-lambda-stream leaves out what an event
/// lacks. Everything else must be equal.
fn normalized(mut events: Vec<Value>) -> Vec<Value> {
    for e in &mut events {
        if let Some(map) = e.as_object_mut()
            && map.get("tags").is_some_and(|t| t == &json!({}))
        {
            map.remove("tags");
        }
    }
    events
}

fn samples() -> Vec<Value> {
    vec![
        json!({"id": "e1", "type": "thing-created", "timestamp": 1_700_000_000_001_i64,
               "partitionKey": "t1", "tags": {"source": "peer"}, "thing": {"id": "t1", "name": "small"}}),
        // a field over aws-lambda-stream's 10 KB estimate: compressed
        json!({"id": "e2", "type": "thing-updated", "timestamp": 1_700_000_000_002_i64,
               "partitionKey": "t1", "thing": {"id": "t1", "notes": "n".repeat(11_000), "n": 7}}),
        // big only when taken whole: the top-level field is compressed, not its elements
        json!({"id": "e3", "type": "thing-updated", "timestamp": 1_700_000_000_003_i64,
               "partitionKey": "t2", "items": (0..60).map(|i| json!({"i": i, "s": "v".repeat(200)})).collect::<Vec<_>>()}),
        // 9 KB in one field: under the threshold, published as it is
        json!({"id": "e4", "type": "thing-updated", "timestamp": 1_700_000_000_004_i64,
               "partitionKey": "t3", "thing": {"id": "t3", "notes": "m".repeat(9_000)}}),
    ]
}

#[tokio::test]
async fn what_the_peer_publishes_our_sources_decode_as_its_own_do() {
    emulator().await;
    let events = samples();
    let made = peer(&["encode"], &json!({ "events": events }));
    // its helpers did compress: the proof is about its format, not an uncompressed one
    let published = made["published"].as_array().unwrap();
    assert!(!published[0].as_str().unwrap().contains("COMPRESSED"));
    assert!(
        published[1]
            .as_str()
            .unwrap()
            .contains(r#""thing":"COMPRESSED"#)
    );
    assert!(
        published[2]
            .as_str()
            .unwrap()
            .contains(r#""items":"COMPRESSED"#)
    );
    assert!(!published[3].as_str().unwrap().contains("COMPRESSED"));

    for (kind, decoded) in [
        (
            "kinesis",
            lambda_stream::sources::from_kinesis(
                serde_json::from_value::<lambda_stream::sources::KinesisRecords>(
                    made["kinesis"].clone(),
                )
                .unwrap(),
            ),
        ),
        (
            "sqs",
            lambda_stream::sources::from_sqs(
                serde_json::from_value::<lambda_stream::sources::SqsRecords>(made["sqs"].clone())
                    .unwrap(),
            ),
        ),
    ] {
        let theirs = peer(&["decode", kind], &made[kind]);
        assert_eq!(theirs["faults"], json!([]), "{kind}");
        let theirs: Vec<Value> = serde_json::from_value(theirs["events"].clone()).unwrap();
        assert_eq!(theirs, events, "{kind}: the peer restores its own events");
        assert_eq!(normalized(ours(decoded).await), theirs, "{kind}");
    }

    // DynamoDB: its toDynamodbRecords, our from_dynamodb
    let changes = json!([
        // whole seconds, as DynamoDB Streams writes them (aws_lambda_events 1.2 reads a
        // fraction of a second as microseconds)
        {"timestamp": 1_700_000_001, "keys": {"pk": "t1", "sk": "thing"},
         "newImage": {"pk": "t1", "sk": "thing", "discriminator": "thing", "name": "A", "n": 1}},
        {"timestamp": 1_700_000_002, "keys": {"pk": "t1", "sk": "thing"},
         "oldImage": {"pk": "t1", "sk": "thing", "discriminator": "thing", "name": "A"},
         "newImage": {"pk": "t1", "sk": "thing", "discriminator": "thing", "name": "B", "tags": ["x"]}},
        {"timestamp": 1_700_000_003, "keys": {"pk": "t1", "sk": "thing"},
         "oldImage": {"pk": "t1", "sk": "thing", "discriminator": "thing", "name": "B"},
         "newImage": {"pk": "t1", "sk": "thing", "discriminator": "thing", "name": "B", "deleted": true}},
        {"timestamp": 1_700_000_004, "keys": {"pk": "t2", "sk": "thing"},
         "oldImage": {"pk": "t2", "sk": "thing", "discriminator": "thing", "name": "C"}},
        // a row that keeps its own time: ours is timed by it (a deliberate difference)
        {"timestamp": 1_700_000_005, "keys": {"pk": "t3", "sk": "thing"},
         "newImage": {"pk": "t3", "sk": "thing", "discriminator": "thing", "timestamp": 1_600_000_000_000_i64}},
    ]);
    let made = peer(&["encode"], &json!({ "events": [], "changes": changes }));
    let theirs = peer(&["decode", "dynamodb"], &made["dynamodb"]);
    assert_eq!(theirs["faults"], json!([]));
    let records: lambda_stream::sources::DynamoDbRecords =
        serde_json::from_value(made["dynamodb"].clone()).unwrap();
    let decoded = lambda_stream::sources::from_dynamodb(
        records,
        &lambda_stream::sources::DynamoDbOptions::default(),
    );
    let mut theirs = theirs["events"].as_array().unwrap().clone();
    let mine = normalized(ours(decoded).await);
    assert_eq!(theirs[4]["timestamp"], 1_700_000_005_000_i64);
    assert_eq!(mine[4]["timestamp"], 1_600_000_000_000_i64);
    theirs[4]["timestamp"] = mine[4]["timestamp"].clone();
    assert_eq!(mine, theirs);

    // EventBridge: aws-lambda-stream 1.0.0's fromEventBridge does not restore compressed
    // fields; ours does, so we compare with the originals
    for (i, record) in made["eventbridge"].as_array().unwrap().iter().enumerate() {
        let mut record = record.clone();
        record["detail"] = serde_json::from_str(published[i].as_str().unwrap()).unwrap();
        let record: EventBridgeEvent<Value> = serde_json::from_value(record).unwrap();
        assert_eq!(
            normalized(ours(from_eventbridge(record)).await),
            [events[i].clone()]
        );
    }
}

fn kinesis_event(data: &[Vec<u8>]) -> Value {
    use base64::Engine;
    let records: Vec<Value> = data
        .iter()
        .enumerate()
        .map(|(i, d)| {
            json!({
                "eventSource": "aws:kinesis",
                "eventID": format!("shardId-000000000000:{i}"),
                "awsRegion": "us-east-1",
                "kinesis": {
                    "sequenceNumber": i.to_string(),
                    "partitionKey": "k",
                    "data": base64::engine::general_purpose::STANDARD.encode(d),
                    "approximateArrivalTimestamp": 1_700_000_000.5,
                }
            })
        })
        .collect();
    json!({ "Records": records })
}

fn originals() -> Vec<Event> {
    let mut big = samples()
        .into_iter()
        .map(|v| serde_json::from_value::<Event>(v).unwrap())
        .collect::<Vec<_>>();
    // over a Kinesis record's 1 MB even compressed: claim-checked
    big.push(
        Event::new("e5", "thing-updated", 1_700_000_000_005)
            .with_partition_key("t4")
            .with_entity(
                "thing",
                json!({"id": "t3", "notes": incompressible(1_200_000)}),
            ),
    );
    big
}

#[tokio::test]
async fn what_we_publish_the_peer_decodes_to_the_originals() {
    let bucket = create_bucket("peer-claims").await;
    let claim_check = ClaimCheck::new(Arc::new(aws::s3().await.clone()), &bucket, "us-east-1");
    let events = originals();
    let expected: Vec<Value> = events
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();

    // Kinesis: compressed fields, and a claim-checked record
    let stream = create_stream("peer").await;
    let kinesis = Kinesis::new(aws::kinesis().await.clone(), &stream)
        .with_wire(Wire::default().claim_check(claim_check.clone()));
    assert!(kinesis.put_records(&events).await.iter().all(Result::is_ok));
    let data = read_stream(&stream).await;
    assert!(String::from_utf8_lossy(&data[1]).contains("COMPRESSED"));
    assert!(!String::from_utf8_lossy(&data[3]).contains("COMPRESSED"));
    assert!(data[4].len() < 1_000, "a pointer");
    let theirs = peer(&["decode", "kinesis"], &kinesis_event(&data));
    assert_eq!(theirs["faults"], json!([]));
    assert_eq!(theirs["events"], json!(expected));

    // SQS: over 256 KB a message, so the last one is claim-checked there too
    let queue = create_queue("peer").await;
    let sqs = Sqs::new(aws::sqs().await.clone(), &queue)
        .with_wire(Wire::default().claim_check(claim_check));
    assert!(
        sqs.send_message_batch(&events)
            .await
            .iter()
            .all(Result::is_ok)
    );
    let bodies: Vec<String> = drain_queue(&queue)
        .await
        .iter()
        .map(Value::to_string)
        .collect();
    let messages = serde_json::to_value(to_sqs_messages(&bodies)).unwrap();
    let theirs = peer(&["decode", "sqs"], &messages);
    assert_eq!(theirs["faults"], json!([]));
    let mut decoded: Vec<Value> = serde_json::from_value(theirs["events"].clone()).unwrap();
    decoded.sort_by_key(|e| e["id"].as_str().unwrap_or_default().to_owned());
    assert_eq!(decoded, expected);
}

fn people() -> Vec<Value> {
    (0..6)
        .map(|i| {
            json!({"id": format!("p{i}"), "type": "person-updated", "timestamp": 1_700_000_000_000_i64 + i,
                   "partitionKey": format!("k{}", i % 2), "tags": {"source": "peer"},
                   "person": {"name": format!("Ada {i}"), "contact": {"email": format!("ada{i}@example.com")},
                              "age": 36, "aliases": ["a", "b"]}})
        })
        .collect()
}

#[tokio::test]
async fn what_aws_kms_ee_encrypts_we_decrypt_and_the_reverse() {
    let alias = create_master_key("peer").await;
    let fields = ["name", "email", "aliases"];
    let originals = people();

    // theirs -> ours: encrypted by aws-kms-ee, decrypted by our source before the pipeline
    let theirs = peer(
        &["encrypt"],
        &json!({"events": originals, "fields": fields, "masterKeyAlias": alias}),
    );
    let encrypted: Vec<Value> = serde_json::from_value(theirs).unwrap();
    assert!(!encrypted[0].to_string().contains("Ada"));
    assert_eq!(encrypted[0]["eem"]["fields"], json!(fields));
    let bodies: Vec<String> = encrypted.iter().map(Value::to_string).collect();
    let decoded = lambda_stream::sources::from_sqs(
        serde_json::from_value::<lambda_stream::sources::SqsRecords>(
            serde_json::to_value(to_sqs_messages(&bodies)).unwrap(),
        )
        .unwrap(),
    );
    assert_eq!(ours(decoded).await, originals);

    // ours -> theirs: encrypted by our publisher, decrypted by aws-kms-ee
    let encryption = Encryption {
        envelope: Envelope::new(Arc::new(aws::kms().await.clone()), "us-east-1"),
        master_key: alias,
        fields: fields.iter().map(|f| f.to_string()).collect(),
    };
    let queue = create_queue("peer-encrypted").await;
    let sqs =
        Sqs::new(aws::sqs().await.clone(), &queue).with_wire(Wire::default().encrypt(encryption));
    let events: Vec<Event> = originals
        .iter()
        .map(|e| serde_json::from_value(e.clone()).unwrap())
        .collect();
    assert!(
        sqs.send_message_batch(&events)
            .await
            .iter()
            .all(Result::is_ok)
    );
    let mut published = drain_queue(&queue).await;
    published.sort_by_key(|e| e["id"].as_str().unwrap_or_default().to_owned());
    assert!(!published[0].to_string().contains("Ada"));
    let decrypted = peer(&["decrypt"], &json!({ "events": published }));
    assert_eq!(decrypted, json!(originals));
}
