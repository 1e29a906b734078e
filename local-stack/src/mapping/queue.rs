//! SQS mappings: receive, invoke, delete what succeeded, let the rest come back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName,
};
use bytes::Bytes;
use serde_json::json;
use tokio::sync::watch;

use super::Activity;
use super::policy::{self, Answer};
use super::records::{sqs_filter_view, sqs_record};
use crate::Error;
use crate::destination::queue_url;
use crate::invoke::Invoke;
use crate::scaling::QUEUE_CONCURRENCY;
use crate::spec::QueueMapping;

/// How soon a message the function failed is received again, locally.
pub const REDELIVERY_DELAY: Duration = Duration::from_secs(1);

/// One SQS mapping of one function.
pub struct QueuePoller {
    /// The mapping, from the template.
    pub mapping: QueueMapping,
    /// The function it invokes.
    pub function: Arc<dyn Invoke>,
    /// The SQS client.
    pub sqs: aws_sdk_sqs::Client,
    /// Where it counts what it does.
    pub activity: Arc<Activity>,
    /// The region in records.
    pub region: String,
    /// Switched off, or its batch size changed, through the Lambda API.
    pub control: Arc<super::control::MappingControl>,
}

impl QueuePoller {
    fn key(&self) -> String {
        format!("{}/{}", self.function.name(), self.mapping.id)
    }

