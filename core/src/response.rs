//! What Lambda is answered: every record's outcome, and the partial batch response built from them
//! (for Firehose, the records out).

use std::sync::{Arc, LazyLock};

use aws_lambda_events::event::firehose::{KinesisFirehoseResponse, KinesisFirehoseResponseRecord};
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse};
use aws_lambda_events::event::streams::{
    DynamoDbBatchItemFailure, DynamoDbEventResponse, KinesisBatchItemFailure, KinesisEventResponse,
};
use serde::Serialize;

use crate::error::BatchError;
use crate::outcome::{Outcome, Transformed};
use crate::record::SourceRecord;

/// Counts of outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Records in the batch.
    pub records: usize,
    /// Records done.
    pub done: usize,
    /// Records faulted.
    pub faulted: usize,
    /// Records to be delivered again.
    pub retry: usize,
}

/// Every record's outcome, in batch order, and the responses built from them.
#[derive(Debug)]
pub struct Outcomes {
    pub(crate) outcomes: Vec<Outcome>,
    pub(crate) records: Vec<Arc<SourceRecord>>,
    /// What pipelines answered, by batch position; empty when none answered.
    pub(crate) answers: Vec<Option<Transformed>>,
}

/// A Firehose record's `result`: transformed.
const FIREHOSE_OK: &str = "Ok";
/// A Firehose record's `result`: dropped on purpose (no pipeline answered for it).
const FIREHOSE_DROPPED: &str = "Dropped";
/// A Firehose record's `result`: faulted (Firehose sends its original to the error output).
const FIREHOSE_PROCESSING_FAILED: &str = "ProcessingFailed";

impl Outcomes {
    /// Every one of `records` to retry: a window not run (a stream's after a checkpoint, or
    /// any once the deadline passed).
    pub(crate) fn all_retry(records: Vec<Arc<SourceRecord>>) -> Self {
        Outcomes {
            outcomes: vec![Outcome::Retry; records.len()],
            records,
            answers: Vec::new(),
        }
    }

    /// Lets go of every record but the first and those to retry, which are what the answers
    /// and the circuit breaker read (a window's, when the batch has more: Firehose's answer,
    /// which names every record, comes of one window).
    pub(crate) fn let_go(&mut self) {
        static LET_GO: LazyLock<Arc<SourceRecord>> =
            LazyLock::new(|| Arc::new(SourceRecord::Raw(serde_json::Value::Null)));
        for (outcome, record) in self.outcomes.iter().zip(&mut self.records).skip(1) {
            if *outcome != Outcome::Retry {
                *record = Arc::clone(&LET_GO);
            }
        }
    }

    /// `later`'s records after these (the next window's).
    pub(crate) fn append(&mut self, later: Outcomes) {
        let before = self.outcomes.len();
        if !self.answers.is_empty() || !later.answers.is_empty() {
            self.answers.resize_with(before, || None);
            if later.answers.is_empty() {
                self.answers
                    .resize_with(before + later.outcomes.len(), || None);
            } else {
                self.answers.extend(later.answers);
            }
        }
        self.outcomes.extend(later.outcomes);
        self.records.extend(later.records);
    }

    /// Outcomes by batch position.
    pub fn outcomes(&self) -> &[Outcome] {
        &self.outcomes
    }

    /// What a pipeline answered for the record at `position` (see
    /// [`Pipeline::answer`](crate::Pipeline::answer)), if one did.
    ///
    /// ```
    /// use lambda_stream::{Event, Handler, Pipeline, Transformed, testing::*};
    /// use std::time::Duration;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let p = Pipeline::new("p").map(|uow| Ok(uow.with(Transformed::new(b"x".to_vec())))).answer();
    /// let handler = Handler::builder(MemoryFaults::default()).pipeline(p).build().unwrap();
    /// let decoded = lambda_stream::sources::from_firehose(to_firehose_records(&[Event::new("1", "t", 1)]));
    /// let outcomes = handler.process(decoded, &handler.invocation(&context(Duration::from_secs(30)))).await;
    /// assert_eq!(outcomes.answer(0).unwrap().data, b"x");
    /// # });
    /// ```
    pub fn answer(&self, position: usize) -> Option<&Transformed> {
        self.answers.get(position).and_then(Option::as_ref)
    }

    /// The ARN of the event source of the batch (its first record's), if the source has one.
    pub fn event_source_arn(&self) -> Option<&str> {
        self.records.iter().find_map(|r| r.event_source_arn())
    }

