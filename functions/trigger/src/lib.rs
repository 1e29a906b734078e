//! trigger: the events table's stream → domain events on the EventBridge bus (cdc flavor).
//!
//! The event processor appends each domain event to the events table as an item
//! `{pk: stream, sk: sequence, discriminator: "event", timestamp, event: {...}}`; its INSERT
//! arrives here as an `event-created` change, and the stored `event` is what is published.

use lambda_stream::connectors::{EventBridge, EventBridgeFaults, S3};
use lambda_stream::faults::FaultPublisher;
use lambda_stream::flavors::Cdc;
use lambda_stream::sources::DynamoDbOptions;
use lambda_stream::{ConfigError, Event, Handler, Settings, StepError, UnitOfWork};
use serde_json::Value;

/// The domain event stored in an appended events-table item.
pub fn to_event(uow: &UnitOfWork, _related: &[Value]) -> Result<Event, StepError> {
    let change = uow.event();
    let stored = change
        .raw
        .as_ref()
        .and_then(|raw| raw.get("new"))
        .and_then(|new| new.get("event"))
        .ok_or_else(|| {
            StepError::poison_msg(format!("events-table item {} has no `event`", change.id))
        })?;
    let event: Event = serde_json::from_value(stored.clone())?;
    if event.id.is_empty() {
        return Err(StepError::poison_msg(format!(
            "stored event of item {} has no id",
            change.id
        )));
    }
    Ok(event)
}

/// The handler: one cdc pipeline publishing appended events to `bus`.
pub fn handler(
    settings: &Settings,
    bus: EventBridge,
    faults: impl FaultPublisher + 'static,
) -> Result<Handler, ConfigError> {
    Handler::builder(faults)
        .settings(settings)
        .dynamodb_options(DynamoDbOptions {
            // the event log is written in this region; nothing to filter
            region: None,
            ..DynamoDbOptions::default()
        })
        .pipelines([Cdc::new("publish-events", "event-created", to_event, bus)])
        .build()
}

/// The handler as deployed: `BUS_NAME` for events and faults, `FAULTS_BUCKET` for faults too
/// large or rejected.
pub async fn from_env() -> Result<Handler, ConfigError> {
    let settings = Settings::from_env();
    let bus = EventBridge::from_settings(&settings).await;
    let handler = handler(&settings, bus.clone(), EventBridgeFaults(bus))?;
    Ok(match S3::faults(&settings).await {
        Some(store) => handler.with_fault_store(store),
        None => handler,
    })
}
