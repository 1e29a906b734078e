//! The Lambda event sources as types: each knows its event, how its records decode, how Lambda
//! redelivers what is not done, and the answer Lambda expects.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::firehose::KinesisFirehoseResponse;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsMessage};
use aws_lambda_events::event::streams::{DynamoDbEventResponse, KinesisEventResponse};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::lazy::{self, Windows};
use super::{
    Bytes, Decoded, DynamoDbOptions, DynamoDbRecords, FirehoseRecords, KinesisRecords, Lenient,
    Records, Relaxed, S3Records, SnsRecords, SqsRecords, from_alarm, from_cron, from_dynamodb,
    from_eventbridge, from_firehose, from_kinesis, from_s3, from_sns, from_sqs, from_sqs_sns_s3,
};
use crate::delivery::Redelivery;
use crate::error::BatchError;
use crate::record::SourceRecord;
use crate::response::Outcomes;

/// How records are decoded, beyond what the event itself says.
#[derive(Debug, Clone, Default)]
pub struct DecodeOptions {
    /// How DynamoDB stream records are read.
    pub dynamodb: DynamoDbOptions,
}

/// A Lambda event source. [`Handler::handle`](crate::Handler::handle) and [`run`](crate::run)
/// take one as a type parameter:
///
/// ```no_run
/// use lambda_stream::{Handler, Pipeline, sources, testing::MemoryFaults};
///
/// # async fn main_() -> Result<(), lambda_runtime::Error> {
/// let handler = Handler::builder(MemoryFaults::default()).pipeline(Pipeline::new("p1")).build()?;
/// lambda_stream::run::<sources::Kinesis>(handler).await
/// # }
/// ```
///
/// A source of your own (say, records in a custom envelope) implements it the same way.
pub trait Source: Send + Sync + 'static {
    /// The Lambda event, as `lambda_runtime` hands it over.
    type Event: DeserializeOwned + Send + 'static;
    /// What the invocation answers.
    type Response: Serialize + Send + 'static;
    /// What Lambda delivers again when records are not done.
    const REDELIVERY: Redelivery;
    /// The event from the invocation's payload, as [`run`](crate::run) receives it. A batch of
    /// records is read in one pass where it can be ([`Records::from_bytes`](super::Records::from_bytes)).
    fn event(payload: &bytes::Bytes) -> serde_json::Result<Self::Event> {
        serde_json::from_slice(payload)
    }
    /// The event cut into pieces of at most `size` records, in order. The handler asks for
    /// pieces of the largest divisor from 8 to 32 of
    /// [`Settings::window`](crate::Settings::window) (25 records for windows of 500; the
    /// window itself when it has none), decodes one at a time and groups them back into
    /// windows: each window runs when the one before it has ended, and is decoded while that
    /// one's calls are out.
    /// By default one piece, so one window: a source Lambda delivers again whole keeps it, since a fault
    /// published by an early window would be raised again when a later one fails the event.
    /// When there is more than one window, each window's outcomes keep only the records to
    /// retry and the window's first once it has run, so [`respond`](Source::respond) may read
    /// only those (an answer naming every record, as Firehose's does, needs one window).
    fn windows(event: Self::Event, size: usize) -> Vec<Self::Event> {
        let _ = size;
        vec![event]
    }
    /// The event from the invocation's payload in pieces of at most `size` records, as
    /// [`windows`](Source::windows) cuts it, each parsed when its turn comes: what
    /// [`run`](crate::run) hands the handler ([`Handler::handle_payload`](crate::Handler::handle_payload)).
    /// By default the event is parsed whole ([`event`](Source::event)) and then cut. A
    /// Kinesis batch is walked once to find its records and each piece's are parsed when it
    /// is taken, so a big batch holds its payload and little more than one window's records,
    /// not every record's decoded data. (A DynamoDB stream record already keeps only slices of the payload, and
    /// walking its images costs the trigger 4.5 %: it is parsed whole.) The walk does not check
    /// the JSON: a record of such a batch that is not JSON at all is a decode fault of its own
    /// (its text and sequence number kept), where a batch parsed whole fails the invocation.
    fn event_windows(payload: Bytes, size: usize) -> serde_json::Result<Windows<Self::Event>> {
        Ok(Box::new(
            Self::windows(Self::event(&payload)?, size).into_iter(),
        ))
    }
    /// The event's records as units of work; the ones that do not decode become faults.
    fn decode(event: Self::Event, options: &DecodeOptions) -> Decoded;
    /// The answer from every record's outcome (consumed: what pipelines answered moves into
    /// it): a partial batch response, or an error that fails the invocation so Lambda delivers
    /// it again.
    fn respond(outcomes: Outcomes) -> Result<Self::Response, BatchError>;
}

