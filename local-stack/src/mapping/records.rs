//! Records as the SDK reads them → records as Lambda delivers them (the JSON event shapes), and
//! the views event filters are matched against.

use aws_sdk_dynamodbstreams::types as ddb;
use aws_sdk_kinesis::types as kinesis;
use aws_sdk_sqs::types as sqs;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

fn seconds(t: Option<&aws_sdk_kinesis::primitives::DateTime>) -> f64 {
    t.map(|t| t.as_secs_f64()).unwrap_or(0.0)
}

/// A Kinesis record in a Lambda event (`Records[]` of a Kinesis event).
pub fn kinesis_record(
    r: &kinesis::Record,
    shard_id: &str,
    stream_arn: &str,
    region: &str,
) -> Value {
    json!({
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": r.partition_key(),
            "sequenceNumber": r.sequence_number(),
            "data": STANDARD.encode(r.data().as_ref()),
            "approximateArrivalTimestamp": seconds(r.approximate_arrival_timestamp()),
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": format!("{shard_id}:{}", r.sequence_number()),
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": format!("arn:aws:iam::{}:role/local", crate::template::ACCOUNT),
        "awsRegion": region,
        "eventSourceARN": stream_arn,
    })
}

/// What a Kinesis filter sees: the `kinesis` object with `data` decoded when it is JSON.
pub fn kinesis_filter_view(r: &kinesis::Record) -> Value {
    let data = serde_json::from_slice::<Value>(r.data().as_ref())
        .unwrap_or_else(|_| Value::String(STANDARD.encode(r.data().as_ref())));
    json!({
        "partitionKey": r.partition_key(),
        "sequenceNumber": r.sequence_number(),
        "data": data,
    })
}

/// A DynamoDB attribute value in the stream JSON form (`{"S": "x"}`).
pub fn attribute(v: &ddb::AttributeValue) -> Value {
    match v {
        ddb::AttributeValue::S(s) => json!({"S": s}),
        ddb::AttributeValue::N(n) => json!({"N": n}),
        ddb::AttributeValue::B(b) => json!({"B": STANDARD.encode(b.as_ref())}),
        ddb::AttributeValue::Ss(s) => json!({"SS": s}),
        ddb::AttributeValue::Ns(n) => json!({"NS": n}),
        ddb::AttributeValue::Bs(bs) => {
            json!({"BS": bs.iter().map(|b| STANDARD.encode(b.as_ref())).collect::<Vec<_>>()})
        }
        ddb::AttributeValue::M(m) => json!({"M": item(m)}),
        ddb::AttributeValue::L(l) => json!({"L": l.iter().map(attribute).collect::<Vec<_>>()}),
        ddb::AttributeValue::Null(b) => json!({"NULL": b}),
        ddb::AttributeValue::Bool(b) => json!({"BOOL": b}),
        _ => json!({"NULL": true}),
    }
}

fn item(m: &std::collections::HashMap<String, ddb::AttributeValue>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| (k.clone(), attribute(v)))
            .collect::<Map<_, _>>(),
    )
}

/// A DynamoDB record's item key as one text, the same for every change of one item: what picks
/// its lane. The SDK hands the key attributes over in a hash map, whose order differs from one
/// record to the next, so they are sorted by name first (else one item's changes would go to
/// different lanes and lose their order).
pub fn dynamodb_key(keys: &Value) -> String {
    let mut pairs: Vec<(&String, &Value)> = keys
        .as_object()
        .map(|m| m.iter().collect())
        .unwrap_or_default();
    pairs.sort_unstable_by(|a, b| a.0.cmp(b.0));
    serde_json::to_string(&pairs).unwrap_or_default()
}

