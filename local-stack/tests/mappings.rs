//! Event source mapping semantics against the emulator's Kinesis and SQS (run with `make test`).
//!
//! The functions here are in-process stand-ins that answer as a Lambda function would; the
//! streams, queues, bus and destinations are the emulator's.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use bytes::Bytes;
use futures::future::BoxFuture;
use lambda_stream::connectors::{EventBridge, EventBridgeFaults};
use lambda_stream::testing::{bus_to_queue, drain_queue, emulator, unique};
use lambda_stream::{Handler, Pipeline, StepError};
use local_stack::invoke::{FunctionError, Invoke};
use local_stack::mapping::Activity;
use local_stack::mapping::control::MappingControl;
use local_stack::mapping::queue::QueuePoller;
use local_stack::mapping::stream::{StreamClients, StreamPoller};
use local_stack::spec::{QueueMapping, StreamKind, StreamMapping};
use serde_json::{Value, json};
use tokio::sync::watch;

type Answer = Result<Value, FunctionError>;
type Answering = Box<dyn Fn(usize, &Value) -> Answer + Send + Sync>;

/// A function that records every batch and answers with `answer(call number, batch)`, after
/// `delay`, noting how many invocations ran at once.
struct Recording {
    calls: Mutex<Vec<Value>>,
    answer: Answering,
    delay: Duration,
    in_flight: AtomicUsize,
    most: AtomicUsize,
}

impl Recording {
    fn new(answer: impl Fn(usize, &Value) -> Answer + Send + Sync + 'static) -> Arc<Self> {
        Self::slow(Duration::ZERO, answer)
    }

    fn slow(
        delay: Duration,
        answer: impl Fn(usize, &Value) -> Answer + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            calls: Mutex::new(Vec::new()),
            answer: Box::new(answer),
            delay,
            in_flight: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
        })
    }

    fn calls(&self) -> Vec<Value> {
        self.calls.lock().unwrap().clone()
    }
}

impl Invoke for Recording {
    fn name(&self) -> &str {
        "recording"
    }
    fn arn(&self) -> String {
        "arn:aws:lambda:us-east-1:123456789012:function:recording".into()
    }
    fn invoke(&self, payload: Bytes) -> BoxFuture<'_, Result<Bytes, FunctionError>> {
        Box::pin(async move {
            let now = self.in_flight.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(now, SeqCst);
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            let batch: Value = serde_json::from_slice(&payload).unwrap();
            let n = {
                let mut calls = self.calls.lock().unwrap();
                calls.push(batch.clone());
                calls.len()
            };
            let answer = (self.answer)(n, &batch).map(|v| Bytes::from(v.to_string()));
            self.in_flight.fetch_sub(1, SeqCst);
            answer
        })
    }
}

/// A lambda-stream handler invoked as its `main.rs` would.
struct InProcess(Handler);

impl Invoke for InProcess {
    fn name(&self) -> &str {
        "in-process"
    }
    fn arn(&self) -> String {
        "arn:aws:lambda:us-east-1:123456789012:function:in-process".into()
    }
    fn invoke(&self, payload: Bytes) -> BoxFuture<'_, Result<Bytes, FunctionError>> {
        Box::pin(async move {
            let event: lambda_stream::sources::KinesisRecords = serde_json::from_slice(&payload)
                .map_err(|e| FunctionError::new("Runtime.UnmarshalError", e.to_string()))?;
            let ctx = lambda_stream::testing::context(Duration::from_secs(30));
            let response = self
                .0
                .handle::<lambda_stream::sources::Kinesis>(event, &ctx)
                .await
                .map_err(|e| FunctionError::new("Batch", e.to_string()))?;
            Ok(Bytes::from(serde_json::to_vec(&response).unwrap()))
        })
    }
}

fn seqs(batch: &Value) -> Vec<String> {
    batch["Records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kinesis"]["sequenceNumber"].as_str().unwrap().to_owned())
        .collect()
}

