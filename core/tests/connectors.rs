//! Kinesis, SQS, SNS, S3 and Lambda connectors and their sinks, against the local emulator
//! (`make test`).

use std::time::Duration;

use aws_sdk_kinesis::types::ShardIteratorType;
use lambda_stream::connectors::{Kinesis, Lambda, S3, Sns, Sqs};
use lambda_stream::sinks::{Invoke, LambdaCall, Publish, PublishToSns, PutObject, S3Object};
use lambda_stream::testing::*;
use lambda_stream::{Event, Handler, Outcome, Pipeline, StepError, UnitOfWork, aws};
use serde_json::{Value, json};

fn events(n: usize, event_type: &str) -> Vec<Event> {
    (0..n)
        .map(|i| {
            Event::new(format!("e{i}"), event_type, i as i64)
                .with_partition_key(format!("k{}", i % 7))
        })
        .collect()
}

async fn run<T: lambda_stream::Work>(pipeline: Pipeline<T>, batch: &[Event]) -> Vec<Outcome> {
    let handler = Handler::builder(MemoryFaults::default())
        .pipeline(pipeline)
        .build()
        .unwrap();
    let ctx = context(Duration::from_secs(60));
    handler
        .process(
            lambda_stream::sources::from_sqs(to_sqs_records(batch)),
            &handler.invocation(&ctx),
        )
        .await
        .outcomes()
        .to_vec()
}

fn republish(uow: UnitOfWork) -> Result<UnitOfWork<Event>, StepError> {
    let event = uow.event().clone();
    Ok(uow.with(event))
}

#[tokio::test]
async fn publish_to_kinesis_writes_every_record_with_its_partition_key() {
    emulator().await;
    let client = aws::kinesis().await;
    let stream = unique("stream");
    client
        .create_stream()
        .stream_name(&stream)
        .shard_count(1)
        .send()
        .await
        .unwrap();

    // 600 events: two PutRecords requests (500 + 100)
    let batch = events(600, "thing-created");
    let outcomes = run(
        Pipeline::new("to-kinesis")
            .map(republish)
            .pipe(Publish(Kinesis::new(client.clone(), &stream))),
        &batch,
    )
    .await;
    assert!(outcomes.iter().all(|o| *o == Outcome::Done));

    let shard = client
        .list_shards()
        .stream_name(&stream)
        .send()
        .await
        .unwrap()
        .shards
        .unwrap()[0]
        .shard_id
        .clone();
    let mut iterator = client
        .get_shard_iterator()
        .stream_name(&stream)
        .shard_id(shard)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap()
        .shard_iterator;
    let mut read = Vec::new();
    while let Some(it) = iterator.take() {
        let out = client
            .get_records()
            .shard_iterator(it)
            .send()
            .await
            .unwrap();
        if out.records.is_empty() {
            break;
        }
        read.extend(out.records);
        iterator = out.next_shard_iterator;
    }
    assert_eq!(read.len(), 600);
    let first: Event = serde_json::from_slice(read[0].data.as_ref()).unwrap();
    assert_eq!(first.id, "e0");
    assert_eq!(read[3].partition_key(), Some("k3"));
    assert_eq!(first.tag("pipeline"), Some("to-kinesis"));
}

