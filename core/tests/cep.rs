//! The complex-event-processing flavors (collect, correlate, evaluate, expired) against the
//! local emulator (`make test`). The store's stream is fed to the trigger side as the changes
//! its writes make, in adversarial orders; every effect is real.

use std::time::Duration;

use lambda_stream::connectors::{DynamoDb, EventBridge};
use lambda_stream::flavors::{
    Collect, Correlate, Evaluate, EventStore, Expire, Expired, Match, PublishEmitted, count_within,
};
use lambda_stream::testing::*;
use lambda_stream::{Event, Handler, IntoPipeline, Settings, aws, sources};
use serde_json::{Value, json};

const T0: i64 = 1_700_000_000_000;

fn updated(id: &str, thing: &str, at_s: i64) -> Event {
    Event::new(id, "thing-updated", T0 + at_s * 1000)
        .with_partition_key(thing)
        .with_entity("thing", json!({"id": thing}))
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
    rows.sort_by(|a, b| {
        (a["pk"].as_str(), a["sk"].as_str()).cmp(&(b["pk"].as_str(), b["sk"].as_str()))
    });
    rows
}

fn trigger_handler(rules: Vec<lambda_stream::AssembledPipeline>) -> Handler {
    Handler::builder(MemoryFaults::default())
        .dynamodb_options(sources::DynamoDbOptions {
            region: None,
            ..Default::default()
        })
        .pipelines(rules)
        .build()
        .unwrap()
}

