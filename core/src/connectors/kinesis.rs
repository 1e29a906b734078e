//! Kinesis `PutRecords`: at most 500 records and 5 MB a request, 1 MB a record; only failed
//! records are sent again. The partition key is the event's.
//!
//! Requests go one at a time: two requests in flight could land a key's records in the shard
//! out of order. (A record retried after a later record of its key went through is out of order
//! all the same; consumers guard with the timestamp condition, as `materialize` does.)

use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;

use super::batching::{BatchLimits, EntryResult, merge, send_all};
use super::eventbridge::Publishable;
use crate::aws::classify;
use crate::error::StepError;
use crate::pipeline::Retry;

/// The `PutRecords` limits.
pub const KINESIS_LIMITS: BatchLimits = BatchLimits {
    max_count: 500,
    max_bytes: 5 * 1024 * 1024,
    max_entry_bytes: 1024 * 1024,
    parallel: 1,
    retry: Retry {
        attempts: 4,
        min_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(2),
    },
};

/// A connector over the Kinesis client, writing to one stream.
#[derive(Debug, Clone)]
pub struct Kinesis {
    client: Client,
    stream_name: String,
    limits: BatchLimits,
}

impl Kinesis {
    /// Writes to `stream_name`.
    pub fn new(client: Client, stream_name: impl Into<String>) -> Self {
        Kinesis {
            client,
            stream_name: stream_name.into(),
            limits: BatchLimits {
                parallel: 1,
                ..KINESIS_LIMITS.from_env()
            },
        }
    }

    /// Over the shared client, to the stream named by `STREAM_NAME`.
    pub async fn from_env() -> Self {
        let stream = std::env::var("STREAM_NAME").unwrap_or_default();
        Kinesis::new(crate::aws::kinesis().await.clone(), stream)
    }

    /// Uses other limits.
    pub fn with_limits(mut self, limits: BatchLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Writes `events` as records (data: the event's JSON; partition key: the event's, else its
    /// id), one result per event, in order.
    pub async fn put_records<P: Publishable>(&self, events: &[P]) -> Vec<Result<(), StepError>> {
        let data: Vec<Result<Vec<u8>, StepError>> = events
            .iter()
            .map(|e| serde_json::to_vec(e).map_err(StepError::from))
            .collect();
        let key = |e: &P| e.partition_key().unwrap_or(e.id()).to_owned();
        let sendable: Vec<usize> = (0..events.len()).filter(|i| data[*i].is_ok()).collect();
        // Kinesis counts the data and the partition key
        let sizes: Vec<usize> = sendable
            .iter()
            .map(|i| data[*i].as_ref().map_or(0, Vec::len) + key(&events[*i]).len())
            .collect();
        let results = send_all(&sizes, &self.limits, |idx| {
            let entries: Result<Vec<PutRecordsRequestEntry>, StepError> = idx
                .iter()
                .map(|i| {
                    let at = sendable[*i];
                    PutRecordsRequestEntry::builder()
                        .data(Blob::new(data[at].as_deref().unwrap_or_default()))
                        .partition_key(key(&events[at]))
                        .build()
                        .map_err(|e| StepError::poison(e.to_string()))
                })
                .collect();
            let (client, stream) = (self.client.clone(), self.stream_name.clone());
            async move {
                let out = client
                    .put_records()
                    .stream_name(stream)
                    .set_records(Some(entries?))
                    .send()
                    .await
                    .map_err(classify)?;
                // every record-level error of PutRecords is throughput or an internal failure
                Ok(out
                    .records
                    .into_iter()
                    .map(|r| match r.error_code {
                        None => EntryResult::Ok,
                        Some(code) => EntryResult::Failed {
                            message: r.error_message.unwrap_or_default(),
                            code,
                            transient: true,
                        },
                    })
                    .collect())
            }
        })
        .await;
        merge(&data, results)
    }
}
