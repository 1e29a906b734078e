//! Pipeline steps and rules: fan-out, matchers, filters, batch, group, compact, rate limit,
//! switching pipelines on and off, and flavors built from rules.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lambda_stream::sources::from_sqs;
use lambda_stream::testing::*;
use lambda_stream::{
    AssembledPipeline, Batch, ConfigError, Event, EventType, Handler, IntoPipeline, Outcome,
    Pipeline, StepError, UnitOfWork,
};
use regex::Regex;
use serde_json::json;

type Seen = Arc<Mutex<Vec<String>>>;
type Groups = Arc<Mutex<Vec<(String, Vec<String>)>>>;

fn ev(i: usize, event_type: &str, key: &str) -> Event {
    Event::new(format!("e{i}"), event_type, i as i64).with_partition_key(key)
}

/// A pipeline that records the ids it sees under its own id.
fn recorder(id: &str, event_type: impl Into<EventType>, seen: &Seen) -> Pipeline<UnitOfWork> {
    let seen = seen.clone();
    let name = id.to_owned();
    Pipeline::new(id).on_event_type(event_type).tap(move |uow| {
        seen.lock()
            .unwrap()
            .push(format!("{name}:{}", uow.event().id))
    })
}

async fn run(h: &Handler, events: &[Event]) -> Vec<Outcome> {
    let ctx = context(Duration::from_secs(30));
    h.process(from_sqs(to_sqs_records(events)), &h.invocation(&ctx))
        .await
        .outcomes()
        .to_vec()
}

fn sorted(seen: &Seen) -> Vec<String> {
    let mut v = seen.lock().unwrap().clone();
    v.sort();
    v
}

#[tokio::test]
async fn units_fan_out_to_every_accepting_pipeline() {
    let seen: Seen = Default::default();
    let h = Handler::builder(MemoryFaults::default())
        .pipeline(recorder("exact", "thing-created", &seen))
        .pipeline(recorder("list", ["thing-created", "thing-updated"], &seen))
        .pipeline(recorder("regex", Regex::new("^thing-").unwrap(), &seen))
        .pipeline(recorder(
            "pred",
            EventType::predicate(|t| t.ends_with("-deleted")),
            &seen,
        ))
        .pipeline(
            recorder("content", EventType::Any, &seen)
                .on(|uow| uow.event().entity("vip").is_some()),
        )
        .build()
        .unwrap();
    let events = vec![
        ev(0, "thing-created", "a"),
        ev(1, "thing-updated", "b"),
        ev(2, "other-deleted", "c").with_entity("vip", json!(true)),
        ev(3, "unwanted", "d"),
    ];
    let outcomes = run(&h, &events).await;
    assert_eq!(outcomes, [Outcome::Done; 4]);
    assert_eq!(
        sorted(&seen),
        [
            "content:e2",
            "exact:e0",
            "list:e0",
            "list:e1",
            "pred:e2",
            "regex:e0",
            "regex:e1"
        ]
    );
}

#[tokio::test]
async fn filter_map_and_typed_state() {
    #[derive(Debug, Clone, PartialEq)]
    struct Request {
        pk: String,
        name: String,
    }
    let out: Arc<Mutex<Vec<Request>>> = Default::default();
    let sink = out.clone();
    let p = Pipeline::new("p")
        .filter(|uow| uow.event().id != "e1")
        .map(|uow| {
            let name = uow
                .event()
                .entity("thing")
                .and_then(|t| t["name"].as_str())
                .ok_or_else(|| StepError::poison_msg("thing.name is missing"))?
                .to_owned();
            let pk = uow.partition_key().unwrap_or_default().to_owned();
            Ok(uow.with(Request { pk, name }))
        })
        .then(move |uow: UnitOfWork<Request>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(uow.state.clone());
                Ok::<_, StepError>(uow)
            }
        });
    let faults = Arc::new(MemoryFaults::default());
    let h = Handler::builder(faults.clone())
        .pipeline(p)
        .build()
        .unwrap();
    let thing = |n: &str| json!({"name": n});
    let events = vec![
        ev(0, "t", "a").with_entity("thing", thing("x")),
        ev(1, "t", "b").with_entity("thing", thing("filtered")),
        ev(2, "t", "c"),
    ];
    let outcomes = run(&h, &events).await;
    assert_eq!(outcomes, [Outcome::Done, Outcome::Done, Outcome::Faulted]);
    assert_eq!(
        *out.lock().unwrap(),
        [Request {
            pk: "a".into(),
            name: "x".into()
        }]
    );
    assert!(
        faults.published()[0]
            .err
            .message
            .contains("thing.name is missing")
    );
}

