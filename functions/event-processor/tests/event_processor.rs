//! The event processor on its sample events, against the local emulator (`make test`).

use std::time::Duration;

use lambda_stream::Settings;
use lambda_stream::aws;
use lambda_stream::connectors::DynamoDb;
use lambda_stream::sources;
use lambda_stream::sources::DynamoDbRecords;
use lambda_stream::testing::*;
use serde_json::{Value, json};

fn sample(name: &str) -> DynamoDbRecords {
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

fn events_of(log: &[Value], stream: &str) -> Vec<Value> {
    log.iter()
        .filter(|r| r["pk"] == stream && r["discriminator"] == "event")
        .map(|r| r["event"].clone())
        .collect()
}

#[tokio::test]
async fn commands_append_versioned_events_once_and_rejected_ones_fault_each_time() {
    decide_the_sample_twice(&Settings::default()).await;
}

#[tokio::test]
async fn with_the_idempotency_guard_decided_commands_are_marked_and_rejected_ones_stay_open() {
    let marks = create_idempotency_table("idem").await;
    let settings = Settings {
        idempotency_table: Some(marks.clone()),
        idempotency_max_attempts: Some(5),
        ..Settings::default()
    };
    decide_the_sample_twice(&settings).await;
    let mut statuses: Vec<String> = aws::dynamodb()
        .await
        .scan()
        .table_name(&marks)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default()
        .iter()
        .map(|i| i["status"].as_s().unwrap().clone())
        .collect();
    statuses.sort();
    // two accepted (completed: a redelivery skips them), one rejected (failed: a redelivery
    // raises its fault again)
    assert_eq!(statuses, ["COMPLETED", "COMPLETED", "FAILED"]);
}

async fn decide_the_sample_twice(settings: &Settings) {
    let table = create_table("events").await;
    let faults = std::sync::Arc::new(MemoryFaults::default());
    let handler =
        event_processor::handler(settings, DynamoDb::shared().await, &table, faults.clone())
            .unwrap();
    let ctx = context(Duration::from_secs(30));
    for _ in 0..2 {
        // the second pass is a redelivery: nothing is appended twice, the rejected command
        // raises the same fault again from its recorded reason
        let response = handler
            .handle::<sources::DynamoDb>(sample("event-processor-commands.json"), &ctx)
            .await
            .unwrap();
        assert!(response.batch_item_failures.is_empty());
    }
    let log = items(&table).await;
    let events = events_of(&log, "thing#t1");
    assert_eq!(events.len(), 2, "{log:?}");
    assert_eq!(events[0]["id"], "thing#t1:v1");
    assert_eq!(events[0]["type"], "thing-created");
    assert_eq!(events[0]["version"], 1);
    assert_eq!(events[0]["partitionKey"], "t1");
    assert_eq!(events[1]["type"], "thing-updated");
    assert_eq!(events[1]["version"], 2);
    assert_eq!(events[1]["thing"], json!({"id": "t1", "name": "widget v2"}));
    let snapshot = log.iter().find(|r| r["sk"] == "snapshot").unwrap();
    assert_eq!(
        (snapshot["version"].clone(), snapshot["lastCommand"].clone()),
        (json!(2), json!(3))
    );

    let published = faults.published();
    assert_eq!(published.len(), 2);
    assert_eq!(published[0].id, published[1].id);
    assert_eq!(published[0].err, published[1].err);
    assert_eq!(published[0].err.name, "InvalidCommand");
    assert!(
        published[0]
            .err
            .message
            .contains("unknown command `paint-thing`")
    );
}

/// Commands as command-intake stores them: each stream's item modified once per command.
fn commands(list: &[(&str, u64, &str, Value)]) -> lambda_stream::sources::DynamoDbRecords {
    let changes: Vec<Change> = list
        .iter()
        .map(|(stream, sequence, command, data)| {
            let item = json!({"pk": stream, "sk": "stream", "discriminator": "command",
                "sequence": sequence, "command": command, "requestId": format!("{stream}-{sequence}"),
                "data": data, "timestamp": 1_700_000_000_000_u64 + sequence});
            if *sequence == 1 {
                Change::insert(item)
            } else {
                Change::modify(json!({"pk": stream, "sk": "stream"}), item)
            }
        })
        .collect();
    to_dynamodb_records(&changes)
}

#[tokio::test]
async fn many_commands_on_one_thing_in_a_batch_are_decided_in_order_and_once() {
    let table = create_table("events").await;
    let faults = std::sync::Arc::new(MemoryFaults::default());
    let handler = event_processor::handler(
        &Settings::default(),
        DynamoDb::shared().await,
        &table,
        faults.clone(),
    )
    .unwrap();
    let ctx = context(Duration::from_secs(30));
    let (a, b) = ("thing#a", "thing#b");
    let list = [
        (
            a,
            1,
            "create-thing",
            json!({"id": "a", "name": "A", "color": "red"}),
        ),
        (b, 1, "update-thing", json!({"id": "b", "color": "blue"})), // b does not exist yet
        (a, 2, "update-thing", json!({"id": "a", "color": "blue"})),
        (b, 2, "create-thing", json!({"id": "b", "name": "B"})),
        (a, 3, "delete-thing", json!({"id": "a"})),
        (a, 4, "update-thing", json!({"id": "a", "name": "too late"})), // deleted
        (a, 5, "create-thing", json!({"id": "a", "name": "A again"})),
        (b, 3, "create-thing", json!({"id": "b", "name": "twice"})), // exists
        (a, 6, "update-thing", json!({"id": "a", "size": 3})),
        (
            a,
            7,
            "update-thing",
            json!({"id": "a", "size": null, "color": "green"}),
        ),
        (b, 4, "delete-thing", json!({"id": "b"})),
        (a, 8, "paint-thing", json!({"id": "a"})),
    ];
    // delivered whole, again whole, then its second half again (a checkpoint in the middle)
    for batch in [&list[..], &list[..], &list[6..]] {
        let response = handler
            .handle::<sources::DynamoDb>(commands(batch), &ctx)
            .await
            .unwrap();
        assert!(response.batch_item_failures.is_empty());
    }
    let log = items(&table).await;
    let types = |stream| -> Vec<(String, u64, u64)> {
        events_of(&log, stream)
            .iter()
            .map(|e| {
                (
                    e["type"].as_str().unwrap().to_owned(),
                    e["version"].as_u64().unwrap(),
                    e["tags"]["command"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let t = |s: &str, v, c| (s.to_owned(), v, c);
    assert_eq!(
        types(a),
        [
            t("thing-created", 1, 1),
            t("thing-updated", 2, 2),
            t("thing-deleted", 3, 3),
            t("thing-created", 4, 5),
            t("thing-updated", 5, 6),
            t("thing-updated", 6, 7)
        ]
    );
    assert_eq!(
        types(b),
        [t("thing-created", 1, 2), t("thing-deleted", 2, 4)]
    );
    let last = events_of(&log, a).pop().unwrap();
    assert_eq!(
        last["thing"],
        json!({"id": "a", "name": "A again", "color": "green"})
    );
    // followed across functions by the request that caused it
    assert_eq!(last["tags"]["correlationId"], last["tags"]["requestId"]);
    assert!(last["tags"]["correlationId"].is_string());
    // each rejected command faults once per delivery, always as the same fault
    let published = faults.published();
    let mut ids: Vec<&str> = published.iter().map(|f| f.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "b#1, a#4, b#3, a#8: {ids:?}");
    assert_eq!(published.len(), 4 + 4 + 2);
}

#[tokio::test]
async fn ingested_messages_are_recorded_once() {
    let table = create_table("events").await;
    let handler = event_processor::handler(
        &Settings::default(),
        DynamoDb::shared().await,
        &table,
        MemoryFaults::default(),
    )
    .unwrap();
    let ctx = context(Duration::from_secs(30));
    handler
        .handle::<sources::DynamoDb>(sample("event-processor-ingest.json"), &ctx)
        .await
        .unwrap();
    handler
        .handle::<sources::DynamoDb>(sample("event-processor-ingest.json"), &ctx)
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
    use event_processor::{Snapshot, StoredCommand, decide};
    let cmd = |command: &str, data: Value| StoredCommand {
        pk: "thing#t1".into(),
        sequence: 7,
        command: command.into(),
        request_id: "r".into(),
        data,
        timestamp: 5,
    };
    let none = Snapshot::default();
    let live = Snapshot {
        version: 2,
        last_command: 6,
        thing: json!({"id": "t1", "name": "n", "color": "red"})
            .as_object()
            .cloned()
            .unwrap(),
        live: true,
    };
    let e = decide(
        &cmd("create-thing", json!({"id": "t1", "name": "n"})),
        &none,
    )
    .unwrap();
    assert_eq!(
        (e.id.as_str(), e.event_type.as_str(), e.timestamp),
        ("thing#t1:v1", "thing-created", 5)
    );
    assert_eq!(e.entity("version"), Some(&json!(1)));
    let rejected = |c, s| decide(&c, s).unwrap_err().to_string();
    assert!(rejected(cmd("create-thing", json!({"id": "t1"})), &none).contains("data.name"));
    assert!(
        rejected(cmd("create-thing", json!({"id": "t1", "name": "x"})), &live)
            .contains("already exists")
    );
    assert!(rejected(cmd("update-thing", json!({})), &live).contains("data.id"));
    assert!(rejected(cmd("update-thing", json!({"id": "t1"})), &none).contains("does not exist"));
    // an update carries the whole state: set, keep, remove
    let u = decide(
        &cmd(
            "update-thing",
            json!({"id": "t1", "color": null, "size": 2}),
        ),
        &live,
    )
    .unwrap();
    assert_eq!(
        u.entity("thing"),
        Some(&json!({"id": "t1", "name": "n", "size": 2}))
    );
    assert_eq!(u.entity("version"), Some(&json!(3)));
    let d = decide(&cmd("delete-thing", json!({"id": "t1"})), &live).unwrap();
    assert_eq!(d.event_type, "thing-deleted");
    assert_eq!(d.entity("thing"), Some(&Value::Object(live.thing.clone())));
}
