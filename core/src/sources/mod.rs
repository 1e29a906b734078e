//! Sources: a Lambda event in, units of work out.
//!
//! Streams and queues ([`Kinesis`], [`DynamoDb`], [`Sqs`], [`SqsSnsS3`]), notifications
//! ([`Sns`], [`S3`], [`EventBridge`]), direct invocations ([`Cron`] for a schedule, [`Alarm`]
//! for a CloudWatch alarm's action) and [`Firehose`] transformations (records in, records out).
//!
//! Each `from_*` function turns every record of a Lambda event into either units of work or a
//! [`DecodeError`] that names the record. A record never panics the handler and is never dropped
//! silently: records a source skips on purpose (another region's global-table write, a TTL
//! expiry when asked) end as done and are logged.
//!
//! The batch types ([`KinesisRecords`], [`DynamoDbRecords`], [`SqsRecords`], ...) deserialize a Lambda
//! event record by record, so one malformed record (bad base64, a missing field) becomes a fault
//! of its own instead of failing the whole invocation, which for a stream would block the shard.

mod alarm;
mod cron;
mod dynamodb;
mod dynamodb_record;
mod eventbridge;
mod firehose;
mod kind;
mod kinesis;
mod lazy;
mod s3;
mod skip;
mod sns;
mod sqs;

use std::sync::Arc;

use aws_lambda_events::event::kinesis::KinesisEventRecord;
use aws_lambda_events::event::s3::S3EventRecord;
use aws_lambda_events::event::sns::SnsRecord;
use aws_lambda_events::event::sqs::SqsMessage;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serde_json::value::RawValue;

pub use bytes::Bytes;

pub use alarm::from_alarm;
pub use cron::from_cron;
pub use dynamodb::{DynamoDbOptions, from_dynamodb};
pub use dynamodb_record::DynamoDbRecord;
pub use eventbridge::from_eventbridge;
pub use firehose::{FirehoseRecords, from_firehose};
pub use kind::{
    Alarm, Cron, DecodeOptions, DynamoDb, EventBridge, Firehose, Kinesis, S3, Sns, Source, Sqs,
    SqsSnsS3,
};
pub use kinesis::from_kinesis;
#[cfg(any(test, feature = "testing"))]
pub(crate) use kinesis::parse_record as parse_kinesis_record;
pub use lazy::Windows;
pub use s3::from_s3;
pub use sns::from_sns;
pub use sqs::{from_sqs, from_sqs_sns_s3};

pub use crate::delivery::Redelivery;
use std::collections::HashSet;

use crate::claimcheck::Pointer;
use crate::error::{DecodeError, ErrorClass, StepError};
use crate::event::Event;
pub use crate::record::SourceRecord;
use crate::uow::{OrderKey, UnitOfWork};

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

/// A record type parsed leniently: fields the library never reads may be missing (records made
/// by other tools' helpers and by hand often lack them); they get neutral values before the
/// record is parsed again. A field the library reads and the record lacks still fails it,
/// named in the reason.
pub trait Relaxed: DeserializeOwned {
    /// Fills in, where missing, the fields the library does not read.
    fn relax(record: &mut serde_json::Map<String, Value>);

    /// Whether [`relax`](Relaxed::relax) can change anything; when not, a record that fails to
    /// parse is not parsed again, and its reason is the first parse's.
    const RELAXES: bool = true;

    /// Parses one record from its JSON; on failure the JSON comes back with the error.
    fn parse(raw: Box<RawValue>) -> Result<Self, (Box<RawValue>, serde_json::Error)> {
        serde_json::from_str(raw.get()).map_err(|e| (raw, e))
    }

    /// Parses the record that starts at `start` of a whole Lambda payload (`text` is the same
    /// payload as text) in one pass: the record and the offset where it ends, or `None` when it does
    /// not parse as this type (the batch is then parsed record by record, each isolated as
    /// [`Lenient`] says, and relaxed where it can be). The default parses as
    /// [`parse`](Relaxed::parse) does.
    fn parse_at(payload: &Bytes, text: &str, start: usize) -> Option<(Self, usize)> {
        let _ = payload;
        value_at(text, start)
    }
}