fn data(record: &Value) -> Value {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(record["kinesis"]["data"].as_str().unwrap())
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

async fn clients() -> StreamClients {
    let conf = emulator().await;
    StreamClients {
        kinesis: aws_sdk_kinesis::Client::new(conf),
        streams: aws_sdk_dynamodbstreams::Client::new(conf),
        sqs: aws_sdk_sqs::Client::new(conf),
    }
}

/// A one-shard stream holding `records`, in order; its ARN.
async fn stream_with(records: &[Value]) -> String {
    let kinesis = clients().await.kinesis;
    let name = unique("esm");
    kinesis
        .create_stream()
        .stream_name(&name)
        .shard_count(1)
        .send()
        .await
        .unwrap();
    for r in records {
        kinesis
            .put_record()
            .stream_name(&name)
            .partition_key(r["partitionKey"].as_str().unwrap_or("k"))
            .data(Blob::new(r.to_string()))
            .send()
            .await
            .unwrap();
    }
    format!("arn:aws:kinesis:us-east-1:123456789012:stream/{name}")
}

async fn queue(prefix: &str) -> (String, String) {
    let sqs = clients().await.sqs;
    let name = unique(prefix);
    let url = sqs
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    (url, format!("arn:aws:sqs:us-east-1:123456789012:{name}"))
}

fn mapping(
    arn: &str,
    batch_size: usize,
    max_retries: Option<u32>,
    on_failure: Option<String>,
) -> StreamMapping {
    StreamMapping {
        id: "test".into(),
        kind: StreamKind::Kinesis,
        arn: arn.into(),
        trim_horizon: true,
        batch_size,
        window: Duration::ZERO,
        report_failures: true,
        max_retries,
        max_age: None,
        bisect: false,
        on_failure,
        filters: Vec::new(),
        parallelization: 1,
    }
}

fn control() -> Arc<MappingControl> {
    Arc::new(MappingControl::new(
        "recording",
        "arn:aws:lambda:us-east-1:123456789012:function:recording",
        "arn:test",
        100,
    ))
}

/// Waits until `finished` records are finished across the mappings (or 30 s pass).
async fn wait_finished(activity: &Activity, finished: u64) {
    let started = Instant::now();
    while activity
        .snapshot()
        .values()
        .map(|c| c.finished)
        .sum::<u64>()
        < finished
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not finished: {:?}",
            activity.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the poller until `finished` records are finished (or 30 s pass), then stops it.
async fn run_until(poller: StreamPoller, finished: u64) -> Arc<Activity> {
    let activity = Arc::clone(&poller.activity);
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(Arc::new(poller).run(stopped));
    wait_finished(&activity, finished).await;
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    activity
}

fn events(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"id": format!("e{i}"), "type": "thing-created", "timestamp": 1, "partitionKey": format!("k{}", i % 3), "n": i}))
        .collect()
}

#[tokio::test]
async fn a_partial_failure_in_the_middle_resumes_at_the_reported_record() {
    let arn = stream_with(&events(10)).await;
    let function = Recording::new(|call, batch| {
        if call == 1 {
            // record 4 (and so everything after it) is to be retried
            let fourth = &seqs(batch)[4];
            Ok(json!({"batchItemFailures": [{"itemIdentifier": fourth}]}))
        } else {
            Ok(json!({"batchItemFailures": []}))
        }
    });
    let poller = StreamPoller {
        mapping: mapping(&arn, 100, Some(3), None),
        function: function.clone(),
        clients: clients().await,
        activity: Arc::default(),
        region: "us-east-1".into(),
        chaos: None,
        control: control(),
    };
    let activity = run_until(poller, 10).await;
    let calls = function.calls();
    assert_eq!(calls.len(), 2, "one retry");
    let (first, second) = (seqs(&calls[0]), seqs(&calls[1]));
    assert_eq!(first.len(), 10);
    assert_eq!(
        second,
        first[4..].to_vec(),
        "resumes at the reported record, not before"
    );
    assert_eq!(data(&calls[1]["Records"][0])["n"], 4);
    let c = &activity.snapshot()["recording/test"];
    assert_eq!(
        (
            c.invocations,
            c.delivered,
            c.finished,
            c.retried,
            c.given_up
        ),
        (2, 16, 10, 1, 0)
    );
}

