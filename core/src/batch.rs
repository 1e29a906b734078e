//! The invocation's outcome: one per record, and the partial batch response Lambda expects.

use std::cmp::Ordering;
use std::sync::Arc;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse};
use aws_lambda_events::event::streams::{
    DynamoDbBatchItemFailure, DynamoDbEventResponse, KinesisBatchItemFailure, KinesisEventResponse,
};
use serde::Serialize;

use crate::error::BatchError;
use crate::sources::SourceRecord;

/// How a record ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Processed (or skipped on purpose, or filtered out by every pipeline).
    Done,
    /// Set aside: its fault event was published.
    Faulted,
    /// To be delivered again.
    Retry,
}

/// What Lambda delivers again after a partial failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Redelivery {
    /// Kinesis, DynamoDB: every record from the reported sequence number on.
    FromCheckpoint,
    /// SQS: each reported message.
    PerRecord,
    /// SNS, S3, EventBridge: the whole event, when the invocation fails.
    Whole,
}

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
}

/// Sequence numbers are decimal strings of up to 128 digits: compare by length, then text.
fn cmp_sequence(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

impl Outcomes {
    /// Outcomes by batch position.
    pub fn outcomes(&self) -> &[Outcome] {
        &self.outcomes
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
        let mut lowest: Option<&str> = None;
        for i in self.retry_positions() {
            let id = self.records[i]
                .item_identifier()
                .ok_or(BatchError::Unidentifiable(i))?;
            if lowest.is_none_or(|l| cmp_sequence(id, l) == Ordering::Less) {
                lowest = Some(id);
            }
        }
        Ok(lowest.map(str::to_owned))
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

    /// Which records Lambda will deliver again, given the outcomes so far.
    pub(crate) fn redelivered_by(outcomes: &[Outcome], redelivery: Redelivery) -> Vec<bool> {
        let first_retry = outcomes.iter().position(|o| *o == Outcome::Retry);
        outcomes
            .iter()
            .enumerate()
            .map(|(i, o)| match redelivery {
                Redelivery::PerRecord => *o == Outcome::Retry,
                Redelivery::FromCheckpoint => first_retry.is_some_and(|f| i >= f),
                Redelivery::Whole => first_retry.is_some(),
            })
            .collect()
    }
}
