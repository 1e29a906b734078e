//! Sources: a Lambda event in, units of work out.
//!
//! Each `from_*` function turns every record of a Lambda event into either units of work or a
//! [`DecodeError`] that names the record. A record never panics the handler and is never dropped
//! silently: records a source skips on purpose (another region's global-table write, a TTL
//! expiry when asked) end as done and are logged.
//!
//! The batch types ([`KinesisBatch`], [`DynamoDbBatch`], [`SqsBatch`], ...) deserialize a Lambda
//! event record by record, so one malformed record (bad base64, a missing field) becomes a fault
//! of its own instead of failing the whole invocation, which for a stream would block the shard.

mod dynamodb;
mod eventbridge;
mod kinesis;
mod s3;
mod sns;
mod sqs;

use std::sync::Arc;

use aws_lambda_events::event::dynamodb::EventRecord as DynamoDbRecord;
use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::kinesis::KinesisEventRecord;
use aws_lambda_events::event::s3::S3EventRecord;
use aws_lambda_events::event::sns::SnsRecord;
use aws_lambda_events::event::sqs::SqsMessage;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

pub use dynamodb::{DynamoDbOptions, from_dynamodb};
pub use eventbridge::from_eventbridge;
pub use kinesis::from_kinesis;
pub use s3::from_s3;
pub use sns::from_sns;
pub use sqs::{from_sqs, from_sqs_sns_s3};

use crate::batch::Redelivery;
use crate::error::DecodeError;
use crate::event::Event;
use crate::uow::{OrderKey, UnitOfWork};

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
    /// A record that did not parse as its source's type, exactly as it arrived.
    Raw(Value),
}

impl SourceRecord {
    /// The id a partial batch response names: the sequence number for Kinesis and DynamoDB,
    /// the message id for SQS.
    pub fn item_identifier(&self) -> Option<&str> {
        match self {
            SourceRecord::Kinesis(r) => Some(&r.kinesis.sequence_number),
            SourceRecord::DynamoDb(r) => r.change.sequence_number.as_deref(),
            SourceRecord::Sqs(r) => r.message_id.as_deref(),
            SourceRecord::Raw(v) => v
                .pointer("/kinesis/sequenceNumber")
                .or_else(|| v.pointer("/dynamodb/SequenceNumber"))
                .or_else(|| v.get("messageId"))
                .and_then(Value::as_str),
            SourceRecord::Sns(_) | SourceRecord::S3(_) | SourceRecord::EventBridge(_) => None,
        }
    }

    /// A human-readable id for messages: the event id, message id or sequence number.
    pub fn name(&self) -> Option<&str> {
        match self {
            SourceRecord::Kinesis(r) => r
                .event_id
                .as_deref()
                .or(Some(r.kinesis.sequence_number.as_str())),
            SourceRecord::DynamoDb(r) => Some(&r.event_id),
            SourceRecord::Sqs(r) => r.message_id.as_deref(),
            SourceRecord::Sns(r) => Some(&r.sns.message_id),
            SourceRecord::S3(r) => r.s3.object.key.as_deref(),
            SourceRecord::EventBridge(r) => r.id.as_deref(),
            SourceRecord::Raw(v) => ["eventID", "messageId", "id"]
                .iter()
                .find_map(|k| v.get(*k).and_then(Value::as_str)),
        }
    }

    /// The record as JSON, as it arrived (for fault events).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// One record of a Lambda event, parsed on its own.
#[derive(Debug, Clone)]
pub enum Lenient<R> {
    /// The record parsed as its source's type.
    Parsed(R),
    /// The record did not parse; kept as it arrived.
    Malformed {
        /// The record as JSON.
        raw: Value,
        /// Why it did not parse.
        reason: String,
    },
}

impl<'de, R: DeserializeOwned> Deserialize<'de> for Lenient<R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        Ok(match serde_json::from_str::<R>(raw.get()) {
            Ok(r) => Lenient::Parsed(r),
            Err(e) => Lenient::Malformed {
                raw: serde_json::from_str(raw.get()).unwrap_or(Value::Null),
                reason: e.to_string(),
            },
        })
    }
}

/// A Lambda event with a `Records` array, parsed record by record (see [`Lenient`]).
///
/// ```
/// use lambda_stream::sources::{KinesisBatch, Lenient};
///
/// let json = r#"{"Records":[{"eventID":"shardId-0:1","kinesis":{"data":"%%%not-base64",
///   "partitionKey":"k","sequenceNumber":"1","approximateArrivalTimestamp":1.0}}]}"#;
/// let batch: KinesisBatch = serde_json::from_str(json).unwrap(); // the event still parses
/// assert!(matches!(batch.records[0], Lenient::Malformed { .. }));
/// ```
#[derive(Debug, Clone)]
pub struct LambdaBatch<R> {
    /// The records, in delivery order.
    pub records: Vec<Lenient<R>>,
}

impl<'de, R: DeserializeOwned> Deserialize<'de> for LambdaBatch<R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(bound = "R: DeserializeOwned")]
        struct Wire<R> {
            #[serde(rename = "Records", default = "Vec::new")]
            records: Vec<Lenient<R>>,
        }
        Ok(LambdaBatch {
            records: Wire::deserialize(d)?.records,
        })
    }
}

impl<R> FromIterator<R> for LambdaBatch<R> {
    fn from_iter<I: IntoIterator<Item = R>>(iter: I) -> Self {
        LambdaBatch {
            records: iter.into_iter().map(Lenient::Parsed).collect(),
        }
    }
}

