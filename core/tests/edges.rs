//! The outcome contract at its edges: progress under a deadline, rate limits and retries that
//! never outlast the margin, faults that cannot be published, faults that span a checkpoint,
//! panics in user code, SQS FIFO groups, and faults' identity.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use lambda_stream::faults::{FaultPublisher, PublishError};
use lambda_stream::faults::{storage_id, storage_key};
use lambda_stream::sources;
use lambda_stream::sources::{from_kinesis, from_sqs, from_sqs_sns_s3};
use lambda_stream::testing::*;
use lambda_stream::{
    BatchError, ConfigError, Event, EventType, FaultEvent, Handler, Outcome, Pipeline, Retry,
    StepError, UnitOfWork,
};
use serde_json::json;
use tokio::time::Instant;

use Outcome::{Done, Faulted, Retry as Again};

fn ev(i: usize, key: &str) -> Event {
    Event::new(format!("e{i}"), "t", 1_000 + i as i64).with_partition_key(key)
}

fn marked(i: usize, key: &str, how: &str) -> Event {
    ev(i, key).with_entity("fail", json!(how))
}

fn how(uow: &UnitOfWork) -> Option<&str> {
    uow.event().entity("fail").and_then(|v| v.as_str())
}

async fn step(uow: UnitOfWork) -> Result<UnitOfWork, StepError> {
    match how(&uow) {
        Some("poison") => Err(StepError::poison_msg(format!("bad {}", uow.event().id))),
        Some("transient") => Err(StepError::transient("throttled")),
        _ => Ok(uow),
    }
}

fn handler(faults: Arc<MemoryFaults>, p: impl lambda_stream::IntoPipeline) -> Handler {
    Handler::builder(faults)
        .function_name("f")
        .pipeline(p)
        .build()
        .unwrap()
}

// 1. Progress: a unit goes through every step without waiting for the others, so the units
// that start early finish, whatever the deadline.
#[tokio::test(start_paused = true)]
async fn units_that_start_early_finish_under_a_deadline_with_two_async_steps() {
    let second = Arc::new(AtomicUsize::new(0));
    let s = second.clone();
    let p = Pipeline::new("p")
        .parallel(1)
        .then(|uow: UnitOfWork| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, StepError>(uow)
        })
        .then(move |uow: UnitOfWork| {
            s.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, StepError>(uow) }
        });
    let h = Handler::builder(MemoryFaults::default())
        .deadline_margin(Duration::from_secs(1))
        .pipeline(p)
        .build()
        .unwrap();
    let events: Vec<Event> = (0..20).map(|i| ev(i, &format!("k{i}"))).collect();
    let kinesis = to_kinesis_records(&events);
    let seq9 = kinesis.records[9].kinesis.sequence_number.clone();
    let outcomes = h
        .process(
            from_kinesis(kinesis),
            &h.invocation(&context(Duration::from_secs(2))),
        )
        .await;
    // 2 s left, 1 s margin: units 0..=8 finish their first step before the 1 s mark and go on
    // to the second at once; unit 9 finishes its first step at the mark itself
    assert_eq!(second.load(Ordering::SeqCst), 9);
    let s = outcomes.summary();
    assert_eq!((s.done, s.retry), (9, 11));
    let response = outcomes.kinesis_response().unwrap();
    assert_eq!(
        response.batch_item_failures[0].item_identifier.as_deref(),
        Some(seq9.as_str())
    );
}

