//! The update, job, sendMessages and materializeS3 flavors against the local emulator
//! (`make test`).

use std::time::Duration;

use lambda_stream::connectors::{
    DynamoDb, EventBridge, PageRequest, QueryRequest, S3, Sns, Sqs, UpdateRequest,
};
use lambda_stream::expressions::{Expression, update_expression};
use lambda_stream::flavors::{Job, MaterializeS3, Message, S3Write, SendMessages, UpdateRelated};
use lambda_stream::sinks::S3Object;
use lambda_stream::testing::*;
use lambda_stream::{Event, Handler, Settings, aws, sources};
use serde_json::{Value, json};

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

fn thing(i: usize, id: &str, name: &str, ts: i64) -> Event {
    Event::new(format!("e{i}"), "thing-updated", ts)
        .with_partition_key(id)
        .with_entity("thing", json!({"id": id, "name": name}))
}

async fn kinesis(handler: &Handler, events: &[Event]) {
    let response = handler
        .handle::<sources::Kinesis>(
            to_kinesis_records(events),
            &context(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
}

#[tokio::test]
async fn update_related_follows_every_related_row_once_in_any_order_and_latches() {
    let table = create_table("lines").await;
    let db = DynamoDb::shared().await;
    for (pk, n) in [("lines#t1", 12), ("lines#t2", 3)] {
        for i in 0..n {
            db.put(
                &table,
                &json!({"pk": pk, "sk": format!("line-{i:02}"), "thingName": "old"}),
                None,
            )
            .await
            .unwrap();
        }
    }
    let query_table = table.clone();
    let rule = UpdateRelated::new(
        "rename-lines",
        "thing-updated",
        db.clone(),
        move |uow| {
            let mut key = Expression::default();
            key.condition = Some("#pk = :pk".into());
            key.names.insert("#pk".into(), "pk".into());
            key.values.insert(
                ":pk".into(),
                json!(format!("lines#{}", uow.partition_key()?)),
            );
            Some(QueryRequest {
                table: query_table.clone(),
                expression: key,
                page_size: Some(5),
                ..Default::default()
            })
        },
        |uow, row| {
            let e = uow.event();
            let name = e.entity("thing").and_then(|t| t.get("name")).cloned();
            Ok(Some(UpdateRequest {
                table: None,
                key: json!({"pk": row["pk"], "sk": row["sk"]}),
                expression: update_expression(
                    &json!({"thingName": name, "timestamp": e.timestamp}),
                )?
                .timestamp_condition()?,
            }))
        },
    )
    .parallel(3);
    let handler = Handler::builder(MemoryFaults::default())
        .pipeline(rule)
        .build()
        .unwrap();
    // t1 renamed three times, delivered newest first and repeated: the newest name wins
    let events = [
        thing(3, "t1", "third", 3_000),
        thing(1, "t1", "first", 1_000),
        thing(2, "t1", "second", 2_000),
        thing(3, "t1", "third", 3_000),
        thing(4, "t2", "two", 1_000),
    ];
    kinesis(&handler, &events).await;
    let rows = scan(&table).await;
    assert_eq!(rows.len(), 15);
    for row in &rows {
        let want = if row["pk"] == "lines#t1" {
            "third"
        } else {
            "two"
        };
        assert_eq!(row["thingName"], want, "{row}");
        assert_eq!(
            row["latched"], true,
            "a trigger on the table must not loop: {row}"
        );
    }
}

#[tokio::test]
async fn a_job_works_through_a_scan_a_page_per_change_and_never_moves_its_cursor_twice() {
    let (bus_name, queue) = bus_to_queue("job", json!({"detail-type": ["thing-reindexed"]})).await;
    let things = create_table("job-things").await;
    let jobs = create_table("jobs").await;
    let db = DynamoDb::shared().await;
    for i in 0..23 {
        db.put(
            &things,
            &json!({"pk": format!("t{i:02}"), "sk": "thing"}),
            None,
        )
        .await
        .unwrap();
    }
    let bus = EventBridge::from_settings(&Settings {
        bus_name,
        ..Settings::default()
    })
    .await;
    let scanned = things.clone();
    let rule = Job::new(
        "reindex",
        ["job-created", "job-updated"],
        db.clone(),
        move |_| {
            Some(PageRequest {
                table: scanned.clone(),
                limit: Some(10),
                ..Default::default()
            })
        },
        |job, row| {
            let job_id = job.partition_key().unwrap_or_default();
            let pk = row["pk"].as_str().unwrap_or_default();
            Ok(Some(
                Event::new(format!("{job_id}.{pk}"), "thing-reindexed", 1)
                    .with_partition_key(pk)
                    .with_entity("thing", row.clone()),
            ))
        },
        bus,
    )
    .update_rows(|job, row| {
        Ok(Some(UpdateRequest {
            table: None,
            key: json!({"pk": row["pk"], "sk": row["sk"]}),
            expression: update_expression(&json!({"reindexedBy": job.partition_key()}))?,
        }))
    });
    let handler = Handler::builder(MemoryFaults::default())
        .dynamodb_options(sources::DynamoDbOptions {
            region: None,
            ..Default::default()
        })
        .pipeline(rule)
        .build()
        .unwrap();
    let handle = |changes: Vec<Change>| {
        let handler = &handler;
        async move {
            let response = handler
                .handle::<sources::DynamoDb>(
                    to_dynamodb_records(&changes),
                    &context(Duration::from_secs(60)),
                )
                .await
                .unwrap();
            assert!(response.batch_item_failures.is_empty(), "{response:?}");
        }
    };
    let job = json!({"pk": "job-1", "sk": "job", "discriminator": "job"});
    db.put(&jobs, &job, None).await.unwrap();
    // the INSERT, then each MODIFY the job's own cursor update makes, as the stream carries
    // them; the first MODIFY delivered twice
    let mut old = job.clone();
    handle(vec![Change::insert(job.clone()).in_table(&jobs)]).await;
    let mut pages = 1;
    loop {
        let new = db
            .get(&jobs, &json!({"pk": "job-1", "sk": "job"}))
            .await
            .unwrap()
            .unwrap();
        if new["status"] == "done" {
            break;
        }
        let change = Change::modify(old.clone(), new.clone()).in_table(&jobs);
        let times = if pages == 1 { 2 } else { 1 };
        for _ in 0..times {
            handle(vec![change.clone()]).await;
        }
        pages += 1;
        old = new;
        assert!(pages < 10, "the job does not end");
    }
    assert_eq!(pages, 3, "23 rows, 10 a page");
    let job_now = db
        .get(&jobs, &json!({"pk": "job-1", "sk": "job"}))
        .await
        .unwrap()
        .unwrap();
    assert!(job_now.get("cursor").is_none());
    assert_eq!(
        job_now["pages"], 2,
        "the cursor moved once per page: {job_now}"
    );

    let delivered = drain_queue(&queue).await;
    let mut ids: Vec<&str> = delivered
        .iter()
        .map(|m| m["detail"]["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let distinct: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), 23, "every row once");
    // the page delivered twice was published twice under the same ids, and nothing else
    assert_eq!(ids.len(), 23 + 10);
    // and every row was updated
    let rows = scan(&things).await;
    assert_eq!(rows.len(), 23);
    assert!(
        rows.iter().all(|r| r["reindexedBy"] == "job-1"),
        "{rows:#?}"
    );
}

#[tokio::test]
async fn send_messages_batches_to_a_queue_and_to_a_topic() {
    let queue = create_queue("send").await;
    let fed = create_queue("topic-fed").await;
    let sns = aws::sns().await;
    let topic = sns
        .create_topic()
        .name(unique("send"))
        .send()
        .await
        .unwrap()
        .topic_arn
        .unwrap();
    let fed_arn = aws::sqs()
        .await
        .get_queue_attributes()
        .queue_url(&fed)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint(&fed_arn)
        .attributes("RawMessageDelivery", "true")
        .send()
        .await
        .unwrap();
    let to_message = |uow: &lambda_stream::UnitOfWork| {
        let e = uow.event();
        // every third event has nothing to say
        if e.id.ends_with('0') {
            return Ok(None);
        }
        Ok(Some(Message::new(
            e.id.clone(),
            json!({"thing": e.partition_key, "n": e.id}),
        )))
    };
    let handler = Handler::builder(MemoryFaults::default())
        .pipeline(SendMessages::new(
            "to-queue",
            "thing-updated",
            Sqs::new(aws::sqs().await.clone(), &queue),
            to_message,
        ))
        .pipeline(SendMessages::new(
            "to-topic",
            "thing-updated",
            Sns::new(sns.clone(), &topic),
            to_message,
        ))
        .build()
        .unwrap();
    let events: Vec<Event> = (0..25).map(|i| thing(i, "t1", "x", i as i64)).collect();
    kinesis(&handler, &events).await;
    let expected: std::collections::BTreeSet<String> = (0..25)
        .filter(|i| i % 10 != 0)
        .map(|i| format!("e{i}"))
        .collect();
    for url in [&queue, &fed] {
        let got: std::collections::BTreeSet<String> = drain_queue(url)
            .await
            .iter()
            .map(|m| {
                assert_eq!(m["thing"], "t1", "the body as given, no envelope: {m}");
                m["n"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(got, expected);
    }
}

#[tokio::test]
async fn materialize_s3_puts_and_deletes_an_object_per_event() {
    let bucket = create_bucket("objects").await;
    let s3 = S3::new(aws::s3().await.clone(), &bucket);
    let handler = Handler::builder(MemoryFaults::default())
        .pipeline(MaterializeS3::new(
            "thing-objects",
            regex::Regex::new("^thing-").unwrap(),
            s3.clone(),
            |uow| {
                let e = uow.event();
                let key = format!("things/{}.json", e.partition_key.as_deref().unwrap_or("?"));
                Ok(Some(if e.event_type == "thing-deleted" {
                    S3Write::Delete(key)
                } else {
                    S3Write::Put(S3Object {
                        key,
                        body: serde_json::to_vec(&e.entity("thing"))?,
                        content_type: "application/json".into(),
                    })
                }))
            },
        ))
        .build()
        .unwrap();
    let mut deleted = thing(9, "t2", "gone", 9);
    deleted.event_type = "thing-deleted".into();
    let events = [
        thing(1, "t1", "one", 1),
        thing(2, "t2", "two", 2),
        thing(3, "t1", "one again", 3),
        deleted,
        thing(1, "t1", "one", 1),
        thing(3, "t1", "one again", 3),
    ];
    kinesis(&handler, &events).await;
    assert_eq!(s3.list("things/").await.unwrap(), ["things/t1.json"]);
    let body = s3.get("things/t1.json").await.unwrap().unwrap();
    let object: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(object["name"], "one again");
}
