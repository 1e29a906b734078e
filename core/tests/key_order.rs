//! Order per key across pipelines (`HandlerBuilder::in_key_order`): a key's records are applied
//! one at a time, in batch order, whatever pipelines accept them; a retry in any pipeline stops
//! the key's later records in all of them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lambda_stream::sources::from_kinesis;
use lambda_stream::testing::*;
use lambda_stream::{ConfigError, Event, Handler, Outcome, Pipeline, StepError, UnitOfWork};

type Log = Arc<Mutex<Vec<(String, &'static str)>>>;

/// A pipeline for one event type whose step takes `ms`, logging when each unit starts and
/// ends; units whose id is in `fail` fail transiently.
fn logged(
    id: &str,
    event_type: &str,
    ms: u64,
    log: &Log,
    fail: &'static [&'static str],
) -> Pipeline<UnitOfWork> {
    let log = log.clone();
    Pipeline::new(id)
        .on_event_type(event_type)
        .parallel(4)
        .then(move |uow: UnitOfWork| {
            let log = log.clone();
            async move {
                let id = uow.event().id.clone();
                log.lock().unwrap().push((id.clone(), "start"));
                tokio::time::sleep(Duration::from_millis(ms)).await;
                log.lock().unwrap().push((id.clone(), "end"));
                if fail.contains(&id.as_str()) {
                    return Err(StepError::transient("throttled"));
                }
                Ok(uow)
            }
        })
}

fn at(log: &[(String, &'static str)], id: &str, what: &str) -> usize {
    log.iter()
        .position(|(i, w)| i == id && *w == what)
        .unwrap_or_else(|| panic!("{id} never logged {what}: {log:?}"))
}

fn events() -> Vec<Event> {
    // key k: a0, b1, a2, b3 (alternating pipelines); key j: b4, a5
    [
        ("a0", "a", "k"),
        ("b1", "b", "k"),
        ("a2", "a", "k"),
        ("b3", "b", "k"),
        ("b4", "b", "j"),
        ("a5", "a", "j"),
    ]
    .iter()
    .enumerate()
    .map(|(i, (id, t, key))| Event::new(*id, *t, i as i64 + 1).with_partition_key(*key))
    .collect()
}

#[tokio::test(start_paused = true)]
async fn in_key_order_applies_a_keys_records_one_at_a_time_across_pipelines() {
    let log: Log = Default::default();
    // pipeline a is slow, b fast: without order across pipelines b1 would overtake a0
    let h = Handler::builder(MemoryFaults::default())
        .in_key_order()
        .pipeline(logged("pa", "a", 50, &log, &[]))
        .pipeline(logged("pb", "b", 10, &log, &[]))
        .build()
        .unwrap();
    let outcomes = h
        .process(
            from_kinesis(to_kinesis_records(&events())),
            &h.invocation(&context(Duration::from_secs(30))),
        )
        .await;
    assert_eq!(outcomes.outcomes(), [Outcome::Done; 6]);
    let log = log.lock().unwrap();
    for pair in [["a0", "b1"], ["b1", "a2"], ["a2", "b3"], ["b4", "a5"]] {
        assert!(
            at(&log, pair[0], "end") < at(&log, pair[1], "start"),
            "{} started before {} ended: {log:?}",
            pair[1],
            pair[0]
        );
    }
    // keys still run concurrently: j's first record does not wait for k's
    assert!(at(&log, "b4", "start") < at(&log, "a0", "end"), "{log:?}");
}

#[tokio::test(start_paused = true)]
async fn a_retry_in_one_pipeline_stops_the_keys_later_records_in_every_pipeline() {
    let log: Log = Default::default();
    let h = Handler::builder(MemoryFaults::default())
        .in_key_order()
        .pipeline(logged("pa", "a", 50, &log, &[]))
        .pipeline(logged("pb", "b", 10, &log, &["b1"]))
        .build()
        .unwrap();
    let outcomes = h
        .process(
            from_kinesis(to_kinesis_records(&events())),
            &h.invocation(&context(Duration::from_secs(30))),
        )
        .await;
    use Outcome::{Done, Retry};
    assert_eq!(outcomes.outcomes(), [Done, Retry, Retry, Retry, Done, Done]);
    let log = log.lock().unwrap();
    assert!(
        !log.iter().any(|(id, _)| id == "a2" || id == "b3"),
        "k's records after the retry must not start in any pipeline: {log:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_record_two_pipelines_accept_holds_the_key_until_both_are_done() {
    let log: Log = Default::default();
    let both = Pipeline::new("slow-all").parallel(4).then({
        let log = log.clone();
        move |uow: UnitOfWork| {
            let log = log.clone();
            async move {
                let id = uow.event().id.clone();
                log.lock().unwrap().push((format!("all:{id}"), "start"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                log.lock().unwrap().push((format!("all:{id}"), "end"));
                Ok::<_, StepError>(uow)
            }
        }
    });
    let h = Handler::builder(MemoryFaults::default())
        .in_key_order()
        .pipeline(both)
        .pipeline(logged("pb", "b", 10, &log, &[]))
        .build()
        .unwrap();
    let events = [
        Event::new("b0", "b", 1).with_partition_key("k"),
        Event::new("b1", "b", 2).with_partition_key("k"),
    ];
    h.process(
        from_kinesis(to_kinesis_records(&events)),
        &h.invocation(&context(Duration::from_secs(30))),
    )
    .await;
    let log = log.lock().unwrap();
    // b1 enters pb only once b0 is out of both pipelines, the slow one included
    assert!(
        at(&log, "all:b0", "end") < at(&log, "b1", "start"),
        "{log:?}"
    );
}

#[test]
fn grouping_pipelines_cannot_be_ordered_across_pipelines() {
    let err = Handler::builder(MemoryFaults::default())
        .in_key_order()
        .pipeline(Pipeline::new("latest").compact(|u: &UnitOfWork| u.event().id.clone()))
        .build()
        .err();
    assert_eq!(err, Some(ConfigError::GathersInKeyOrder("latest".into())));
}
