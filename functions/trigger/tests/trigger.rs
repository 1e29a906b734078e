//! The trigger on its sample events, against the local emulator (`make test`).

use std::time::Duration;

use lambda_stream::Settings;
use lambda_stream::aws;
use lambda_stream::connectors::EventBridge;
use lambda_stream::sources;
use lambda_stream::sources::DynamoDbRecords;
use lambda_stream::testing::*;
use serde_json::json;

fn sample() -> DynamoDbRecords {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/trigger.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn publishes_each_appended_event_once_and_faults_an_item_without_one() {
    let (bus, queue) = bus_to_queue("trigger", json!({"source": ["custom"]})).await;
    let faults = std::sync::Arc::new(MemoryFaults::default());
    let handler = trigger::handler(
        &Settings::default(),
        EventBridge::new(aws::eventbridge().await.clone(), &bus),
        faults.clone(),
        None,
    )
    .unwrap();
    let response = handler
        .handle::<sources::DynamoDb>(sample(), &context(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());

    let delivered = drain_queue(&queue).await;
    assert_eq!(delivered.len(), 1);
    let event = &delivered[0]["detail"];
    assert_eq!(delivered[0]["detail-type"], "thing-created");
    assert_eq!(event["id"], "thing#t1:v1");
    assert_eq!(event["version"], 1);
    assert_eq!(event["thing"]["name"], "widget");
    assert_eq!(
        event["tags"]["source"], "reference",
        "the event's own tags are kept"
    );
    assert_eq!(event["tags"]["pipeline"], "publish-events");

    let published = faults.published();
    assert_eq!(published.len(), 1);
    assert!(
        published[0]
            .err
            .message
            .contains("holds no event to publish")
    );
}
