//! EventBridge publishing and fault events against the local emulator (`make test`): events
//! are read back through a bus rule delivering to an SQS queue.

use std::sync::Arc;
use std::time::Duration;

use lambda_stream::connectors::{DynamoDb, EventBridge, EventBridgeFaults, UpdateRequest};
use lambda_stream::expressions::update_expression;
use lambda_stream::sinks::Update;
use lambda_stream::sources;
use lambda_stream::testing::*;
use lambda_stream::{Event, Handler, Pipeline, StepError, UnitOfWork, aws};
use serde_json::json;

#[tokio::test]
async fn put_events_publishes_every_event_in_requests_of_ten() {
    let (bus, queue) = bus_to_queue("bus", json!({"detail-type": ["thing-created"]})).await;
    let eb = EventBridge::new(aws::eventbridge().await.clone(), &bus);
    let events: Vec<Event> = (0..25)
        .map(|i| {
            Event::new(format!("e{i}"), "thing-created", i).with_partition_key(format!("k{i}"))
        })
        .collect();
    let results = eb.put_events(&events).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let delivered = drain_queue(&queue).await;
    assert_eq!(delivered.len(), 25);
    let mut ids: Vec<String> = delivered
        .iter()
        .map(|m| m["detail"]["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort_by_key(|id| id[1..].parse::<usize>().unwrap());
    assert_eq!(ids[24], "e24");
    assert_eq!(delivered[0]["source"], "custom");
}

#[tokio::test]
async fn an_oversize_event_is_poison_and_the_others_go_through() {
    let (bus, queue) = bus_to_queue("bus", json!({"source": ["custom"]})).await;
    let eb = EventBridge::new(aws::eventbridge().await.clone(), &bus);
    // incompressible: a field of repeated characters would be compressed to a few hundred bytes
    let big =
        Event::new("big", "thing-created", 1).with_entity("blob", json!(incompressible(400_000)));
    let small = Event::new("small", "thing-created", 1);
    let results = eb.put_events(&[big, small]).await;
    let err = results[0].as_ref().unwrap_err();
    assert_eq!(err.name(), "OversizeError");
    assert!(results[1].is_ok());
    assert_eq!(drain_queue(&queue).await.len(), 1);
}

/// A poison record in a batch of many: the others are written, exactly one fault event reaches
/// the bus (read back through a rule to a queue), and the handler reports no failures.
#[tokio::test]
async fn a_poison_record_becomes_one_fault_event_on_the_bus() {
    let table = create_table("views").await;
    let (bus, queue) = bus_to_queue("faults", json!({"detail-type": ["fault"]})).await;
    let faults = EventBridgeFaults(EventBridge::new(aws::eventbridge().await.clone(), &bus));
    let to_request = |uow: UnitOfWork| -> Result<UnitOfWork<UpdateRequest>, StepError> {
        let e = uow.event();
        let thing = e
            .entity("thing")
            .ok_or_else(|| StepError::poison_msg("event has no thing"))?;
        let request = UpdateRequest {
            table: None,
            key: json!({"pk": thing["id"], "sk": "thing"}),
            expression: update_expression(
                &json!({"name": thing["name"], "timestamp": e.timestamp}),
            )?
            .timestamp_condition()?,
        };
        Ok(uow.with(request))
    };
    let handler = Handler::builder(faults)
        .function_name("listener")
        .pipeline(
            Pipeline::new("thing-view").map(to_request).pipe(
                Update::new(DynamoDb::shared().await)
                    .table(&table)
                    .parallel(4),
            ),
        )
        .build()
        .unwrap();
    let events: Vec<Event> = (0..20)
        .map(|i| {
            let e = Event::new(format!("e{i}"), "thing-created", 1000 + i)
                .with_partition_key(format!("t{i}"));
            if i == 13 {
                e
            } else {
                e.with_entity(
                    "thing",
                    json!({"id": format!("t{i}"), "name": format!("n{i}")}),
                )
            }
        })
        .collect();
    let response = handler
        .handle::<sources::Kinesis>(
            to_kinesis_records(&events),
            &context(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());

    let db = DynamoDb::shared().await;
    for i in (0..20).filter(|i| *i != 13) {
        let row = db
            .get(&table, &json!({"pk": format!("t{i}"), "sk": "thing"}))
            .await
            .unwrap();
        assert_eq!(row.unwrap()["name"], format!("n{i}"));
    }
    let delivered = drain_queue(&queue).await;
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    let fault = &delivered[0]["detail"];
    assert_eq!(fault["type"], "fault");
    assert_eq!(fault["tags"]["pipeline"], "thing-view");
    assert_eq!(fault["tags"]["functionname"], "listener");
    assert!(
        fault["err"]["message"]
            .as_str()
            .unwrap()
            .contains("event has no thing")
    );
    assert_eq!(fault["uow"]["record"]["kinesis"]["partitionKey"], "t13");
}

#[tokio::test]
async fn unreachable_bus_makes_faulted_records_retry() {
    emulator().await;
    let faults = EventBridgeFaults(EventBridge::new(
        aws::eventbridge().await.clone(),
        "no-such-bus",
    ));
    let handler = Handler::builder(faults)
        .pipeline(
            Pipeline::new("p")
                .map(|_u: UnitOfWork| Err::<UnitOfWork, _>(StepError::poison_msg("bad"))),
        )
        .build()
        .unwrap();
    let events = [Event::new("e0", "t", 1), Event::new("e1", "t", 2)];
    let response = handler
        .handle::<sources::Sqs>(to_sqs_records(&events), &context(Duration::from_secs(60)))
        .await
        .unwrap();
    let mut ids: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    ids.sort();
    assert_eq!(ids, ["msg-0", "msg-1"]);
    let _ = Arc::new(());
}

/// A 200 KB poison record (Kinesis records reach 1 MiB) makes a fault larger than an
/// EventBridge entry: it is stored whole in the fault store and published trimmed, pointing to
/// it; the record ends faulted instead of blocking its shard.
#[tokio::test]
async fn an_oversize_fault_is_stored_whole_and_published_trimmed_through_the_bus() {
    let (bus, queue) = bus_to_queue("faults", json!({"detail-type": ["fault"]})).await;
    let faults = EventBridgeFaults(EventBridge::new(aws::eventbridge().await.clone(), &bus));
    let bucket = unique("faults");
    aws::s3()
        .await
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let store = lambda_stream::connectors::S3::new(aws::s3().await.clone(), &bucket);
    let handler = Handler::builder(faults)
        .function_name("listener")
        .fault_store(store.clone())
        .pipeline(
            Pipeline::new("p")
                .map(|_u: UnitOfWork| Err::<UnitOfWork, _>(StepError::poison_msg("bad"))),
        )
        .build()
        .unwrap();
    let big = Event::new("big", "thing-created", 1_700_000_000_000)
        .with_partition_key("t1")
        .with_entity("blob", json!("x".repeat(200 * 1024)));
    let kinesis = to_kinesis_records(&[big]);
    let data_len = kinesis.records[0].kinesis.data.0.len();
    let response = handler
        .handle::<sources::Kinesis>(kinesis, &context(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());

    let delivered = drain_queue(&queue).await;
    assert_eq!(delivered.len(), 1);
    let slim = &delivered[0]["detail"];
    let key = slim["trimmed"]["stored"].as_str().unwrap();
    assert!(
        key.starts_with("faults/2023/11/14/22/1700000000000-listener-p-"),
        "{key}"
    );
    let whole: lambda_stream::FaultEvent =
        serde_json::from_slice(&store.get(key).await.unwrap().unwrap()).unwrap();
    assert_eq!(whole.id, slim["id"]);
    let data = whole.uow.records()[0]["kinesis"]["data"].as_str().unwrap();
    assert!(data.len() >= data_len, "the whole record, base64");
}