/// Parses the one JSON value of type `T` that starts at `start` of `payload`: the value and the
/// offset where it ends.
///
/// From text, not bytes: the payload is checked to be UTF-8 once, where a parse of bytes
/// checks each string it reads, and a record's images hold hundreds of short ones.
pub(crate) fn value_at<'a, T: Deserialize<'a>>(
    payload: &'a str,
    start: usize,
) -> Option<(T, usize)> {
    let mut values = serde_json::Deserializer::from_str(payload.get(start..)?).into_iter::<T>();
    let value = values.next()?.ok()?;
    Some((value, start + values.byte_offset()))
}

/// Sets `key` to `value` in `map` when it is missing or null.
fn default_field(map: &mut serde_json::Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_owned(), value);
    }
}

impl Relaxed for KinesisEventRecord {
    // the arrival time, the one field the derived parse needs and Kinesis may leave out in
    // others' helpers, defaults to 0 in `parse_record` already
    fn relax(_: &mut serde_json::Map<String, Value>) {}
    const RELAXES: bool = false;

    fn parse(raw: Box<RawValue>) -> Result<Self, (Box<RawValue>, serde_json::Error)> {
        kinesis::parse_record(raw.get()).map_err(|e| (raw, e))
    }

    fn parse_at(_: &Bytes, text: &str, start: usize) -> Option<(Self, usize)> {
        let (wire, end) = value_at(text, start)?;
        Some((kinesis::from_wire(wire), end))
    }
}

impl Relaxed for DynamoDbRecord {
    // what it does not read is optional already
    fn relax(_: &mut serde_json::Map<String, Value>) {}
    const RELAXES: bool = false;

    fn parse(raw: Box<RawValue>) -> Result<Self, (Box<RawValue>, serde_json::Error)> {
        // keeps the JSON it was parsed from rather than copying it again
        DynamoDbRecord::from_raw(raw)
    }

    fn parse_at(payload: &Bytes, text: &str, start: usize) -> Option<(Self, usize)> {
        DynamoDbRecord::parse_at(payload, text, start)
    }
}

impl Relaxed for SqsMessage {
    fn relax(record: &mut serde_json::Map<String, Value>) {
        // other tools' helpers (aws-lambda-stream's toSqsRecords) write numbers and booleans
        // where SQS writes strings, `SentTimestamp` among them
        if let Some(Value::Object(attributes)) = record.get_mut("attributes") {
            for v in attributes.values_mut() {
                if v.is_number() || v.is_boolean() {
                    *v = Value::String(v.to_string());
                }
            }
        }
    }
}

impl Relaxed for SnsRecord {
    fn relax(_: &mut serde_json::Map<String, Value>) {}
    const RELAXES: bool = false;
}

impl Relaxed for S3EventRecord {
    fn relax(_: &mut serde_json::Map<String, Value>) {}
    const RELAXES: bool = false;
}

/// Reasons quote at most this many bytes (serde's messages can quote a whole bad value).
const REASON_BYTES: usize = 300;

impl<'de, R: Relaxed> Deserialize<'de> for Lenient<R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (raw, first) = match R::parse(Box::<RawValue>::deserialize(d)?) {
            Ok(r) => return Ok(Lenient::Parsed(r)),
            Err(failed) => failed,
        };
        let as_json = || serde_json::from_str(raw.get()).unwrap_or(Value::Null);
        let reason = if R::RELAXES
            && let Value::Object(mut map) = as_json()
        {
            R::relax(&mut map);
            match serde_json::from_value::<R>(Value::Object(map)) {
                Ok(r) => return Ok(Lenient::Parsed(r)),
                Err(e) => e.to_string(),
            }
        } else {
            first.to_string()
        };
        Ok(Lenient::Malformed {
            raw: as_json(),
            reason: crate::faults::truncate(&reason, REASON_BYTES).to_owned(),
        })
    }
}