    /// Counts of each outcome.
    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            records: self.outcomes.len(),
            ..Summary::default()
        };
        for o in &self.outcomes {
            match o {
                Outcome::Done => s.done += 1,
                Outcome::Faulted => s.faulted += 1,
                Outcome::Retry => s.retry += 1,
            }
        }
        s
    }

    fn retry_positions(&self) -> impl Iterator<Item = usize> + '_ {
        self.outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| **o == Outcome::Retry)
            .map(|(i, _)| i)
    }

    /// The lowest sequence number to retry from, if any record is to be retried.
    fn checkpoint(&self) -> Result<Option<String>, BatchError> {
        crate::delivery::checkpoint(&self.outcomes, &self.records)
            .map(|cp| cp.map(|(_, seq)| seq.to_owned()))
            .map_err(BatchError::Unidentifiable)
    }

    /// The Kinesis partial batch response: the lowest sequence number to retry, or nothing.
    pub fn kinesis_response(&self) -> Result<KinesisEventResponse, BatchError> {
        let mut response = KinesisEventResponse::default();
        if let Some(seq) = self.checkpoint()? {
            let mut failure = KinesisBatchItemFailure::default();
            failure.item_identifier = Some(seq);
            response.batch_item_failures.push(failure);
        }
        Ok(response)
    }

    /// The DynamoDB partial batch response: the lowest sequence number to retry, or nothing.
    pub fn dynamodb_response(&self) -> Result<DynamoDbEventResponse, BatchError> {
        let mut response = DynamoDbEventResponse::default();
        if let Some(seq) = self.checkpoint()? {
            let mut failure = DynamoDbBatchItemFailure::default();
            failure.item_identifier = Some(seq);
            response.batch_item_failures.push(failure);
        }
        Ok(response)
    }

    /// The SQS partial batch response: every message id to retry.
    pub fn sqs_response(&self) -> Result<SqsBatchResponse, BatchError> {
        let mut response = SqsBatchResponse::default();
        for i in self.retry_positions() {
            let id = self.records[i]
                .item_identifier()
                .ok_or(BatchError::Unidentifiable(i))?;
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id.to_owned();
            response.batch_item_failures.push(failure);
        }
        Ok(response)
    }

    /// For sources without a partial batch response (SNS, S3, EventBridge): an error when any
    /// record is to be retried, so the invocation fails and is delivered again.
    pub fn async_result(&self) -> Result<(), BatchError> {
        match self.retry_positions().count() {
            0 => Ok(()),
            n => Err(BatchError::Retry(n)),
        }
    }

    /// The Kinesis Data Firehose answer: every record, by its `recordId`, `Ok` with what a
    /// pipeline answered (data and partition keys), `Dropped` when done without an answer (no
    /// pipeline took it, or one filtered it out), `ProcessingFailed` when faulted (its fault
    /// event published); the dropped and failed ones carry their data back unchanged. Firehose
    /// has no per-record retry: a record to retry fails the invocation, and Firehose retries
    /// the whole batch. A record without a `recordId` cannot be answered and fails it too.
    ///
    /// Consumes the outcomes: the answered data moves into the response without a copy.
    ///
    /// ```
    /// use lambda_stream::{Event, Handler, Pipeline, testing::*};
    /// use std::time::Duration;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let handler = Handler::builder(MemoryFaults::default()).pipeline(Pipeline::new("p")).build().unwrap();
    /// let decoded = lambda_stream::sources::from_firehose(to_firehose_records(&[Event::new("1", "t", 1)]));
    /// let outcomes = handler.process(decoded, &handler.invocation(&context(Duration::from_secs(30)))).await;
    /// let answer = outcomes.firehose_response().unwrap();
    /// assert_eq!(answer.records[0].result.as_deref(), Some("Dropped")); // nothing answered
    /// # });
    /// ```
    pub fn firehose_response(self) -> Result<KinesisFirehoseResponse, BatchError> {
        let retry = self.retry_positions().count();
        if retry > 0 {
            return Err(BatchError::Retry(retry));
        }
        let mut answers = self.answers.into_iter();
        let mut response = KinesisFirehoseResponse::default();
        response.records.reserve_exact(self.records.len());
        for (i, (outcome, record)) in self.outcomes.into_iter().zip(self.records).enumerate() {
            let answer = answers.next().flatten();
            let id = record
                .item_identifier()
                .ok_or(BatchError::Unidentifiable(i))?
                .to_owned();
            let mut out = KinesisFirehoseResponseRecord::default();
            out.record_id = Some(id);
            let result = match (outcome, answer) {
                (Outcome::Done, Some(answer)) => {
                    out.data.0 = answer.data;
                    out.metadata.partition_keys = answer.partition_keys.unwrap_or_default();
                    FIREHOSE_OK
                }
                (outcome, _) => {
                    // the record's own data back (moved when nothing else holds the record)
                    if let SourceRecord::Firehose(r) = Arc::unwrap_or_clone(record) {
                        out.data = r.data;
                    }
                    if outcome == Outcome::Faulted {
                        FIREHOSE_PROCESSING_FAILED
                    } else {
                        FIREHOSE_DROPPED
                    }
                }
            };
            out.result = Some(result.to_owned());
            response.records.push(out);
        }
        Ok(response)
    }
}
