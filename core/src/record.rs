//! The original Lambda record behind a unit of work: what a partial batch response names, what
//! a fault event carries so it can be resubmitted.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::firehose::KinesisFirehoseEventRecord;
use aws_lambda_events::event::kinesis::KinesisEventRecord;
use aws_lambda_events::event::s3::S3EventRecord;
use aws_lambda_events::event::sns::SnsRecord;
use aws_lambda_events::event::sqs::SqsMessage;
use serde::Serialize;
use serde_json::Value;

use crate::sources::DynamoDbRecord;

/// The original Lambda record behind a unit of work, kept for partial batch responses and
/// for fault events (serialized as it arrived, so it can be resubmitted).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum SourceRecord {
    /// A Kinesis record.
    Kinesis(KinesisEventRecord),
    /// A DynamoDB stream record.
    DynamoDb(DynamoDbRecord),
    /// An SQS message.
    Sqs(SqsMessage),
    /// An SNS record.
    Sns(SnsRecord),
    /// An S3 notification record.
    S3(S3EventRecord),
    /// An EventBridge event.
    EventBridge(EventBridgeEvent<Value>),
    /// A Kinesis Data Firehose record to transform.
    Firehose(KinesisFirehoseEventRecord),
    /// The JSON a function was invoked with directly, exactly as it arrived: a CloudWatch
    /// alarm's action, a schedule's constant input.
    Direct(Value),
    /// A record that did not parse as its source's type, exactly as it arrived.
    Raw(Value),
}

impl SourceRecord {
    /// The id a partial batch response names: the sequence number for Kinesis and DynamoDB,
    /// the message id for SQS, the record id for Firehose.
    pub fn item_identifier(&self) -> Option<&str> {
        match self {
            SourceRecord::Kinesis(r) => Some(&r.kinesis.sequence_number),
            SourceRecord::DynamoDb(r) => r.sequence_number(),
            SourceRecord::Sqs(r) => r.message_id.as_deref(),
            SourceRecord::Firehose(r) => r.record_id.as_deref(),
            SourceRecord::Raw(v) => v
                .pointer("/kinesis/sequenceNumber")
                .or_else(|| v.pointer("/dynamodb/SequenceNumber"))
                .or_else(|| v.get("messageId"))
                .or_else(|| v.get("recordId"))
                .and_then(Value::as_str),
            SourceRecord::Sns(_)
            | SourceRecord::S3(_)
            | SourceRecord::EventBridge(_)
            | SourceRecord::Direct(_) => None,
        }
    }

    /// A human-readable id for messages: the event id, message id or sequence number.
    pub fn name(&self) -> Option<&str> {
        match self {
            SourceRecord::Kinesis(r) => r
                .event_id
                .as_deref()
                .or(Some(r.kinesis.sequence_number.as_str())),
            SourceRecord::DynamoDb(r) => Some(r.event_id()),
            SourceRecord::Sqs(r) => r.message_id.as_deref(),
            SourceRecord::Sns(r) => Some(&r.sns.message_id),
            SourceRecord::S3(r) => r.s3.object.key.as_deref(),
            SourceRecord::EventBridge(r) => r.id.as_deref(),
            SourceRecord::Firehose(r) => r.record_id.as_deref(),
            SourceRecord::Direct(v) => ["id", "alarmArn"]
                .iter()
                .find_map(|k| v.get(*k).and_then(Value::as_str)),
            SourceRecord::Raw(v) => ["eventID", "messageId", "recordId", "id"]
                .iter()
                .find_map(|k| v.get(*k).and_then(Value::as_str)),
        }
    }

    /// The ARN of the event source the record came from (a stream or queue), which names the
    /// event source mapping that delivered it.
    pub fn event_source_arn(&self) -> Option<&str> {
        match self {
            SourceRecord::Kinesis(r) => r.event_source_arn.as_deref(),
            SourceRecord::DynamoDb(r) => r.event_source_arn(),
            SourceRecord::Sqs(m) => m.event_source_arn.as_deref(),
            SourceRecord::Raw(v) => v
                .get("eventSourceARN")
                .or_else(|| v.get("EventSourceArn"))
                .and_then(Value::as_str),
            SourceRecord::Sns(_)
            | SourceRecord::S3(_)
            | SourceRecord::EventBridge(_)
            | SourceRecord::Firehose(_)
            | SourceRecord::Direct(_) => None,
        }
    }

    /// The message group of an SQS FIFO message.
    pub fn message_group(&self) -> Option<&str> {
        match self {
            SourceRecord::Sqs(m) => m.attributes.get("MessageGroupId").map(String::as_str),
            SourceRecord::Raw(v) => v.pointer("/attributes/MessageGroupId")?.as_str(),
            _ => None,
        }
    }

    /// The size of the record's payload in bytes, as its source counts it (a Kinesis or
    /// Firehose record's data, an SQS body, an SNS message, a DynamoDB change's `SizeBytes`);
    /// 0 where the source says none.
    pub fn payload_len(&self) -> usize {
        match self {
            SourceRecord::Kinesis(r) => r.kinesis.data.0.len(),
            SourceRecord::DynamoDb(r) => usize::try_from(r.size_bytes()).unwrap_or(0),
            SourceRecord::Sqs(m) => m.body.as_ref().map_or(0, String::len),
            SourceRecord::Sns(r) => r.sns.message.len(),
            SourceRecord::Firehose(r) => r.data.0.len(),
            _ => 0,
        }
    }

    /// When the record reached its source (epoch ms), where the record says: a Kinesis or
    /// Firehose arrival time, a DynamoDB change time, an SQS send time, an SNS, S3 or
    /// EventBridge event time, the `time` of a direct invocation.
    pub fn arrival_millis(&self) -> Option<i64> {
        // rounded, as the Kinesis source reads its records' times
        let from_seconds = |s: f64| (s * 1000.0).round() as i64;
        match self {
            SourceRecord::Kinesis(r) => {
                Some(r.kinesis.approximate_arrival_timestamp.0.timestamp_millis())
            }
            SourceRecord::DynamoDb(r) => Some(r.approximate_creation_millis()),
            SourceRecord::Sqs(m) => m.attributes.get("SentTimestamp")?.parse().ok(),
            SourceRecord::Sns(r) => Some(r.sns.timestamp.timestamp_millis()),
            SourceRecord::S3(r) => Some(r.event_time.timestamp_millis()),
            SourceRecord::EventBridge(e) => e.time.map(|t| t.timestamp_millis()),
            SourceRecord::Firehose(r) => Some(r.approximate_arrival_timestamp.timestamp_millis()),
            SourceRecord::Direct(v) => v.get("time")?.as_str().and_then(parse_time),
            SourceRecord::Raw(v) => v
                .pointer("/kinesis/approximateArrivalTimestamp")
                .or_else(|| v.pointer("/dynamodb/ApproximateCreationDateTime"))
                .and_then(serde_json::Value::as_f64)
                .map(from_seconds)
                .or_else(|| {
                    v.pointer("/attributes/SentTimestamp")?
                        .as_str()?
                        .parse()
                        .ok()
                }),
        }
    }

    /// The record as JSON, as it arrived (for fault events).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Epoch milliseconds of an AWS time string: RFC 3339 (`2024-01-01T00:00:00Z`), or with the
/// offset written without a colon, as CloudWatch alarms write it
/// (`2024-01-01T00:00:00.000+0000`).
pub(crate) fn parse_time(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .or_else(|_| chrono::DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .ok()
        .map(|t| t.timestamp_millis())
}