// 2. Rate limits and retries never wait past the margin; every retry waits its turn.
#[tokio::test(start_paused = true)]
async fn a_rate_limit_never_waits_past_the_margin() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c = calls.clone();
    let start = Instant::now();
    let p = Pipeline::new("p")
        .rate_limit(1, Duration::from_millis(700))
        .then(move |uow: UnitOfWork| {
            c.lock().unwrap().push(start.elapsed());
            async move { Ok::<_, StepError>(uow) }
        });
    let h = Handler::builder(MemoryFaults::default())
        .deadline_margin(Duration::from_secs(1))
        .pipeline(p)
        .build()
        .unwrap();
    let events: Vec<Event> = (0..4).map(|i| ev(i, &format!("k{i}"))).collect();
    // 1.3 s left, 1 s margin: no work may start after 300 ms
    let outcomes = h
        .process(
            from_sqs(to_sqs_records(&events)),
            &h.invocation(&context(Duration::from_millis(1300))),
        )
        .await;
    assert_eq!(*calls.lock().unwrap(), [Duration::ZERO]);
    assert_eq!(outcomes.outcomes(), [Done, Again, Again, Again]);
    assert!(start.elapsed() < Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn every_retry_attempt_waits_its_turn_at_the_rate_limit() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c = calls.clone();
    let start = Instant::now();
    let fast = Retry {
        attempts: 3,
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(1),
    };
    let p = Pipeline::new("p")
        .rate_limit(1, Duration::from_millis(100))
        .then_retry(fast, move |uow: UnitOfWork| {
            let n = {
                let mut calls = c.lock().unwrap();
                calls.push(start.elapsed());
                calls.len()
            };
            async move {
                if n < 3 {
                    Err(StepError::transient("throttled"))
                } else {
                    Ok(uow)
                }
            }
        });
    let h = handler(Arc::new(MemoryFaults::default()), p);
    let outcomes = h
        .process(
            from_sqs(to_sqs_records(&[ev(0, "a")])),
            &h.invocation(&context(Duration::from_secs(60))),
        )
        .await;
    assert_eq!(outcomes.outcomes(), [Done]);
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 3);
    for pair in calls.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(100), "{calls:?}");
    }
}

