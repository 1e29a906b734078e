//! EventBridge `PutEvents`: at most 10 entries and 256 KB a request, counted in bytes the way
//! EventBridge counts them; only failed entries are sent again.

use std::time::Duration;

use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use futures::future::BoxFuture;
use serde::Serialize;

use super::batching::{BatchLimits, EntryResult, merge, send_all};
use crate::aws::{classify, is_transient_code};
use crate::error::StepError;
use crate::event::{Event, FaultEvent};
use crate::faults::{FaultPublisher, PublishError};
use crate::pipeline::Retry;

/// Something published as an event: its JSON is the entry's detail (the record's data, the
/// message body), its type the detail type, its partition key the shard or message group.
pub trait Publishable: Serialize {
    /// The event's id.
    fn id(&self) -> &str;
    /// The event's type.
    fn event_type(&self) -> &str;
    /// The event's partition key, if any.
    fn partition_key(&self) -> Option<&str>;
}

impl Publishable for Event {
    fn id(&self) -> &str {
        &self.id
    }
    fn event_type(&self) -> &str {
        &self.event_type
    }
    fn partition_key(&self) -> Option<&str> {
        self.partition_key.as_deref()
    }
}

impl<P: Publishable> Publishable for &P {
    fn id(&self) -> &str {
        (**self).id()
    }
    fn event_type(&self) -> &str {
        (**self).event_type()
    }
    fn partition_key(&self) -> Option<&str> {
        (**self).partition_key()
    }
}

impl Publishable for FaultEvent {
    fn id(&self) -> &str {
        &self.id
    }
    fn event_type(&self) -> &str {
        &self.event_type
    }
    fn partition_key(&self) -> Option<&str> {
        self.partition_key.as_deref()
    }
}

/// The `PutEvents` limits.
pub const EVENTBRIDGE_LIMITS: BatchLimits = BatchLimits {
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

/// A connector over the EventBridge client, publishing to one bus.
#[derive(Debug, Clone)]
pub struct EventBridge {
    client: Client,
    bus_name: String,
    source: String,
    limits: BatchLimits,
}

impl EventBridge {
    /// Publishes to `bus_name` with the entry source `custom` (as aws-lambda-stream does).
    pub fn new(client: Client, bus_name: impl Into<String>) -> Self {
        EventBridge {
            client,
            bus_name: bus_name.into(),
            source: "custom".into(),
            limits: EVENTBRIDGE_LIMITS.from_env(),
        }
    }

    /// Over the shared client, to the bus named by `BUS_NAME` (else `default`).
    pub async fn from_env() -> Self {
        let bus = std::env::var("BUS_NAME").unwrap_or_else(|_| "default".into());
        EventBridge::new(crate::aws::eventbridge().await.clone(), bus)
    }

    /// Uses another entry source.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// Uses other limits (tests; a bus with other quotas).
    pub fn with_limits(mut self, limits: BatchLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The bus published to.
    pub fn bus_name(&self) -> &str {
        &self.bus_name
    }

    /// Publishes `events`, one result per event, in order.
    pub async fn put_events<P: Publishable>(&self, events: &[P]) -> Vec<Result<(), StepError>> {
        let details: Vec<Result<String, StepError>> = events
            .iter()
            .map(|e| serde_json::to_string(e).map_err(StepError::from))
            .collect();
        let sendable: Vec<usize> = (0..events.len()).filter(|i| details[*i].is_ok()).collect();
        // EventBridge counts source, detail type, detail and resources in UTF-8 bytes
        let sendable_sizes: Vec<usize> = sendable
            .iter()
            .map(|&i| {
                let detail = details[i].as_ref().map_or(0, String::len);
                self.source.len() + events[i].event_type().len() + detail
            })
            .collect();
        let results = send_all(&sendable_sizes, &self.limits, |idx| {
            let entries: Vec<PutEventsRequestEntry> = idx
                .iter()
                .map(|i| {
                    let at = sendable[*i];
                    PutEventsRequestEntry::builder()
                        .event_bus_name(&self.bus_name)
                        .source(&self.source)
                        .detail_type(events[at].event_type())
                        .detail(details[at].as_deref().unwrap_or_default())
                        .build()
                })
                .collect();
            let client = self.client.clone();
            async move {
                let out = client
                    .put_events()
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(classify)?;
                Ok(out
                    .entries
                    .unwrap_or_default()
                    .into_iter()
                    .map(|r| match r.error_code {
                        None => EntryResult::Ok,
                        Some(code) => EntryResult::Failed {
                            transient: is_transient_code(&code),
                            message: r.error_message.unwrap_or_default(),
                            code,
                        },
                    })
                    .collect())
            }
        })
        .await;
        merge(&details, results)
    }
}

/// Publishes fault events to an EventBridge bus (where a rule on `type: fault` routes them to
/// the fault monitor).
#[derive(Debug, Clone)]
pub struct EventBridgeFaults(pub EventBridge);

impl FaultPublisher for EventBridgeFaults {
    fn publish<'a>(&'a self, faults: &'a [FaultEvent]) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            let results = self.0.put_events(faults).await;
            let failed: Vec<usize> = results
                .iter()
                .enumerate()
                .filter(|(_, r)| r.is_err())
                .map(|(i, _)| i)
                .collect();
            if failed.is_empty() {
                return Ok(());
            }
            let first = results
                .into_iter()
                .find_map(Result::err)
                .map(|e| e.to_string())
                .unwrap_or_default();
            Err(PublishError::some(failed, first))
        })
    }
}