async fn handle_changes(handler: &Handler, changes: &[Change]) {
    let response = handler
        .handle::<sources::DynamoDb>(
            to_dynamodb_records(changes),
            &context(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
}

/// Three updates of a thing within a minute.
fn three_in_a_minute(trigger: &Event, events: &[Event]) -> Vec<Match> {
    count_within(trigger, events, Duration::from_secs(60), 3)
}

#[tokio::test]
async fn collect_stores_each_event_once_under_its_key() {
    let table = create_event_store("collect").await;
    let store = EventStore::new(DynamoDb::shared().await, &table);
    let handler = Handler::builder(MemoryFaults::default())
        .pipeline(
            Collect::new("collect", "thing-updated", store)
                .ttl(Duration::from_secs(3600))
                .expire(Expire::As("thing-stale".into())),
        )
        .build()
        .unwrap();
    // twelve events of one thing, each twice in the batch, and the batch delivered twice
    let events: Vec<Event> = (0..12)
        .flat_map(|i| {
            let e = updated(&format!("e{i:02}"), "thing-1", i);
            [e.clone(), e]
        })
        .chain([Event::new("no-key", "thing-updated", T0)])
        .collect();
    for _ in 0..2 {
        let response = handler
            .handle::<sources::Kinesis>(
                to_kinesis_records(&events),
                &context(Duration::from_secs(60)),
            )
            .await
            .unwrap();
        assert!(response.batch_item_failures.is_empty());
    }
    let rows = scan(&table).await;
    assert_eq!(rows.len(), 12, "{rows:#?}");
    let first = &rows[0];
    assert_eq!(first["pk"], "e00");
    assert_eq!(first["sk"], "EVENT");
    assert_eq!(first["discriminator"], "EVENT");
    assert_eq!(first["data"], "thing-1");
    assert_eq!(first["ttl"], T0 / 1000 + 3600);
    assert_eq!(first["expire"], "thing-stale");
    assert_eq!(first["event"]["type"], "thing-updated");
    assert!(first["event"].get("raw").is_none());
    assert!(first["sequenceNumber"].is_string());
}

/// The trigger side in the order the store's stream would carry it: each collected event
/// correlated, and its correlation evaluated, before the next event arrives, in an order
/// other than the events' time; some records delivered twice.
#[tokio::test]
async fn evaluate_emits_each_match_exactly_once_in_any_order_of_arrival() {
    let (bus_name, queue) = bus_to_queue("cep", json!({"detail-type": ["thing-hot"]})).await;
    let table = create_event_store("evaluate").await;
    let db = DynamoDb::shared().await;
    let store = EventStore::new(db.clone(), &table);
    let bus = EventBridge::from_settings(&Settings {
        bus_name: bus_name.clone(),
        ..Settings::default()
    })
    .await;
    let handler = trigger_handler(vec![
        Correlate::new("correlate-hot", "thing-updated", store.clone())
            .suffix("hot")
            .ttl(Duration::from_secs(600))
            .into_pipeline(),
        Evaluate::new(
            "thing-hot",
            "thing-updated",
            store.clone(),
            "thing-hot",
            three_in_a_minute,
        )
        .suffix("hot")
        .into_pipeline(),
        PublishEmitted::new("publish-matches", bus).into_pipeline(),
    ]);

    // thing-A: updates at 0, 10, 20, 30 s (matches ending at 20 and 30), 200, 210 (none),
    // 400, 405, 410 (one): matches anchored at a3, a4, a9. thing-B: the same times.
    let seconds = [0, 10, 20, 30, 200, 210, 400, 405, 410];
    let orders: [[usize; 9]; 2] = [[8, 2, 6, 0, 4, 7, 1, 5, 3], [3, 1, 2, 0, 7, 8, 6, 5, 4]];
    let mut emitted_inserts = Vec::new();
    for (thing, order) in ["thing-A", "thing-B"].iter().zip(orders) {
        for (n, i) in order.into_iter().enumerate() {
            let event = updated(&format!("{thing}-{}", i + 1), thing, seconds[i]);
            let collected = json!({
                "pk": event.id, "sk": "EVENT", "discriminator": "EVENT", "timestamp": event.timestamp,
                "ttl": event.timestamp / 1000 + 3600, "data": thing,
                "event": serde_json::to_value(&event).unwrap(),
            });
            db.put(&table, &collected, None).await.unwrap();
            handle_changes(&handler, &[Change::insert(collected)]).await;
            let correlation = scan(&table)
                .await
                .into_iter()
                .find(|r| r["sk"] == event.id.as_str() && r["discriminator"] == "CORREL")
                .expect("correlated");
            assert_eq!(correlation["pk"], format!("{thing}.hot"));
            let before: Vec<Value> = scan(&table).await;
            let times = if n % 3 == 0 { 2 } else { 1 };
            for _ in 0..times {
                handle_changes(&handler, &[Change::insert(correlation.clone())]).await;
            }
            // the EMIT items this evaluation added are what the stream carries next
            for row in scan(&table).await {
                if row["sk"] == "EMIT" && !before.contains(&row) {
                    emitted_inserts.push(Change::insert(row));
                }
            }
        }
    }
    let mut matches: Vec<String> = scan(&table)
        .await
        .into_iter()
        .filter(|r| r["sk"] == "EMIT")
        .map(|r| r["pk"].as_str().unwrap().to_owned())
        .collect();
    matches.sort();
    let expected: Vec<String> = ["thing-A", "thing-B"]
        .iter()
        .flat_map(|t| [3, 4, 9].map(|i| format!("{t}-{i}.thing-hot")))
        .collect();
    assert_eq!(matches, expected);
    assert_eq!(emitted_inserts.len(), 6, "each match inserted once");

    handle_changes(&handler, &emitted_inserts).await;
    let delivered = drain_queue(&queue).await;
    let mut ids: Vec<&str> = delivered
        .iter()
        .map(|m| m["detail"]["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, expected.iter().map(String::as_str).collect::<Vec<_>>());
    let a4 = delivered
        .iter()
        .find(|m| m["detail"]["id"] == "thing-A-4.thing-hot")
        .unwrap();
    assert_eq!(a4["detail"]["partitionKey"], "thing-A");
    assert_eq!(a4["detail"]["timestamp"], T0 + 30_000);
    let triggers: Vec<&str> = a4["detail"]["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        triggers,
        ["thing-A-1", "thing-A-2", "thing-A-3", "thing-A-4"]
    );
    assert_eq!(a4["detail"]["thing"]["id"], "thing-A");
}

/// "Nothing for a minute": the latest event of each key in one item whose TTL moves with it;
/// its expiry emits once, an expiry of no latest item (a delete by hand) emits nothing.
#[tokio::test]
async fn expired_emits_once_when_the_latest_event_of_a_key_expires() {
    let (bus_name, queue) = bus_to_queue("expired", json!({"detail-type": ["thing-stale"]})).await;
    let table = create_event_store("expired").await;
    let db = DynamoDb::shared().await;
    let store = EventStore::new(db.clone(), &table);
    let bus = EventBridge::from_settings(&Settings {
        bus_name,
        ..Settings::default()
    })
    .await;
    let handler = trigger_handler(vec![
        Correlate::new(
            "correlate-activity",
            ["thing-created", "thing-updated"],
            store,
        )
        .suffix("activity")
        .latest()
        .ttl(Duration::from_secs(60))
        .expire(Expire::As("thing-stale".into()))
        .into_pipeline(),
        Expired::new("thing-stale", bus)
            .event_type(["thing-created", "thing-updated"])
            .into_pipeline(),
    ]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let at = |id: &str, s: i64| {
        let mut e = updated(id, "thing-1", 0);
        e.timestamp = now + s * 1000;
        e
    };
    let collected = |e: &Event| {
        json!({
            "pk": e.id, "sk": "EVENT", "discriminator": "EVENT", "timestamp": e.timestamp,
            "data": "thing-1", "event": serde_json::to_value(e).unwrap(),
        })
    };
    // the latest (u2) arrives before an older one (u1), and twice; one from before the TTL
    // (u0, two minutes old) would expire at once and is not kept
    for e in [at("u2", 5), at("u1", 0), at("u2", 5), at("u0", -120)] {
        handle_changes(&handler, &[Change::insert(collected(&e))]).await;
    }
    let rows = scan(&table).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let latest = rows[0].clone();
    assert_eq!(
        (latest["pk"].as_str(), latest["sk"].as_str()),
        (Some("thing-1.activity"), Some("LATEST"))
    );
    assert_eq!(latest["event"]["id"], "u2");
    assert_eq!(latest["ttl"], (now + 5_000) / 1000 + 60);

    // a delete by hand before the TTL is no expiry
    handle_changes(&handler, &[Change::remove(latest.clone())]).await;
    assert!(drain_queue(&queue).await.is_empty());

    // expired, and the record delivered twice: the same event (by the record's id)
    db.delete(&table, &json!({"pk": "thing-1.activity", "sk": "LATEST"}))
        .await
        .unwrap();
    for _ in 0..2 {
        handle_changes(&handler, &[Change::expire(latest.clone())]).await;
    }
    let delivered = drain_queue(&queue).await;
    assert_eq!(delivered.len(), 2);
    assert_eq!(delivered[0]["detail"]["id"], delivered[1]["detail"]["id"]);
    let stale = &delivered[0]["detail"];
    assert_eq!(stale["type"], "thing-stale");
    assert_eq!(stale["partitionKey"], "thing-1");
    assert_eq!(
        stale["timestamp"],
        ((now + 5_000) / 1000 + 60) * 1000 + (now + 5_000) % 1000
    );
    assert_eq!(stale["triggers"][0]["id"], "u2");
    assert_eq!(stale["thing"]["id"], "thing-1");
}