    /// Polls until `stop` turns true, with as many batches in flight as the mapping's maximum
    /// concurrency (else [`QUEUE_CONCURRENCY`]), each poller receiving, invoking and settling
    /// its own batch as Lambda's do.
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) -> Result<(), Error> {
        let url: Arc<str> = queue_url(&self.sqs, &self.mapping.arn).await?.into();
        let pollers = self.mapping.max_concurrency.unwrap_or(QUEUE_CONCURRENCY);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..pollers.max(1) {
            tasks.spawn(Arc::clone(&self).poll(Arc::clone(&url), stop.clone()));
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }

    async fn poll(self: Arc<Self>, url: Arc<str>, mut stop: watch::Receiver<bool>) {
        loop {
            if !self.control.ready(&mut stop).await {
                return;
            }
            let Some(messages) = self.gather(&url, &mut stop).await else {
                return;
            };
            if messages.is_empty() {
                continue;
            }
            if let Err(e) = self.deliver(&url, messages).await {
                tracing::warn!(mapping = %self.key(), error = %e, "settling the batch failed");
            }
        }
    }

    /// One batch: what a long poll brings, then, with a batching window, more until the batch
    /// is full or the window (counted from the first message) has passed. `None` when stopping
    /// (messages held come back after their visibility timeout).
    async fn gather(&self, url: &str, stop: &mut watch::Receiver<bool>) -> Option<Vec<Message>> {
        let want = self.control.batch_size().max(1);
        let window = self.mapping.window;
        let mut batch: Vec<Message> = Vec::new();
        let mut closes: Option<Instant> = None;
        loop {
            let left = closes.map_or(Duration::from_secs(1), |c| {
                c.saturating_duration_since(Instant::now())
            });
            let received = tokio::select! {
                r = self.sqs
                    .receive_message()
                    .queue_url(url)
                    .max_number_of_messages((want - batch.len()).min(10) as i32)
                    .wait_time_seconds(left.as_secs().min(20) as i32)
                    .message_system_attribute_names(MessageSystemAttributeName::All)
                    .message_attribute_names("All")
                    .send() => r,
                _ = stop.changed() => return None,
            };
            let got = match received {
                Ok(out) => out.messages.unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(mapping = %self.key(), error = %Error::aws(e), "ReceiveMessage failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Vec::new()
                }
            };
            if got.is_empty() && left < Duration::from_secs(1) && closes.is_some() {
                // a short poll came back empty: wait a little rather than spin
                tokio::time::sleep(left.min(Duration::from_millis(100))).await;
            }
            batch.extend(got);
            if batch.is_empty() || window.is_zero() {
                return Some(batch);
            }
            let closes = *closes.get_or_insert_with(|| Instant::now() + window);
            if batch.len() >= want || Instant::now() >= closes {
                return Some(batch);
            }
        }
    }

    async fn deliver(&self, url: &str, messages: Vec<Message>) -> Result<(), Error> {
        let key = self.key();
        let (keep, skip): (Vec<_>, Vec<_>) = messages
            .into_iter()
            .map(|m| {
                let record = sqs_record(&m, &self.mapping.arn, &self.region);
                (m, record)
            })
            .partition(|(_, record)| {
                self.mapping.filters.is_empty()
                    || self
                        .mapping
                        .filters
                        .iter()
                        .any(|f| f.matches(&sqs_filter_view(record)))
            });
        if !skip.is_empty() {
            self.activity.update(&key, |c| {
                c.filtered += skip.len() as u64;
                c.finished += skip.len() as u64;
            });
            self.delete(url, skip.iter().map(|(m, _)| m).collect())
                .await?;
        }
        if keep.is_empty() {
            return Ok(());
        }
        let payload = json!({"Records": keep.iter().map(|(_, r)| r).collect::<Vec<_>>()});
        self.activity.update(&key, |c| {
            c.invocations += 1;
            c.delivered += keep.len() as u64;
        });
        let answer = self
            .function
            .invoke(Bytes::from(serde_json::to_vec(&payload)?))
            .await;
        let ids: Vec<&str> = keep
            .iter()
            .map(|(m, _)| m.message_id().unwrap_or_default())
            .collect();
        let outcome = match &answer {
            Ok(body) => policy::failed(&ids, self.mapping.report_failures, &Answer::Response(body)),
            Err(e) => {
                tracing::info!(mapping = %key, error = %e, "function error; every message comes back");
                policy::Failed::All
            }
        };
        let is_done = policy::queue_done(keep.len(), &outcome);
        let failed: Vec<&Message> = keep
            .iter()
            .zip(&is_done)
            .filter(|(_, done)| !**done)
            .map(|((m, _), _)| m)
            .collect();
        let done: Vec<&Message> = keep
            .iter()
            .zip(&is_done)
            .filter(|(_, done)| **done)
            .map(|((m, _), _)| m)
            .collect();
        self.activity.update(&key, |c| {
            c.finished += done.len() as u64;
            if !failed.is_empty() {
                c.retried += 1;
            }
        });
        self.delete(url, done).await?;
        // SQS takes at most 10 entries per batch call; a batch may hold more with a window
        for chunk in failed.chunks(10) {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(m.receipt_handle()?)
                        .visibility_timeout(REDELIVERY_DELAY.as_secs() as i32)
                        .build()
                        .ok()
                })
                .collect();
            // SQS refuses an empty batch (a message without a receipt handle cannot be released)
            if entries.is_empty() {
                continue;
            }
            let out = self
                .sqs
                .change_message_visibility_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(Error::aws)?;
            if !out.failed().is_empty() {
                // they come back after the queue's visibility timeout instead
                tracing::warn!(mapping = %self.key(), failed = out.failed().len(), "some messages kept their visibility timeout");
            }
        }
        Ok(())
    }

    /// Deletes `messages`, ten to a call (SQS's most per batch).
    async fn delete(&self, url: &str, messages: Vec<&Message>) -> Result<(), Error> {
        for chunk in messages.chunks(10) {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(m.receipt_handle()?)
                        .build()
                        .ok()
                })
                .collect();
            if entries.is_empty() {
                continue;
            }
            let out = self
                .sqs
                .delete_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(Error::aws)?;
            if !out.failed().is_empty() {
                // not deleted: delivered again after the visibility timeout, as Lambda would
                tracing::warn!(mapping = %self.key(), failed = out.failed().len(), "some messages could not be deleted");
            }
        }
        Ok(())
    }
}
