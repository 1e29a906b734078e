//! SQS `SendMessageBatch`: at most 10 messages and 256 KB a request; only failed messages are
//! sent again. FIFO queues get the event's partition key as message group and its id as the
//! deduplication id, and their requests go one at a time so each group keeps its order.

use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

use super::batching::{BatchLimits, EntryResult, merge, send_all};
use super::eventbridge::Publishable;
use crate::aws::classify;
use crate::error::StepError;
use crate::pipeline::Retry;

/// The `SendMessageBatch` limits.
pub const SQS_LIMITS: BatchLimits = BatchLimits {
    max_count: 10,
    max_bytes: 256 * 1024,
    max_entry_bytes: 256 * 1024,
    parallel: 4,
    retry: Retry {
        attempts: 4,
        min_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(2),
    },
};

/// A connector over the SQS client, sending to one queue.
#[derive(Debug, Clone)]
pub struct Sqs {
    client: Client,
    queue_url: String,
    limits: BatchLimits,
}

impl Sqs {
    /// Sends to `queue_url`.
    pub fn new(client: Client, queue_url: impl Into<String>) -> Self {
        let queue_url = queue_url.into();
        let mut limits = SQS_LIMITS.from_env();
        if queue_url.ends_with(".fifo") {
            limits.parallel = 1;
        }
        Sqs {
            client,
            queue_url,
            limits,
        }
    }

    /// Over the shared client, to the queue named by `QUEUE_URL`.
    pub async fn from_env() -> Self {
        let url = std::env::var("QUEUE_URL").unwrap_or_default();
        Sqs::new(crate::aws::sqs().await.clone(), url)
    }

    /// Uses other limits.
    pub fn with_limits(mut self, limits: BatchLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sends `events` as message bodies (JSON), one result per event, in order.
    pub async fn send_message_batch<P: Publishable>(
        &self,
        events: &[P],
    ) -> Vec<Result<(), StepError>> {
        let fifo = self.queue_url.ends_with(".fifo");
        let bodies: Vec<Result<String, StepError>> = events
            .iter()
            .map(|e| serde_json::to_string(e).map_err(StepError::from))
            .collect();
        let sendable: Vec<usize> = (0..events.len()).filter(|i| bodies[*i].is_ok()).collect();
        let sizes: Vec<usize> = sendable
            .iter()
            .map(|i| bodies[*i].as_ref().map_or(0, String::len))
            .collect();
        let results = send_all(&sizes, &self.limits, |idx| {
            let entries: Result<Vec<SendMessageBatchRequestEntry>, StepError> = idx
                .iter()
                .enumerate()
                .map(|(n, i)| {
                    let event = &events[sendable[*i]];
                    let mut entry = SendMessageBatchRequestEntry::builder()
                        .id(n.to_string())
                        .message_body(bodies[sendable[*i]].as_deref().unwrap_or_default());
                    if fifo {
                        entry = entry
                            .message_group_id(event.partition_key().unwrap_or(event.id()))
                            .message_deduplication_id(event.id());
                    }
                    entry.build().map_err(|e| StepError::poison(e.to_string()))
                })
                .collect();
            let (client, url, n) = (self.client.clone(), self.queue_url.clone(), idx.len());
            async move {
                let out = client
                    .send_message_batch()
                    .queue_url(url)
                    .set_entries(Some(entries?))
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
            }
        })
        .await;
        merge(&bodies, results)
    }
}
