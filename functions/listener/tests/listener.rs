//! The listener on its sample events, against the local emulator (`make test`).

use std::time::Duration;

use lambda_stream::connectors::DynamoDb;
use lambda_stream::sources::KinesisBatch;
use lambda_stream::testing::*;
use lambda_stream::{Event, Outcome};
use serde_json::json;

fn sample() -> KinesisBatch {
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
    let handler = listener::handler(DynamoDb::shared().await, &table, faults.clone()).unwrap();
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
    let response = handler.kinesis(sample(), &ctx).await.unwrap();
    assert!(response.batch_item_failures.is_empty());

    let row = DynamoDb::shared()
        .await
        .get(&table, &json!({"pk": "t1", "sk": "thing"}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row["name"], "widget v2");
    assert_eq!(row["discriminator"], "thing");
    assert_eq!(row["timestamp"], 1_700_000_000_002_i64);
    assert_eq!(row["lastModifiedBy"], "reference");
    assert_eq!(row["latched"], true);
    let published = faults.published();
    assert_eq!(published.len(), 2, "one per delivery of the poison record");
    assert!(published[0].err.message.contains("thing.id is missing"));
}

#[tokio::test]
async fn a_delete_marks_the_row_and_sets_its_ttl_and_old_events_do_not_resurrect_it() {
    let table = create_table("views").await;
    let handler =
        listener::handler(DynamoDb::shared().await, &table, MemoryFaults::default()).unwrap();
    let ctx = context(Duration::from_secs(30));
    let thing = |t: &str, ts: i64| {
        Event::new(format!("e{ts}"), t, ts)
            .with_partition_key("t9")
            .with_entity("thing", json!({"id": "t9", "name": "x"}))
    };
    let batch = to_kinesis_records(&[
        thing("thing-created", 1000),
        thing("thing-deleted", 2000),
        thing("thing-updated", 1500),
    ]);
    assert!(
        handler
            .kinesis(batch, &ctx)
            .await
            .unwrap()
            .batch_item_failures
            .is_empty()
    );
    let row = DynamoDb::shared()
        .await
        .get(&table, &json!({"pk": "t9", "sk": "thing"}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row["deleted"], true);
    assert_eq!(row["ttl"], 2 + listener::DELETED_TTL_DAYS * 86_400);
}

#[tokio::test]
async fn garbage_records_are_faults_not_panics() {
    let table = create_table("views").await;
    let faults = std::sync::Arc::new(MemoryFaults::default());
    let handler = listener::handler(DynamoDb::shared().await, &table, faults.clone()).unwrap();
    let mut event: serde_json::Value =
        serde_json::to_value(to_kinesis_records(&[Event::new("a", "thing-created", 1)])).unwrap();
    let good = event["Records"][0].clone();
    let mut not_base64 = good.clone();
    not_base64["kinesis"]["data"] = json!("***");
    let mut not_json = good.clone();
    not_json["kinesis"]["data"] = json!("bm90IGpzb24=");
    event["Records"] = json!([not_base64, not_json, {"unexpected": true}]);
    let batch: KinesisBatch = serde_json::from_value(event).unwrap();
    let response = handler
        .kinesis(batch, &context(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(faults.published().len(), 3);
}
