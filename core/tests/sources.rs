//! Sources: every record becomes units of work or a decode failure naming it; never a panic.

use lambda_stream::sources::*;
use lambda_stream::testing::*;
use lambda_stream::{Event, UnitOfWork};
use serde_json::{Value, json};

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn types(units: &[UnitOfWork]) -> Vec<&str> {
    units
        .iter()
        .map(|u| u.event().event_type.as_str())
        .collect()
}

fn opts() -> DynamoDbOptions {
    DynamoDbOptions {
        region: Some("us-east-1".into()),
        ..DynamoDbOptions::default()
    }
}

// ---- Kinesis ----

#[test]
fn kinesis_decodes_events_and_fills_id_timestamp_and_key_from_the_record() {
    let mut bare = Event::new("", "thing-created", 0);
    bare.fields.insert("thing".into(), json!({"id": "t9"}));
    let with_own = Event::new("own-id", "thing-updated", 42).with_partition_key("t1");
    let decoded = from_kinesis(to_kinesis_records(&[bare, with_own]));
    assert!(decoded.failures().is_empty());
    let (a, b) = (&decoded.units()[0], &decoded.units()[1]);
    assert!(
        a.event().id.starts_with("shardId-000000000000:"),
        "{}",
        a.event().id
    );
    assert_eq!(a.event().timestamp, 1_700_000_000_000);
    // no partitionKey in the event: the Kinesis partition key orders it
    assert_eq!(a.event().partition_key, None);
    assert_eq!(a.partition_key(), Some(""));
    assert_eq!(a.event().entity("thing").unwrap()["id"], "t9");
    assert_eq!(b.event().id, "own-id");
    assert_eq!(b.event().timestamp, 42);
    assert_eq!(b.partition_key(), Some("t1"));
    assert_eq!(b.position(), 1);
}