/// A DynamoDB stream record in a Lambda event (`Records[]` of a DynamoDB event); also what its
/// filters see.
pub fn dynamodb_record(r: &ddb::Record, stream_arn: &str, region: &str) -> Value {
    let mut change = Map::new();
    if let Some(d) = r.dynamodb() {
        change.insert(
            "ApproximateCreationDateTime".into(),
            json!(seconds(d.approximate_creation_date_time()).floor()),
        );
        if let Some(k) = d.keys() {
            change.insert("Keys".into(), item(k));
        }
        if let Some(n) = d.new_image() {
            change.insert("NewImage".into(), item(n));
        }
        if let Some(o) = d.old_image() {
            change.insert("OldImage".into(), item(o));
        }
        change.insert("SequenceNumber".into(), json!(d.sequence_number()));
        change.insert("SizeBytes".into(), json!(d.size_bytes()));
        if let Some(t) = d.stream_view_type() {
            change.insert("StreamViewType".into(), json!(t.as_str()));
        }
    }
    let mut record = json!({
        "eventID": r.event_id(),
        "eventName": r.event_name().map(|n| n.as_str()),
        "eventVersion": r.event_version().unwrap_or("1.1"),
        "eventSource": "aws:dynamodb",
        "awsRegion": r.aws_region().unwrap_or(region),
        "dynamodb": change,
        "eventSourceARN": stream_arn,
    });
    if let Some(u) = r.user_identity() {
        record["userIdentity"] = json!({"type": u.r#type(), "principalId": u.principal_id()});
    }
    record
}

/// The sequence number of a DynamoDB stream record.
pub fn dynamodb_sequence(r: &ddb::Record) -> String {
    r.dynamodb()
        .and_then(|d| d.sequence_number())
        .unwrap_or_default()
        .to_owned()
}

/// An SQS message in a Lambda event (`Records[]` of an SQS event).
pub fn sqs_record(m: &sqs::Message, queue_arn: &str, region: &str) -> Value {
    let attributes: Map<String, Value> = m
        .attributes()
        .map(|a| {
            a.iter()
                .map(|(k, v)| (k.as_str().to_owned(), Value::String(v.clone())))
                .collect()
        })
        .unwrap_or_default();
    let message_attributes: Map<String, Value> = m
        .message_attributes()
        .map(|a| {
            a.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        json!({
                            "stringValue": v.string_value(),
                            "binaryValue": v.binary_value().map(|b| STANDARD.encode(b.as_ref())),
                            "stringListValues": v.string_list_values(),
                            "binaryListValues": v.binary_list_values().iter().map(|b| STANDARD.encode(b.as_ref())).collect::<Vec<_>>(),
                            "dataType": v.data_type(),
                        }),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "messageId": m.message_id(),
        "receiptHandle": m.receipt_handle(),
        "body": m.body().unwrap_or_default(),
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": m.md5_of_body(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    })
}

/// What an SQS filter sees: the record with `body` decoded when it is JSON.
pub fn sqs_filter_view(record: &Value) -> Value {
    let mut view = record.clone();
    if let Some(body) = record.get("body").and_then(Value::as_str)
        && let Ok(parsed) = serde_json::from_str::<Value>(body)
    {
        view["body"] = parsed;
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::stream::lane;

    #[test]
    fn one_items_changes_have_one_key_whatever_the_order_of_its_attributes() {
        let mut a = Map::new();
        a.insert("pk".into(), json!({"S": "thing#t1"}));
        a.insert("sk".into(), json!({"S": "stream"}));
        let mut b = Map::new();
        b.insert("sk".into(), json!({"S": "stream"}));
        b.insert("pk".into(), json!({"S": "thing#t1"}));
        let (a, b) = (
            dynamodb_key(&Value::Object(a)),
            dynamodb_key(&Value::Object(b)),
        );
        assert_eq!(a, b);
        assert_eq!(lane(&a, 10), lane(&b, 10));
        assert_ne!(
            a,
            dynamodb_key(&json!({"pk": {"S": "thing#t2"}, "sk": {"S": "stream"}}))
        );
    }
}
