//! The metrics a handler prints per invocation (CloudWatch embedded metric format), on a
//! sample batch, document by document and field by field.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lambda_stream::testing::*;
use lambda_stream::{Event, Handler, Pipeline, Settings, StepError, UnitOfWork, sources};
use serde_json::Value;

fn settings(metrics: &str) -> Settings {
    let metrics = metrics.to_owned();
    Settings::from_vars(move |v| match v {
        "METRICS" => Some(metrics.clone()),
        "NAMESPACE" => Some("orders".into()),
        "AWS_LAMBDA_FUNCTION_NAME" => Some("listener".into()),
        "STAGE" => Some("dev".into()),
        _ => None,
    })
}

fn run(metrics: &str) -> Vec<Value> {
    let out = Arc::new(Mutex::new(Vec::<u8>::new()));
    let views = Pipeline::new("views")
        .on_event_type("thing-updated")
        .map(|uow: UnitOfWork| {
            let e = uow.event();
            match e.id.as_str() {
                "bad" => Err(StepError::poison_msg("no thing").named("NoThing")),
                "slow" => Err(StepError::transient("throttled").named("ThrottlingException")),
                _ => Ok(uow),
            }
        });
    let audit = Pipeline::new("audit").on_event_type("thing-deleted");
    let handler = Handler::builder(MemoryFaults::default())
        .settings(&settings(metrics))
        .pipeline(views)
        .pipeline(audit)
        .metrics_to(Arc::clone(&out))
        .build()
        .unwrap();
    let mut events: Vec<Event> = (0..10)
        .map(|i| {
            Event::new(format!("e{i}"), "thing-updated", i).with_partition_key(format!("t{i}"))
        })
        .collect();
    events.push(Event::new("bad", "thing-updated", 20).with_partition_key("t20"));
    events.push(Event::new("slow", "thing-updated", 21).with_partition_key("t21"));
    // behind the retried one, on its key: held back
    events.push(Event::new("after", "thing-updated", 22).with_partition_key("t21"));
    events.push(Event::new("gone", "thing-deleted", 23).with_partition_key("t1"));
    let batch = to_kinesis_records(&events);
    let bytes: usize = batch.records.iter().map(|r| r.kinesis.data.0.len()).sum();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            handler
                .handle::<sources::Kinesis>(batch, &context(Duration::from_secs(30)))
                .await
                .unwrap();
        });
    let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
    let docs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    if let Some(batch) = docs.iter().find(|d| d.get("stream.batch.size").is_some()) {
        assert_eq!(batch["stream.batch.bytes"].as_u64(), Some(bytes as u64));
    }
    docs
}

#[test]
fn every_family_for_a_sample_batch() {
    let docs = run("*");
    // batch, two pipelines, one fault name, two retry names
    assert_eq!(docs.len(), 6, "{docs:#?}");
    let batch = &docs[0];
    assert_eq!(batch["functionname"], "listener");
    assert_eq!(batch["stage"], "dev");
    assert_eq!(batch["sourcetype"], "from_kinesis");
    assert_eq!(batch["stream.batch.size"], 14);
    assert_eq!(batch["stream.record.done.count"], 11);
    assert_eq!(batch["stream.record.faulted.count"], 1);
    assert_eq!(batch["stream.record.retry.count"], 2);
    assert!(batch["stream.invocation.time"].as_f64().unwrap() > 0.0);
    assert!(batch["stream.iterator.age"].as_i64().unwrap() >= 0);
    assert!(matches!(
        batch["stream.coldstart.count"].as_u64(),
        Some(0 | 1)
    ));
    let directive = &batch["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(directive["Namespace"], "orders");
    let mut dimensions: Vec<&str> = directive["Dimensions"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(dimensions[0], "sourcetype");
    dimensions.sort();
    assert_eq!(dimensions, ["functionname", "sourcetype", "stage"]);

    let by_pipeline = |id: &str| docs.iter().find(|d| d["pipeline"] == id).unwrap();
    let views = by_pipeline("views");
    assert_eq!(views["stream.pipeline.uow.count"], 13);
    assert_eq!(views["stream.pipeline.done.count"], 10);
    assert_eq!(views["stream.pipeline.faulted.count"], 1);
    assert_eq!(views["stream.pipeline.retry.count"], 2);
    assert!(views["stream.pipeline.time"].as_f64().unwrap() >= 0.0);
    let audit = by_pipeline("audit");
    assert_eq!(audit["stream.pipeline.uow.count"], 1);
    assert_eq!(audit["stream.pipeline.done.count"], 1);

    let by_error = |metric: &str, name: &str| {
        docs.iter()
            .find(|d| d["error"] == name && d.get(metric).is_some())
            .map(|d| d[metric].clone())
    };
    assert_eq!(by_error("stream.fault.count", "NoThing"), Some(1.into()));
    assert_eq!(
        by_error("stream.retry.count", "ThrottlingException"),
        Some(1.into())
    );
    assert_eq!(by_error("stream.retry.count", "KeyBlocked"), Some(1.into()));
    // no record id is ever a dimension
    for d in &docs {
        let text = d.to_string();
        assert!(
            !text.contains("\"e1\"") && !text.contains("\"slow\""),
            "{text}"
        );
    }
}

#[test]
fn off_by_default_and_filtered_by_family() {
    assert!(run("").is_empty());
    let docs = run("pipeline");
    assert_eq!(docs.len(), 2);
    assert!(docs.iter().all(|d| d.get("pipeline").is_some()));
}
