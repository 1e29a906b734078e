//! Idempotent pipelines: a redelivery does not run completed work again, a record that keeps
//! failing is faulted with its data after its attempts, and the lock never outlives the
//! invocation. Pure tests use the in-memory store; the DynamoDB store is tested against the
//! emulator at the end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::kinesis::KinesisEvent;
use lambda_stream::idempotency::{
    Claim, ClaimRequest, DynamoDbIdempotency, Idempotency, IdempotencyStore, Mark, Status,
};
use lambda_stream::sources::Kinesis;
use lambda_stream::testing::*;
use lambda_stream::{Event, Handler, IntoPipeline, Pipeline, StepError, UnitOfWork};

/// Executions per event id.
type Runs = Arc<Mutex<HashMap<String, usize>>>;

fn count(runs: &Runs, id: &str) -> usize {
    runs.lock().unwrap().get(id).copied().unwrap_or(0)
}

/// A pipeline that counts its executions; an event fails transiently while `fails` says so
/// for its id and the number of its runs so far.
fn counted(
    runs: &Runs,
    fails: impl Fn(&str, usize) -> bool + Send + Sync + 'static,
) -> Pipeline<UnitOfWork> {
    let (runs, fails) = (runs.clone(), Arc::new(fails));
    Pipeline::new("counted")
        .parallel(4)
        .then(move |uow: UnitOfWork| {
            let (runs, fails) = (runs.clone(), fails.clone());
            async move {
                let id = uow.event().id.clone();
                let n = {
                    let mut runs = runs.lock().unwrap();
                    let n = runs.entry(id.clone()).or_default();
                    *n += 1;
                    *n
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
                if fails(&id, n) {
                    return Err(StepError::transient(format!("throttled on run {n}")));
                }
                Ok(uow)
            }
        })
}

fn handler(
    faults: Arc<MemoryFaults>,
    p: Pipeline<UnitOfWork>,
    guard: Option<Idempotency>,
) -> Handler {
    let p = p.into_pipeline();
    let p = match guard {
        Some(g) => p.idempotent(g),
        None => p,
    };
    Handler::builder(faults).pipeline(p).build().unwrap()
}

/// `keys` keys, `per_key` events each, interleaved as a stream delivers them.
fn events(keys: usize, per_key: usize) -> Vec<Event> {
    (0..keys * per_key)
        .map(|i| {
            Event::new(format!("e{i}"), "thing-updated", i as i64 + 1)
                .with_partition_key(format!("k{}", i % keys))
        })
        .collect()
}

async fn deliver(h: &Handler, events: &[Event]) -> Option<usize> {
    let response = h
        .handle::<Kinesis>(
            to_kinesis_records(events),
            &context(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    response.batch_item_failures.first().map(|f| {
        let seq = f.item_identifier.as_deref().unwrap();
        (0..events.len())
            .find(|i| sequence_number(*i) == seq)
            .unwrap()
    })
}

/// Delivers `events` as Lambda does a Kinesis shard: again from the checkpoint until none is
/// reported; returns the number of deliveries.
async fn until_checkpointed(h: &Handler, events: &[Event]) -> usize {
    let mut rest = events.to_vec();
    for delivery in 1..=20 {
        match deliver(h, &rest).await {
            None => return delivery,
            Some(checkpoint) => rest = rest.split_off(checkpoint),
        }
    }
    panic!("still retrying after 20 deliveries");
}

#[tokio::test]
async fn a_redelivery_from_the_checkpoint_runs_only_what_had_not_completed() {
    // 6 keys x 8 events; e13 (key k1) fails its first run: the checkpoint is at e13, and Lambda
    // delivers e13..e47 again, of which every key but k1 had completed
    let evs = events(6, 8);
    let fails = |id: &str, n: usize| id == "e13" && n == 1;

    let unguarded: Runs = Runs::default();
    let h = handler(Arc::default(), counted(&unguarded, fails), None);
    assert_eq!(until_checkpointed(&h, &evs).await, 2);
    let again = (14..48)
        .filter(|i| count(&unguarded, &format!("e{i}")) == 2)
        .count();
    assert!(
        again > 20,
        "without the guard completed records run again: {again}"
    );

    let store = Arc::new(MemoryIdempotency::default());
    let runs: Runs = Runs::default();
    let h = handler(
        Arc::default(),
        counted(&runs, fails),
        Some(Idempotency::new(store.clone())),
    );
    assert_eq!(until_checkpointed(&h, &evs).await, 2);
    for e in &evs {
        let expected = if e.id == "e13" { 2 } else { 1 };
        assert_eq!(
            count(&runs, &e.id),
            expected,
            "{} ran {} times",
            e.id,
            count(&runs, &e.id)
        );
    }
    let marks = store.marks();
    assert_eq!(marks.len(), 48);
    assert!(marks.values().all(|m| m.status == Status::Completed));
    assert_eq!(
        marks["counted#e13"].attempts, 1,
        "one failed attempt before it completed"
    );
}

#[tokio::test]
async fn a_duplicate_in_the_batch_and_a_redelivery_to_the_same_container_run_nothing_twice() {
    let store = Arc::new(MemoryIdempotency::default());
    let runs: Runs = Runs::default();
    let h = handler(
        Arc::default(),
        counted(&runs, |_, _| false),
        Some(Idempotency::new(store.clone())),
    );
    let mut evs = events(3, 5);
    evs.insert(7, evs[2].clone()); // e2 delivered twice in one batch
    assert_eq!(deliver(&h, &evs).await, None);
    assert!(runs.lock().unwrap().values().all(|n| *n == 1));
    assert_eq!(store.claims(), 15);

    // the container remembers what completed: no read of the store, nothing run, all done
    assert_eq!(deliver(&h, &evs).await, None);
    assert_eq!(
        store.claims(),
        15,
        "completed ids come from the container's cache"
    );
    assert!(runs.lock().unwrap().values().all(|n| *n == 1));

    // a new container (no cache) reads the store and skips as well
    let runs2: Runs = Runs::default();
    let h2 = handler(
        Arc::default(),
        counted(&runs2, |_, _| false),
        Some(Idempotency::new(store.clone())),
    );
    assert_eq!(
        deliver(&h2, &evs).await,
        None,
        "completed is done, not in progress"
    );
    assert_eq!(store.claims(), 30);
    assert!(runs2.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_record_that_always_fails_is_faulted_with_its_data_after_its_attempts() {
    // key k0: e0, e3, e6, e9; e3 always fails transiently; the others always succeed
    let evs = events(3, 4);
    let faults = Arc::new(MemoryFaults::default());
    let store = Arc::new(MemoryIdempotency::default());
    let runs: Runs = Runs::default();
    let guard = Idempotency::new(store.clone()).max_attempts(3);
    let h = handler(
        faults.clone(),
        counted(&runs, |id, _| id == "e3"),
        Some(guard),
    );

    // 3 deliveries retry it (checkpoint at e3), the 4th faults it without running it
    assert_eq!(until_checkpointed(&h, &evs).await, 4);
    assert_eq!(count(&runs, "e3"), 3);
    for e in evs.iter().filter(|e| e.id != "e3") {
        assert_eq!(count(&runs, &e.id), 1, "{} behind it ran once", e.id);
    }
    let published = faults.published();
    assert_eq!(published.len(), 1);
    let fault = &published[0];
    assert_eq!(fault.err.name, "AttemptsExhausted");
    assert!(
        fault.err.message.contains("3 failed attempts"),
        "{}",
        fault.err.message
    );
    assert!(
        fault.err.message.contains("throttled on run 3"),
        "{}",
        fault.err.message
    );
    let record = fault.uow.records()[0];
    let data = record["kinesis"]["data"].as_str().unwrap();
    let event: Event = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data).unwrap(),
    )
    .unwrap();
    assert_eq!(
        event.id, "e3",
        "the fault carries the record, to resubmit it"
    );
    let mark = &store.marks()["counted#e3"];
    assert_eq!(
        (mark.status, mark.attempts),
        (Status::Failed, 0),
        "set aside with its fault: the count starts again"
    );

    // the cause fixed, the fault's record is resubmitted: it runs afresh
    let fixed = handler(
        Arc::default(),
        counted(&runs, |_, _| false),
        Some(Idempotency::new(store.clone()).max_attempts(3)),
    );
    let e3 = evs.iter().find(|e| e.id == "e3").unwrap().clone();
    assert_eq!(deliver(&fixed, &[e3]).await, None);
    assert_eq!(count(&runs, "e3"), 4);
    assert_eq!(store.marks()["counted#e3"].status, Status::Completed);
}

#[tokio::test]
async fn the_same_identity_with_other_content_is_a_poison_fault_not_a_skip() {
    let faults = Arc::new(MemoryFaults::default());
    let store = Arc::new(MemoryIdempotency::default());
    let runs: Runs = Runs::default();
    let guard = Idempotency::new(store.clone()).validate_payload().cache(0);
    let h = handler(faults.clone(), counted(&runs, |_, _| false), Some(guard));
    let first = Event::new("x1", "thing-updated", 1).with_partition_key("k");
    assert_eq!(deliver(&h, std::slice::from_ref(&first)).await, None);
    assert_eq!(deliver(&h, std::slice::from_ref(&first)).await, None);
    assert_eq!(count(&runs, "x1"), 1);
    assert!(faults.published().is_empty(), "the same content is skipped");

    let mut other = first.clone();
    other.timestamp = 2;
    assert_eq!(deliver(&h, &[other]).await, None);
    assert_eq!(count(&runs, "x1"), 1);
    let published = faults.published();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].err.name, "IdempotencyMismatch");
}

#[tokio::test]
async fn the_lock_ends_with_the_invocation_and_a_store_outage_runs_nothing_unguarded() {
    let store = Arc::new(MemoryIdempotency::default());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s2, seen2) = (store.clone(), seen.clone());
    let p = Pipeline::new("locked").then(move |uow: UnitOfWork| {
        let (store, seen) = (s2.clone(), seen2.clone());
        async move {
            seen.lock()
                .unwrap()
                .push(store.marks()["locked#l1"].clone());
            Ok::<_, StepError>(uow)
        }
    });
    // a 10 minute lock asked for, 1.5 s left in the invocation
    let guard = Idempotency::new(store.clone()).lock_at_most(Duration::from_secs(600));
    let h = handler(Arc::default(), p, Some(guard));
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let e = Event::new("l1", "thing-updated", 1).with_partition_key("k");
    let r = h
        .handle::<Kinesis>(
            to_kinesis_records(std::slice::from_ref(&e)),
            &context(Duration::from_millis(1500)),
        )
        .await
        .unwrap();
    assert!(r.batch_item_failures.is_empty());
    let lock = seen.lock().unwrap()[0].clone();
    assert_eq!(lock.status, Status::InProgress);
    assert!(
        lock.lock_expiry_ms <= now_ms + 1500,
        "the lock ({} ms from now) outlives the invocation",
        lock.lock_expiry_ms - now_ms
    );
    assert!(lock.lock_expiry_ms > now_ms, "the lock is not already over");

    // with the store down, nothing runs and nothing is set aside: retry
    store.fail(true);
    let faults = Arc::new(MemoryFaults::default());
    let runs: Runs = Runs::default();
    let h = handler(
        faults.clone(),
        counted(&runs, |_, _| false),
        Some(Idempotency::new(store.clone())),
    );
    assert_eq!(deliver(&h, &events(2, 3)).await, Some(0));
    assert!(runs.lock().unwrap().is_empty());
    assert!(faults.published().is_empty());
}