/// A Lambda event with a `Records` array, parsed record by record (see [`Lenient`]).
///
/// ```
/// use lambda_stream::sources::{KinesisRecords, Lenient};
///
/// let json = r#"{"Records":[{"eventID":"shardId-0:1","kinesis":{"data":"%%%not-base64",
///   "partitionKey":"k","sequenceNumber":"1","approximateArrivalTimestamp":1.0}}]}"#;
/// let batch: KinesisRecords = serde_json::from_str(json).unwrap(); // the event still parses
/// assert!(matches!(batch.records[0], Lenient::Malformed { .. }));
/// ```
#[derive(Debug, Clone)]
pub struct Records<R> {
    /// The records, in delivery order.
    pub records: Vec<Lenient<R>>,
}

impl<R> Records<R> {
    /// The records in windows of at most `size` (at least one record each), in order; one
    /// window, itself, when they fit.
    ///
    /// ```
    /// use lambda_stream::{Event, sources::KinesisRecords, testing::to_kinesis_records};
    ///
    /// let events: Vec<Event> = (0..5).map(|i| Event::new(i.to_string(), "t", 1)).collect();
    /// let windows = KinesisRecords::from(to_kinesis_records(&events)).windows(2);
    /// let sizes: Vec<usize> = windows.iter().map(|w| w.records.len()).collect();
    /// assert_eq!(sizes, [2, 2, 1]);
    /// ```
    pub fn windows(self, size: usize) -> Vec<Records<R>> {
        let size = size.max(1);
        if self.records.len() <= size {
            return vec![self];
        }
        let mut windows = Vec::with_capacity(self.records.len().div_ceil(size));
        let mut records = self.records.into_iter();
        loop {
            let window: Vec<Lenient<R>> = records.by_ref().take(size).collect();
            if window.is_empty() {
                return windows;
            }
            windows.push(Records { records: window });
        }
    }
}

impl<'de, R: Relaxed> Deserialize<'de> for Records<R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(bound = "R: Relaxed")]
        struct Wire<R> {
            #[serde(rename = "Records", default = "Vec::new")]
            records: Vec<Lenient<R>>,
        }
        Ok(Records {
            records: Wire::deserialize(d)?.records,
        })
    }
}

impl<R: Relaxed> Records<R> {
    /// Parses a whole Lambda payload. Where it has the usual shape (`{"Records": [...]}`) and
    /// every record parses, each record is read in one pass over its bytes
    /// ([`Relaxed::parse_at`]); otherwise record by record, as `serde_json::from_slice` would
    /// (a malformed record isolated).
    ///
    /// Record by record costs a first scan of each record to find where it ends (so that one
    /// that does not parse cannot fail the others) and a copy of it: a tenth of the trigger's
    /// time. [`run`](crate::run) hands the payload over as bytes for this.
    ///
    /// ```
    /// use lambda_stream::sources::{KinesisRecords, Lenient};
    ///
    /// let payload = bytes::Bytes::from_static(br#"{"Records":[{"eventID":"shardId-0:1",
    ///   "kinesis":{"data":"eyJpZCI6IjEifQ==","partitionKey":"k","sequenceNumber":"1",
    ///   "approximateArrivalTimestamp":1.0}}]}"#);
    /// let batch = KinesisRecords::from_bytes(&payload).unwrap();
    /// assert!(matches!(batch.records[0], Lenient::Parsed(_)));
    /// ```
    pub fn from_bytes(payload: &Bytes) -> serde_json::Result<Self> {
        match Self::in_one_pass(payload) {
            Some(records) => Ok(records),
            None => serde_json::from_slice(payload),
        }
    }

