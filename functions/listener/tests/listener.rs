//! The listener on its sample events, against the local emulator (`make test`).

use std::time::Duration;

use lambda_stream::Settings;
use lambda_stream::connectors::DynamoDb;
use lambda_stream::sources;
use lambda_stream::sources::KinesisRecords;
use lambda_stream::testing::*;
use lambda_stream::{Event, Outcome};
use serde_json::{Value, json};

fn sample() -> KinesisRecords {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/listener.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn materializes_the_sample_and_faults_the_poison_record() {
    let table = create_table("views").await;
    let faults = std::sync::Arc::new(MemoryFaults::default());
    let handler = listener::handler(
        &Settings::default(),
        DynamoDb::shared().await,
        &table,
        faults.clone(),
        None,
    )
    .unwrap();
    let ctx = context(Duration::from_secs(30));
    let outcomes = handler
        .process(
            lambda_stream::sources::from_kinesis(sample()),
            &handler.invocation(&ctx),
        )
        .await;
    assert_eq!(
        outcomes.outcomes(),
        [
            Outcome::Done,
            Outcome::Done,
            Outcome::Faulted,
            Outcome::Done
        ]
    );
    // redelivery changes nothing
    let response = handler
        .handle::<sources::Kinesis>(sample(), &ctx)
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());

    let row = DynamoDb::shared()
        .await
        .get(&table, &json!({"pk": "t1", "sk": "thing"}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row["name"], "widget v2");
    assert_eq!(row["discriminator"], "thing");
    assert_eq!(row["version"], 2);
    assert_eq!(row["timestamp"], 1_700_000_000_002_i64);
    assert_eq!(row["lastModifiedBy"], "reference");
    // the thing's id is the key, not a field of the row
    assert!(row.get("id").is_none(), "{row}");
    let published = faults.published();
    assert_eq!(published.len(), 2, "one per delivery of the poison record");
    assert!(published[0].err.message.contains("thing.id is missing"));
}

/// A thing's life in versions: each event carries the whole state after the change.
fn life(id: &str) -> Vec<Event> {
    let states = [
        ("thing-created", json!({"name": "A"})),
        ("thing-updated", json!({"name": "A", "color": "red"})),
        (
            "thing-updated",
            json!({"name": "A", "color": "blue", "size": 2}),
        ),
        (
            "thing-deleted",
            json!({"name": "A", "color": "blue", "size": 2}),
        ),
        ("thing-created", json!({"name": "B"})),
        ("thing-updated", json!({"name": "B", "size": 1})),
        ("thing-updated", json!({"name": "B", "color": "green"})),
        ("thing-updated", json!({"name": "C", "color": "green"})),
    ];
    states
        .iter()
        .enumerate()
        .map(|(i, (t, state))| {
            let mut thing = state.clone();
            thing["id"] = json!(id);
            let mut e = Event::new(format!("thing#{id}:v{}", i + 1), *t, 1_000 + i as i64)
                .with_partition_key(id)
                .with_entity("thing", thing);
            e.fields.insert("version".into(), json!(i + 1));
            e
        })
        .collect()
}

#[tokio::test]
async fn any_order_and_any_duplicates_of_a_things_versions_give_the_same_view() {
    every_order_gives_the_same_view(&Settings::default()).await;
}

#[tokio::test]
async fn with_the_idempotency_guard_every_event_is_applied_once_and_marked_completed() {
    let marks = create_idempotency_table("idem").await;
    let settings = Settings {
        idempotency_table: Some(marks.clone()),
        idempotency_max_attempts: Some(5),
        ..Settings::default()
    };
    every_order_gives_the_same_view(&settings).await;
    let items = DynamoDb::shared()
        .await
        .client()
        .scan()
        .table_name(&marks)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    // 24 things x 8 versions, each in the one pipeline its type goes to
    assert_eq!(items.len(), 24 * 8);
    assert!(
        items
            .iter()
            .all(|i| i["status"].as_s().unwrap() == "COMPLETED")
    );
    let ids: Vec<&str> = items
        .iter()
        .map(|i| i["id"].as_s().unwrap().as_str())
        .collect();
    assert!(ids.contains(&"thing-view#thing#t3:v8"));
    assert!(ids.contains(&"thing-deleted#thing#t3:v4"));
}

/// 24 things, each with its 8 versions in its own order, some twice, all in one batch, then
/// the whole batch again, reversed: every view ends at version 8.
async fn every_order_gives_the_same_view(settings: &Settings) {
    let table = create_table("views").await;
    let handler = listener::handler(
        settings,
        DynamoDb::shared().await,
        &table,
        MemoryFaults::default(),
        None,
    )
    .unwrap();
    let ctx = context(Duration::from_secs(30));
    // 24 things, each with its 8 versions in its own order, some twice, all in one batch
    let mut batch = Vec::new();
    for k in 0..24_usize {
        let mut events = life(&format!("t{k}"));
        // a deterministic shuffle per thing: rotate, reverse every other, duplicate a few
        events.rotate_left(k % 8);
        if k % 2 == 1 {
            events.reverse();
        }
        let twice = events[k % 8].clone();
        events.insert((k * 3) % events.len(), twice);
        batch.extend(events);
    }
    let response = handler
        .handle::<sources::Kinesis>(to_kinesis_records(&batch), &ctx)
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    // and the whole batch again, reversed
    batch.reverse();
    handler
        .handle::<sources::Kinesis>(to_kinesis_records(&batch), &ctx)
        .await
        .unwrap();
    let db = DynamoDb::shared().await;
    for k in 0..24 {
        let row = db
            .get(&table, &json!({"pk": format!("t{k}"), "sk": "thing"}))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                &row["name"],
                &row["color"],
                &row["version"],
                &row["deleted"],
                &row["size"]
            ),
            (
                &json!("C"),
                &json!("green"),
                &json!(8),
                &Value::Null,
                &Value::Null
            ),
            "thing t{k}: {row}"
        );
    }
}