#[test]
fn kinesis_bad_records_fail_alone_and_are_named() {
    let good = Event::new("g", "thing-created", 1);
    let mut event: Value = serde_json::to_value(to_kinesis_records(&[
        good.clone(),
        good.clone(),
        good.clone(),
        good,
    ]))
    .unwrap();
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    event["Records"][0]["kinesis"]["data"] = json!("%%% not base64 %%%");
    event["Records"][1]["kinesis"]["data"] = json!(b64("not json"));
    event["Records"][2]["kinesis"]["data"] = json!(b64(r#"{"id":"x"}"#));
    let batch: KinesisRecords = serde_json::from_value(event.clone()).unwrap();
    let decoded = from_kinesis(batch);
    assert_eq!(decoded.units().len(), 1);
    assert_eq!(decoded.units()[0].position(), 3);
    let failures = decoded.failures();
    assert_eq!(failures.len(), 3);
    let id0 = event["Records"][0]["eventID"].as_str().unwrap();
    assert_eq!(failures[0].1.record, id0);
    assert!(
        failures[0].1.reason.contains("not a valid record"),
        "{}",
        failures[0].1
    );
    assert!(
        failures[1].1.reason.contains("not JSON"),
        "{}",
        failures[1].1
    );
    assert!(failures[2].1.reason.contains("type"), "{}", failures[2].1);
}

#[test]
fn sam_sample_kinesis_event_is_a_decode_failure_not_a_panic() {
    let batch: KinesisRecords = fixture("sam/kinesis.json");
    let decoded = from_kinesis(batch);
    assert!(decoded.units().is_empty());
    assert_eq!(decoded.failures().len(), 1);
    assert!(decoded.failures()[0].1.record.starts_with("shardId-"));
    assert!(decoded.failures()[0].1.reason.contains("not JSON"));
}

// ---- DynamoDB ----

fn thing(extra: Value) -> Value {
    let mut v = json!({"pk": "t1", "sk": "thing", "discriminator": "Thing", "name": "widget"});
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v
}

#[test]
fn dynamodb_change_types_including_soft_delete() {
    let changes = [
        Change::insert(thing(json!({}))),
        Change::modify(thing(json!({})), thing(json!({"name": "w2"}))),
        Change::modify(thing(json!({})), thing(json!({"deleted": true}))),
        Change::modify(
            thing(json!({"deleted": true})),
            thing(json!({"deleted": false})),
        ),
        Change::remove(thing(json!({}))),
    ];
    let decoded = from_dynamodb(to_dynamodb_records(&changes), &opts());
    assert_eq!(
        types(decoded.units()),
        [
            "thing-created",
            "thing-updated",
            "thing-deleted",
            "thing-undeleted",
            "thing-deleted"
        ]
    );
    let updated = decoded.units()[1].event();
    assert_eq!(updated.id, "ddb-1");
    assert_eq!(updated.partition_key.as_deref(), Some("t1"));
    assert_eq!(updated.timestamp, 1_700_000_001_000); // ApproximateCreationDateTime x 1000
    let raw = updated.raw.as_ref().unwrap();
    assert_eq!(raw["new"]["name"], "w2");
    assert_eq!(raw["old"]["name"], "widget");
    assert_eq!(updated.tag("region"), Some("us-east-1"));
    assert!(
        decoded.units()[4]
            .event()
            .raw
            .as_ref()
            .unwrap()
            .get("new")
            .is_none()
    );
}

#[test]
fn dynamodb_uses_sk_without_discriminator_and_image_timestamp() {
    let item = json!({"pk": "o1", "sk": "ORDER", "timestamp": 1_700_000_123_456_i64});
    let decoded = from_dynamodb(to_dynamodb_records(&[Change::insert(item)]), &opts());
    let e = decoded.units()[0].event();
    assert_eq!(e.event_type, "order-created");
    assert_eq!(e.timestamp, 1_700_000_123_456);
}

#[test]
fn dynamodb_skips_other_regions_and_optionally_ttl_expiries() {
    let changes = [
        Change::insert(thing(json!({"aws:rep:updateregion": "eu-west-1"}))),
        Change::insert(thing(json!({"awsregion": "eu-west-1"}))),
        Change::insert(thing(json!({"awsregion": "us-east-1"}))),
        Change::expire(thing(json!({}))),
    ];
    let decoded = from_dynamodb(to_dynamodb_records(&changes), &opts());
    assert_eq!(types(decoded.units()), ["thing-created", "thing-deleted"]);
    assert!(decoded.failures().is_empty());
    assert_eq!(
        decoded.records().len(),
        4,
        "skipped records are still accounted for"
    );

    let skip_ttl = DynamoDbOptions {
        skip_ttl_expired: true,
        ..opts()
    };
    let decoded = from_dynamodb(to_dynamodb_records(&changes), &skip_ttl);
    assert_eq!(types(decoded.units()), ["thing-created"]);
}

#[test]
fn dynamodb_latched_records_are_recognisable() {
    let changes = [
        Change::insert(thing(json!({"latched": true}))),
        Change::insert(thing(json!({}))),
    ];
    let decoded = from_dynamodb(to_dynamodb_records(&changes), &opts());
    assert!(decoded.units()[0].is_latched());
    assert!(!decoded.units()[1].is_latched());
}

#[test]
fn dynamodb_custom_field_names() {
    let item = json!({"id": 7, "kind": "Widget"});
    let custom = DynamoDbOptions {
        pk: "id".into(),
        discriminator: "kind".into(),
        ..opts()
    };
    let records = to_dynamodb_records(&[Change::insert(item).with_keys(&["id"])]);
    let decoded = from_dynamodb(records, &custom);
    assert_eq!(decoded.units()[0].event().event_type, "widget-created");
    assert_eq!(
        decoded.units()[0].event().partition_key.as_deref(),
        Some("7")
    );
}

#[test]
fn dynamodb_missing_key_or_type_is_a_named_failure() {
    let changes = [
        Change::insert(json!({"sk": "thing", "discriminator": "Thing"})),
        Change::insert(json!({"pk": "p1"})),
        Change::insert(thing(json!({}))),
    ];
    let decoded = from_dynamodb(to_dynamodb_records(&changes), &opts());
    assert_eq!(decoded.units().len(), 1);
    let f = decoded.failures();
    assert_eq!(f[0].1.record, "ddb-0");
    assert!(
        f[0].1.reason.contains("missing key attribute `pk`"),
        "{}",
        f[0].1
    );
    assert_eq!(f[1].1.record, "ddb-1");
    assert!(f[1].1.reason.contains("discriminator"), "{}", f[1].1);
}

#[test]
fn sam_sample_dynamodb_event_is_decode_failures_not_a_panic() {
    let decoded = from_dynamodb(fixture::<DynamoDbRecords>("sam/dynamodb.json"), &opts());
    assert!(decoded.units().is_empty());
    assert_eq!(decoded.failures().len(), 3);
    // with its key named, the sample still has no discriminator or sort key
    let by_id = DynamoDbOptions {
        pk: "Id".into(),
        ..opts()
    };
    let decoded = from_dynamodb(fixture::<DynamoDbRecords>("sam/dynamodb.json"), &by_id);
    assert_eq!(decoded.failures().len(), 3);
    assert!(decoded.failures()[0].1.reason.contains("discriminator"));
}

// ---- SQS, SNS, S3, EventBridge ----

#[test]
fn sqs_bodies_and_sns_envelopes() {
    let direct = Event::new("", "a-created", 0);
    let inner = serde_json::to_string(&Event::new("inner", "b-created", 5)).unwrap();
    let envelope =
        json!({"Type": "Notification", "MessageId": "n-1", "Message": inner}).to_string();
    let mut event: Value = serde_json::to_value(to_sqs_records(&[direct])).unwrap();
    let second: Value =
        serde_json::to_value(to_sqs_messages(&[envelope, "garbage".into()])).unwrap();
    let mut recs = event["Records"].as_array().unwrap().clone();
    for (i, mut r) in second["Records"]
        .as_array()
        .unwrap()
        .clone()
        .into_iter()
        .enumerate()
    {
        r["messageId"] = json!(format!("msg-{}", i + 1));
        recs.push(r);
    }
    event["Records"] = Value::Array(recs);
    let decoded = from_sqs(serde_json::from_value::<SqsRecords>(event).unwrap());
    assert_eq!(types(decoded.units()), ["a-created", "b-created"]);
    assert_eq!(decoded.units()[0].event().id, "msg-0");
    assert_eq!(decoded.units()[0].event().timestamp, 1_700_000_000_000);
    assert_eq!(decoded.units()[1].event().id, "inner");
    assert_eq!(decoded.failures()[0].1.record, "msg-2");
}

#[test]
fn sqs_fifo_messages_are_ordered_by_message_group() {
    let e = Event::new("1", "x", 1).with_partition_key("entity-1");
    let decoded = from_sqs(to_sqs_fifo_records(&[("group-a", e)]));
    assert_eq!(decoded.units()[0].partition_key(), Some("group-a"));
}

#[test]
fn sqs_sns_s3_unwraps_every_s3_record_and_accepts_test_events() {
    let s3 = serde_json::to_string(&to_s3_records(&[("b", "x.json"), ("b", "y.json")])).unwrap();
    let test_event = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}"#;
    let bodies = [
        json!({"Type": "Notification", "MessageId": "n1", "Message": s3}).to_string(),
        json!({"Type": "Notification", "MessageId": "n2", "Message": test_event}).to_string(),
        s3.clone(), // S3 straight to SQS
        "not json".to_string(),
    ];
    let decoded = from_sqs_sns_s3(to_sqs_messages(&bodies));
    let positions: Vec<usize> = decoded.units().iter().map(|u| u.position()).collect();
    assert_eq!(positions, [0, 0, 2, 2]);
    assert_eq!(decoded.units()[0].event().event_type, "ObjectCreated:Put");
    assert_eq!(decoded.failures().len(), 1);
    assert_eq!(decoded.failures()[0].0, 3);
}

#[test]
fn sns_s3_eventbridge_sources() {
    let decoded = from_sns(to_sns_records(&[Event::new("", "a", 0)]));
    assert_eq!(decoded.units()[0].event().id, "sns-0");
    assert_eq!(decoded.units()[0].event().timestamp, 1_704_067_200_000);

    let decoded = from_s3(to_s3_records(&[("bucket", "k1")]));
    let e = decoded.units()[0].event();
    assert_eq!(e.partition_key.as_deref(), Some("k1"));
    assert!(e.id.starts_with("bucket/k1/"));

    let decoded = from_eventbridge(to_eventbridge_record(&Event::new("d1", "thing-created", 9)));
    assert_eq!(decoded.units()[0].event().id, "d1");
    assert_eq!(decoded.units()[0].event().timestamp, 9);
}

#[test]
fn sam_samples_of_sqs_sns_s3_and_eventbridge_go_through() {
    let decoded = from_sqs(fixture::<SqsRecords>("sam/sqs.json"));
    assert_eq!(decoded.failures().len(), 1, "the sample body is plain text");
    let decoded = from_sns(fixture::<SnsRecords>("sam/sns.json"));
    assert_eq!(decoded.failures().len(), 1);
    let decoded = from_s3(fixture::<S3Records>("sam/s3.json"));
    assert_eq!(decoded.units().len(), 1);
    let decoded = from_eventbridge(fixture("sam/eventbridge.json"));
    assert_eq!(decoded.units()[0].event().event_type, "Scheduled Event");
    assert_eq!(
        decoded.units()[0].event().id,
        "cdc73f9d-aea9-11e3-9d5a-835b769c0d9c"
    );
}

#[test]
fn an_event_without_records_is_an_empty_batch() {
    let batch: KinesisRecords = serde_json::from_str("{}").unwrap();
    assert!(from_kinesis(batch).records().is_empty());
}

#[test]
fn sqs_bodies_delivered_by_an_eventbridge_rule_are_unwrapped() {
    let event = Event::new("f1", "fault", 7);
    let envelope = json!({"version": "0", "id": "eb-1", "detail-type": "fault", "source": "custom",
        "account": "123456789012", "time": "2024-01-01T00:00:00Z", "region": "us-east-1",
        "resources": [], "detail": event});
    let decoded = from_sqs(to_sqs_messages(&[envelope.to_string()]));
    assert_eq!(decoded.units()[0].event().id, "f1");
    assert_eq!(decoded.units()[0].event().event_type, "fault");
}

// ---- lenient decoding ----

#[test]
fn records_without_metadata_the_library_never_reads_still_decode() {
    let b64 = |v: &Value| {
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, v.to_string())
    };
    let event = json!({"id": "e1", "type": "thing-created", "timestamp": 7, "partitionKey": "t1"});
    // a Kinesis record as other tools' helpers make it: no arrival time, no envelope fields
    let kinesis: KinesisRecords = serde_json::from_value(json!({"Records": [
        {"kinesis": {"data": b64(&event), "partitionKey": "t1", "sequenceNumber": "1"}}
    ]}))
    .unwrap();
    let decoded = from_kinesis(kinesis);
    assert!(decoded.failures().is_empty(), "{:?}", decoded.failures());
    assert_eq!(decoded.units()[0].event().id, "e1");

    // a DynamoDB record without SizeBytes, StreamViewType or awsRegion
    let image = json!({"pk": {"S": "t1"}, "sk": {"S": "thing"}, "discriminator": {"S": "thing"}, "name": {"S": "A"}});
    let dynamodb: DynamoDbRecords = serde_json::from_value(json!({"Records": [
        {"eventID": "ddb-1", "eventName": "INSERT", "dynamodb": {
            "ApproximateCreationDateTime": 1700000000.0,
            "Keys": {"pk": {"S": "t1"}, "sk": {"S": "thing"}},
            "NewImage": image, "SequenceNumber": "1"}},
        // what the library reads (the change type) missing: a fault naming it
        {"eventID": "ddb-2", "dynamodb": {"Keys": {"pk": {"S": "t2"}}, "SequenceNumber": "2"}},
        // no creation time: timed by the row's own `timestamp` when it has one ...
        {"eventID": "ddb-3", "eventName": "INSERT", "dynamodb": {
            "Keys": {"pk": {"S": "t3"}, "sk": {"S": "thing"}}, "SequenceNumber": "3",
            "NewImage": {"pk": {"S": "t3"}, "sk": {"S": "thing"}, "timestamp": {"N": "1700000000123"}}}},
        // ... else a fault naming the field, not an event timed at 1970
        {"eventID": "ddb-4", "eventName": "INSERT", "dynamodb": {
            "Keys": {"pk": {"S": "t4"}, "sk": {"S": "thing"}}, "SequenceNumber": "4",
            "NewImage": {"pk": {"S": "t4"}, "sk": {"S": "thing"}}}}
    ]}))
    .unwrap();
    let decoded = from_dynamodb(dynamodb, &opts());
    assert_eq!(decoded.units().len(), 2, "{:?}", decoded.failures());
    assert_eq!(decoded.units()[0].event().event_type, "thing-created");
    assert_eq!(decoded.units()[1].event().timestamp, 1_700_000_000_123);
    let failures = decoded.failures();
    assert_eq!(failures.len(), 2);
    assert!(
        failures[0].1.reason.contains("eventName"),
        "{}",
        failures[0].1
    );
    assert!(
        failures[1].1.reason.contains("ApproximateCreationDateTime"),
        "{}",
        failures[1].1
    );
}

