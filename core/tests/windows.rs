//! A batch taken in windows (`Settings::window`): each window decoded and run when the one
//! before has ended. Nothing lost, nothing doubled, a key's order kept across windows; a
//! stream's checkpoint and a key blocked by a retry hold across them; one metrics document.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use aws_lambda_events::event::streams::KinesisEventResponse;
use lambda_stream::idempotency::Idempotency;
use lambda_stream::sources::{KinesisRecords, Source as _, SqsRecords};
use lambda_stream::testing::*;
use lambda_stream::{
    Event, Handler, IntoPipeline, Pipeline, Settings, StepError, UnitOfWork, sources,
};
use serde_json::Value;

type Log = Arc<Mutex<Vec<String>>>;

fn settings(window: usize, metrics: &str) -> Settings {
    let metrics = metrics.to_owned();
    Settings::from_vars(move |v| match v {
        "WINDOW_RECORDS" => Some(window.to_string()),
        "METRICS" => Some(metrics.clone()),
        _ => None,
    })
}

/// A pipeline logging each unit it applies (after a pause that varies by id, so a key's later
/// unit would overtake an earlier one were they not ordered); ids starting with `retry` fail
/// transiently, with `poison` for good.
fn applying(log: &Log) -> Pipeline<UnitOfWork> {
    let log = log.clone();
    Pipeline::new("apply")
        .parallel(4)
        .then(move |uow: UnitOfWork| {
            let log = log.clone();
            async move {
                let id = uow.event().id.clone();
                let pause = 1 + (id.len() as u64 * 7 + id.bytes().map(u64::from).sum::<u64>()) % 13;
                tokio::time::sleep(Duration::from_millis(pause)).await;
                if id.starts_with("retry") {
                    return Err(StepError::transient("throttled"));
                }
                if id.starts_with("poison") {
                    return Err(StepError::poison_msg("bad thing"));
                }
                log.lock().unwrap().push(id);
                Ok(uow)
            }
        })
}

/// `per_key` events on each of `keys` keys, interleaved as a stream would deliver them.
fn events(keys: usize, per_key: usize) -> Vec<Event> {
    (0..keys * per_key)
        .map(|i| {
            let (key, n) = (i % keys, i / keys);
            Event::new(format!("k{key}-{n}"), "thing-updated", i as i64 + 1)
                .with_partition_key(format!("k{key}"))
        })
        .collect()
}

fn by_key(log: &[String]) -> BTreeMap<String, Vec<usize>> {
    let mut keys: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for id in log {
        let (key, n) = id.split_once('-').unwrap();
        keys.entry(key.to_owned())
            .or_default()
            .push(n.parse().unwrap());
    }
    keys
}

/// Each SQS message's id, in batch order.
fn message_ids(batch: &SqsEvent) -> Vec<String> {
    batch
        .records
        .iter()
        .map(|m| m.message_id.clone().unwrap_or_default())
        .collect()
}

/// The message ids an SQS response asks Lambda to deliver again.
fn retried_ids(response: &SqsBatchResponse) -> Vec<&str> {
    response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect()
}

/// Handles a Kinesis batch of `events`: parsed, or from its payload's bytes as `run` hands it
/// over (each window parsed when taken).
async fn kinesis(handler: &Handler, events: &[Event], from_payload: bool) -> KinesisEventResponse {
    let batch = to_kinesis_records(events);
    let ctx = context(Duration::from_secs(900));
    if from_payload {
        let payload = sources::Bytes::from(serde_json::to_vec(&batch).unwrap());
        handler
            .handle_payload::<sources::Kinesis>(payload, &ctx)
            .await
    } else {
        handler.handle::<sources::Kinesis>(batch, &ctx).await
    }
    .unwrap()
}

/// A handler in key order over `applying`, in windows of `window`: with its log and faults.
fn in_key_order(window: usize) -> (Handler, Log, Arc<MemoryFaults>) {
    let log: Log = Default::default();
    let faults = Arc::new(MemoryFaults::default());
    let handler = Handler::builder(faults.clone())
        .settings(&settings(window, ""))
        .in_key_order()
        .pipeline(applying(&log))
        .build()
        .unwrap();
    (handler, log, faults)
}

