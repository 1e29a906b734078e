//! The materialize and cdc flavors against the local emulator (`make test`).

use std::time::Duration;

use lambda_stream::connectors::Publishable;
use lambda_stream::connectors::{DynamoDb, EventBridge, QueryRequest, UpdateRequest};
use lambda_stream::expressions::{Expression, update_expression};
use lambda_stream::flavors::{Cdc, CdcStored, Materialize};
use lambda_stream::sinks::{BatchPublisher, PublishInPlace};
use lambda_stream::sources;
use lambda_stream::testing::*;
use lambda_stream::{Event, Handler, IntoPipeline, Pipeline, Settings, StepError, UnitOfWork, aws};
use serde_json::{Value, json};

fn to_update_request(uow: &UnitOfWork) -> Result<UpdateRequest, StepError> {
    let e = uow.event();
    let thing = e
        .entity("thing")
        .ok_or_else(|| StepError::poison_msg("no thing"))?;
    Ok(UpdateRequest {
        table: None,
        key: json!({"pk": thing["id"], "sk": "thing"}),
        expression: update_expression(&json!({
            "name": thing["name"], "discriminator": "thing", "timestamp": e.timestamp,
            "lastModifiedBy": e.tag("source").unwrap_or("unknown"),
        }))?
        .timestamp_condition()?,
    })
}

fn thing_event(i: usize, id: &str, name: &str, timestamp: i64) -> Event {
    Event::new(format!("e{i}"), "thing-updated", timestamp)
        .with_partition_key(id)
        .with_entity("thing", json!({"id": id, "name": name}))
}

async fn scan(table: &str) -> Vec<Value> {
    let out = aws::dynamodb()
        .await
        .scan()
        .table_name(table)
        .send()
        .await
        .unwrap();
    let mut rows: Vec<Value> = out
        .items
        .unwrap_or_default()
        .into_iter()
        .map(|i| serde_dynamo::aws_sdk_dynamodb_1::from_item(i).unwrap())
        .collect();
    rows.sort_by(|a, b| a["pk"].as_str().cmp(&b["pk"].as_str()));
    rows
}

#[tokio::test]
async fn materialize_is_idempotent_ordered_by_timestamp_latched_and_skips_own_events() {
    let table = create_table("views").await;
    let rule = Materialize::new(
        "thing-view",
        ["thing-created", "thing-updated"],
        to_update_request,
        DynamoDb::shared().await,
    )
    .table(&table)
    .parallel(4)
    .skip_events_from("this-service");
    let handler = Handler::builder(MemoryFaults::default())
        .pipelines([rule])
        .build()
        .unwrap();
    let ctx = context(Duration::from_secs(60));

    let mut own = thing_event(9, "t9", "echo", 5000);
    own.tags.insert("source".into(), json!("this-service"));
    let batch = vec![
        thing_event(0, "t1", "newest", 3000),
        thing_event(1, "t1", "older, arrived late", 2000),
        thing_event(2, "t2", "only", 1000),
        own,
    ];
    handler
        .handle::<sources::Kinesis>(to_kinesis_records(&batch), &ctx)
        .await
        .unwrap();
    let first = scan(&table).await;
    // applied twice (a redelivery): the same table
    let response = handler
        .handle::<sources::Kinesis>(to_kinesis_records(&batch), &ctx)
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(scan(&table).await, first);

    assert_eq!(
        first.len(),
        2,
        "the service's own event is not materialized: {first:?}"
    );
    assert_eq!(first[0]["name"], "newest");
    assert_eq!(first[0]["timestamp"], 3000);
    assert_eq!(first[0]["latched"], true);
    assert_eq!(first[1]["name"], "only");
}

