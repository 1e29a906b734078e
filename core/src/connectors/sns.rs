//! SNS `Publish` (one message of at most 256 KB) and `PublishBatch` (at most 10 messages and
//! 256 KB a request; only failed messages are sent again).

use aws_sdk_sns::Client;
use aws_sdk_sns::types::PublishBatchRequestEntry;
use futures::future::BoxFuture;

use super::batching::{BatchApi, BatchLimits, EntryResult, Publishable, publish_all};
use super::wire::Wire;
use crate::aws::classify;
use crate::error::StepError;

/// The largest SNS message.
pub const SNS_MAX_BYTES: usize = 256 * 1024;

/// The `PublishBatch` limits.
pub const SNS_LIMITS: BatchLimits = BatchLimits {
    max_count: 10,
    max_bytes: 256 * 1024,
    max_entry_bytes: 256 * 1024,
    parallel: 4,
    retry: BatchLimits::RETRY,
};

/// A connector over the SNS client, publishing to one topic.
#[derive(Debug, Clone)]
pub struct Sns {
    client: Client,
    topic_arn: String,
    wire: Wire,
    limits: BatchLimits,
}

impl Sns {
    /// Publishes to `topic_arn`.
    pub fn new(client: Client, topic_arn: impl Into<String>) -> Self {
        Sns {
            client,
            topic_arn: topic_arn.into(),
            wire: Wire::default(),
            limits: SNS_LIMITS,
        }
        .with_limits(SNS_LIMITS)
    }

    /// Uses other batch limits (a FIFO topic always sends one request at a time, so a group
    /// keeps its order).
    pub fn with_limits(mut self, limits: BatchLimits) -> Self {
        self.limits = limits;
        if self.topic_arn.ends_with(".fifo") {
            self.limits.parallel = 1;
        }
        self
    }

    /// Publishes `events` in `PublishBatch` requests sized to the limits, one result per
    /// event, in order; written as the [`Wire`] says (over 256 KB: claim-checked); FIFO topics
    /// get each event's partition key (else id) as message group and its id as deduplication id.
    pub async fn publish_batch<P: Publishable + Sync>(
        &self,
        events: &[P],
    ) -> Vec<Result<(), StepError>> {
        publish_all(self, events).await
    }

    /// Over the shared client, to the settings' topic (`TOPIC_ARN`), with their compression
    /// threshold, claim-check bucket and encryption.
    pub async fn from_settings(settings: &crate::Settings) -> Self {
        Sns::new(crate::aws::sns().await.clone(), &settings.topic_arn)
            .with_limits(SNS_LIMITS.tuned(settings))
            .with_wire(Wire::from_settings(settings).await)
    }

    /// Writes events as `wire` says (encryption, compression, claim-check).
    pub fn with_wire(mut self, wire: Wire) -> Self {
        self.wire = wire;
        self
    }

    /// Publishes `event` as the message (JSON, written as the [`Wire`] says; over 256 KB, its
    /// claim-check pointer, or poison without a claim-check); FIFO topics get its partition key
    /// as message group and its id as deduplication id.
    pub async fn publish<P: Publishable + Sync>(&self, event: &P) -> Result<(), StepError> {
        let sealer = match self.wire.encryption() {
            Some(e) => Some(e.envelope.sealer(&e.master_key).await?),
            None => None,
        };
        let mut message = self.wire.json(event, sealer.as_ref())?;
        if message.len() > SNS_MAX_BYTES {
            let Some(claim_check) = self.wire.claim_checks() else {
                let e = StepError::poison_msg(format!(
                    "message of {} bytes exceeds the limit of {SNS_MAX_BYTES} bytes",
                    message.len()
                ));
                return Err(e.named("OversizeError"));
            };
            message = claim_check
                .store(&message, chrono::Utc::now().timestamp_millis())
                .await?;
        }
        let mut request = self
            .client
            .publish()
            .topic_arn(&self.topic_arn)
            .message(message);
        if self.topic_arn.ends_with(".fifo") {
            request = request
                .message_group_id(event.partition_key().unwrap_or(event.id()))
                .message_deduplication_id(event.id());
        }
        request.send().await.map_err(classify)?;
        Ok(())
    }
}

/// A message of a `PublishBatch` request.
pub struct SnsEntry {
    message: String,
    group: Option<String>,
    deduplication: Option<String>,
}

impl BatchApi for Sns {
    type Entry = SnsEntry;

    fn limits(&self) -> &BatchLimits {
        &self.limits
    }

    fn wire(&self) -> &Wire {
        &self.wire
    }

    fn entry<P: Publishable>(&self, event: &P, json: String) -> Result<SnsEntry, StepError> {
        let fifo = self.topic_arn.ends_with(".fifo");
        Ok(SnsEntry {
            message: json,
            group: fifo.then(|| event.partition_key().unwrap_or(event.id()).to_owned()),
            deduplication: fifo.then(|| event.id().to_owned()),
        })
    }

    fn size(&self, entry: &SnsEntry) -> usize {
        entry.message.len()
    }

    fn send(&self, entries: Vec<SnsEntry>) -> BoxFuture<'_, Result<Vec<EntryResult>, StepError>> {
        let n = entries.len();
        // an entry's id is its place in the request: the answer names the failed ones by it
        let built: Result<Vec<PublishBatchRequestEntry>, StepError> = entries
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                PublishBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message(m.message)
                    .set_message_group_id(m.group)
                    .set_message_deduplication_id(m.deduplication)
                    .build()
                    .map_err(|e| StepError::poison(e.to_string()))
            })
            .collect();
        let request = self.client.publish_batch().topic_arn(&self.topic_arn);
        Box::pin(async move {
            let out = request
                .set_publish_batch_request_entries(Some(built?))
                .send()
                .await
                .map_err(classify)?;
            let mut per_entry = vec![EntryResult::Ok; n];
            for failed in out.failed.unwrap_or_default() {
                if let Some(slot) = failed
                    .id
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| per_entry.get_mut(i))
                {
                    *slot = EntryResult::Failed {
                        transient: !failed.sender_fault,
                        message: failed.message.unwrap_or_default(),
                        code: failed.code,
                    };
                }
            }
            Ok(per_entry)
        })
    }
}