/// A handler over `applying`, in windows of `window`, with no order across pipelines: with
/// its log.
fn unordered(window: usize) -> (Handler, Log) {
    let log: Log = Default::default();
    let handler = Handler::builder(MemoryFaults::default())
        .settings(&settings(window, ""))
        .pipeline(applying(&log))
        .build()
        .unwrap();
    (handler, log)
}

/// The stream's response names one record to retry from: the one with `sequence`.
/// The sequence number the Kinesis batch of `events` gives its `i`-th record.
fn sequence_number(events: &[Event], i: usize) -> String {
    to_kinesis_records(events).records[i]
        .kinesis
        .sequence_number
        .clone()
}

fn assert_checkpoint(response: &KinesisEventResponse, sequence: &str) {
    assert_eq!(response.batch_item_failures.len(), 1);
    assert_eq!(
        response.batch_item_failures[0].item_identifier.as_deref(),
        Some(sequence)
    );
}

#[tokio::test(start_paused = true)]
async fn a_keys_records_are_applied_once_each_in_order_across_windows() {
    // windows of 40 and 50 are decoded in chunks of 20 and 25, the next while one runs
    for (window, from_payload) in [1, 3, 7, 40, 50, 500]
        .into_iter()
        .flat_map(|w| [(w, false), (w, true)])
    {
        let log: Log = Default::default();
        let handler = Handler::builder(MemoryFaults::default())
            .settings(&settings(window, ""))
            .in_key_order()
            .pipeline(applying(&log))
            .build()
            .unwrap();
        // 5 keys × 12 events: windows of 3 cut every key's run many times
        let response = kinesis(&handler, &events(5, 12), from_payload).await;
        assert!(response.batch_item_failures.is_empty(), "window {window}");
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 60, "window {window}: each applied once");
        for (key, order) in by_key(&log) {
            assert_eq!(order, (0..12).collect::<Vec<_>>(), "window {window}, {key}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn after_a_stream_retry_later_windows_run_but_their_faults_wait_and_its_key_stays_blocked() {
    for from_payload in [false, true] {
        a_stream_retry_in_a_later_window(from_payload).await;
    }
}

async fn a_stream_retry_in_a_later_window(from_payload: bool) {
    let (handler, log, faults) = in_key_order(4);
    let mut events = events(4, 4);
    // the 6th record (second window) is retried; a poison record in the last window
    events[5].id = "retry-k1".into();
    events[14].id = "poison-k2".into();
    let sixth = sequence_number(&events, 5);
    let response = kinesis(&handler, &events, from_payload).await;
    // Lambda delivers again from the retried record on (its record kept when the others'
    // were let go with their window)
    assert_checkpoint(&response, &sixth);
    let log = log.lock().unwrap();
    let keys = by_key(&log);
    // k1's later records wait behind its retried one, in every later window
    assert_eq!(keys["k1"], [0], "{log:?}");
    assert_eq!(keys["k0"], [0, 1, 2, 3], "{log:?}");
    assert_eq!(keys["k2"], [0, 1, 2], "{log:?}");
    assert_eq!(keys["k3"], [0, 1, 2, 3], "{log:?}");
    // the poison record comes back with the rest after the checkpoint: its fault is raised
    // then, not now
    assert!(faults.published().is_empty());
}

#[tokio::test(start_paused = true)]
async fn windows_decoded_ahead_in_chunks_keep_the_checkpoint_blocked_keys_and_faults() {
    for from_payload in [false, true] {
        // windows of 40 decoded 20 records at a time: 7 keys × 20 events in 4 windows
        let (handler, log, faults) = in_key_order(40);
        let mut events = events(7, 20);
        // k1's 8th (second window, second chunk) is retried; k3's last is poison (last window)
        events[50].id = "retry-k1".into();
        events[136].id = "poison-k3".into();
        let retried = sequence_number(&events, 50);
        let response = kinesis(&handler, &events, from_payload).await;
        assert_checkpoint(&response, &retried);
        let log = log.lock().unwrap();
        let keys = by_key(&log);
        assert_eq!(log.len(), 7 + 5 * 20 + 19, "each applied once: {log:?}");
        assert_eq!(keys["k1"], (0..7).collect::<Vec<_>>(), "{log:?}");
        assert_eq!(keys["k3"], (0..19).collect::<Vec<_>>(), "{log:?}");
        for key in ["k0", "k2", "k4", "k5", "k6"] {
            assert_eq!(keys[key], (0..20).collect::<Vec<_>>(), "{key}: {log:?}");
        }
        // the poison record comes back with the rest after the checkpoint
        assert!(faults.published().is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn sqs_windows_run_on_after_a_retry_and_its_key_stays_blocked() {
    let (handler, log, faults) = in_key_order(3);
    // keys a and b, 5 messages each, alternating; a's second is retried (first window), and
    // b's last is poison (last window)
    let mut events = Vec::new();
    for n in 0..5 {
        for g in ["a", "b"] {
            let id = match (g, n) {
                ("a", 1) => "retry-a".to_owned(),
                ("b", 4) => "poison-b".to_owned(),
                _ => format!("{g}-{n}"),
            };
            events.push(Event::new(id, "thing-updated", 1).with_partition_key(g));
        }
    }
    let batch = to_sqs_records(&events);
    let ids = message_ids(&batch);
    let response = handler
        .handle::<sources::Sqs>(batch, &context(Duration::from_secs(900)))
        .await
        .unwrap();
    let retried = retried_ids(&response);
    // a's retried message and every later one of a, in whatever window (the key blocked)
    let expected: Vec<&str> = [2, 4, 6, 8].iter().map(|&i| ids[i].as_str()).collect();
    assert_eq!(retried, expected);
    let log = log.lock().unwrap();
    assert_eq!(by_key(&log)["b"], [0, 1, 2, 3], "{log:?}");
    assert_eq!(by_key(&log)["a"], [0], "{log:?}");
    // a later window's fault is published: SQS delivers again only what is reported
    let published = faults.published();
    assert_eq!(published.len(), 1);
    let fault = serde_json::to_value(&published[0]).unwrap();
    assert_eq!(fault["uow"]["record"]["messageId"], ids[9], "{fault}");
}

#[tokio::test(start_paused = true)]
async fn windows_not_started_by_the_deadline_come_back() {
    let (handler, log) = unordered(2);
    let events: Vec<Event> = (0..6)
        .map(|i| {
            Event::new(format!("k{i}-0"), "thing-updated", 1).with_partition_key(format!("k{i}"))
        })
        .collect();
    let batch = to_sqs_records(&events);
    let ids = message_ids(&batch);
    // 1 s kept back of 1.005 s: work may start for 5 ms, within the first window's pauses
    let response = handler
        .handle::<sources::Sqs>(batch, &context(Duration::from_millis(1_005)))
        .await
        .unwrap();
    let retried = retried_ids(&response);
    let later: Vec<&str> = ids[2..].iter().map(String::as_str).collect();
    assert_eq!(retried, later);
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[test]
fn a_windowed_batch_is_one_metrics_document_per_family() {
    let out = Arc::new(Mutex::new(Vec::<u8>::new()));
    let log: Log = Default::default();
    let handler = Handler::builder(MemoryFaults::default())
        .settings(&settings(3, "batch,pipeline"))
        .pipeline(applying(&log))
        .metrics_to(Arc::clone(&out))
        .build()
        .unwrap();
    let mut events = events(7, 1);
    events[6].id = "poison-k6".into();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            handler
                .handle::<sources::Sqs>(to_sqs_records(&events), &context(Duration::from_secs(30)))
                .await
                .unwrap();
        });
    let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
    let docs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(docs.len(), 2, "{docs:#?}");
    let batch = &docs[0];
    assert_eq!(batch["stream.batch.size"], 7);
    assert_eq!(batch["stream.record.done.count"], 6);
    assert_eq!(batch["stream.record.faulted.count"], 1);
    let apply = docs.iter().find(|d| d["pipeline"] == "apply").unwrap();
    assert_eq!(apply["stream.pipeline.uow.count"], 7);
    assert_eq!(apply["stream.pipeline.done.count"], 6);
    assert_eq!(apply["stream.pipeline.faulted.count"], 1);
}

#[test]
fn fifo_groups_and_records_without_an_id_keep_the_batch_whole() {
    let events = events(3, 3);
    let plain = SqsRecords::from(to_sqs_records(&events));
    assert_eq!(sources::Sqs::windows(plain, 4).len(), 3);
    let grouped: Vec<(&str, Event)> = events.iter().map(|e| ("g", e.clone())).collect();
    let fifo = SqsRecords::from(to_sqs_fifo_records(&grouped));
    assert_eq!(sources::Sqs::windows(fifo, 4).len(), 1);
    let mut unnamed = to_sqs_records(&events);
    unnamed.records[7].message_id = None;
    assert_eq!(sources::Sqs::windows(SqsRecords::from(unnamed), 4).len(), 1);
    let stream = KinesisRecords::from(to_kinesis_records(&events));
    assert_eq!(sources::Kinesis::windows(stream, 4).len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_duplicate_in_a_later_window_is_done_not_run_or_faulted_again() {
    let log: Log = Default::default();
    let faults = Arc::new(MemoryFaults::default());
    let store = Arc::new(MemoryIdempotency::default());
    let handler = Handler::builder(faults.clone())
        .settings(&settings(3, ""))
        .pipeline(
            applying(&log)
                .into_pipeline()
                .idempotent(Idempotency::new(store.clone())),
        )
        .build()
        .unwrap();
    let mut events = events(7, 1);
    events[1].id = "poison-k1".into();
    // delivered twice in one batch: the copy is in the third window
    events.push(events[1].clone());
    events.push(events[2].clone());
    let response = handler
        .handle::<sources::Sqs>(to_sqs_records(&events), &context(Duration::from_secs(900)))
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(
        faults.published().len(),
        1,
        "one fault for the poison event"
    );
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 6, "each good event applied once: {log:?}");
}

#[tokio::test(start_paused = true)]
async fn kinesis_windows_parsed_when_taken_come_back_after_the_deadline() {
    let (handler, log) = unordered(2);
    let events = events(6, 1);
    let batch = to_kinesis_records(&events);
    let third = batch.records[2].kinesis.sequence_number.clone();
    let payload = sources::Bytes::from(serde_json::to_vec(&batch).unwrap());
    // 1 s kept back of 1.005 s: work may start for 5 ms, within the first window's pauses
    let response = handler
        .handle_payload::<sources::Kinesis>(payload, &context(Duration::from_millis(1_005)))
        .await
        .unwrap();
    assert_checkpoint(&response, &third);
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_record_that_is_not_json_after_a_retry_keeps_its_id_and_waits_with_the_rest() {
    let (handler, log, faults) = in_key_order(2);
    let mut events = events(4, 1);
    events[1].id = "retry-k1".into();
    let batch = to_kinesis_records(&events);
    let second = batch.records[1].kinesis.sequence_number.clone();
    // the fourth record (second window) is not JSON: its data is the bare word `tru`
    let records: Vec<String> = batch
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let json = serde_json::to_string(r).unwrap();
            if i == 3 {
                json.replacen(r#""data":""#, r#""data":tru,"was":""#, 1)
            } else {
                json
            }
        })
        .collect();
    assert!(records[3].contains(":tru,"));
    let payload = sources::Bytes::from(format!(r#"{{"Records":[{}]}}"#, records.join(",")));
    let response = handler
        .handle_payload::<sources::Kinesis>(payload, &context(Duration::from_secs(900)))
        .await
        .unwrap();
    // the batch is not failed for a record without an id: the walk kept its sequence number,
    // and Lambda delivers again from the retried record on
    assert_checkpoint(&response, &second);
    // its fault comes back with it, after the checkpoint: not raised now
    assert!(faults.published().is_empty());
    let log = log.lock().unwrap();
    assert_eq!(by_key(&log)["k0"], [0], "{log:?}");
    assert_eq!(by_key(&log)["k2"], [0], "{log:?}");
}