    fn in_one_pass(payload: &Bytes) -> Option<Self> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut records = Vec::new();
        each_record(payload, |start| {
            let (record, end) = R::parse_at(payload, text, start)?;
            records.push(Lenient::Parsed(record));
            Some(end)
        })?;
        Some(Records { records })
    }
}

/// Walks a payload of the usual shape (`{"Records": [...]}`, nothing else) record by record:
/// `record` is handed where each record starts and says where it ends (`None` when it cannot
/// be read, which ends the walk with `None`, as a payload of another shape does).
fn each_record(b: &[u8], mut record: impl FnMut(usize) -> Option<usize>) -> Option<()> {
    let ws = |at: usize| skip::ws(b, at);
    let token = |at: usize, t: &[u8]| {
        b.get(at..at + t.len())
            .filter(|s| *s == t)
            .map(|_| at + t.len())
    };
    let mut at = token(ws(0), b"{")?;
    at = token(ws(at), b"\"Records\"")?;
    at = token(ws(at), b":")?;
    at = ws(token(ws(at), b"[")?);
    if let Some(after) = token(at, b"]") {
        at = after;
    } else {
        loop {
            at = ws(record(at)?);
            match b.get(at)? {
                b',' => at = ws(at + 1),
                b']' => {
                    at += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    at = token(ws(at), b"}")?;
    (ws(at) == b.len()).then_some(())
}

impl<R> FromIterator<R> for Records<R> {
    fn from_iter<I: IntoIterator<Item = R>>(iter: I) -> Self {
        Records {
            records: iter.into_iter().map(Lenient::Parsed).collect(),
        }
    }
}

/// A Kinesis event, record by record.
pub type KinesisRecords = Records<KinesisEventRecord>;
/// A DynamoDB stream event, record by record.
pub type DynamoDbRecords = Records<DynamoDbRecord>;
/// An SQS event, record by record.
pub type SqsRecords = Records<SqsMessage>;
/// An SNS event, record by record.
pub type SnsRecords = Records<SnsRecord>;
/// An S3 notification event, record by record.
pub type S3Records = Records<S3EventRecord>;

macro_rules! from_typed_event {
    ($event:ty, $record:ty) => {
        impl From<$event> for Records<$record> {
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

impl From<aws_lambda_events::event::dynamodb::Event> for Records<DynamoDbRecord> {
    /// Each record through its JSON, as if it had arrived so (the library's record keeps it).
    fn from(e: aws_lambda_events::event::dynamodb::Event) -> Self {
        Records {
            records: e
                .records
                .iter()
                .map(|r| {
                    let reason = |e: serde_json::Error| {
                        crate::faults::truncate(&e.to_string(), REASON_BYTES).to_owned()
                    };
                    let raw =
                        serde_json::value::to_raw_value(r).map_err(|e| (Value::Null, reason(e)))?;
                    DynamoDbRecord::parse(raw).map_err(|(raw, e)| {
                        let json = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
                        (json, reason(e))
                    })
                })
                .map(|parsed| match parsed {
                    Ok(r) => Lenient::Parsed(r),
                    Err((raw, reason)) => Lenient::Malformed { raw, reason },
                })
                .collect(),
        }
    }
}
from_typed_event!(aws_lambda_events::event::sqs::SqsEvent, SqsMessage);
from_typed_event!(aws_lambda_events::event::sns::SnsEvent, SnsRecord);
from_typed_event!(aws_lambda_events::event::s3::S3Event, S3EventRecord);

/// What a source's records carry: events of their own (which may be claim-check pointers or
/// encrypted), table rows (whose images may be encrypted), or notifications made into events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Payload {
    Events,
    Rows,
    Notifications,
}

/// The decoded batch: every record, its units of work, and the records that failed to decode.
#[derive(Debug)]
pub struct Decoded {
    pub(crate) records: Vec<Arc<SourceRecord>>,
    pub(crate) units: Vec<UnitOfWork>,
    pub(crate) failures: Vec<(u32, DecodeError)>,
    pub(crate) source: &'static str,
    pub(crate) redelivery: Redelivery,
    payload: Payload,
    /// Records to deliver again before any pipeline saw them (a claim check not yet there).
    pub(crate) retries: Vec<u32>,
}

impl Decoded {
    fn with_capacity(
        source: &'static str,
        redelivery: Redelivery,
        payload: Payload,
        n: usize,
    ) -> Self {
        Decoded {
            records: Vec::with_capacity(n),
            units: Vec::with_capacity(n),
            failures: Vec::new(),
            source,
            redelivery,
            payload,
            retries: Vec::new(),
        }
    }

    /// True for the sources whose records carry events (so may carry claim-check pointers);
    /// a DynamoDB change or an S3 notification is made into an event here, never a pointer.
    fn carries_events(&self) -> bool {
        self.payload == Payload::Events
    }

    /// The units whose event is a claim-check pointer (a malformed one included), by position
    /// among the units.
    pub(crate) fn pointers(&self) -> Vec<(usize, Result<Pointer, String>)> {
        if !self.carries_events() {
            return Vec::new();
        }
        self.units
            .iter()
            .enumerate()
            .filter_map(|(i, u)| Pointer::of(u.event().fields.get("s3")).map(|p| (i, p)))
            .collect()
    }

    /// The units whose event carries an `eem` (sources that carry events), or whose row
    /// images do (a DynamoDB change of a row written encrypted).
    pub(crate) fn encrypted(&self) -> Vec<usize> {
        let has_eem = |v: Option<&Value>| v.is_some_and(|e| !e.is_null());
        let rows = self.payload == Payload::Rows;
        if !rows && !self.carries_events() {
            return Vec::new();
        }
        self.units
            .iter()
            .enumerate()
            .filter(|(_, u)| {
                let e = u.event();
                if rows {
                    e.raw.as_ref().is_some_and(|raw| {
                        ["new", "old"]
                            .iter()
                            .any(|side| has_eem(raw.get(side).and_then(|img| img.get("eem"))))
                    })
                } else {
                    has_eem(e.eem.as_ref())
                }
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Puts events (redeemed, decrypted) in place of their units' own. A unit whose event
    /// could not be had is taken out: a transient error retries its record, and every later
    /// unit of its key waits with it (order per key); any other error faults its record.
    pub(crate) fn replace_events(&mut self, results: Vec<(usize, Result<Event, StepError>)>) {
        let mut events: Vec<Option<Event>> = Vec::new();
        let mut retry: HashSet<u32> = HashSet::new();
        let mut faulted: HashSet<u32> = HashSet::new();
        let mut waiting_keys: HashSet<u64> = HashSet::new();
        for (unit, result) in results {
            let (index, key) = (
                self.units[unit].shared.index,
                self.units[unit].shared.key_hash,
            );
            match result {
                Ok(event) => {
                    events.resize_with(self.units.len(), || None);
                    events[unit] = Some(event);
                }
                Err(e) if e.class() == ErrorClass::Transient => {
                    tracing::warn!(source = self.source, position = index, error = %e,
                        "claim check not redeemed; the record is retried");
                    retry.insert(index);
                    waiting_keys.extend(key);
                }
                Err(e) => {
                    faulted.insert(index);
                    self.fail_record(index, e.to_string());
                    if let Some((_, last)) = self.failures.last_mut() {
                        last.name = e.name().to_owned();
                    }
                }
            }
        }
        let units = std::mem::take(&mut self.units);
        let mut kept = Vec::with_capacity(units.len());
        for (i, u) in units.into_iter().enumerate() {
            let index = u.shared.index;
            let waits = u.shared.key_hash.is_some_and(|k| waiting_keys.contains(&k));
            if faulted.contains(&index) {
                continue;
            }
            if retry.contains(&index) || waits {
                retry.insert(index);
                continue;
            }
            let event = events.get_mut(i).and_then(Option::take);
            // units are numbered anew: the engine indexes its bookkeeping by that number
            kept.push(u.renumbered(kept.len() as u32, event));
        }
        self.units = kept;
        self.retries = retry.into_iter().collect();
        self.retries.sort_unstable();
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

    /// Takes in `later`, the records that follow this one's in the batch (a window decoded a
    /// chunk at a time): its positions and its units' ordinals are moved on past this one's.
    pub(crate) fn append(&mut self, later: Decoded) {
        debug_assert_eq!(self.source, later.source);
        let (records, units) = (self.records.len() as u32, self.units.len() as u32);
        self.records.extend(later.records);
        self.units
            .extend(later.units.into_iter().map(|u| u.shifted(records, units)));
        self.failures.extend(
            later
                .failures
                .into_iter()
                .map(|(position, err)| (position + records, err)),
        );
        self.retries
            .extend(later.retries.into_iter().map(|position| position + records));
    }

    /// Runs `decode` on each record that parsed; each malformed one becomes a decode failure.
    fn each<R>(
        source: &'static str,
        redelivery: Redelivery,
        payload: Payload,
        batch: Records<R>,
        mut decode: impl FnMut(&mut Decoded, R),
    ) -> Decoded {
        let mut out = Decoded::with_capacity(source, redelivery, payload, batch.records.len());
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
        let unit = self.units.len() as u32;
        self.units.push(UnitOfWork::new(
            index,
            unit,
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
        let unit = self.units.len() as u32;
        self.units.push(UnitOfWork::new(
            index,
            unit,
            record,
            event,
            Some(OrderKey::Group(group)),
            false,
        ));
    }

    fn fail(&mut self, index: u32, record: impl Into<String>, reason: impl Into<String>) {
        // both come from untrusted input: a record's name and serde's message can quote it
        let (record, reason) = (record.into(), reason.into());
        let err = DecodeError {
            record: crate::faults::truncate(&record, REASON_BYTES).to_owned(),
            reason: crate::faults::truncate(&reason, REASON_BYTES).to_owned(),
            name: "DecodeError".into(),
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

/// An id derived from `parts` (a name-based UUID, version 8, over SHA-256): the same parts, the
/// same id, for events whose source gives none (a schedule's constant input, a direct alarm).
pub(crate) fn name_based_id(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in parts {
        // length-prefixed, so ("ab", "c") and ("a", "bc") differ
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    let digest = hash.finalize();
    let mut b = [0_u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Parses a record's payload as an [`Event`], filling `id` and `timestamp` when it has none.
pub(crate) fn parse_event(
    bytes: &[u8],
    default_id: &str,
    default_ts: i64,
) -> Result<Event, String> {
    let not_an_event = |e: serde_json::Error| {
        if e.is_syntax() || e.is_eof() {
            format!("payload is not JSON: {e}")
        } else {
            format!("payload is not an event: {e}")
        }
    };
    let mut event: Event = if crate::compression::may_hold_compressed(bytes) {
        // fields aws-lambda-stream compressed: restored before the event is read
        let mut value: Value = serde_json::from_slice(bytes).map_err(not_an_event)?;
        crate::compression::decompress_value(&mut value)?;
        serde_json::from_value(value).map_err(not_an_event)?
    } else {
        serde_json::from_slice(bytes).map_err(not_an_event)?
    };
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

#[cfg(test)]
mod one_pass {
    use super::*;

    /// What a batch decodes to: each record as it would be quoted, each unit's event, and
    /// which records failed.
    fn decoded(d: Decoded) -> (Value, Vec<Value>, Vec<u32>) {
        let records = serde_json::to_value(&d.records).unwrap();
        let events = d
            .units
            .iter()
            .map(|u| serde_json::to_value(u.event()).unwrap())
            .collect();
        (
            records,
            events,
            d.failures.iter().map(|(i, _)| *i).collect(),
        )
    }

    fn ddb_record(i: usize, key: &str, name: &str) -> String {
        format!(
            r#"{{"eventID":"e{i}","eventName":"INSERT","eventVersion":"1.1","eventSource":"aws:dynamodb",
  "awsRegion":"us-east-1","dynamodb":{{"ApproximateCreationDateTime":1700000000.5,
  "Keys":{{"pk":{{"S":"{key}"}},"sk":{{"S":"{i:04}"}}}},
  "NewImage":{{"pk":{{"S":"{key}"}},"sk":{{"S":"{i:04}"}},"name":{{"S":"{name}"}},
    "n":{{"N":"1.50"}},"tags":{{"SS":["a","b"]}},"list":{{"L":[{{"N":"1"}},{{"BOOL":true}},{{"NULL":true}}]}}}},
  "SequenceNumber":"{:021}","SizeBytes":99,"StreamViewType":"NEW_IMAGE"}},
  "eventSourceARN":"arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/1"}}"#,
            100 + i
        )
    }

    #[test]
    fn a_dynamodb_batch_in_one_pass_is_the_batch_record_by_record_each_record_verbatim() {
        // many records over two keys, escapes and non-ASCII text, and whitespace between them
        let names = [
            "plain",
            "caf\\u00e9 \\\"quoted\\\"",
            "naïve ✓",
            "back\\\\slash",
        ];
        let records: Vec<String> = (0..12)
            .map(|i| ddb_record(i, if i % 2 == 0 { "k1" } else { "k2" }, names[i % 4]))
            .collect();
        let payload = format!("{{ \"Records\" :\n [ {} ] \n}}\n", records.join(" ,\n"));
        let bytes = Bytes::from(payload.clone());
        let fast = DynamoDbRecords::in_one_pass(&bytes).expect("one pass");
        let slow: DynamoDbRecords = serde_json::from_slice(&bytes).unwrap();
        for (record, text) in fast.records.iter().zip(&records) {
            let Lenient::Parsed(r) = record else {
                panic!("parsed")
            };
            assert_eq!(r.raw(), text.as_str());
        }
        let opts = DynamoDbOptions::default();
        let (fast, slow) = (from_dynamodb(fast, &opts), from_dynamodb(slow, &opts));
        let (fast, slow) = (decoded(fast), decoded(slow));
        assert_eq!(fast.1.len(), 12);
        assert_eq!(fast, slow);
        assert_eq!(fast.1[1]["raw"]["new"]["name"], "café \"quoted\"");
    }

    #[test]
    fn a_kinesis_batch_in_one_pass_is_the_batch_record_by_record() {
        use base64::Engine as _;
        let records: Vec<String> = (0..9)
            .map(|i| {
                let event = serde_json::json!({"id": format!("e{i}"), "type": "thing-updated",
                    "timestamp": 1, "partitionKey": format!("k{}", i % 3), "thing": {"n": i}});
                let data = base64::engine::general_purpose::STANDARD
                    .encode(serde_json::to_vec(&event).unwrap());
                format!(
                    r#"{{"kinesis":{{"kinesisSchemaVersion":"1.0","partitionKey":"k{}","sequenceNumber":"{}","data":"{data}","approximateArrivalTimestamp":1700000000.25}},"eventSource":"aws:kinesis","eventVersion":"1.0","eventID":"shardId-0:{i}","eventName":"aws:kinesis:record","awsRegion":"us-east-1","eventSourceARN":"arn:aws:kinesis:us-east-1:1:stream/s"}}"#,
                    i % 3,
                    1000 + i
                )
            })
            .collect();
        let bytes = Bytes::from(format!("{{\"Records\":[{}]}}", records.join(",")));
        let fast = KinesisRecords::in_one_pass(&bytes).expect("one pass");
        let slow: KinesisRecords = serde_json::from_slice(&bytes).unwrap();
        let (fast, slow) = (decoded(from_kinesis(fast)), decoded(from_kinesis(slow)));
        assert_eq!(fast.1.len(), 9);
        assert_eq!(fast, slow);
    }

    #[test]
    fn what_one_pass_cannot_read_is_read_record_by_record() {
        let good = ddb_record(0, "k1", "a");
        // no eventName: this record alone is malformed
        let bad = ddb_record(1, "k1", "b").replace(r#""eventName":"INSERT","#, "");
        for payload in [
            format!(r#"{{"Records":[{good},{bad},{good}]}}"#),
            // another key beside the records
            format!(r#"{{"Records":[{good}],"extra":1}}"#),
            // the records not first
            format!(r#"{{"extra":1,"Records":[{good}]}}"#),
        ] {
            let bytes = Bytes::from(payload);
            assert!(DynamoDbRecords::in_one_pass(&bytes).is_none());
            let batch = DynamoDbRecords::from_bytes(&bytes).unwrap();
            let slow: DynamoDbRecords = serde_json::from_slice(&bytes).unwrap();
            let opts = DynamoDbOptions::default();
            assert_eq!(
                decoded(from_dynamodb(batch, &opts)),
                decoded(from_dynamodb(slow, &opts))
            );
        }
        let bytes = Bytes::from(format!(r#"{{"Records":[{good},{bad}]}}"#));
        let batch = DynamoDbRecords::from_bytes(&bytes).unwrap();
        assert!(matches!(batch.records[0], Lenient::Parsed(_)));
        assert!(matches!(batch.records[1], Lenient::Malformed { .. }));
        // no records, and a payload that is not JSON
        let empty = DynamoDbRecords::from_bytes(&Bytes::from_static(b" {\"Records\": [ ]} "));
        assert!(empty.unwrap().records.is_empty());
        let cut = Bytes::from(format!(r#"{{"Records":[{good}"#));
        assert!(DynamoDbRecords::from_bytes(&cut).is_err());
        // what is not JSON is not read: a form feed between tokens, characters after the event
        for bad in [
            format!("{{\x0c\"Records\":[{good}]}}"),
            format!(r#"{{"Records":[{good}]}} junk"#),
        ] {
            let bytes = Bytes::from(bad);
            assert!(DynamoDbRecords::in_one_pass(&bytes).is_none());
            assert!(DynamoDbRecords::from_bytes(&bytes).is_err());
        }
    }

    #[test]
    fn an_sqs_batch_in_one_pass_is_the_batch_record_by_record_relaxed_where_it_must_be() {
        let message = |i: usize, sent: &str| {
            format!(
                r#"{{"messageId":"m{i}","receiptHandle":"r{i}","body":"{{\"id\":\"e{i}\",\"type\":\"t\",\"timestamp\":1}}","attributes":{{"SentTimestamp":{sent},"ApproximateReceiveCount":"1"}},"messageAttributes":{{}},"md5OfBody":"x","eventSource":"aws:sqs","eventSourceARN":"arn:aws:sqs:us-east-1:1:q","awsRegion":"us-east-1"}}"#
            )
        };
        let plain: Vec<String> = (0..5).map(|i| message(i, "\"1700000000000\"")).collect();
        let bytes = Bytes::from(format!(r#"{{"Records":[{}]}}"#, plain.join(",")));
        let fast = SqsRecords::in_one_pass(&bytes).expect("one pass");
        let slow: SqsRecords = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(decoded(from_sqs(fast)), decoded(from_sqs(slow)));
        // a number where SQS writes a string (others' helpers do): relaxed, record by record
        let relaxed = Bytes::from(format!(
            r#"{{"Records":[{}]}}"#,
            message(9, "1700000000000")
        ));
        assert!(SqsRecords::in_one_pass(&relaxed).is_none());
        let batch = SqsRecords::from_bytes(&relaxed).unwrap();
        assert!(matches!(batch.records[0], Lenient::Parsed(_)));
    }
}