// ---- the DynamoDB store, against the emulator

async fn dynamodb_store() -> DynamoDbIdempotency {
    let table = create_idempotency_table("idem").await;
    DynamoDbIdempotency::new(lambda_stream::aws::dynamodb().await.clone(), table)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn dynamodb_store_claims_atomically_and_keeps_attempts() {
    let store = dynamodb_store().await;
    let now = now_ms();
    let req = ClaimRequest {
        id: "p#1",
        now_ms: now,
        lock_expiry_ms: now + 60_000,
        expiration_s: now / 1000 + 3600,
        payload_hash: Some("h"),
        owner: "claim-a",
    };
    // ten claims by ten invocations: exactly one is taken (one after another: DynamoDB makes
    // a conditional write atomic, the emulator does not under concurrent requests)
    let owners: Vec<String> = (0..10).map(|i| format!("claim-{i}")).collect();
    let reqs: Vec<ClaimRequest> = owners
        .iter()
        .map(|o| ClaimRequest { owner: o, ..req })
        .collect();
    let mut claims = Vec::new();
    for r in &reqs {
        claims.push(store.claim(r).await);
    }
    let taken = claims
        .iter()
        .filter(|c| matches!(c, Ok(Claim::Taken { previous: None })))
        .count();
    assert_eq!(taken, 1, "{claims:?}");
    assert!(claims.iter().all(|c| match c {
        Ok(Claim::Held { current }) => current.status == Status::InProgress,
        Ok(Claim::Taken { .. }) => true,
        Err(e) => panic!("{e}"),
    }));
    // the winner's claim, sent again (its answer lost), takes its own lock again
    let winner = claims
        .iter()
        .position(|c| matches!(c, Ok(Claim::Taken { .. })))
        .unwrap();
    match store.claim(&reqs[winner]).await.unwrap() {
        Claim::Taken { previous: Some(m) } => {
            assert_eq!(m.owner.as_deref(), Some(owners[winner].as_str()))
        }
        other => panic!("{other:?}"),
    }

    let failed = Mark {
        status: Status::Failed,
        lock_expiry_ms: 0,
        expiration_s: now / 1000 + 3600,
        payload_hash: Some("h".into()),
        attempts: 2,
        last_error: Some("ThrottlingException".into()),
        owner: None,
    };
    store
        .settle(&[("p#1".into(), failed.clone())])
        .await
        .unwrap();
    match store.claim(&req).await.unwrap() {
        Claim::Taken { previous } => assert_eq!(previous, Some(failed)),
        other => panic!("a failed mark is claimable: {other:?}"),
    }
    let done = Mark {
        status: Status::Completed,
        attempts: 2,
        last_error: None,
        owner: None,
        ..store_mark(&req)
    };
    store.settle(&[("p#1".into(), done.clone())]).await.unwrap();
    assert_eq!(
        store.claim(&req).await.unwrap(),
        Claim::Held { current: done }
    );

    // a lock that ran out can be taken over; a live one holds
    let stale = ClaimRequest {
        id: "p#2",
        lock_expiry_ms: now - 1,
        ..req
    };
    assert!(matches!(
        store.claim(&stale).await.unwrap(),
        Claim::Taken { previous: None }
    ));
    let live = ClaimRequest {
        id: "p#2",
        owner: "claim-b",
        ..req
    };
    match store.claim(&live).await.unwrap() {
        Claim::Taken { previous: Some(m) } => assert_eq!(m.status, Status::InProgress),
        other => panic!("a lock that ran out is taken over: {other:?}"),
    }
    let other = ClaimRequest {
        owner: "claim-c",
        ..live
    };
    assert!(matches!(
        store.claim(&other).await.unwrap(),
        Claim::Held { .. }
    ));

    // 60 marks settle in one call (three requests)
    let marks: Vec<(String, Mark)> = (0..60)
        .map(|i| (format!("q#{i}"), store_mark(&req)))
        .collect();
    store.settle(&marks).await.unwrap();
    let q = ClaimRequest { id: "q#59", ..req };
    assert!(matches!(store.claim(&q).await.unwrap(), Claim::Held { .. }));
}

fn store_mark(req: &ClaimRequest<'_>) -> Mark {
    Mark {
        status: Status::Completed,
        lock_expiry_ms: 0,
        expiration_s: req.expiration_s,
        payload_hash: req.payload_hash.map(str::to_owned),
        attempts: 0,
        last_error: None,
        owner: None,
    }
}

#[tokio::test]
async fn dynamodb_a_kinesis_redelivery_skips_the_records_that_had_completed() {
    let store = dynamodb_store().await;
    let evs = events(5, 6);
    let runs: Runs = Runs::default();
    let guard = Idempotency::new(store.clone()).cache(0).max_attempts(5);
    let h = handler(
        Arc::default(),
        counted(&runs, |id, n| id == "e7" && n == 1),
        Some(guard),
    );
    assert_eq!(until_checkpointed(&h, &evs).await, 2);
    for e in &evs {
        let expected = if e.id == "e7" { 2 } else { 1 };
        assert_eq!(
            count(&runs, &e.id),
            expected,
            "{} ran {} times",
            e.id,
            count(&runs, &e.id)
        );
    }
}

#[tokio::test]
async fn dynamodb_two_concurrent_invocations_on_one_record_one_runs_one_is_retry() {
    let store = dynamodb_store().await;
    let runs: Runs = Runs::default();
    let slow = |runs: Runs| {
        Pipeline::new("slow").then(move |uow: UnitOfWork| {
            let runs = runs.clone();
            async move {
                *runs
                    .lock()
                    .unwrap()
                    .entry(uow.event().id.clone())
                    .or_default() += 1;
                tokio::time::sleep(Duration::from_millis(400)).await;
                Ok::<_, StepError>(uow)
            }
        })
    };
    let guard = Idempotency::new(store.clone()).cache(0);
    let a = handler(Arc::default(), slow(runs.clone()), Some(guard.clone()));
    let b = handler(Arc::default(), slow(runs.clone()), Some(guard));
    let e = [Event::new("c1", "thing-updated", 1).with_partition_key("k")];
    let batch = || -> KinesisEvent { to_kinesis_records(&e) };
    // b starts while a runs (its claims 50 ms later: the emulator, unlike DynamoDB, does not
    // make two simultaneous conditional writes atomic), with less time left than a's lock
    let (long, short) = (
        context(Duration::from_secs(30)),
        context(Duration::from_secs(5)),
    );
    let (ra, rb) = tokio::join!(a.handle::<Kinesis>(batch(), &long), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        b.handle::<Kinesis>(batch(), &short).await
    });
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra.batch_item_failures.is_empty(), "a runs it");
    assert_eq!(rb.batch_item_failures.len(), 1, "b is retry");
    assert_eq!(count(&runs, "c1"), 1);
    // the retried one, delivered again, finds it completed
    assert_eq!(deliver(&a, &e).await, None);
    assert_eq!(count(&runs, "c1"), 1);
}