/// `records` in windows of `size` (see [`Source::windows`]), unless one of them keeps the
/// batch whole: a record Lambda could not be told to retry (no id: a retry of it fails the
/// whole batch, and an earlier window's faults would then be raised twice), or one in an SQS
/// FIFO group (a group held by a retry holds to the batch's end, which the response applies
/// over the whole batch; FIFO batches hold 10 messages at most anyway).
fn windowed<R>(
    records: Records<R>,
    size: usize,
    windowable: impl Fn(&R) -> bool,
) -> Vec<Records<R>> {
    if records.records.len() <= size {
        return vec![records];
    }
    let whole = records.records.iter().any(|r| match r {
        Lenient::Parsed(r) => !windowable(r),
        Lenient::Malformed { raw, .. } => {
            let raw = SourceRecord::Raw(raw.clone());
            raw.item_identifier().is_none() || raw.message_group().is_some()
        }
    });
    if whole {
        vec![records]
    } else {
        records.windows(size)
    }
}

/// The payload's records a window at a time where it has the usual shape (see
/// [`Source::event_windows`]), else parsed whole and cut as `S` cuts them.
fn lazy_or_whole<S, R>(
    payload: Bytes,
    size: usize,
    probe: lazy::Probe,
) -> serde_json::Result<Windows<Records<R>>>
where
    S: Source<Event = Records<R>>,
    R: Relaxed + Send + 'static,
{
    match Records::lazy_windows(payload.clone(), size, probe) {
        Some(windows) => Ok(windows),
        None => Ok(Box::new(S::windows(S::event(&payload)?, size).into_iter())),
    }
}

/// An SQS message that may be taken in a window: it has an id and no FIFO group.
fn sqs_windowable(m: &SqsMessage) -> bool {
    m.message_id.is_some() && !m.attributes.contains_key("MessageGroupId")
}

/// Kinesis: partial batch response with the lowest retry sequence number.
#[derive(Debug, Clone, Copy)]
pub struct Kinesis;

impl Source for Kinesis {
    type Event = KinesisRecords;
    fn windows(event: KinesisRecords, size: usize) -> Vec<KinesisRecords> {
        windowed(event, size, |_| true)
    }
    fn event(payload: &bytes::Bytes) -> serde_json::Result<KinesisRecords> {
        KinesisRecords::from_bytes(payload)
    }
    fn event_windows(payload: Bytes, size: usize) -> serde_json::Result<Windows<KinesisRecords>> {
        lazy_or_whole::<Self, _>(payload, size, lazy::kinesis)
    }
    type Response = KinesisEventResponse;
    const REDELIVERY: Redelivery = Redelivery::FromCheckpoint;
    fn decode(event: KinesisRecords, _: &DecodeOptions) -> Decoded {
        from_kinesis(event)
    }
    fn respond(outcomes: Outcomes) -> Result<KinesisEventResponse, BatchError> {
        outcomes.kinesis_response()
    }
}

/// DynamoDB Streams: partial batch response with the lowest retry sequence number.
#[derive(Debug, Clone, Copy)]
pub struct DynamoDb;

impl Source for DynamoDb {
    type Event = DynamoDbRecords;
    fn windows(event: DynamoDbRecords, size: usize) -> Vec<DynamoDbRecords> {
        windowed(event, size, |r| r.sequence_number().is_some())
    }
    fn event(payload: &bytes::Bytes) -> serde_json::Result<DynamoDbRecords> {
        DynamoDbRecords::from_bytes(payload)
    }
    type Response = DynamoDbEventResponse;
    const REDELIVERY: Redelivery = Redelivery::FromCheckpoint;
    fn decode(event: DynamoDbRecords, options: &DecodeOptions) -> Decoded {
        from_dynamodb(event, &options.dynamodb)
    }
    fn respond(outcomes: Outcomes) -> Result<DynamoDbEventResponse, BatchError> {
        outcomes.dynamodb_response()
    }
}

