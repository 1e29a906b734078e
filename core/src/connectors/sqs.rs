//! SQS `SendMessageBatch`: at most 10 messages and 256 KB a request; only failed messages are
//! sent again. FIFO queues get the event's partition key as message group and its id as the
//! deduplication id, and their requests go one at a time so each group keeps its order.

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

use futures::future::BoxFuture;

use super::batching::{BatchApi, BatchLimits, EntryResult, Publishable, publish_all};
use super::wire::Wire;
use crate::aws::classify;
use crate::error::StepError;

/// The `SendMessageBatch` limits.
pub const SQS_LIMITS: BatchLimits = BatchLimits {
    max_count: 10,
    max_bytes: 256 * 1024,
    max_entry_bytes: 256 * 1024,
    parallel: 4,
    retry: BatchLimits::RETRY,
};

/// A connector over the SQS client, sending to one queue.
#[derive(Debug, Clone)]
pub struct Sqs {
    client: Client,
    queue_url: String,
    limits: BatchLimits,
    wire: Wire,
}

impl Sqs {
    /// Sends to `queue_url`.
    pub fn new(client: Client, queue_url: impl Into<String>) -> Self {
        Sqs {
            client,
            queue_url: queue_url.into(),
            limits: SQS_LIMITS,
            wire: Wire::default(),
        }
        .with_limits(SQS_LIMITS)
    }

    /// Over the shared client, to the settings' queue (`QUEUE_URL`), with their batch size,
    /// parallelism, compression threshold and claim-check bucket.
    pub async fn from_settings(settings: &crate::Settings) -> Self {
        Sqs::new(crate::aws::sqs().await.clone(), &settings.queue_url)
            .with_limits(SQS_LIMITS.tuned(settings))
            .with_wire(Wire::from_settings(settings).await)
    }

    /// Uses other limits (a FIFO queue always sends one request at a time, so a group keeps its
    /// order).
    pub fn with_limits(mut self, limits: BatchLimits) -> Self {
        self.limits = limits;
        if self.queue_url.ends_with(".fifo") {
            self.limits.parallel = 1;
        }
        self
    }

    /// Writes events as `wire` says (compression, claim-check).
    pub fn with_wire(mut self, wire: Wire) -> Self {
        self.wire = wire;
        self
    }

    /// Sends `events` as message bodies (JSON), one result per event, in order; a FIFO queue
    /// gets each event's partition key (else id) as message group and its id as deduplication
    /// id.
    pub async fn send_message_batch<P: Publishable + Sync>(
        &self,
        events: &[P],
    ) -> Vec<Result<(), StepError>> {
        publish_all(self, events).await
    }
}

/// A message to send.
pub struct Message {
    body: String,
    group: Option<String>,
    deduplication: Option<String>,
}

impl BatchApi for Sqs {
    type Entry = Message;

    fn limits(&self) -> &BatchLimits {
        &self.limits
    }

    fn wire(&self) -> &Wire {
        &self.wire
    }

    fn entry<P: Publishable>(&self, event: &P, json: String) -> Result<Message, StepError> {
        let fifo = self.queue_url.ends_with(".fifo");
        Ok(Message {
            body: json,
            group: fifo.then(|| event.partition_key().unwrap_or(event.id()).to_owned()),
            deduplication: fifo.then(|| event.id().to_owned()),
        })
    }

    fn size(&self, entry: &Message) -> usize {
        entry.body.len()
    }

    fn send(&self, entries: Vec<Message>) -> BoxFuture<'_, Result<Vec<EntryResult>, StepError>> {
        let n = entries.len();
        // an entry's id is its place in the request: the answer names the failed ones by it
        let built: Result<Vec<SendMessageBatchRequestEntry>, StepError> = entries
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(m.body)
                    .set_message_group_id(m.group)
                    .set_message_deduplication_id(m.deduplication)
                    .build()
                    .map_err(|e| StepError::poison(e.to_string()))
            })
            .collect();
        let request = self.client.send_message_batch().queue_url(&self.queue_url);
        Box::pin(async move {
            let out = request
                .set_entries(Some(built?))
                .send()
                .await
                .map_err(classify)?;
            let mut per_entry = vec![EntryResult::Ok; n];
            for failed in out.failed {
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
