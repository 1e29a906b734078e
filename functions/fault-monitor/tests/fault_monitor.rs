//! The fault monitor and the `faults` library on sample events, against the local emulator
//! (`make test`), including a resubmission that repairs a view.

use std::sync::Arc;
use std::time::Duration;

use fault_monitor::{FaultStore, key_of, resubmission};
use lambda_stream::Settings;
use lambda_stream::connectors::{DynamoDb, Lambda, S3, UpdateRequest};
use lambda_stream::sources;
use lambda_stream::sources::{KinesisRecords, SqsRecords};
use lambda_stream::testing::*;
use lambda_stream::{Event, FaultEvent, Handler, Pipeline, StepError, UnitOfWork, aws};
use serde_json::{Value, json};

fn sample(name: &str) -> SqsRecords {
    let path = format!("{}/../../events/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn bucket() -> S3 {
    emulator().await;
    let name = unique("faults");
    aws::s3()
        .await
        .create_bucket()
        .bucket(&name)
        .send()
        .await
        .unwrap();
    S3::new(aws::s3().await.clone(), name)
}

#[tokio::test]
async fn stores_each_fault_once_under_a_time_sorted_key() {
    let s3 = bucket().await;
    let handler = fault_monitor::handler(&Settings::default(), s3.clone()).unwrap();
    let ctx = context(Duration::from_secs(30));
    for _ in 0..2 {
        let response = handler
            .handle::<sources::Sqs>(sample("fault-monitor.json"), &ctx)
            .await
            .unwrap();
        assert!(response.batch_item_failures.is_empty());
    }
    let keys = s3.list("faults/").await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(
        keys[0].starts_with("faults/2023/11/14/22/1700000001000-listener-thing-view-"),
        "{}",
        keys[0]
    );

    let store = FaultStore::new(s3);
    let listed = store.list(None, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].function.as_str(), listed[0].pipeline.as_str()),
        ("listener", "thing-view")
    );
    assert_eq!(key_of(&listed[0].id).unwrap(), keys[0]);
    let fault = store.show(&listed[0].id).await.unwrap().unwrap();
    assert_eq!(fault.err.name, "PoisonError");
    assert!(store.list(Some("trigger"), 10).await.unwrap().is_empty());
}