// The margin itself: one that leaves no time is an error, not a silent stall.
#[tokio::test]
async fn a_margin_that_leaves_no_time_is_an_error_not_a_silent_stall() {
    let h = Handler::builder(MemoryFaults::default())
        .deadline_margin(Duration::from_secs(1))
        .pipeline(Pipeline::new("p").then(step))
        .build()
        .unwrap();
    let err = h
        .handle::<sources::Kinesis>(
            to_kinesis_records(&[ev(0, "a")]),
            &context(Duration::from_millis(800)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BatchError::NoTime {
                margin_ms: 1000,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("DEADLINE_MARGIN_MS"));
    let zero = Handler::builder(MemoryFaults::default())
        .deadline_margin(Duration::ZERO)
        .build()
        .err();
    assert_eq!(zero, Some(ConfigError::Margin(0)));
}

#[tokio::test(start_paused = true)]
async fn steps_still_running_halfway_through_the_margin_are_abandoned_as_retry() {
    let p = Pipeline::new("p").then(|uow: UnitOfWork| async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<_, StepError>(uow)
    });
    let h = Handler::builder(MemoryFaults::default())
        .deadline_margin(Duration::from_secs(1))
        .pipeline(p)
        .build()
        .unwrap();
    let start = Instant::now();
    let outcomes = h
        .process(
            from_sqs(to_sqs_records(&[ev(0, "a")])),
            &h.invocation(&context(Duration::from_secs(2))),
        )
        .await;
    assert_eq!(outcomes.outcomes(), [Again]);
    assert_eq!(start.elapsed(), Duration::from_millis(1500));
}

/// A publisher that takes its time.
struct Slow(Duration);

impl FaultPublisher for Slow {
    fn publish<'a>(&'a self, _: &'a [FaultEvent]) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            tokio::time::sleep(self.0).await;
            Ok(())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn fault_publishing_ends_before_the_deadline_and_what_is_unconfirmed_is_retry() {
    let h = Handler::builder(Slow(Duration::from_secs(5)))
        .deadline_margin(Duration::from_secs(1))
        .pipeline(Pipeline::new("p").then(step))
        .build()
        .unwrap();
    let start = Instant::now();
    let outcomes = h
        .process(
            from_sqs(to_sqs_records(&[marked(0, "a", "poison")])),
            &h.invocation(&context(Duration::from_secs(2))),
        )
        .await;
    assert_eq!(outcomes.outcomes(), [Again]);
    assert_eq!(start.elapsed(), Duration::from_millis(1900));
}

// 3. A fault that cannot be published as it is never retries its record forever.
fn big_poison(i: usize, key: &str) -> Event {
    marked(i, key, "poison").with_entity("blob", json!("x".repeat(200 * 1024)))
}

#[tokio::test]
async fn an_oversize_fault_is_published_trimmed_and_its_record_ends_faulted() {
    let faults = Arc::new(MemoryFaults::default());
    let h = handler(faults.clone(), Pipeline::new("p").then(step));
    // a 200 KB event: its Kinesis record (base64) makes a fault of ~270 KB
    let kinesis = to_kinesis_records(&[big_poison(0, "a"), ev(1, "b")]);
    let response = h
        .handle::<sources::Kinesis>(kinesis, &context(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    let published = faults.published();
    assert_eq!(published.len(), 1);
    let size = serde_json::to_vec(&published[0]).unwrap().len();
    assert!(
        size <= lambda_stream::faults::DEFAULT_MAX_FAULT_BYTES,
        "{size}"
    );
    let trimmed = published[0].trimmed.as_ref().unwrap();
    assert!(trimmed.original_bytes > 256 * 1024);
    assert_eq!(trimmed.stored, None);
}

#[tokio::test]
async fn with_a_store_an_oversize_fault_is_stored_whole_and_published_pointing_to_it() {
    let faults = Arc::new(MemoryFaults::default());
    let store = Arc::new(MemoryStore::default());
    let h = Handler::builder(faults.clone())
        .function_name("f")
        .fault_store(store.clone())
        .pipeline(Pipeline::new("p").then(step))
        .build()
        .unwrap();
    let kinesis = to_kinesis_records(&[big_poison(0, "a")]);
    let original = serde_json::to_value(&kinesis.records[0]).unwrap();
    let response = h
        .handle::<sources::Kinesis>(kinesis, &context(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    let published = faults.published();
    let key = published[0]
        .trimmed
        .as_ref()
        .unwrap()
        .stored
        .clone()
        .unwrap();
    assert_eq!(Some(key.clone()), storage_key(&storage_id(&published[0])));
    let stored = store.stored();
    let whole = &stored[&key];
    assert_eq!(whole.id, published[0].id);
    assert!(whole.trimmed.is_none());
    // the whole record, as Lambda delivered it, so it can be resubmitted
    assert_eq!(whole.uow.records(), vec![&original]);
}

#[tokio::test]
async fn a_fault_rejected_for_good_is_stored_whole_and_its_record_ends_faulted() {
    let faults = Arc::new(MemoryFaults::default());
    faults.reject(true);
    let store = Arc::new(MemoryStore::default());
    let h = Handler::builder(faults.clone())
        .function_name("f")
        .fault_store(store.clone())
        .pipeline(Pipeline::new("p").then(step))
        .build()
        .unwrap();
    let events = [
        marked(0, "a", "poison"),
        ev(1, "a"),
        marked(2, "b", "poison"),
    ];
    let decoded = from_kinesis(to_kinesis_records(&events));
    let outcomes = h
        .process(decoded, &h.invocation(&context(Duration::from_secs(30))))
        .await;
    assert_eq!(outcomes.outcomes(), [Faulted, Done, Faulted]);
    assert!(
        outcomes
            .kinesis_response()
            .unwrap()
            .batch_item_failures
            .is_empty()
    );
    let stored = store.stored();
    assert_eq!(stored.len(), 2);
    for (key, fault) in &stored {
        assert_eq!(Some(key.clone()), storage_key(&storage_id(fault)));
    }
    // without a store, a rejected fault is logged and set aside: never retried forever
    let h = handler(faults.clone(), Pipeline::new("p").then(step));
    let decoded = from_kinesis(to_kinesis_records(&events));
    let outcomes = h
        .process(decoded, &h.invocation(&context(Duration::from_secs(30))))
        .await;
    assert_eq!(outcomes.outcomes(), [Faulted, Done, Faulted]);
}

#[tokio::test]
async fn a_fault_that_fails_to_publish_for_now_retries_its_record() {
    let faults = Arc::new(MemoryFaults::default());
    faults.fail(true);
    let store = Arc::new(MemoryStore::default());
    let h = Handler::builder(faults.clone())
        .fault_store(store.clone())
        .pipeline(Pipeline::new("p").then(step))
        .build()
        .unwrap();
    let decoded = from_kinesis(to_kinesis_records(&[marked(0, "a", "poison")]));
    let outcomes = h
        .process(decoded, &h.invocation(&context(Duration::from_secs(30))))
        .await;
    assert_eq!(outcomes.outcomes(), [Again]);
    assert!(store.stored().is_empty());
}

// 4. A fault over several records is published once, never split across a checkpoint.
#[tokio::test]
async fn a_batch_fault_spanning_the_checkpoint_is_deferred_whole_and_published_once() {
    let faults = Arc::new(MemoryFaults::default());
    let flaky = Arc::new(AtomicUsize::new(1));
    let f = flaky.clone();
    let batched = Pipeline::new("batched").on_event_type("b").batch(10).then(
        |_b: lambda_stream::Batch<UnitOfWork>| async move {
            Err::<lambda_stream::Batch<UnitOfWork>, _>(StepError::poison_msg("batch rejected"))
        },
    );
    let single = Pipeline::new("single")
        .on_event_type("s")
        .then(move |uow: UnitOfWork| {
            let failing = f.load(Ordering::SeqCst) > 0;
            async move {
                if failing {
                    Err(StepError::transient("throttled"))
                } else {
                    Ok(uow)
                }
            }
        });
    let h = Handler::builder(faults.clone())
        .pipeline(batched)
        .pipeline(single)
        .build()
        .unwrap();
    let events = [
        Event::new("e0", "b", 1).with_partition_key("x"),
        Event::new("e1", "s", 2).with_partition_key("y"),
        Event::new("e2", "b", 3).with_partition_key("z"),
    ];
    let kinesis = to_kinesis_records(&events);
    let first = h
        .process(
            from_kinesis(kinesis.clone()),
            &h.invocation(&context(Duration::from_secs(30))),
        )
        .await;
    // publishing the batch's fault now would fault e2 again on redelivery (it comes after the
    // checkpoint at e1): the whole fault waits, and with it e0
    assert_eq!(first.outcomes(), [Again, Again, Again]);
    assert!(faults.published().is_empty());
    // Lambda redelivers from e0; e1 goes through this time
    flaky.store(0, Ordering::SeqCst);
    let second = h
        .process(
            from_kinesis(kinesis),
            &h.invocation(&context(Duration::from_secs(30))),
        )
        .await;
    assert_eq!(second.outcomes(), [Faulted, Done, Faulted]);
    let published = faults.published();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].uow.records().len(), 2);
}

// 5. A fault's identity and time derive from the records, never from when it is raised.
#[tokio::test]
async fn a_fault_raised_again_later_is_the_same_fault_with_the_same_storage_key() {
    let kinesis = to_kinesis_records(&[ev(0, "a"), marked(1, "a", "poison")]);
    let mut raised = Vec::new();
    for _ in 0..2 {
        let faults = Arc::new(MemoryFaults::default());
        let h = handler(faults.clone(), Pipeline::new("p").then(step));
        h.handle::<sources::Kinesis>(kinesis.clone(), &context(Duration::from_secs(30)))
            .await
            .unwrap();
        raised.push(faults.published().remove(0));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(raised[0], raised[1]);
    assert_eq!(raised[0].timestamp, 1_001, "the faulted event's time");
    assert_eq!(
        storage_key(&storage_id(&raised[0])),
        storage_key(&storage_id(&raised[1]))
    );
}

// 6. Every panic in user code is a fault of its record(s), never a failed invocation.
#[tokio::test]
async fn a_panic_in_a_content_filter_is_a_fault_of_its_record() {
    let faults = Arc::new(MemoryFaults::default());
    let p = Pipeline::new("p")
        .on(|uow: &UnitOfWork| {
            if uow.event().id == "e1" {
                panic!("filter bug");
            }
            true
        })
        .then(step);
    let h = handler(faults.clone(), p);
    let response = h
        .handle::<sources::Sqs>(
            to_sqs_records(&[ev(0, "a"), ev(1, "b")]),
            &context(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    let published = faults.published();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].err.name, "Panic");
    assert!(published[0].err.message.contains("filter bug"));
}

#[tokio::test]
async fn a_panic_in_an_event_type_predicate_is_a_fault_of_its_record() {
    let faults = Arc::new(MemoryFaults::default());
    let p = Pipeline::new("p")
        .on_event_type(EventType::predicate(|t| {
            if t == "boom" {
                panic!("predicate bug");
            }
            true
        }))
        .then(step);
    let h = handler(faults.clone(), p);
    let events = [
        ev(0, "a"),
        Event::new("e1", "boom", 1).with_partition_key("b"),
    ];
    let response = h
        .handle::<sources::Sqs>(to_sqs_records(&events), &context(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(faults.published()[0].err.name, "Panic");
}

#[tokio::test]
async fn a_panic_in_the_synchronous_part_of_then_all_is_a_fault_of_its_records() {
    let faults = Arc::new(MemoryFaults::default());
    let p = Pipeline::new("p").then_all(|units: Vec<UnitOfWork>| {
        if units.len() > 1 {
            panic!("then_all bug");
        }
        async move { units.into_iter().map(Ok).collect::<Vec<_>>() }
    });
    let h = handler(faults.clone(), p);
    let response = h
        .handle::<sources::Sqs>(
            to_sqs_records(&[ev(0, "a"), ev(1, "b")]),
            &context(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    let published = faults.published();
    assert_eq!(published.len(), 2);
    assert!(published.iter().all(|f| f.err.name == "Panic"));
}

// 7. SQS FIFO: after the first retry in a group, every later message of the group is retry.
#[tokio::test]
async fn sqs_fifo_every_later_message_of_a_group_after_a_retry_is_retry() {
    let faults = Arc::new(MemoryFaults::default());
    let p = Pipeline::new("p")
        .map(|uow: UnitOfWork| match how(&uow) {
            Some("poison-early") => Err(StepError::poison_msg("bad at the first step")),
            _ => Ok(uow),
        })
        .then(step);
    let h = handler(faults.clone(), p);
    let mut sqs = to_sqs_fifo_records(&[
        ("g1", marked(0, "a", "transient")),
        ("g1", ev(1, "a")), // made undecodable below
        ("g1", marked(2, "a", "poison-early")),
        ("g2", ev(3, "b")),
        ("g2", marked(4, "b", "poison")),
    ]);
    sqs.records[1].body = Some("not json".into());
    let response = h
        .handle::<sources::Sqs>(sqs, &context(Duration::from_secs(30)))
        .await
        .unwrap();
    let ids: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(ids, ["msg-0", "msg-1", "msg-2"]);
    // only g2's poison is faulted now; g1's come back and fault then, once
    let published = faults.published();
    assert_eq!(published.len(), 1);
    assert!(published[0].err.message.contains("bad e4"));
}

// 8. Two poison units of one record are two faults.
#[tokio::test]
async fn two_poison_s3_objects_in_one_message_are_two_faults_with_their_own_ids() {
    let faults = Arc::new(MemoryFaults::default());
    let p = Pipeline::new("p").then(|_uow: UnitOfWork| async move {
        Err::<UnitOfWork, _>(StepError::poison_msg("unreadable object"))
    });
    let h = handler(faults.clone(), p);
    let s3 = to_s3_records(&[("bucket", "a.json"), ("bucket", "b.json")]);
    let sns = json!({"Type": "Notification", "MessageId": "n1",
        "Message": serde_json::to_string(&s3).unwrap()});
    let outcomes = h
        .process(
            from_sqs_sns_s3(to_sqs_messages(&[sns.to_string()])),
            &h.invocation(&context(Duration::from_secs(30))),
        )
        .await;
    assert_eq!(outcomes.outcomes(), [Faulted]);
    let published = faults.published();
    assert_eq!(published.len(), 2);
    assert_ne!(published[0].id, published[1].id);
    assert_ne!(storage_id(&published[0]), storage_id(&published[1]));
}

// Nothing lost by construction: a unit no step settled is retry, never done by default.
struct Forgetful(#[allow(dead_code)] UnitOfWork);

impl lambda_stream::Work for Forgetful {
    // a buggy item type that stands for no record
    fn for_each_origin(&self, _: &mut dyn FnMut(&Arc<lambda_stream::Origin>)) {}
}

#[tokio::test]
async fn a_unit_the_steps_lose_track_of_is_retry_not_done() {
    let p = Pipeline::new("p").map(|uow: UnitOfWork| Ok(Forgetful(uow)));
    let h = handler(Arc::new(MemoryFaults::default()), p);
    let outcomes = h
        .process(
            from_sqs(to_sqs_records(&[ev(0, "a")])),
            &h.invocation(&context(Duration::from_secs(30))),
        )
        .await;
    assert_eq!(outcomes.outcomes(), [Again]);
}