/// A store that claims through DynamoDB but never settles: the invocation died after its
/// effects, before it could write its marks.
struct DiesBeforeSettling(DynamoDbIdempotency);

impl IdempotencyStore for DiesBeforeSettling {
    fn claim<'a>(
        &'a self,
        req: &'a ClaimRequest<'a>,
    ) -> futures::future::BoxFuture<'a, Result<Claim, StepError>> {
        self.0.claim(req)
    }

    fn settle<'a>(
        &'a self,
        _: &'a [(String, Mark)],
    ) -> futures::future::BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async { Err(StepError::transient("the invocation died")) })
    }

    fn release<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async { Err(StepError::transient("the invocation died")) })
    }
}

#[tokio::test]
async fn dynamodb_exactly_once_a_counter_written_with_its_mark_is_not_counted_twice() {
    use lambda_stream::connectors::{DynamoDb, UpdateRequest};
    use lambda_stream::expressions::Expression;
    use lambda_stream::sinks::Update;
    use serde_json::json;

    let store = dynamodb_store().await;
    let table = create_table("counters").await;
    let db = DynamoDb::shared().await;
    let increment = |uow: UnitOfWork| {
        let mut expression = Expression::default();
        expression.update = Some("ADD #n :one".into());
        expression.names.insert("#n".into(), "n".into());
        expression.values.insert(":one".into(), json!(1));
        let key =
            json!({"pk": uow.event().partition_key.clone().unwrap_or_default(), "sk": "counter"});
        Ok::<_, StepError>(uow.with(UpdateRequest {
            table: None,
            key,
            expression,
        }))
    };
    let counter = |key: &'static str| {
        let (db, table) = (db.clone(), table.clone());
        async move {
            let item = db
                .get(&table, &json!({"pk": key, "sk": "counter"}))
                .await
                .unwrap();
            item.map_or(0, |i| i["n"].as_i64().unwrap())
        }
    };
    let deliver_with =
        |guard: Idempotency, sink_guard: Option<Idempotency>, remaining: Duration, e: Event| {
            let mut sink = Update::new(db.clone()).table(table.clone());
            if let Some(g) = &sink_guard {
                sink = sink.exactly_once(g).unwrap();
            }
            let p = Pipeline::new("count")
                .map(increment)
                .pipe(sink)
                .into_pipeline()
                .idempotent(guard);
            let h = Handler::builder(MemoryFaults::default())
                .pipeline(p)
                .build()
                .unwrap();
            async move {
                h.handle::<Kinesis>(to_kinesis_records(&[e]), &context(remaining))
                    .await
                    .unwrap()
                    .batch_item_failures
                    .len()
            }
        };
    let short = Duration::from_millis(1300);

    // at least once: the effect is written, the mark is not; once the lock runs out, the
    // redelivery counts again
    let dies = Idempotency::new(DiesBeforeSettling(store.clone())).cache(0);
    let e = Event::new("a1", "thing-updated", 1).with_partition_key("c-at-least-once");
    assert_eq!(deliver_with(dies.clone(), None, short, e.clone()).await, 0);
    tokio::time::sleep(short).await;
    assert_eq!(deliver_with(dies.clone(), None, short, e.clone()).await, 0);
    assert_eq!(
        counter("c-at-least-once").await,
        2,
        "at least once counts twice"
    );

    // exactly once: the mark is written with the effect, so the redelivery is skipped
    let real = Idempotency::new(store.clone()).cache(0);
    let e = Event::new("b1", "thing-updated", 1).with_partition_key("c-exactly-once");
    assert_eq!(
        deliver_with(dies.clone(), Some(real.clone()), short, e.clone()).await,
        0
    );
    tokio::time::sleep(short).await;
    assert_eq!(
        deliver_with(dies.clone(), Some(real.clone()), short, e.clone()).await,
        0
    );
    assert_eq!(
        counter("c-exactly-once").await,
        1,
        "exactly once counts once"
    );

    // and a sink told exactly once in a pipeline without the guard writes nothing
    let faults = Arc::new(MemoryFaults::default());
    let p = Pipeline::new("unguarded").map(increment).pipe(
        Update::new(db.clone())
            .table(table.clone())
            .exactly_once(&real)
            .unwrap(),
    );
    let h = Handler::builder(faults.clone())
        .pipeline(p)
        .build()
        .unwrap();
    let e = Event::new("u1", "thing-updated", 1).with_partition_key("c-unguarded");
    h.handle::<Kinesis>(to_kinesis_records(&[e]), &context(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(counter("c-unguarded").await, 0);
    assert_eq!(faults.published()[0].err.name, "IdempotencyNotClaimed");
    assert!(
        Update::new(db)
            .exactly_once(&Idempotency::new(MemoryIdempotency::default()))
            .is_err()
    );
}

#[tokio::test]
async fn dynamodb_a_lock_left_by_a_crashed_invocation_is_waited_out_not_retried() {
    let store = dynamodb_store().await;
    // an invocation claimed e1 and died: its lock lapses in 700 ms
    let now = now_ms();
    let crashed = ClaimRequest {
        id: "counted#e1",
        now_ms: now,
        lock_expiry_ms: now + 700,
        expiration_s: now / 1000 + 3600,
        payload_hash: None,
        owner: "crashed",
    };
    assert!(matches!(
        store.claim(&crashed).await.unwrap(),
        Claim::Taken { previous: None }
    ));
    let runs: Runs = Runs::default();
    let guard = Idempotency::new(store.clone()).cache(0).max_attempts(3);
    let h = handler(Arc::default(), counted(&runs, |_, _| false), Some(guard));
    let started = std::time::Instant::now();
    let e = [Event::new("e1", "thing-updated", 1).with_partition_key("k")];
    assert_eq!(deliver(&h, &e).await, None, "no retry spent on it");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "it waited for the lock"
    );
    assert_eq!(count(&runs, "e1"), 1);
}