/// The faults a listener raises for a poison record, delivered to the monitor's queue.
async fn raised(events: &[Event], store: Option<S3>) -> Vec<FaultEvent> {
    let faults = Arc::new(MemoryFaults::default());
    let mut builder = Handler::builder(faults.clone()).function_name("listener");
    if let Some(store) = store {
        builder = builder.fault_store(store);
    }
    let handler = builder
        .pipeline(
            Pipeline::new("thing-view")
                .map(|_u: UnitOfWork| Err::<UnitOfWork, _>(StepError::poison_msg("bad"))),
        )
        .build()
        .unwrap();
    handler
        .handle::<sources::Kinesis>(
            to_kinesis_records(events),
            &context(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    faults.published()
}

fn as_messages(faults: &[FaultEvent]) -> lambda_stream::sources::SqsRecords {
    let bodies: Vec<String> = faults
        .iter()
        .map(|f| serde_json::to_string(f).unwrap())
        .collect();
    to_sqs_messages(&bodies).into()
}

#[tokio::test]
async fn a_fault_raised_again_later_is_stored_once() {
    let s3 = bucket().await;
    let poison = [Event::new("e1", "thing-created", 1_700_000_000_000).with_partition_key("t1")];
    let first = raised(&poison, None).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    // the record is redelivered (say its fault's publishing timed out) and faults again
    let again = raised(&poison, None).await;
    let handler = fault_monitor::handler(&Settings::default(), s3.clone()).unwrap();
    for faults in [&first, &again] {
        let response = handler
            .handle::<sources::Sqs>(as_messages(faults), &context(Duration::from_secs(30)))
            .await
            .unwrap();
        assert!(response.batch_item_failures.is_empty());
    }
    let keys = s3.list("faults/").await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
}

#[tokio::test]
async fn a_trimmed_fault_its_function_stored_whole_is_not_stored_again() {
    let s3 = bucket().await;
    let big = [Event::new("big", "thing-created", 1_700_000_000_000)
        .with_partition_key("t1")
        .with_entity("blob", json!("x".repeat(300 * 1024)))];
    let slim = raised(&big, Some(s3.clone())).await;
    assert!(slim[0].trimmed.as_ref().unwrap().stored.is_some());
    let handler = fault_monitor::handler(&Settings::default(), s3.clone()).unwrap();
    let response = handler
        .handle::<sources::Sqs>(as_messages(&slim), &context(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    let store = FaultStore::new(s3.clone());
    let listed = store.list(None, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    let whole = store.show(&listed[0].id).await.unwrap().unwrap();
    assert!(
        whole.trimmed.is_none(),
        "the whole fault, not the trimmed one"
    );
    // so it can be resubmitted with its record
    let payload = resubmission(&whole).unwrap().payload;
    assert!(
        payload["Records"][0]["kinesis"]["data"]
            .as_str()
            .unwrap()
            .len()
            > 300 * 1024
    );
}

#[tokio::test]
async fn garbage_is_retried_for_the_dead_letter_queue_never_faulted() {
    let s3 = bucket().await;
    let handler = fault_monitor::handler(&Settings::default(), s3.clone()).unwrap();
    let response = handler
        .handle::<sources::Sqs>(
            sample("fault-monitor-bad.json"),
            &context(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let ids: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(ids, ["1a2b3c4d-0000-0000-0000-000000000000"]);
    assert_eq!(
        s3.list("faults/").await.unwrap().len(),
        1,
        "the good fault is stored"
    );
}

/// A listener whose mapping has a bug for names with a space; `fixed` is the corrected one.
async fn listener(table: &str, fixed: bool, faults: Arc<MemoryFaults>) -> Handler {
    let table = table.to_owned();
    let db = DynamoDb::shared().await;
    Handler::builder(faults)
        .function_name("listener")
        .pipeline(
            Pipeline::new("thing-view")
                .map(move |uow: UnitOfWork| {
                    let thing = uow.event().entity("thing").cloned().unwrap_or_default();
                    let name = thing["name"].as_str().unwrap_or_default().to_owned();
                    if !fixed && name.contains(' ') {
                        return Err(StepError::poison_msg("names with spaces are not supported"));
                    }
                    Ok(uow.with(UpdateRequest {
                        table: Some(table.clone()),
                        key: json!({"pk": thing["id"], "sk": "thing"}),
                        expression: lambda_stream::expressions::update_expression(
                            &json!({"name": name}),
                        )?,
                    }))
                })
                .pipe(lambda_stream::sinks::Update::new(db)),
        )
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_resubmitted_fault_is_processed_by_the_fixed_function() {
    let table = create_table("views").await;
    let s3 = bucket().await;
    let ctx = context(Duration::from_secs(30));

    // 1. the buggy listener faults the record
    let faults = Arc::new(MemoryFaults::default());
    let event = Event::new("e1", "thing-created", 1)
        .with_partition_key("t1")
        .with_entity("thing", json!({"id": "t1", "name": "big widget"}));
    let batch = to_kinesis_records(&[event]);
    listener(&table, false, faults.clone())
        .await
        .handle::<sources::Kinesis>(batch, &ctx)
        .await
        .unwrap();
    let fault: FaultEvent = faults.published().remove(0);

    // 2. the monitor stores it (as the bus rule delivers it)
    let envelope = json!({"version": "0", "id": "x", "detail-type": "fault", "source": "custom", "detail": fault});
    fault_monitor::handler(&Settings::default(), s3.clone())
        .unwrap()
        .handle::<sources::Sqs>(to_sqs_messages(&[envelope.to_string()]), &ctx)
        .await
        .unwrap();
    let store = FaultStore::new(s3);
    let id = store.list(None, 1).await.unwrap().remove(0).id;

    // 3. the resubmission carries the original Kinesis record to the function that faulted
    let dry = store
        .resubmit(&Lambda::shared().await, &id, true)
        .await
        .unwrap();
    assert_eq!(dry["function"], "listener");
    let stored = store.show(&id).await.unwrap().unwrap();
    let r = resubmission(&stored).unwrap();
    assert_eq!(dry["payload"], r.payload);
    let batch: KinesisRecords = serde_json::from_value(r.payload).unwrap();
    let response = listener(&table, true, Arc::new(MemoryFaults::default()))
        .await
        .handle::<sources::Kinesis>(batch, &ctx)
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    let row = DynamoDb::shared()
        .await
        .get(&table, &json!({"pk": "t1", "sk": "thing"}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row["name"], "big widget");
}

#[tokio::test]
async fn resubmit_invokes_the_function_with_the_original_records() {
    let s3 = bucket().await;
    let ctx = context(Duration::from_secs(30));
    fault_monitor::handler(&Settings::default(), s3.clone())
        .unwrap()
        .handle::<sources::Sqs>(sample("fault-monitor.json"), &ctx)
        .await
        .unwrap();
    // a function named as the fault says, in the emulator (which echoes the payload)
    let role = test_role_arn();
    let zip = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../core/tests/fixtures/bootstrap.zip"
    ))
    .unwrap();
    let created = aws::lambda()
        .await
        .create_function()
        .function_name("listener")
        .runtime(aws_sdk_lambda::types::Runtime::Providedal2023)
        .role(role)
        .handler("bootstrap")
        .code(
            aws_sdk_lambda::types::FunctionCode::builder()
                .zip_file(aws_sdk_lambda::primitives::Blob::new(zip))
                .build(),
        )
        .send()
        .await;
    if let Err(e) = created {
        // another test run in this emulator created it already
        assert!(format!("{e:?}").contains("ResourceConflict"), "{e:?}");
    }
    let store = FaultStore::new(s3);
    let id = store.list(None, 1).await.unwrap().remove(0).id;
    let echoed = store
        .resubmit(&Lambda::shared().await, &id, false)
        .await
        .unwrap();
    let records = echoed["Records"].as_array().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0]["eventID"],
        "shardId-000000000000:49590338271490256608559692538361571095921575989136000002"
    );
    assert_eq!(records[0]["kinesis"]["partitionKey"], Value::from("t2"));
}

/// A fault too big for the bus, published by a function with a claim-check bucket: the bus
/// carries aws-lambda-stream's pointer, and the monitor redeems it and stores the whole fault.
#[tokio::test]
async fn a_claim_checked_fault_is_redeemed_and_stored_whole() {
    use lambda_stream::claimcheck::ClaimCheck;
    use lambda_stream::connectors::{EventBridge, EventBridgeFaults, Wire};

    let s3 = bucket().await;
    let claims = create_bucket("claims").await;
    let (bus, queue) = bus_to_queue("faults", json!({"detail-type": ["fault"]})).await;
    let wire = Wire::default().claim_check(ClaimCheck::new(
        Arc::new(aws::s3().await.clone()),
        &claims,
        "us-east-1",
    ));
    let faults =
        EventBridgeFaults(EventBridge::new(aws::eventbridge().await.clone(), &bus).with_wire(wire));
    let listener = Handler::builder(faults)
        .function_name("listener")
        .pipeline(
            Pipeline::new("thing-view")
                .map(|_u: UnitOfWork| Err::<UnitOfWork, _>(StepError::poison_msg("bad"))),
        )
        .build()
        .unwrap();
    // incompressible, so the fault stays over the bus's 256 KB once compressed
    let big = Event::new("big", "thing-created", 1_700_000_000_000)
        .with_partition_key("t1")
        .with_entity("blob", json!(incompressible(400 * 1024)));
    let kinesis = to_kinesis_records(&[big]);
    let data = kinesis.records[0].kinesis.data.0.clone();
    let response = listener
        .handle::<sources::Kinesis>(kinesis, &context(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());

    let delivered = drain_queue(&queue).await;
    assert_eq!(delivered.len(), 1);
    let pointer = &delivered[0]["detail"];
    assert_eq!(pointer["type"], "fault");
    assert_eq!(pointer["s3"]["bucket"], json!(claims));
    assert!(pointer.get("err").is_none(), "a pointer, not the fault");

    let monitor = fault_monitor::handler(&Settings::default(), s3.clone()).unwrap();
    let bodies: Vec<String> = delivered.iter().map(Value::to_string).collect();
    let response = monitor
        .handle::<sources::Sqs>(to_sqs_messages(&bodies), &context(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    let store = FaultStore::new(s3);
    let listed = store.list(None, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    let whole = store.show(&listed[0].id).await.unwrap().unwrap();
    assert_eq!(whole.err.name, "PoisonError");
    assert!(whole.trimmed.is_none());
    let stored = whole.uow.records()[0]["kinesis"]["data"].as_str().unwrap();
    assert!(
        stored.len() >= data.len() * 4 / 3,
        "the whole record, base64"
    );
}

/// A fault whose record is a claim-checked, encrypted event: the fault holds only the pointer;
/// `open` (behind `faults show --open`) redeems and decrypts it with the caller's rights, and
/// says plainly what it could not open.
#[tokio::test]
async fn a_fault_of_a_claim_checked_encrypted_event_opens_for_its_reader() {
    use lambda_stream::claimcheck::ClaimCheck;
    use lambda_stream::connectors::{Kinesis, Wire};
    use lambda_stream::encryption::{Encryption, Envelope};

    let claims = create_bucket("claims").await;
    let alias = create_master_key("faults").await;
    let wire = Wire::default()
        .encrypt(Encryption {
            envelope: Envelope::new(Arc::new(aws::kms().await.clone()), "us-east-1"),
            master_key: alias,
            fields: vec!["name".into()],
        })
        .claim_check(ClaimCheck::new(
            Arc::new(aws::s3().await.clone()),
            &claims,
            "us-east-1",
        ));
    let stream = create_stream("open").await;
    let kinesis = Kinesis::new(aws::kinesis().await.clone(), &stream).with_wire(wire);
    let thing = json!({"id": "t1", "name": "Ada", "blob": incompressible(1_200_000)});
    let big = Event::new("big", "thing-created", 1_700_000_000_000)
        .with_partition_key("t1")
        .with_entity("thing", thing.clone());
    assert!(kinesis.put_records(std::slice::from_ref(&big)).await[0].is_ok());
    let data = read_stream(&stream).await;
    let pointer: Event = serde_json::from_slice(&data[0]).unwrap();
    assert!(pointer.entity("s3").is_some());

    let faults = Arc::new(MemoryFaults::default());
    let listener = Handler::builder(faults.clone())
        .function_name("listener")
        .pipeline(
            Pipeline::new("thing-view")
                .map(|_u: UnitOfWork| Err::<UnitOfWork, _>(StepError::poison_msg("bad"))),
        )
        .build()
        .unwrap();
    listener
        .handle::<sources::Kinesis>(
            to_kinesis_records(&[pointer]),
            &context(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let fault = faults.published().remove(0);
    assert!(!serde_json::to_string(&fault).unwrap().contains("Ada"));

    let settings = Settings {
        region: Some("us-east-1".into()),
        ..Settings::default()
    };
    let opened = fault_monitor::open(&fault, &settings).await.unwrap();
    assert_eq!(opened.unopened, Vec::<String>::new());
    assert_eq!(opened.events.len(), 1);
    assert_eq!(opened.events[0]["thing"], thing);

    // the claim check gone (expired): nothing opens, and it says so
    let key = serde_json::from_slice::<Value>(&data[0]).unwrap()["s3"]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    aws::s3()
        .await
        .delete_object()
        .bucket(&claims)
        .key(&key)
        .send()
        .await
        .unwrap();
    let opened = fault_monitor::open(&fault, &settings).await.unwrap();
    assert!(opened.events.is_empty());
    assert_eq!(opened.unopened.len(), 1, "{:?}", opened.unopened);
}
