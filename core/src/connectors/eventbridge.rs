//! EventBridge `PutEvents`: at most 10 entries and 256 KB a request, counted in bytes the way
//! EventBridge counts them; only failed entries are sent again.

use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use futures::future::BoxFuture;

use super::batching::{BatchApi, BatchLimits, EntryResult, Publishable, publish_all};
use super::wire::Wire;
use crate::aws::{classify, is_transient_code};
use crate::error::{ErrorClass, StepError};
use crate::event::FaultEvent;
use crate::faults::{FaultPublisher, PublishError};

/// The `PutEvents` limits.
pub const EVENTBRIDGE_LIMITS: BatchLimits = BatchLimits {
    max_count: 10,
    max_bytes: 256 * 1024,
    max_entry_bytes: 256 * 1024,
    parallel: 4,
    retry: BatchLimits::RETRY,
};

/// A connector over the EventBridge client, publishing to one bus.
#[derive(Debug, Clone)]
pub struct EventBridge {
    client: Client,
    bus_name: String,
    source: String,
    limits: BatchLimits,
    wire: Wire,
}

impl EventBridge {
    /// Publishes to `bus_name` with the entry source `custom` (as aws-lambda-stream does).
    pub fn new(client: Client, bus_name: impl Into<String>) -> Self {
        EventBridge {
            client,
            bus_name: bus_name.into(),
            source: "custom".into(),
            limits: EVENTBRIDGE_LIMITS,
            wire: Wire::default(),
        }
    }

    /// Over the shared client, to the settings' bus (`BUS_NAME`), with their batch size,
    /// parallelism, compression threshold and claim-check bucket.
    pub async fn from_settings(settings: &crate::Settings) -> Self {
        EventBridge::new(crate::aws::eventbridge().await.clone(), &settings.bus_name)
            .with_limits(EVENTBRIDGE_LIMITS.tuned(settings))
            .with_wire(Wire::from_settings(settings).await)
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

    /// Writes events as `wire` says (compression, claim-check).
    pub fn with_wire(mut self, wire: Wire) -> Self {
        self.wire = wire;
        self
    }

    /// The bus published to.
    pub fn bus_name(&self) -> &str {
        &self.bus_name
    }

    /// Publishes `events`, one result per event, in order.
    pub async fn put_events<P: Publishable + Sync>(
        &self,
        events: &[P],
    ) -> Vec<Result<(), StepError>> {
        publish_all(self, events).await
    }
}

impl BatchApi for EventBridge {
    type Entry = PutEventsRequestEntry;

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
    ) -> Result<PutEventsRequestEntry, StepError> {
        Ok(PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus_name)
            .source(&self.source)
            .detail_type(event.event_type())
            .detail(json)
            .build())
    }

    // EventBridge counts source, detail type, detail and resources in UTF-8 bytes
    fn size(&self, entry: &PutEventsRequestEntry) -> usize {
        [entry.source(), entry.detail_type(), entry.detail()]
            .iter()
            .map(|f| f.map_or(0, str::len))
            .sum()
    }

    fn send(
        &self,
        entries: Vec<PutEventsRequestEntry>,
    ) -> BoxFuture<'_, Result<Vec<EntryResult>, StepError>> {
        let request = self.client.put_events().set_entries(Some(entries));
        Box::pin(async move {
            let out = request.send().await.map_err(classify)?;
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
        })
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
            let failed_with = |poison: bool| -> Vec<usize> {
                results
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| {
                        r.as_ref()
                            .is_err_and(|e| !poison || e.class() == ErrorClass::Poison)
                    })
                    .map(|(i, _)| i)
                    .collect()
            };
            let failed = failed_with(false);
            if failed.is_empty() {
                return Ok(());
            }
            // a rejected entry (malformed, oversize) can never be published: the handler sets
            // it aside instead of retrying its record forever
            let rejected = failed_with(true);
            let first = results
                .into_iter()
                .find_map(Result::err)
                .map(|e| e.to_string())
                .unwrap_or_default();
            Err(PublishError::some(failed, first).with_rejected(rejected))
        })
    }

    // with a claim-check, a fault too big for the bus is published whole, as a pointer, as
    // aws-lambda-stream does; without one it is trimmed to fit (and stored whole, given a
    // fault store)
    fn max_fault_bytes(&self) -> usize {
        if self.0.wire().claim_checks().is_some() {
            usize::MAX
        } else {
            crate::faults::DEFAULT_MAX_FAULT_BYTES
        }
    }
}