#[tokio::test]
async fn a_delete_marks_the_row_and_sets_its_ttl_and_older_versions_do_not_resurrect_it() {
    let table = create_table("views").await;
    let handler = listener::handler(
        &Settings::default(),
        DynamoDb::shared().await,
        &table,
        MemoryFaults::default(),
        None,
    )
    .unwrap();
    let ctx = context(Duration::from_secs(30));
    let events = life("t9");
    // the first deletion arrives, then older versions late
    let batch = to_kinesis_records(&[events[3].clone(), events[0].clone(), events[2].clone()]);
    handler
        .handle::<sources::Kinesis>(batch, &ctx)
        .await
        .unwrap();
    let row = DynamoDb::shared()
        .await
        .get(&table, &json!({"pk": "t9", "sk": "thing"}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row["deleted"], true);
    assert_eq!(row["version"], 4);
    assert_eq!(row["ttl"], 1 + listener::DELETED_TTL_DAYS * 86_400);
}

#[tokio::test]
async fn garbage_records_are_faults_not_panics() {
    let table = create_table("views").await;
    let faults = std::sync::Arc::new(MemoryFaults::default());
    let handler = listener::handler(
        &Settings::default(),
        DynamoDb::shared().await,
        &table,
        faults.clone(),
        None,
    )
    .unwrap();
    let mut event: serde_json::Value =
        serde_json::to_value(to_kinesis_records(&[Event::new("a", "thing-created", 1)])).unwrap();
    let good = event["Records"][0].clone();
    let mut not_base64 = good.clone();
    not_base64["kinesis"]["data"] = json!("***");
    let mut not_json = good.clone();
    not_json["kinesis"]["data"] = json!("bm90IGpzb24=");
    event["Records"] = json!([not_base64, not_json, {"unexpected": true}]);
    let batch: KinesisRecords = serde_json::from_value(event).unwrap();
    let response = handler
        .handle::<sources::Kinesis>(batch, &context(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(faults.published().len(), 3);
}