/// SQS, each body an event (or an SNS notification or EventBridge event carrying one): every
/// retry message id reported.
#[derive(Debug, Clone, Copy)]
pub struct Sqs;

impl Source for Sqs {
    type Event = SqsRecords;
    fn windows(event: SqsRecords, size: usize) -> Vec<SqsRecords> {
        windowed(event, size, sqs_windowable)
    }
    fn event(payload: &bytes::Bytes) -> serde_json::Result<SqsRecords> {
        SqsRecords::from_bytes(payload)
    }
    type Response = SqsBatchResponse;
    const REDELIVERY: Redelivery = Redelivery::PerRecord;
    fn decode(event: SqsRecords, _: &DecodeOptions) -> Decoded {
        from_sqs(event)
    }
    fn respond(outcomes: Outcomes) -> Result<SqsBatchResponse, BatchError> {
        outcomes.sqs_response()
    }
}

/// SQS carrying S3 notifications, directly or through SNS: every retry message id reported.
#[derive(Debug, Clone, Copy)]
pub struct SqsSnsS3;

impl Source for SqsSnsS3 {
    type Event = SqsRecords;
    fn windows(event: SqsRecords, size: usize) -> Vec<SqsRecords> {
        windowed(event, size, sqs_windowable)
    }
    fn event(payload: &bytes::Bytes) -> serde_json::Result<SqsRecords> {
        SqsRecords::from_bytes(payload)
    }
    type Response = SqsBatchResponse;
    const REDELIVERY: Redelivery = Redelivery::PerRecord;
    fn decode(event: SqsRecords, _: &DecodeOptions) -> Decoded {
        from_sqs_sns_s3(event)
    }
    fn respond(outcomes: Outcomes) -> Result<SqsBatchResponse, BatchError> {
        outcomes.sqs_response()
    }
}

/// SNS: no partial response; any retry fails the invocation.
#[derive(Debug, Clone, Copy)]
pub struct Sns;

impl Source for Sns {
    type Event = SnsRecords;
    fn event(payload: &bytes::Bytes) -> serde_json::Result<SnsRecords> {
        SnsRecords::from_bytes(payload)
    }
    type Response = ();
    const REDELIVERY: Redelivery = Redelivery::Whole;
    fn decode(event: SnsRecords, _: &DecodeOptions) -> Decoded {
        from_sns(event)
    }
    fn respond(outcomes: Outcomes) -> Result<(), BatchError> {
        outcomes.async_result()
    }
}

/// S3 notifications: no partial response; any retry fails the invocation.
#[derive(Debug, Clone, Copy)]
pub struct S3;

impl Source for S3 {
    type Event = S3Records;
    fn event(payload: &bytes::Bytes) -> serde_json::Result<S3Records> {
        S3Records::from_bytes(payload)
    }
    type Response = ();
    const REDELIVERY: Redelivery = Redelivery::Whole;
    fn decode(event: S3Records, _: &DecodeOptions) -> Decoded {
        from_s3(event)
    }
    fn respond(outcomes: Outcomes) -> Result<(), BatchError> {
        outcomes.async_result()
    }
}

/// EventBridge (a rule targeting the function): a retry fails the invocation.
#[derive(Debug, Clone, Copy)]
pub struct EventBridge;

impl Source for EventBridge {
    type Event = EventBridgeEvent<Value>;
    type Response = ();
    const REDELIVERY: Redelivery = Redelivery::Whole;
    fn decode(event: EventBridgeEvent<Value>, _: &DecodeOptions) -> Decoded {
        from_eventbridge(event)
    }
    fn respond(outcomes: Outcomes) -> Result<(), BatchError> {
        outcomes.async_result()
    }
}

