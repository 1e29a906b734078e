use std::sync::Arc;

use aws_lambda_events::event::s3::S3EventRecord;
use aws_lambda_events::event::sqs::SqsMessage;
use serde::Deserialize;

use super::s3::s3_event;
use super::{Decoded, SourceRecord, SqsRecords, parse_event};

/// An event as an EventBridge rule delivers it to an SQS queue.
#[derive(Deserialize)]
struct BusEnvelope {
    #[serde(rename = "detail-type")]
    _detail_type: String,
    #[serde(default)]
    id: String,
    detail: serde_json::Value,
}

/// An SNS notification as SNS delivers it to an SQS queue (raw delivery off).
#[derive(Deserialize)]
struct SnsEnvelope {
    #[serde(rename = "Type")]
    kind: String,
    #[serde(rename = "MessageId", default)]
    message_id: String,
    #[serde(rename = "Message")]
    message: String,
}

fn sent_millis(m: &SqsMessage) -> i64 {
    m.attributes
        .get("SentTimestamp")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// Decodes an SQS event: each body is an [`Event`](crate::Event) in JSON, an SNS notification
/// whose `Message` is one (SNS → SQS fan-out without raw delivery), or an EventBridge event
/// whose `detail` is one (a bus rule with an SQS target).
///
/// The event's `id` defaults to the `messageId`. Messages of a FIFO queue are ordered by their
/// message group, as Lambda delivers them.
///
/// ```
/// use lambda_stream::{Event, sources::from_sqs, testing::to_sqs_records};
///
/// let decoded = from_sqs(to_sqs_records(&[Event::new("", "thing-created", 1)]));
/// let event = decoded.units()[0].event();
/// assert_eq!(event.id, "msg-0"); // the message id, since the body had none
/// ```
pub fn from_sqs(batch: impl Into<SqsRecords>) -> Decoded {
    Decoded::each(
        "from_sqs",
        <super::Sqs as super::Source>::REDELIVERY,
        super::Payload::Events,
        batch.into(),
        |out, message| {
            let parsed = parse_body(&message);
            let group = message.attributes.get("MessageGroupId").cloned();
            let (index, record) = out.push_record(SourceRecord::Sqs(message));
            match (parsed, group) {
                (Ok(event), Some(group)) => {
                    out.unit_in_group(index, Arc::clone(&record), event, group)
                }
                (Ok(event), None) => out.unit(index, Arc::clone(&record), event, || None, false),
                (Err(reason), _) => out.fail_record(index, reason),
            }
        },
    )
}

fn parse_body(message: &SqsMessage) -> Result<crate::Event, String> {
    let body = message.body.as_deref().unwrap_or_default();
    let id = message.message_id.as_deref().unwrap_or_default();
    let sent = sent_millis(message);
    match parse_event(body.as_bytes(), id, sent) {
        Ok(event) => Ok(event),
        Err(reason) => {
            if let Ok(env) = serde_json::from_str::<SnsEnvelope>(body)
                && env.kind == "Notification"
            {
                return parse_event(env.message.as_bytes(), &env.message_id, sent)
                    .map_err(|r| format!("SNS message in body: {r}"));
            }
            if let Ok(env) = serde_json::from_str::<BusEnvelope>(body) {
                let detail = serde_json::to_vec(&env.detail).unwrap_or_default();
                return parse_event(&detail, &env.id, sent)
                    .map_err(|r| format!("EventBridge detail in body: {r}"));
            }
            Err(format!("body: {reason}"))
        }
    }
}

/// Decodes S3 notifications carried in SNS notifications carried in SQS messages (or in SQS
/// directly). One message can carry many S3 records: each becomes a unit of work, and the
/// message's outcome is the worst of theirs. S3's `s3:TestEvent` carries none and ends done.
///
/// ```
/// use lambda_stream::sources::from_sqs_sns_s3;
/// use lambda_stream::testing::{to_s3_records, to_sns_records, to_sqs_messages};
///
/// let s3 = to_s3_records(&[("bucket", "a.json"), ("bucket", "b.json")]);
/// let sns = serde_json::json!({"Type": "Notification", "MessageId": "n1",
///     "Message": serde_json::to_string(&s3).unwrap()});
/// let decoded = from_sqs_sns_s3(to_sqs_messages(&[sns.to_string()]));
/// assert_eq!(decoded.units().len(), 2);
/// assert_eq!(decoded.units()[1].event().partition_key.as_deref(), Some("b.json"));
/// ```
pub fn from_sqs_sns_s3(batch: impl Into<SqsRecords>) -> Decoded {
    Decoded::each(
        "from_sqs_sns_s3",
        <super::SqsSnsS3 as super::Source>::REDELIVERY,
        super::Payload::Notifications,
        batch.into(),
        |out, message| {
            let parsed = parse_s3_in_sns(message.body.as_deref().unwrap_or_default());
            let (index, record) = out.push_record(SourceRecord::Sqs(message));
            match parsed {
                Ok(s3) => {
                    for r in &s3.records {
                        out.unit(index, Arc::clone(&record), s3_event(r), || None, false);
                    }
                }
                Err(reason) => out.fail_record(index, reason),
            }
        },
    )
}

/// An S3 notification; `s3:TestEvent` has no `Records`.
#[derive(Deserialize)]
struct S3Notification {
    #[serde(rename = "Records", default)]
    records: Vec<S3EventRecord>,
}

fn parse_s3_in_sns(body: &str) -> Result<S3Notification, String> {
    let message = match serde_json::from_str::<SnsEnvelope>(body) {
        Ok(env) if env.kind == "Notification" => env.message,
        Ok(env) => {
            return Err(format!(
                "SNS message of type `{}`, not a Notification",
                env.kind
            ));
        }
        Err(_) => body.to_owned(),
    };
    // s3:TestEvent has no Records; that is not an error
    serde_json::from_str::<S3Notification>(&message)
        .map_err(|e| format!("not an S3 notification: {e}"))
}