#[tokio::test]
async fn a_batch_succeeds_or_fails_as_one_and_its_fault_carries_every_record() {
    let sizes: Arc<Mutex<Vec<usize>>> = Default::default();
    let s = sizes.clone();
    let p = Pipeline::new("p")
        .batch(3)
        .then(move |b: Batch<UnitOfWork>| {
            s.lock().unwrap().push(b.0.len());
            async move {
                if b.0.iter().any(|u| u.event().id == "e4") {
                    Err(StepError::poison_msg("batch rejected"))
                } else {
                    Ok(b)
                }
            }
        });
    let faults = Arc::new(MemoryFaults::default());
    let h = Handler::builder(faults.clone())
        .pipeline(p)
        .build()
        .unwrap();
    let events: Vec<Event> = (0..7).map(|i| ev(i, "t", &format!("k{i}"))).collect();
    let outcomes = run(&h, &events).await;
    use Outcome::*;
    assert_eq!(
        outcomes,
        [Done, Done, Done, Faulted, Faulted, Faulted, Done]
    );
    let mut sizes = sizes.lock().unwrap().clone();
    sizes.sort();
    assert_eq!(sizes, [1, 3, 3]);
    let published = faults.published();
    assert_eq!(published.len(), 1);
    let bodies: Vec<Event> = published[0]
        .uow
        .records()
        .iter()
        .map(|r| serde_json::from_str(r["body"].as_str().unwrap()).unwrap())
        .collect();
    let ids: Vec<&str> = bodies.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["e3", "e4", "e5"]);
}

#[tokio::test]
async fn batch_by_bytes_respects_both_limits_and_faults_oversize_entries() {
    let sizes: Arc<Mutex<Vec<Vec<String>>>> = Default::default();
    let s = sizes.clone();
    let size = |u: &UnitOfWork| {
        u.event()
            .entity("bytes")
            .and_then(|b| b.as_u64())
            .unwrap_or(0) as usize
    };
    let p = Pipeline::new("p")
        .batch_by_bytes(3, 100, size)
        .parallel(1)
        .then(move |b: Batch<UnitOfWork>| {
            s.lock()
                .unwrap()
                .push(b.0.iter().map(|u| u.event().id.clone()).collect());
            async move { Ok::<_, StepError>(b) }
        });
    let faults = Arc::new(MemoryFaults::default());
    let h = Handler::builder(faults.clone())
        .pipeline(p)
        .build()
        .unwrap();
    let bytes = [40, 40, 40, 10, 10, 10, 10, 500];
    let events: Vec<Event> = bytes
        .iter()
        .enumerate()
        .map(|(i, b)| ev(i, "t", &format!("k{i}")).with_entity("bytes", json!(b)))
        .collect();
    let outcomes = run(&h, &events).await;
    assert_eq!(outcomes[7], Outcome::Faulted);
    assert_eq!(
        *sizes.lock().unwrap(),
        [vec!["e0", "e1"], vec!["e2", "e3", "e4"], vec!["e5", "e6"]]
    );
    assert_eq!(faults.published()[0].err.name, "OversizeError");
}

#[tokio::test]
async fn group_by_and_compact() {
    let groups: Groups = Default::default();
    let latest: Arc<Mutex<Vec<String>>> = Default::default();
    let (g, l) = (groups.clone(), latest.clone());
    let grouping = Pipeline::new("group")
        .group_by(|u: &UnitOfWork| u.partition_key().unwrap_or_default().to_owned())
        .tap(move |grp| {
            let ids = grp.items.iter().map(|u| u.event().id.clone()).collect();
            g.lock().unwrap().push((grp.key.clone(), ids));
        });
    let compacting = Pipeline::new("compact")
        .compact(|u: &UnitOfWork| u.partition_key().unwrap_or_default().to_owned())
        .then(move |c| {
            let l = l.clone();
            async move {
                if c.latest.event().id == "e3" {
                    return Err(StepError::transient("busy"));
                }
                l.lock().unwrap().push(c.latest.event().id.clone());
                Ok(c)
            }
        });
    let h = Handler::builder(MemoryFaults::default())
        .pipeline(grouping)
        .pipeline(compacting)
        .build()
        .unwrap();
    let keys = ["a", "b", "a", "b", "a"];
    let events: Vec<Event> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| ev(i, "t", k))
        .collect();
    let outcomes = run(&h, &events).await;
    assert_eq!(
        *groups.lock().unwrap(),
        [
            (
                "a".to_string(),
                vec!["e0".to_string(), "e2".into(), "e4".into()]
            ),
            ("b".to_string(), vec!["e1".to_string(), "e3".into()])
        ]
    );
    assert_eq!(*latest.lock().unwrap(), ["e4"]);
    // key b's latest failed: the record it superseded shares its retry
    use Outcome::*;
    assert_eq!(outcomes, [Done, Retry, Done, Retry, Done]);
}