#[tokio::test]
async fn send_to_sqs_in_batches_and_fifo_groups() {
    emulator().await;
    let client = aws::sqs().await;
    let url = client
        .create_queue()
        .queue_name(unique("q"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let outcomes = run(
        Pipeline::new("to-sqs")
            .map(republish)
            .pipe(Publish(Sqs::new(client.clone(), &url))),
        &events(25, "t"),
    )
    .await;
    assert_eq!(outcomes.len(), 25);
    assert!(outcomes.iter().all(|o| *o == Outcome::Done));
    let bodies = drain_queue(&url).await;
    assert_eq!(bodies.len(), 25);

    let fifo = client
        .create_queue()
        .queue_name(format!("{}.fifo", unique("q")))
        .attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let results = Sqs::new(client.clone(), &fifo)
        .send_message_batch(&events(12, "t"))
        .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let got = client
        .receive_message()
        .queue_url(&fifo)
        .max_number_of_messages(10)
        .message_system_attribute_names(
            aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId,
        )
        .send()
        .await
        .unwrap()
        .messages
        .unwrap();
    let first = &got[0];
    let event: Event = serde_json::from_str(first.body().unwrap()).unwrap();
    let group = first
        .attributes()
        .unwrap()
        .get(&aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId)
        .unwrap();
    assert_eq!(Some(group.as_str()), event.partition_key.as_deref());
}

#[tokio::test]
async fn publish_to_sns_reaches_a_subscribed_queue() {
    emulator().await;
    let sns = aws::sns().await;
    let sqs = aws::sqs().await;
    let topic = sns
        .create_topic()
        .name(unique("topic"))
        .send()
        .await
        .unwrap()
        .topic_arn
        .unwrap();
    let url = sqs
        .create_queue()
        .queue_name(unique("q"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()
        .remove(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .unwrap();
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint(arn)
        .send()
        .await
        .unwrap();

    let bucket = create_bucket("sns-claims").await;
    let claim_check = lambda_stream::claimcheck::ClaimCheck::new(
        std::sync::Arc::new(aws::s3().await.clone()),
        &bucket,
        "us-east-1",
    );
    let topic_out = Sns::new(sns.clone(), &topic)
        .with_wire(lambda_stream::connectors::Wire::default().claim_check(claim_check));
    let mut batch = events(3, "t");
    // compressed to a few hundred bytes
    batch[1] = batch[1]
        .clone()
        .with_entity("notes", json!("n".repeat(300_000)));
    // over 256 KB even compressed: claim-checked
    batch[2] = batch[2]
        .clone()
        .with_entity("blob", json!(incompressible(400_000)));
    let outcomes = run(
        Pipeline::new("to-sns")
            .map(republish)
            .pipe(PublishToSns(topic_out)),
        &batch,
    )
    .await;
    assert!(outcomes.iter().all(|o| *o == Outcome::Done));
    let notes = drain_queue(&url).await;
    assert_eq!(notes.len(), 3);
    assert!(notes.iter().all(|n| n.to_string().len() < 5_000));
    // what arrives is an SNS notification; from_sqs unwraps it back into the event
    let decoded = lambda_stream::sources::from_sqs(to_sqs_messages(
        &notes.iter().map(Value::to_string).collect::<Vec<_>>(),
    ));
    let mut ids: Vec<String> = decoded
        .units()
        .iter()
        .map(|u| u.event().id.clone())
        .collect();
    ids.sort();
    assert_eq!(ids, ["e0", "e1", "e2"]);
    // the pipelines see the whole events: compressed fields restored, the claim check redeemed
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = std::sync::Arc::clone(&seen);
    let reader = Handler::builder(MemoryFaults::default())
        .pipeline(Pipeline::new("read").map(move |u: UnitOfWork| {
            s.lock().unwrap().push(u.event().clone());
            Ok(u)
        }))
        .build()
        .unwrap();
    let ctx = context(Duration::from_secs(30));
    reader.process(decoded, &reader.invocation(&ctx)).await;
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_by_key(|e| e.id.clone());
    assert_eq!(seen[1].entity("notes"), batch[1].entity("notes"));
    assert_eq!(seen[2].entity("blob"), batch[2].entity("blob"));
}

#[tokio::test]
async fn s3_put_get_list_delete_and_the_sink() {
    emulator().await;
    let client = aws::s3().await;
    let bucket = unique("bucket");
    client.create_bucket().bucket(&bucket).send().await.unwrap();
    let s3 = S3::new(client.clone(), &bucket);

    let to_object = |uow: UnitOfWork| -> Result<UnitOfWork<S3Object>, StepError> {
        let e = uow.event();
        let object = S3Object {
            key: format!("events/{}.json", e.id),
            body: serde_json::to_vec(e)?,
            content_type: "application/json".into(),
        };
        Ok(uow.with(object))
    };
    let outcomes = run(
        Pipeline::new("to-s3")
            .map(to_object)
            .pipe(PutObject(s3.clone())),
        &events(3, "t"),
    )
    .await;
    assert!(outcomes.iter().all(|o| *o == Outcome::Done));

    assert_eq!(
        s3.list("events/").await.unwrap(),
        ["events/e0.json", "events/e1.json", "events/e2.json"]
    );
    let body = s3.get("events/e1.json").await.unwrap().unwrap();
    assert_eq!(serde_json::from_slice::<Event>(&body).unwrap().id, "e1");
    s3.delete("events/e1.json").await.unwrap();
    assert!(s3.get("events/e1.json").await.unwrap().is_none());
    assert_eq!(s3.list("events/").await.unwrap().len(), 2);
}

#[tokio::test]
async fn invoke_lambda_sync_and_async() {
    emulator().await;
    let role = test_role_arn();
    let client = aws::lambda().await;
    let function = unique("fn");
    let zip = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/bootstrap.zip"
    ))
    .unwrap();
    client
        .create_function()
        .function_name(&function)
        .runtime(aws_sdk_lambda::types::Runtime::Providedal2023)
        .role(role)
        .handler("bootstrap")
        .code(
            aws_sdk_lambda::types::FunctionCode::builder()
                .zip_file(aws_sdk_lambda::primitives::Blob::new(zip))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let lambda = Lambda::new(client.clone());
    // the emulator's function echoes its payload
    assert_eq!(
        lambda.invoke(&function, &json!({"a": 1})).await.unwrap(),
        json!({"a": 1})
    );
    lambda
        .invoke_async(&function, &json!({"a": 2}))
        .await
        .unwrap();

    let f = function.clone();
    let to_call = move |uow: UnitOfWork| -> Result<UnitOfWork<LambdaCall>, StepError> {
        let call = LambdaCall {
            function: f.clone(),
            payload: json!({"id": uow.event().id}),
            asynchronous: false,
        };
        Ok(uow.with(call))
    };
    let responses = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let r = responses.clone();
    let pipeline = Pipeline::new("invoke")
        .map(to_call)
        .pipe(Invoke(lambda.clone()))
        .tap(move |uow| r.lock().unwrap().push(uow.state.clone()));
    let outcomes = run(pipeline, &events(2, "t")).await;
    assert!(outcomes.iter().all(|o| *o == Outcome::Done));
    let mut got = responses.lock().unwrap().clone();
    got.sort_by_key(|v| v["id"].as_str().unwrap().to_owned());
    assert_eq!(got, [json!({"id": "e0"}), json!({"id": "e1"})]);
    // (function errors and missing functions: tests/connector_mocks.rs; the emulator echoes
    // any invocation without Docker)
}