#[tokio::test]
async fn cdc_publishes_exactly_one_event_per_change_and_skips_latched_rows() {
    let (bus, queue) = bus_to_queue("cdc", json!({"source": ["custom"]})).await;
    let table = create_table("entities").await;
    let db = DynamoDb::shared().await;
    // a related row the trigger joins in
    db.put(
        &table,
        &json!({"pk": "t1", "sk": "owner", "name": "ann"}),
        None,
    )
    .await
    .unwrap();

    let to_event = |uow: &UnitOfWork, related: &[Value]| -> Result<Event, StepError> {
        let change = uow.event();
        let new = change
            .raw
            .as_ref()
            .and_then(|r| r.get("new"))
            .cloned()
            .unwrap_or(Value::Null);
        Ok(Event::new(
            change.id.clone(),
            change.event_type.clone(),
            change.timestamp,
        )
        .with_partition_key(change.partition_key.clone().unwrap_or_default())
        .with_entity("thing", new)
        .with_entity("related", json!(related.len())))
    };
    let query_table = table.clone();
    let rule = Cdc::new(
        "thing-events",
        regex::Regex::new("^thing-").unwrap(),
        to_event,
        EventBridge::new(aws::eventbridge().await.clone(), &bus),
    )
    .with_query(db, move |uow| {
        let mut e = Expression::default();
        e.condition = Some("#pk = :pk".into());
        e.names.insert("#pk".into(), "pk".into());
        e.values.insert(":pk".into(), json!(uow.partition_key()?));
        Some(QueryRequest {
            table: query_table.clone(),
            index: None,
            expression: e,
            page_size: None,
            consistent_read: true,
        })
    });
    let handler = Handler::builder(MemoryFaults::default())
        .dynamodb_options(lambda_stream::sources::DynamoDbOptions {
            region: None,
            ..Default::default()
        })
        .pipelines([rule])
        .build()
        .unwrap();
    let item = |pk: &str, extra: Value| {
        let mut v = json!({"pk": pk, "sk": "thing", "discriminator": "thing", "name": pk});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    let changes = [
        Change::insert(item("t1", json!({}))),
        Change::modify(
            item("t1", json!({})),
            item("t1", json!({"name": "renamed"})),
        ),
        Change::insert(item("t2", json!({"latched": true}))),
        Change::remove(item("t3", json!({}))),
    ];
    let response = handler
        .handle::<sources::DynamoDb>(
            to_dynamodb_records(&changes),
            &context(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());

    let delivered = drain_queue(&queue).await;
    let mut types: Vec<(String, String)> = delivered
        .iter()
        .map(|m| {
            (
                m["detail"]["id"].as_str().unwrap().to_owned(),
                m["detail-type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            ("ddb-0".to_string(), "thing-created".to_string()),
            ("ddb-1".into(), "thing-updated".into()),
            ("ddb-3".into(), "thing-deleted".into())
        ]
    );
    let updated = delivered
        .iter()
        .find(|m| m["detail"]["id"] == "ddb-1")
        .unwrap();
    assert_eq!(updated["detail"]["thing"]["name"], "renamed");
    assert_eq!(updated["detail"]["related"], 1);
    assert_eq!(updated["detail"]["tags"]["pipeline"], "thing-events");
}

/// An events-table item as the event processor appends it: `event` is the domain event.
fn appended(seq: usize, event: Value) -> Value {
    json!({"pk": format!("s{}", seq % 3), "sk": seq, "discriminator": "event", "event": event})
}

fn stored(seq: usize) -> Value {
    json!({"id": format!("e{seq}"), "type": "thing-updated", "timestamp": 1_000 + seq,
        "partitionKey": format!("t{}", seq % 3), "tags": {"source": "origin"},
        "thing": {"id": format!("t{}", seq % 3), "n": seq}})
}

fn in_place(uow: &UnitOfWork) -> Option<&Value> {
    uow.event().raw.as_ref()?.get("new")?.get("event")
}

/// 24 appended events over three keys, with changes holding no event, an event without an
/// id and an event of a malformed type among them (and, for the flavor, a latched row).
fn appended_batch(latched: bool) -> (Vec<Change>, Vec<usize>) {
    let mut changes = Vec::new();
    let mut bad = Vec::new();
    for seq in 0..24 {
        let item = match seq {
            3 => json!({"pk": "s0", "sk": seq, "discriminator": "event"}),
            7 => appended(seq, json!({"id": "", "type": "thing-updated"})),
            10 => appended(seq, json!({"id": "e10", "type": 5})),
            _ => appended(seq, stored(seq)),
        };
        if matches!(seq, 3 | 7 | 10) {
            bad.push(seq);
        }
        changes.push(Change::insert(item));
    }
    if latched {
        let mut item = appended(24, stored(24));
        item["latched"] = json!(true);
        changes.push(Change::insert(item));
    }
    (changes, bad)
}

/// Runs `appended_batch(latched)` through `rule` (the standard tags: `stage: test`): the number
/// of records to retry, and each fault as (its record's `eventID`, its message), sorted.
async fn run_appended(
    rule: lambda_stream::AssembledPipeline,
    latched: bool,
) -> (usize, Vec<(String, String)>) {
    let faults = std::sync::Arc::new(MemoryFaults::default());
    let settings = Settings {
        stage: Some("test".into()),
        ..Settings::default()
    };
    let handler = Handler::builder(faults.clone())
        .settings(&settings)
        .dynamodb_options(lambda_stream::sources::DynamoDbOptions {
            region: None,
            ..Default::default()
        })
        .pipelines([rule])
        .build()
        .unwrap();
    let (changes, _) = appended_batch(latched);
    let response = handler
        .handle::<sources::DynamoDb>(
            to_dynamodb_records(&changes),
            &context(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let mut faulted: Vec<(String, String)> = faults
        .published()
        .iter()
        .map(|f| {
            let record = f.uow.records()[0]["eventID"].as_str().unwrap().to_owned();
            (record, f.err.message.clone())
        })
        .collect();
    faulted.sort();
    (response.batch_item_failures.len(), faulted)
}

async fn publish_and_check(rule: lambda_stream::AssembledPipeline, queue: &str, latched: bool) {
    let (retried, faulted) = run_appended(rule, latched).await;
    assert_eq!(retried, 0);
    let (_, bad) = appended_batch(latched);

    let delivered = drain_queue(queue).await;
    let mut published: Vec<(String, Value)> = delivered
        .iter()
        .map(|m| {
            (
                m["detail"]["id"].as_str().unwrap().to_owned(),
                m["detail"].clone(),
            )
        })
        .collect();
    published.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected: Vec<usize> = (0..24).filter(|s| !bad.contains(s)).collect();
    expected.sort_by_key(|s| format!("e{s}"));
    assert_eq!(
        published.len(),
        expected.len(),
        "each good event once, the bad never"
    );
    for ((id, detail), seq) in published.iter().zip(&expected) {
        assert_eq!(id, &format!("e{seq}"));
        assert_eq!(detail["thing"]["n"], *seq, "the event's own data");
        assert_eq!(detail["timestamp"], 1_000 + seq);
        assert_eq!(detail["partitionKey"], format!("t{}", seq % 3));
        assert_eq!(detail["tags"]["source"], "origin", "its own tags are kept");
        assert_eq!(
            detail["tags"]["stage"], "test",
            "the standard tags are laid over"
        );
        assert_eq!(detail["tags"]["pipeline"], "stored-events");
    }
    assert_eq!(faulted.len(), 3, "{faulted:?}");
    assert_eq!(faulted[0].0, "ddb-10");
    assert!(
        faulted[0].1.contains("does not read: invalid type"),
        "{}",
        faulted[0].1
    );
    assert_eq!(faulted[1].0, "ddb-3");
    assert!(faulted[1].1.contains("holds no event to publish"));
    assert_eq!(faulted[2].0, "ddb-7");
    assert!(faulted[2].1.contains("has no id"));
}

#[tokio::test]
async fn cdc_stored_publishes_each_appended_event_where_it_lies_and_faults_the_rest() {
    let (bus, queue) = bus_to_queue("cdc-stored", json!({"source": ["custom"]})).await;
    let rule = CdcStored::new(
        "stored-events",
        "event-created",
        in_place,
        EventBridge::new(aws::eventbridge().await.clone(), &bus),
    )
    .into_pipeline();
    publish_and_check(rule, &queue, true).await;
}

#[tokio::test]
async fn publish_in_place_answers_each_unit_in_order_with_bad_ones_among_them() {
    let (bus, queue) = bus_to_queue("in-place", json!({"source": ["custom"]})).await;
    // the sink alone: the bad changes reach it between good ones
    let rule = Pipeline::new("stored-events")
        .on_event_type("event-created")
        .pipe(PublishInPlace::new(
            EventBridge::new(aws::eventbridge().await.clone(), &bus),
            in_place,
        ))
        .into_pipeline();
    publish_and_check(rule, &queue, false).await;
}

/// A publisher that rejects the events it names and answers the rest; `short` drops the last
/// answer, as a publisher breaking the one-answer-per-event contract would.
#[derive(Clone)]
struct Rejecting {
    ids: &'static [&'static str],
    short: bool,
}

impl BatchPublisher for Rejecting {
    fn publish_all<'a, E: Publishable + Sync>(
        &'a self,
        events: &'a [E],
    ) -> futures::future::BoxFuture<'a, Vec<Result<(), StepError>>> {
        let mut answers: Vec<Result<(), StepError>> = events
            .iter()
            .map(|e| match self.ids.contains(&e.id()) {
                true => Err(StepError::poison_msg(format!("rejected {}", e.id()))),
                false => Ok(()),
            })
            .collect();
        if self.short {
            answers.pop();
        }
        Box::pin(async move { answers })
    }
}

async fn publish_in_place(publisher: Rejecting) -> (Vec<(String, String)>, usize) {
    let rule = Pipeline::new("stored-events")
        .on_event_type("event-created")
        .pipe(PublishInPlace::new(publisher, in_place))
        .into_pipeline();
    let (retried, faulted) = run_appended(rule, false).await;
    (faulted, retried)
}

#[tokio::test]
async fn publish_in_place_gives_each_unit_its_own_answer() {
    // rejected events among good and unpublishable ones: each fault names its own record
    let (faulted, retried) = publish_in_place(Rejecting {
        ids: &["e5", "e11", "e23"],
        short: false,
    })
    .await;
    assert_eq!(retried, 0);
    let records: Vec<&str> = faulted.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        records,
        ["ddb-10", "ddb-11", "ddb-23", "ddb-3", "ddb-5", "ddb-7"]
    );
    for (record, message) in &faulted {
        match record.as_str() {
            "ddb-5" | "ddb-11" | "ddb-23" => {
                assert!(message.ends_with(&format!("rejected e{}", &record[4..])))
            }
            "ddb-10" => assert!(message.contains("change ddb-10 does not read"), "{message}"),
            _ => {}
        }
    }
    // answers that do not match the events: none is trusted, each published unit is retried;
    // a stream is retried from its first such record (`ddb-0`), so the records after it,
    // unpublishable ones included, come again rather than being faulted now
    let (faulted, retried) = publish_in_place(Rejecting {
        ids: &[],
        short: true,
    })
    .await;
    assert_eq!((faulted.len(), retried), (0, 1), "{faulted:?}");
}