#[test]
fn a_huge_bad_value_is_quoted_in_a_few_hundred_bytes_at_most() {
    let huge = "x".repeat(70_000);
    let kinesis: KinesisRecords = serde_json::from_value(json!({"Records": [
        {"kinesis": {"data": 12, "partitionKey": huge, "sequenceNumber": huge}},
        {"kinesis": {"data": base64::Engine::encode(&base64::engine::general_purpose::STANDARD,
            json!({"id": "e2", "type": "t", "timestamp": huge}).to_string()),
            "partitionKey": "k", "sequenceNumber": "2", "approximateArrivalTimestamp": 1.0}}
    ]}))
    .unwrap();
    let decoded = from_kinesis(kinesis);
    assert_eq!(decoded.failures().len(), 2);
    for (_, err) in decoded.failures() {
        let text = err.to_string();
        assert!(text.len() < 700, "{} bytes: {}", text.len(), &text[..200]);
    }
}

// ---- aws-lambda-stream's compressed fields ----

#[test]
fn fields_aws_lambda_stream_compressed_are_restored_in_every_source() {
    // made with Node's zlib exactly as aws-lambda-stream's compress() replacer makes them (a
    // 12 KB entity, and a compressed string of a compressed value)
    let wire = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/peer/compressed-event.json"
    ))
    .unwrap();
    let expected: Event = fixture("peer/compressed-event.expected.json");
    let check = |decoded: &Decoded| {
        assert!(decoded.failures().is_empty(), "{:?}", decoded.failures());
        let got = decoded.units()[0].event();
        assert_eq!(got.entity("thing"), expected.entity("thing"));
        assert_eq!(got.fields.get("raw"), expected.fields.get("raw"));
        assert_eq!(got.id, "e-compressed-1");
    };
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &wire);
    let kinesis: KinesisRecords = serde_json::from_value(json!({"Records": [
        {"kinesis": {"data": b64, "partitionKey": "t1", "sequenceNumber": "1",
            "approximateArrivalTimestamp": 1.0}}
    ]}))
    .unwrap();
    check(&from_kinesis(kinesis));
    let sqs: SqsRecords = serde_json::from_value(json!({"Records": [
        {"messageId": "m1", "body": wire, "eventSourceARN": "arn:aws:sqs:us-east-1:1:q"}
    ]}))
    .unwrap();
    check(&from_sqs(sqs));
    let detail: Value = serde_json::from_str(&wire).unwrap();
    let bridge = serde_json::from_value(json!({"version": "0", "id": "x", "detail-type": "thing-updated",
        "source": "node-service", "account": "1", "time": "2023-11-14T22:13:20Z", "region": "us-east-1",
        "resources": [], "detail": detail}))
    .unwrap();
    check(&from_eventbridge(bridge));
}
