//! Kinesis `PutRecords`: at most 500 records and 5 MB a request, 1 MB a record; only failed
//! records are sent again. The partition key is the event's.
//!
//! Requests go one at a time: two requests in flight could land a key's records in the shard
//! out of order. (A record retried after a later record of its key went through is out of order
//! all the same; consumers guard with a version (or timestamp) condition.)

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;

use futures::future::BoxFuture;

use super::batching::{BatchApi, BatchLimits, EntryResult, Publishable, publish_all};
use super::wire::Wire;
use crate::aws::classify;
use crate::error::StepError;

/// The `PutRecords` limits.
pub const KINESIS_LIMITS: BatchLimits = BatchLimits {
    max_count: 500,
    max_bytes: 5 * 1024 * 1024,
    max_entry_bytes: 1024 * 1024,
    parallel: 1,
    retry: BatchLimits::RETRY,
};

/// A connector over the Kinesis client, writing to one stream.
#[derive(Debug, Clone)]
pub struct Kinesis {
    client: Client,
    stream_name: String,
    limits: BatchLimits,
    wire: Wire,
}

impl Kinesis {
    /// Writes to `stream_name`.
    pub fn new(client: Client, stream_name: impl Into<String>) -> Self {
        Kinesis {
            client,
            stream_name: stream_name.into(),
            limits: KINESIS_LIMITS,
            wire: Wire::default(),
        }
    }

    /// Over the shared client, to the settings' stream (`STREAM_NAME`), with their batch size,
    /// compression threshold and claim-check bucket; one request at a time, so a key's records
    /// keep their order in the shard.
    pub async fn from_settings(settings: &crate::Settings) -> Self {
        Kinesis::new(crate::aws::kinesis().await.clone(), &settings.stream_name)
            .with_limits(BatchLimits {
                parallel: 1,
                ..KINESIS_LIMITS.tuned(settings)
            })
            .with_wire(Wire::from_settings(settings).await)
    }

    /// Uses other limits.
    pub fn with_limits(mut self, limits: BatchLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Writes events as `wire` says (compression, claim-check).
    pub fn with_wire(mut self, wire: Wire) -> Self {
        self.wire = wire;
        self
    }

    /// Writes `events` as records (data: the event's JSON; partition key: the event's, else its
    /// id), one result per event, in order.
    pub async fn put_records<P: Publishable + Sync>(
        &self,
        events: &[P],
    ) -> Vec<Result<(), StepError>> {
        publish_all(self, events).await
    }
}

impl BatchApi for Kinesis {
    type Entry = PutRecordsRequestEntry;

    fn limits(&self) -> &BatchLimits {
        &self.limits
    }

    fn wire(&self) -> &Wire {
        &self.wire
    }

    fn entry<P: Publishable>(
        &self,
        event: &P,
        json: String,
    ) -> Result<PutRecordsRequestEntry, StepError> {
        PutRecordsRequestEntry::builder()
            .data(Blob::new(json.into_bytes()))
            .partition_key(event.partition_key().unwrap_or(event.id()))
            .build()
            .map_err(|e| StepError::poison(e.to_string()))
    }

    // Kinesis counts the data and the partition key
    fn size(&self, entry: &PutRecordsRequestEntry) -> usize {
        entry.data().as_ref().len() + entry.partition_key().map_or(0, str::len)
    }

    fn send(
        &self,
        entries: Vec<PutRecordsRequestEntry>,
    ) -> BoxFuture<'_, Result<Vec<EntryResult>, StepError>> {
        let request = self
            .client
            .put_records()
            .stream_name(&self.stream_name)
            .set_records(Some(entries));
        Box::pin(async move {
            let out = request.send().await.map_err(classify)?;
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
        })
    }
}
