//! What Lambda is answered: every record's outcome, and the partial batch response built from them.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse};
use aws_lambda_events::event::streams::{
    DynamoDbBatchItemFailure, DynamoDbEventResponse, KinesisBatchItemFailure, KinesisEventResponse,
};
use serde::Serialize;

use crate::error::BatchError;
use crate::outcome::Outcome;
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
}

impl Outcomes {
    /// Outcomes by batch position.
    pub fn outcomes(&self) -> &[Outcome] {
        &self.outcomes
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
}