/// A store whose claims are written but whose answers are lost.
struct LostAnswers(Arc<MemoryIdempotency>);

impl IdempotencyStore for LostAnswers {
    fn claim<'a>(
        &'a self,
        req: &'a ClaimRequest<'a>,
    ) -> futures::future::BoxFuture<'a, Result<Claim, StepError>> {
        Box::pin(async move {
            self.0.claim(req).await?;
            Err(StepError::transient("connection reset"))
        })
    }

    fn settle<'a>(
        &'a self,
        marks: &'a [(String, Mark)],
    ) -> futures::future::BoxFuture<'a, Result<(), StepError>> {
        self.0.settle(marks)
    }

    fn release<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), StepError>> {
        self.0.release(id, owner)
    }
}

#[tokio::test]
async fn a_claim_whose_answer_was_lost_is_released_so_the_redelivery_is_not_held() {
    let store = Arc::new(MemoryIdempotency::default());
    let runs: Runs = Runs::default();
    let lossy = Idempotency::new(LostAnswers(store.clone())).cache(0);
    let h = handler(Arc::default(), counted(&runs, |_, _| false), Some(lossy));
    let e = [Event::new("l1", "thing-updated", 1).with_partition_key("k")];
    assert_eq!(
        deliver(&h, &e).await,
        Some(0),
        "retry: the guard never runs blind"
    );
    assert_eq!(count(&runs, "l1"), 0);
    let mark = store.marks()["counted#l1"].clone();
    assert_eq!(
        (mark.status, mark.owner),
        (Status::Failed, None),
        "released at the end of the invocation"
    );
    let h = handler(
        Arc::default(),
        counted(&runs, |_, _| false),
        Some(Idempotency::new(store.clone()).cache(0)),
    );
    assert_eq!(deliver(&h, &e).await, None, "the redelivery runs at once");
    assert_eq!(count(&runs, "l1"), 1);
}