#[tokio::test]
async fn rate_limit_paces_the_async_step() {
    let p = Pipeline::new("p")
        .rate_limit(2, Duration::from_millis(100))
        .then(|u: UnitOfWork| async move { Ok::<_, StepError>(u) });
    let h = Handler::builder(MemoryFaults::default())
        .pipeline(p)
        .build()
        .unwrap();
    let events: Vec<Event> = (0..6).map(|i| ev(i, "t", &format!("k{i}"))).collect();
    let started = Instant::now();
    let outcomes = run(&h, &events).await;
    assert_eq!(outcomes, [Outcome::Done; 6]);
    // a burst of 2, then one per 50 ms: the sixth call waits 200 ms at least
    assert!(
        started.elapsed() >= Duration::from_millis(190),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn pipelines_switch_on_and_off_by_id() {
    let seen: Seen = Default::default();
    let build = |enabled: Option<&str>, disabled: Option<&str>| {
        let mut b = Handler::builder(MemoryFaults::default())
            .pipeline(recorder("p1", EventType::Any, &seen))
            .pipeline(recorder("p2", EventType::Any, &seen))
            .pipeline(recorder("p3", EventType::Any, &seen));
        if let Some(e) = enabled {
            b = b.enabled_pipelines(e);
        }
        if let Some(d) = disabled {
            b = b.disabled_pipelines(d);
        }
        b.build().unwrap()
    };
    assert_eq!(build(None, None).pipeline_ids(), ["p1", "p2", "p3"]);
    assert_eq!(build(Some("p1, p3"), None).pipeline_ids(), ["p1", "p3"]);
    assert_eq!(build(None, Some("p2")).pipeline_ids(), ["p1", "p3"]);
    assert_eq!(build(Some("p1,p2"), Some("p2")).pipeline_ids(), ["p1"]);
    run(&build(None, Some("p1,p2")), &[ev(0, "t", "a")]).await;
    assert_eq!(sorted(&seen), ["p3:e0"]);
}

#[test]
fn duplicate_pipeline_ids_are_a_configuration_error() {
    let err = Handler::builder(MemoryFaults::default())
        .pipeline(Pipeline::new("p"))
        .pipeline(Pipeline::new("p"))
        .build()
        .err();
    assert_eq!(err, Some(ConfigError::DuplicatePipeline("p".into())));
}

/// A flavor: a rule type whose pipeline is assembled from its fields.
struct Counting {
    id: &'static str,
    event_type: EventType,
    counter: Arc<Mutex<usize>>,
}

impl IntoPipeline for Counting {
    fn into_pipeline(self) -> AssembledPipeline {
        let counter = self.counter;
        Pipeline::new(self.id)
            .on_event_type(self.event_type)
            .then(move |u: UnitOfWork| {
                let counter = counter.clone();
                async move {
                    *counter.lock().unwrap() += 1;
                    Ok::<_, StepError>(u)
                }
            })
            .into_pipeline()
    }
}

#[tokio::test]
async fn rules_build_pipelines_from_a_flavor() {
    let (a, b) = (Arc::new(Mutex::new(0)), Arc::new(Mutex::new(0)));
    let rules = vec![
        Counting {
            id: "r1",
            event_type: "x-created".into(),
            counter: a.clone(),
        },
        Counting {
            id: "r2",
            event_type: Regex::new("^x-").unwrap().into(),
            counter: b.clone(),
        },
    ];
    let seen: Seen = Default::default();
    let h = Handler::builder(MemoryFaults::default())
        .pipelines(rules)
        .pipeline(recorder("one-off", "x-deleted", &seen))
        .build()
        .unwrap();
    run(&h, &[ev(0, "x-created", "k"), ev(1, "x-deleted", "k")]).await;
    assert_eq!((*a.lock().unwrap(), *b.lock().unwrap()), (1, 2));
    assert_eq!(sorted(&seen), ["one-off:e1"]);
}