/// An EventBridge schedule (a rule with a `schedule` expression targeting the function): the
/// standard `Scheduled Event` envelope, or the rule's constant input (see [`from_cron`]). One
/// unit of work per invocation; a retry fails the invocation, so Lambda's asynchronous retry
/// runs it again.
///
/// ```no_run
/// use lambda_stream::{Handler, Pipeline, sources::Cron, testing::MemoryFaults};
///
/// # async fn main_() -> Result<(), lambda_runtime::Error> {
/// let nightly = Pipeline::new("nightly").on_event_type("Scheduled Event");
/// let handler = Handler::builder(MemoryFaults::default()).pipeline(nightly).build()?;
/// lambda_stream::run::<Cron>(handler).await
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Cron;

impl Source for Cron {
    type Event = Value;
    type Response = ();
    const REDELIVERY: Redelivery = Redelivery::Whole;
    fn decode(event: Value, _: &DecodeOptions) -> Decoded {
        from_cron(event)
    }
    fn respond(outcomes: Outcomes) -> Result<(), BatchError> {
        outcomes.async_result()
    }
}

/// A CloudWatch alarm whose action invokes the function directly: one event of type
/// `CloudWatch Alarm State Change`, with the fields the same change has on EventBridge (see
/// [`from_alarm`]). A retry fails the invocation, so Lambda's asynchronous retry runs it again.
///
/// ```no_run
/// # async fn main_() -> Result<(), lambda_runtime::Error> {
/// use lambda_stream::{Handler, connectors::Lambda, flavors::CircuitBreakerRule};
/// use lambda_stream::{sources::Alarm, testing::MemoryFaults};
///
/// let rule = CircuitBreakerRule::new("breaker", Lambda::shared().await).function("listener");
/// let handler = Handler::builder(MemoryFaults::default()).pipeline(rule).build()?;
/// lambda_stream::run::<Alarm>(handler).await
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Alarm;

impl Source for Alarm {
    type Event = Value;
    type Response = ();
    const REDELIVERY: Redelivery = Redelivery::Whole;
    fn decode(event: Value, _: &DecodeOptions) -> Decoded {
        from_alarm(event)
    }
    fn respond(outcomes: Outcomes) -> Result<(), BatchError> {
        outcomes.async_result()
    }
}

/// A Kinesis Data Firehose transformation: records in, records out (see [`from_firehose`] and
/// [`Outcomes::firehose_response`]). Each record ends `Ok` with what a pipeline answered
/// ([`Pipeline::answer`](crate::Pipeline::answer), or the
/// [`FirehoseTransform`](crate::flavors::FirehoseTransform) flavor), `Dropped` when no
/// pipeline answered for it, or `ProcessingFailed` when faulted (its fault event published).
///
/// A record to retry (a transient error) fails the whole invocation. Firehose has no
/// per-record retry: `ProcessingFailed` would send the record to the error output for good,
/// which is what a fault is for, not a throttle. A failed invocation is retried by Firehose,
/// whole, for as long as its retry duration allows (then every record of the batch goes to the
/// error output), as SNS, S3 and EventBridge invocations are: the faults of the other records
/// wait for that redelivery, so nothing is published twice.
///
/// ```no_run
/// use lambda_stream::{Handler, flavors::FirehoseTransform, sources::Firehose};
/// use lambda_stream::testing::MemoryFaults;
///
/// # async fn main_() -> Result<(), lambda_runtime::Error> {
/// let rule = FirehoseTransform::new("things", "thing-created", |uow| {
///     Ok(serde_json::json!({"ID": uow.event().id}))
/// });
/// let handler = Handler::builder(MemoryFaults::default()).pipeline(rule).build()?;
/// lambda_stream::run::<Firehose>(handler).await
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Firehose;

impl Source for Firehose {
    type Event = FirehoseRecords;
    type Response = KinesisFirehoseResponse;
    const REDELIVERY: Redelivery = Redelivery::Whole;
    fn decode(event: FirehoseRecords, _: &DecodeOptions) -> Decoded {
        from_firehose(event)
    }
    fn respond(outcomes: Outcomes) -> Result<KinesisFirehoseResponse, BatchError> {
        outcomes.firehose_response()
    }
}
