//! trigger: the events table's stream → domain events on the EventBridge bus (cdc flavor),
//! and the listener's micro event store → higher-order events (complex event processing).
//!
//! The event processor appends each domain event to the events table as an item
//! `{pk: stream, sk: sequence, discriminator: "event", timestamp, event: {...}}`; its INSERT
//! arrives here as an `event-created` change, and the stored `event` is what is published.
//!
//! The listener collects every thing event into the event store; from the store's stream:
//! - **thing-hot**: a thing updated [`HOT_UPDATES`] times within [`HOT_WINDOW`] (event
//!   time). The updates are correlated under `<thing>.hot`, each update evaluates the windows
//!   it belongs to, and each window of three or more is emitted once (`<last update>.thing-hot`).
//! - **thing-stale**: a thing not created, updated or deleted for `stale_after`. The latest
//!   such event of a thing is kept under `<thing>.activity` with that TTL (each later event
//!   moves it); when DynamoDB expires it, and it was no deletion, `thing-stale` is published.

use std::time::Duration;

use lambda_stream::connectors::{DynamoDb, EventBridge, EventBridgeFaults, S3};
use lambda_stream::faults::FaultPublisher;
use lambda_stream::flavors::{
    CdcStored, Correlate, Evaluate, EventStore, Expire, Expired, PublishEmitted, count_within,
    is_store_item,
};
use lambda_stream::sources::DynamoDbOptions;
use lambda_stream::{AssembledPipeline, ConfigError, Handler, IntoPipeline, Settings, UnitOfWork};
use serde_json::Value;

/// Updates of one thing within [`HOT_WINDOW`] that make it hot.
pub const HOT_UPDATES: usize = 3;
/// The window of [`HOT_UPDATES`].
pub const HOT_WINDOW: Duration = Duration::from_secs(60);
/// How long `thing-stale` waits by default: seven days without an event of the thing.
pub const STALE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// Where an appended events-table item's change holds its domain event: the new image's
/// `event`, published where it lies (a missing one makes the change poison).
pub fn appended_event(uow: &UnitOfWork) -> Option<&Value> {
    uow.event().raw.as_ref()?.get("new")?.get("event")
}

/// The rules over the listener's event store: correlate, evaluate, publish the matches and
/// the expiries.
pub fn cep_rules(
    store: EventStore,
    bus: EventBridge,
    stale_after: Duration,
) -> Vec<AssembledPipeline> {
    let activity = ["thing-created", "thing-updated", "thing-deleted"];
    vec![
        Correlate::new("correlate-hot", "thing-updated", store.clone())
            .suffix("hot")
            // long enough to see every window an update belongs to, however late it comes
            .ttl(HOT_WINDOW * 3)
            .into_pipeline(),
        Correlate::new("correlate-activity", activity, store.clone())
            .suffix("activity")
            .latest()
            .ttl(stale_after)
            .expire(Expire::As("thing-stale".into()))
            .into_pipeline(),
        Evaluate::new(
            "thing-hot",
            "thing-updated",
            store.clone(),
            "thing-hot",
            |trigger, events| count_within(trigger, events, HOT_WINDOW, HOT_UPDATES),
        )
        .suffix("hot")
        .into_pipeline(),
        PublishEmitted::new("publish-matches", bus.clone()).into_pipeline(),
        // a deleted thing is not stale: its deletion is the latest event, and does not expire
        // into one
        Expired::new("thing-stale", bus)
            .event_type(["thing-created", "thing-updated"])
            .into_pipeline(),
    ]
}

/// The handler: one cdc pipeline publishing appended events to `bus`, and with an event
/// store, the rules of [`cep_rules`].
pub fn handler(
    settings: &Settings,
    bus: EventBridge,
    faults: impl FaultPublisher + 'static,
    store: Option<(EventStore, Duration)>,
) -> Result<Handler, ConfigError> {
    let publish = CdcStored::new(
        "publish-events",
        "event-created",
        appended_event,
        bus.clone(),
    )
    // the store's collected events decode as `event-created` too
    .when(|uow| !is_store_item(uow));
    let mut builder = Handler::builder(faults)
        .settings(settings)
        .dynamodb_options(DynamoDbOptions {
            // the event log is written in this region; nothing to filter
            region: None,
            ..DynamoDbOptions::default()
        })
        .pipeline(publish);
    if let Some((store, stale_after)) = store {
        builder = builder.pipelines(cep_rules(store, bus, stale_after));
    }
    builder.build()
}

/// The handler as deployed: `BUS_NAME` for events and faults, `FAULTS_BUCKET` for faults too
/// large or rejected, `EVENT_STORE_TABLE` for the event store and `STALE_AFTER_SECONDS` for
/// `thing-stale`.
pub async fn from_env() -> Result<Handler, ConfigError> {
    let settings = Settings::from_env();
    let bus = EventBridge::from_settings(&settings).await;
    let store = match std::env::var("EVENT_STORE_TABLE") {
        Ok(table) if !table.is_empty() => {
            let stale_after = match std::env::var("STALE_AFTER_SECONDS") {
                Ok(s) => s
                    .parse()
                    .map(Duration::from_secs)
                    .map_err(|e| ConfigError::Setting {
                        name: "STALE_AFTER_SECONDS",
                        reason: format!("`{s}`: {e}"),
                    })?,
                Err(_) => STALE_AFTER,
            };
            Some((
                EventStore::new(DynamoDb::shared().await, table),
                stale_after,
            ))
        }
        _ => None,
    };
    let handler = handler(&settings, bus.clone(), EventBridgeFaults(bus), store)?;
    Ok(match S3::faults(&settings).await {
        Some(store) => handler.with_fault_store(store),
        None => handler,
    })
}