#[tokio::test]
async fn with_chaos_records_that_succeeded_come_again_from_inside_their_batch() {
    let arn = stream_with(&events(10)).await;
    let function = Recording::new(|_, _| Ok(json!({"batchItemFailures": []})));
    let chaos = Arc::new(local_stack::chaos::Chaos::new(1.0, 5));
    let poller = StreamPoller {
        mapping: mapping(&arn, 100, Some(3), None),
        function: function.clone(),
        clients: clients().await,
        activity: Arc::default(),
        region: "us-east-1".into(),
        chaos: Some(Arc::clone(&chaos)),
        control: control(),
    };
    run_until(poller, 10).await;
    let calls = function.calls();
    assert!(
        calls.len() > 1,
        "every success of two or more records comes again"
    );
    let (first, second) = (seqs(&calls[0]), seqs(&calls[1]));
    assert_eq!(first.len(), 10);
    assert!(
        second.len() < first.len() && first.ends_with(&second),
        "the second delivery is the tail of the first: {first:?} then {second:?}"
    );
    let redelivered: u64 = chaos
        .injected()
        .iter()
        .filter(|((_, kind), _)| *kind == local_stack::chaos::Kind::Redelivered)
        .map(|(_, n)| n)
        .sum();
    let delivered: usize = calls.iter().map(|c| seqs(c).len()).sum();
    assert_eq!(delivered as u64, 10 + redelivered);
}

