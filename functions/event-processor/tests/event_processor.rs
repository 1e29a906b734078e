//! The event processor on its sample events, against the local emulator (`make test`).

use std::time::Duration;

use lambda_stream::aws;
use lambda_stream::connectors::DynamoDb;
use lambda_stream::sources::DynamoDbBatch;
use lambda_stream::testing::*;
use serde_json::{Value, json};

fn sample(name: &str) -> DynamoDbBatch {
    let path = format!("{}/../../events/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn items(table: &str) -> Vec<Value> {
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
    rows.sort_by_key(|r| {
        (
            r["pk"].as_str().unwrap().to_owned(),
            r["sk"].as_str().unwrap().to_owned(),
        )
    });
    rows
}

#[tokio::test]
async fn commands_append_events_exactly_once_and_invalid_commands_fault() {
    let table = create_table("events").await;
    let faults = std::sync::Arc::new(MemoryFaults::default());
    let handler =
        event_processor::handler(DynamoDb::shared().await, &table, faults.clone()).unwrap();
    let ctx = context(Duration::from_secs(30));
    for _ in 0..2 {
        // the second pass is a redelivery: nothing is appended twice
        let response = handler
            .dynamodb(sample("event-processor-commands.json"), &ctx)
            .await
            .unwrap();
        assert!(response.batch_item_failures.is_empty());
    }
    let log = items(&table).await;
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0]["sk"], "000000000001");
    assert_eq!(log[0]["discriminator"], "event");
    assert_eq!(log[0]["event"]["type"], "thing-created");
    assert_eq!(log[0]["event"]["id"], "thing:1");
    assert_eq!(log[0]["event"]["partitionKey"], "t1");
    assert_eq!(log[1]["event"]["type"], "thing-updated");
    assert_eq!(log[1]["event"]["thing"]["name"], "widget v2");

    let published = faults.published();
    assert_eq!(published[0].err.name, "InvalidCommand");
    assert!(
        published[0]
            .err
            .message
            .contains("unknown command `paint-thing`")
    );
}

#[tokio::test]
async fn ingested_messages_are_recorded_once() {
    let table = create_table("events").await;
    let handler =
        event_processor::handler(DynamoDb::shared().await, &table, MemoryFaults::default())
            .unwrap();
    let ctx = context(Duration::from_secs(30));
    handler
        .dynamodb(sample("event-processor-ingest.json"), &ctx)
        .await
        .unwrap();
    handler
        .dynamodb(sample("event-processor-ingest.json"), &ctx)
        .await
        .unwrap();
    let log = items(&table).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["pk"], "ingest#upstream-1");
    assert_eq!(log[0]["event"]["type"], "message-received");
    assert_eq!(log[0]["event"]["message"]["body"]["symbol"], "ACME");
}

#[test]
fn business_rules() {
    use event_processor::{StoredCommand, decide};
    let cmd = |command: &str, data: Value| StoredCommand {
        pk: "thing".into(),
        sequence: 7,
        command: command.into(),
        request_id: "r".into(),
        data,
        timestamp: 5,
    };
    let e = decide(&cmd("create-thing", json!({"id": "t1", "name": "n"}))).unwrap();
    assert_eq!(
        (e.id.as_str(), e.event_type.as_str(), e.timestamp),
        ("thing:7", "thing-created", 5)
    );
    assert!(
        decide(&cmd("create-thing", json!({"id": "t1"})))
            .unwrap_err()
            .to_string()
            .contains("data.name")
    );
    assert!(
        decide(&cmd("update-thing", json!({})))
            .unwrap_err()
            .to_string()
            .contains("data.id")
    );
    assert_eq!(
        decide(&cmd("delete-thing", json!({"id": "t1"})))
            .unwrap()
            .event_type,
        "thing-deleted"
    );
}