/// A Kinesis event, record by record.
pub type KinesisBatch = LambdaBatch<KinesisEventRecord>;
/// A DynamoDB stream event, record by record.
pub type DynamoDbBatch = LambdaBatch<DynamoDbRecord>;
/// An SQS event, record by record.
pub type SqsBatch = LambdaBatch<SqsMessage>;
/// An SNS event, record by record.
pub type SnsBatch = LambdaBatch<SnsRecord>;
/// An S3 notification event, record by record.
pub type S3Batch = LambdaBatch<S3EventRecord>;

macro_rules! from_typed_event {
    ($event:ty, $record:ty) => {
        impl From<$event> for LambdaBatch<$record> {
            fn from(e: $event) -> Self {
                e.records.into_iter().collect()
            }
        }
    };
}
from_typed_event!(
    aws_lambda_events::event::kinesis::KinesisEvent,
    KinesisEventRecord
);
from_typed_event!(aws_lambda_events::event::dynamodb::Event, DynamoDbRecord);
from_typed_event!(aws_lambda_events::event::sqs::SqsEvent, SqsMessage);
from_typed_event!(aws_lambda_events::event::sns::SnsEvent, SnsRecord);
from_typed_event!(aws_lambda_events::event::s3::S3Event, S3EventRecord);

/// The decoded batch: every record, its units of work, and the records that failed to decode.
#[derive(Debug)]
pub struct Decoded {
    pub(crate) records: Vec<Arc<SourceRecord>>,
    pub(crate) units: Vec<UnitOfWork>,
    pub(crate) failures: Vec<(u32, DecodeError)>,
    pub(crate) source: &'static str,
    pub(crate) redelivery: Redelivery,
}

impl Decoded {
    fn with_capacity(source: &'static str, n: usize) -> Self {
        Decoded {
            records: Vec::with_capacity(n),
            units: Vec::with_capacity(n),
            failures: Vec::new(),
            source,
            redelivery: Decoded::redelivery_of(source),
        }
    }

    /// How the source redelivers what is not done: streams from a checkpoint, SQS per
    /// message, the asynchronous sources as a whole invocation.
    fn redelivery_of(source: &str) -> Redelivery {
        match source {
            "from_kinesis" | "from_dynamodb" => Redelivery::FromCheckpoint,
            "from_sqs" | "from_sqs_sns_s3" => Redelivery::PerRecord,
            _ => Redelivery::Whole,
        }
    }

    /// The units of work, in batch order.
    pub fn units(&self) -> &[UnitOfWork] {
        &self.units
    }

    /// The records that could not be decoded, by batch position.
    pub fn failures(&self) -> &[(u32, DecodeError)] {
        &self.failures
    }

    /// The original records, in batch order.
    pub fn records(&self) -> &[Arc<SourceRecord>] {
        &self.records
    }

    /// The name of the source function (`from_kinesis`, ...), used as the fault's pipeline tag.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// Runs `decode` on each record that parsed; each malformed one becomes a decode failure.
    fn each<R>(
        source: &'static str,
        batch: LambdaBatch<R>,
        mut decode: impl FnMut(&mut Decoded, R),
    ) -> Decoded {
        let mut out = Decoded::with_capacity(source, batch.records.len());
        for record in batch.records {
            match record {
                Lenient::Parsed(r) => decode(&mut out, r),
                Lenient::Malformed { raw, reason } => out.malformed(raw, reason),
            }
        }
        out
    }

    /// Adds a record and returns its position.
    fn push_record(&mut self, record: SourceRecord) -> (u32, Arc<SourceRecord>) {
        let index = self.records.len() as u32;
        let record = Arc::new(record);
        self.records.push(Arc::clone(&record));
        (index, record)
    }

    fn unit(
        &mut self,
        index: u32,
        record: Arc<SourceRecord>,
        event: Event,
        source_key: impl FnOnce() -> Option<String>,
        latched: bool,
    ) {
        // only allocate the source key when the event cannot order itself
        let key = if event.partition_key.is_none() {
            source_key()
        } else {
            None
        };
        self.units.push(UnitOfWork::new(
            index,
            record,
            event,
            key.map(OrderKey::Fallback),
            latched,
        ));
    }

    /// A unit ordered by the source's key even when the event has a partition key (an SQS FIFO
    /// message group: Lambda keeps order per group, so must we).
    fn unit_in_group(
        &mut self,
        index: u32,
        record: Arc<SourceRecord>,
        event: Event,
        group: String,
    ) {
        self.units.push(UnitOfWork::new(
            index,
            record,
            event,
            Some(OrderKey::Group(group)),
            false,
        ));
    }

    fn fail(&mut self, index: u32, record: impl Into<String>, reason: impl Into<String>) {
        let err = DecodeError {
            record: record.into(),
            reason: reason.into(),
        };
        tracing::warn!(source = self.source, position = index, error = %err, "record did not decode");
        self.failures.push((index, err));
    }

    /// Records a decode failure for the record at `index`, naming it.
    fn fail_record(&mut self, index: u32, reason: impl Into<String>) {
        let name = self.records[index as usize]
            .name()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("at position {index}"));
        self.fail(index, name, reason);
    }

    fn malformed(&mut self, raw: Value, reason: String) {
        let (index, _) = self.push_record(SourceRecord::Raw(raw));
        self.fail_record(index, format!("not a valid record: {reason}"));
    }
}

/// Parses a record's payload as an [`Event`], filling `id` and `timestamp` when it has none.
fn parse_event(bytes: &[u8], default_id: &str, default_ts: i64) -> Result<Event, String> {
    let mut event: Event = serde_json::from_slice(bytes).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            format!("payload is not JSON: {e}")
        } else {
            format!("payload is not an event: {e}")
        }
    })?;
    if event.event_type.is_empty() {
        return Err("event has an empty type".into());
    }
    if event.id.is_empty() {
        event.id = default_id.to_owned();
    }
    if event.timestamp == 0 {
        event.timestamp = default_ts;
    }
    Ok(event)
}