#[tokio::test]
async fn a_mapping_switched_off_delivers_nothing_and_its_batch_size_can_change() {
    let arn = stream_with(&events(10)).await;
    let function = Recording::new(|_, _| Ok(json!({"batchItemFailures": []})));
    let control = control();
    control.update(&json!({"Enabled": false, "BatchSize": 3}));
    let poller = StreamPoller {
        mapping: mapping(&arn, 100, Some(3), None),
        function: function.clone(),
        clients: clients().await,
        activity: Arc::default(),
        region: "us-east-1".into(),
        chaos: None,
        control: Arc::clone(&control),
    };
    let (stop, stopped) = watch::channel(false);
    let activity = Arc::clone(&poller.activity);
    let task = tokio::spawn(Arc::new(poller).run(stopped));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        function.calls().is_empty(),
        "switched off: nothing delivered"
    );
    control.update(&json!({"Enabled": true}));
    let started = Instant::now();
    while activity
        .snapshot()
        .values()
        .map(|c| c.finished)
        .sum::<u64>()
        < 10
    {
        assert!(started.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    let sizes: Vec<usize> = function.calls().iter().map(|c| seqs(c).len()).collect();
    assert_eq!(sizes, [3, 3, 3, 1], "batches of the updated size");
}

#[tokio::test]
async fn an_invalid_item_identifier_retries_the_whole_batch() {
    let arn = stream_with(&events(3)).await;
    let function = Recording::new(|call, _| {
        Ok(if call == 1 {
            json!({"batchItemFailures": [{"itemIdentifier": "no-such-record"}]})
        } else {
            json!({})
        })
    });
    let poller = StreamPoller {
        mapping: mapping(&arn, 100, Some(3), None),
        function: function.clone(),
        clients: clients().await,
        activity: Arc::default(),
        region: "us-east-1".into(),
        chaos: None,
        control: control(),
    };
    run_until(poller, 3).await;
    let calls = function.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(seqs(&calls[0]), seqs(&calls[1]));
}

#[tokio::test]
async fn retries_are_bounded_and_the_batch_goes_to_the_on_failure_destination() {
    let arn = stream_with(&events(7)).await;
    let (url, queue_arn) = queue("on-failure").await;
    // fails every batch holding one of the first five records
    let function = Recording::new(|_, batch| {
        let early = batch["Records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| data(r)["n"].as_u64().unwrap() < 5);
        if early {
            Err(FunctionError::new("Unhandled", "boom"))
        } else {
            Ok(json!({"batchItemFailures": []}))
        }
    });
    let poller = StreamPoller {
        mapping: mapping(&arn, 5, Some(2), Some(queue_arn)),
        function: function.clone(),
        clients: clients().await,
        activity: Arc::default(),
        region: "us-east-1".into(),
        chaos: None,
        control: control(),
    };
    let activity = run_until(poller, 7).await;
    let calls = function.calls();
    // the first batch: the invocation and two retries; then the rest of the shard
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(calls[..3].iter().all(|c| seqs(c).len() == 5));
    let rest: Vec<u64> = calls[3]["Records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| data(r)["n"].as_u64().unwrap())
        .collect();
    assert_eq!(rest, vec![5, 6]);
    let failures = drain_queue(&url).await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    let f = &failures[0];
    assert_eq!(f["requestContext"]["condition"], "RetryAttemptsExhausted");
    assert_eq!(f["requestContext"]["approximateInvokeCount"], 3);
    let info = &f["KinesisBatchInfo"];
    let first = seqs(&calls[0]);
    assert_eq!(info["startSequenceNumber"], json!(first[0]));
    assert_eq!(info["endSequenceNumber"], json!(first[4]));
    assert_eq!(info["batchSize"], 5);
    assert_eq!(info["streamArn"], json!(arn));
    assert_eq!(activity.snapshot()["recording/test"].given_up, 5);
}

#[tokio::test]
async fn bisecting_isolates_the_failing_record() {
    let arn = stream_with(&events(8)).await;
    let (url, queue_arn) = queue("bisect").await;
    let function = Recording::new(|_, batch| {
        let poisoned = batch["Records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| data(r)["n"] == 5);
        if poisoned {
            Err(FunctionError::new("Unhandled", "boom"))
        } else {
            Ok(json!(null))
        }
    });
    let mut m = mapping(&arn, 8, Some(1), Some(queue_arn));
    m.bisect = true;
    let poller = StreamPoller {
        mapping: m,
        function: function.clone(),
        clients: clients().await,
        activity: Arc::default(),
        region: "us-east-1".into(),
        chaos: None,
        control: control(),
    };
    let activity = run_until(poller, 8).await;
    let failures = drain_queue(&url).await;
    assert_eq!(failures.len(), 1);
    assert_eq!(
        failures[0]["KinesisBatchInfo"]["batchSize"], 1,
        "only the poison record is given up"
    );
    let c = &activity.snapshot()["recording/test"];
    assert_eq!((c.finished, c.given_up), (8, 1));
    // every other record was delivered in a successful batch
    let ok: Vec<u64> = function
        .calls()
        .iter()
        .filter(|b| {
            !b["Records"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| data(r)["n"] == 5)
        })
        .flat_map(|b| {
            b["Records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| data(r)["n"].as_u64().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut ok_sorted = ok.clone();
    ok_sorted.sort();
    ok_sorted.dedup();
    assert_eq!(ok_sorted, vec![0, 1, 2, 3, 4, 6, 7]);
}

#[tokio::test]
async fn a_poison_record_becomes_a_fault_event_while_the_rest_proceed() {
    let mut records = events(6);
    records[2]["id"] = json!("poison");
    let arn = stream_with(&records).await;
    let (bus, faults_url) = bus_to_queue("esm-faults", json!({"detail-type": ["fault"]})).await;
    let done = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&done);
    let faults = EventBridgeFaults(EventBridge::new(
        lambda_stream::aws::eventbridge().await.clone(),
        bus,
    ));
    let handler = Handler::builder(faults)
        .pipeline(Pipeline::new("things").map(move |uow| {
            if uow.event().id == "poison" {
                return Err(StepError::poison_msg("this record can never succeed"));
            }
            seen.lock().unwrap().push(uow.event().id.clone());
            Ok(uow)
        }))
        .build()
        .unwrap();
    let poller = StreamPoller {
        mapping: mapping(&arn, 100, Some(3), None),
        function: Arc::new(InProcess(handler)),
        clients: clients().await,
        activity: Arc::default(),
        region: "us-east-1".into(),
        chaos: None,
        control: control(),
    };
    let activity = run_until(poller, 6).await;
    let c = &activity.snapshot()["in-process/test"];
    assert_eq!(
        (c.invocations, c.finished, c.retried, c.given_up),
        (1, 6, 0, 0),
        "no retry, nothing given up"
    );
    let mut ids = done.lock().unwrap().clone();
    ids.sort();
    assert_eq!(ids, vec!["e0", "e1", "e3", "e4", "e5"]);
    let faults = drain_queue(&faults_url).await;
    assert_eq!(faults.len(), 1, "{faults:?}");
    let fault = &faults[0]["detail"];
    assert!(
        fault["err"]["message"]
            .as_str()
            .unwrap()
            .contains("this record can never succeed"),
        "{fault}"
    );
    assert_eq!(data(&fault["uow"]["record"])["id"], "poison");
}

#[tokio::test]
async fn sqs_redelivers_only_the_reported_messages() {
    let conf = emulator().await;
    let sqs = aws_sdk_sqs::Client::new(conf);
    let (url, arn) = queue("esm-sqs").await;
    for i in 0..3 {
        sqs.send_message()
            .queue_url(&url)
            .message_body(json!({"n": i}).to_string())
            .send()
            .await
            .unwrap();
    }
    let function = Recording::new(|call, batch| {
        let failed: Vec<Value> = batch["Records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| call == 1 && r["body"].as_str().unwrap().contains("\"n\":1"))
            .map(|r| json!({"itemIdentifier": r["messageId"]}))
            .collect();
        Ok(json!({"batchItemFailures": failed}))
    });
    let poller = Arc::new(QueuePoller {
        mapping: QueueMapping {
            id: "test".into(),
            arn,
            batch_size: 10,
            report_failures: true,
            filters: Vec::new(),
            max_concurrency: None,
            window: Duration::ZERO,
        },
        function: function.clone(),
        sqs: sqs.clone(),
        activity: Arc::default(),
        region: "us-east-1".into(),
        control: control(),
    });
    run_queue_until(poller, 3).await;
    let bodies = bodies(&function);
    let count = |n: u32| {
        bodies
            .iter()
            .filter(|b| b.contains(&format!("\"n\":{n}")))
            .count()
    };
    assert_eq!((count(0), count(1), count(2)), (1, 2, 1), "{bodies:?}");
    assert!(drain_queue(&url).await.is_empty(), "the queue is empty");
    assert_eq!(function.calls()[0]["Records"][0]["eventSource"], "aws:sqs");
}

/// Sequence numbers in shard order.
fn seq_order(a: &str, b: &str) -> std::cmp::Ordering {
    (a.len(), a).cmp(&(b.len(), b))
}

#[tokio::test]
async fn parallelization_10_keeps_each_keys_order_a_retry_holds_only_its_lane_and_the_checkpoint_waits()
 {
    use local_stack::mapping::stream::lane;
    let total = 120;
    let records: Vec<Value> = (0..total)
        .map(|i| json!({"id": format!("e{i}"), "type": "thing-updated", "timestamp": 1, "partitionKey": format!("k{}", i % 12), "n": i}))
        .collect();
    let arn = stream_with(&records).await;
    let activity: Arc<Activity> = Arc::default();
    // record n = 3 (key k3) fails its first three deliveries, and each time the checkpoint is
    // read; every call notes what it accepted (the records before a reported failure), in order
    let observed: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let accepted: Arc<Mutex<Vec<(i64, String)>>> = Arc::default();
    let (seen, watched, done) = (
        Arc::clone(&observed),
        Arc::clone(&activity),
        Arc::clone(&accepted),
    );
    let failures = Arc::new(AtomicUsize::new(0));
    let function = Recording::slow(Duration::from_millis(20), move |_, batch| {
        let records = batch["Records"].as_array().unwrap();
        let n3 = records.iter().position(|r| data(r)["n"] == 3);
        let fail = n3.filter(|_| failures.fetch_add(1, SeqCst) < 3);
        let upto = fail.unwrap_or(records.len());
        done.lock().unwrap().extend(records[..upto].iter().map(|r| {
            let seq = r["kinesis"]["sequenceNumber"].as_str().unwrap().to_owned();
            (data(r)["n"].as_i64().unwrap(), seq)
        }));
        match fail {
            Some(i) => {
                let checkpoint = watched
                    .snapshot()
                    .get("recording/test")
                    .and_then(|c| c.checkpoints.values().next().cloned());
                seen.lock().unwrap().push(checkpoint);
                let seq = &records[i]["kinesis"]["sequenceNumber"];
                Ok(json!({"batchItemFailures": [{"itemIdentifier": seq}]}))
            }
            None => Ok(json!({"batchItemFailures": []})),
        }
    });
    let mut m = mapping(&arn, 5, None, None);
    m.parallelization = 10;
    let poller = StreamPoller {
        mapping: m,
        function: function.clone(),
        clients: clients().await,
        activity: Arc::clone(&activity),
        region: "us-east-1".into(),
        chaos: None,
        control: control(),
    };
    let activity = run_until(poller, total as u64).await;

    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), total, "each record accepted exactly once");
    for k in 0..12 {
        let ns: Vec<i64> = accepted
            .iter()
            .filter(|(n, _)| n % 12 == k)
            .map(|(n, _)| *n)
            .collect();
        let expected: Vec<i64> = (0..total as i64).filter(|n| n % 12 == k).collect();
        assert_eq!(ns, expected, "key k{k}: in order, each once");
    }
    let most = function.most.load(SeqCst);
    assert!(
        most > 1,
        "batches of one shard ran concurrently (at most {most} at once)"
    );

    // the retry held k3's lane only: every record of the other lanes was done before n = 3
    let held = lane("k3", 10);
    let position = |n: i64| accepted.iter().position(|(m, _)| *m == n).unwrap();
    let other_lanes_last = (0..total as i64)
        .filter(|n| lane(&format!("k{}", n % 12), 10) != held)
        .map(position)
        .max()
        .unwrap();
    assert!(
        other_lanes_last < position(3),
        "the other lanes finished while k3's lane waited"
    );

    // the checkpoint never passed n = 3 while it was unfinished, and ends at the last record
    let seq_of = |n: i64| accepted[position(n)].1.clone();
    let n3 = seq_of(3);
    let observed = observed.lock().unwrap().clone();
    assert_eq!(observed.len(), 3);
    for c in observed.iter().flatten() {
        assert_eq!(
            seq_order(c, &n3),
            std::cmp::Ordering::Less,
            "checkpoint {c} passed the unfinished record {n3}"
        );
    }
    let last = seq_of(total as i64 - 1);
    let end = activity.snapshot()["recording/test"]
        .checkpoints
        .values()
        .next()
        .cloned();
    assert_eq!(end, Some(last), "the checkpoint ends past every record");
}

/// `n` messages on a fresh queue; its URL and ARN.
async fn queue_with(n: usize) -> (String, String) {
    let sqs = clients().await.sqs;
    let (url, arn) = queue("esm-sqs").await;
    for i in 0..n {
        sqs.send_message()
            .queue_url(&url)
            .message_body(json!({"n": i}).to_string())
            .send()
            .await
            .unwrap();
    }
    (url, arn)
}

async fn queue_poller(
    arn: String,
    batch_size: usize,
    max_concurrency: Option<usize>,
    window: Duration,
    function: Arc<Recording>,
) -> Arc<QueuePoller> {
    Arc::new(QueuePoller {
        mapping: QueueMapping {
            id: "test".into(),
            arn,
            batch_size,
            report_failures: true,
            filters: Vec::new(),
            max_concurrency,
            window,
        },
        function,
        sqs: clients().await.sqs,
        activity: Arc::default(),
        region: "us-east-1".into(),
        control: Arc::new(MappingControl::new(
            "recording",
            "arn:aws:lambda:us-east-1:123456789012:function:recording",
            "arn:test",
            batch_size,
        )),
    })
}

/// Runs a queue poller until `finished` messages are finished (or 30 s pass), then stops it.
async fn run_queue_until(poller: Arc<QueuePoller>, finished: u64) {
    let activity = Arc::clone(&poller.activity);
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(Arc::clone(&poller).run(stopped));
    wait_finished(&activity, finished).await;
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}

fn bodies(function: &Recording) -> Vec<String> {
    function
        .calls()
        .iter()
        .flat_map(|b| {
            b["Records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["body"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn sqs_runs_up_to_its_maximum_concurrency_batches_at_once() {
    let (url, arn) = queue_with(24).await;
    let function = Recording::slow(Duration::from_millis(300), |_, _| {
        Ok(json!({"batchItemFailures": []}))
    });
    let poller = queue_poller(arn, 2, Some(3), Duration::ZERO, Arc::clone(&function)).await;
    run_queue_until(poller, 24).await;
    assert_eq!(
        function.most.load(SeqCst),
        3,
        "three batches in flight at once, never more"
    );
    let mut seen = bodies(&function);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 24, "each message delivered");
    assert_eq!(function.calls().len(), 12, "in batches of two, none twice");
    assert!(drain_queue(&url).await.is_empty());
}

#[tokio::test]
async fn an_sqs_batching_window_gathers_more_than_one_receive_into_one_batch() {
    let (url, arn) = queue_with(25).await;
    let function = Recording::new(|_, _| Ok(json!({"batchItemFailures": []})));
    // one poller, so that one batch can gather every message
    let poller = queue_poller(
        arn,
        25,
        Some(1),
        Duration::from_secs(2),
        Arc::clone(&function),
    )
    .await;
    run_queue_until(poller, 25).await;
    let sizes: Vec<usize> = function
        .calls()
        .iter()
        .map(|b| b["Records"].as_array().unwrap().len())
        .collect();
    assert_eq!(
        sizes,
        [25],
        "one invocation of 25 (a receive brings at most 10)"
    );
    assert!(drain_queue(&url).await.is_empty());
}

#[tokio::test]
async fn a_kinesis_stream_of_four_shards_routes_by_the_md5_of_the_partition_key_and_keeps_each_keys_order()
 {
    use md5::{Digest, Md5};
    let kinesis = clients().await.kinesis;
    let name = unique("esm-shards");
    kinesis
        .create_stream()
        .stream_name(&name)
        .shard_count(4)
        .send()
        .await
        .unwrap();
    let keys = 24;
    let total = 240;
    let records: Vec<Value> = (0..total)
        .map(|i| json!({"id": format!("e{i}"), "partitionKey": format!("thing-{}", i % keys), "n": i}))
        .collect();
    for chunk in records.chunks(100) {
        let entries = chunk.iter().map(|r| {
            aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                .partition_key(r["partitionKey"].as_str().unwrap())
                .data(Blob::new(r.to_string()))
                .build()
                .unwrap()
        });
        let out = kinesis
            .put_records()
            .stream_name(&name)
            .set_records(Some(entries.collect()))
            .send()
            .await
            .unwrap();
        assert_eq!(out.failed_record_count(), Some(0));
    }
    let ranges: std::collections::HashMap<String, (u128, u128)> = kinesis
        .list_shards()
        .stream_name(&name)
        .send()
        .await
        .unwrap()
        .shards()
        .iter()
        .map(|s| {
            let r = s.hash_key_range().unwrap();
            (
                s.shard_id().to_owned(),
                (
                    r.starting_hash_key().parse().unwrap(),
                    r.ending_hash_key().parse().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(ranges.len(), 4);

    let function = Recording::new(|_, _| Ok(json!({"batchItemFailures": []})));
    let arn = format!("arn:aws:kinesis:us-east-1:123456789012:stream/{name}");
    let poller = StreamPoller {
        mapping: mapping(&arn, 50, None, None),
        function: function.clone(),
        clients: clients().await,
        activity: Arc::default(),
        region: "us-east-1".into(),
        chaos: None,
        control: control(),
    };
    run_until(poller, total as u64).await;

    let delivered: Vec<(String, Value)> = function
        .calls()
        .iter()
        .flat_map(|b| b["Records"].as_array().unwrap().clone())
        .map(|r| {
            let shard = r["eventID"].as_str().unwrap().split(':').next().unwrap();
            (shard.to_owned(), data(&r))
        })
        .collect();
    assert_eq!(delivered.len(), total, "each record delivered once");
    let mut used = std::collections::BTreeSet::new();
    for (shard, record) in &delivered {
        let key = record["partitionKey"].as_str().unwrap();
        let hash = u128::from_be_bytes(Md5::digest(key.as_bytes()).into());
        let (low, high) = ranges[shard];
        assert!(
            (low..=high).contains(&hash),
            "{key} (hash {hash}) came from {shard} ({low}..={high})"
        );
        used.insert(shard.clone());
    }
    assert!(used.len() > 1, "the keys spread over the shards: {used:?}");
    for k in 0..keys {
        let key = format!("thing-{k}");
        let ns: Vec<i64> = delivered
            .iter()
            .filter(|(_, r)| r["partitionKey"] == key.as_str())
            .map(|(_, r)| r["n"].as_i64().unwrap())
            .collect();
        let expected: Vec<i64> = (0..total as i64)
            .filter(|n| n % keys as i64 == k as i64)
            .collect();
        assert_eq!(ns, expected, "{key}: in order, each once");
    }
}
