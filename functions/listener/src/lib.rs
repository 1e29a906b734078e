//! listener: domain events from the Kinesis stream (fed by a bus rule) → the views table,
//! single-table: `pk`, `sk`, `discriminator`, the thing's fields, `version`, `timestamp`,
//! `lastModifiedBy`, and for a deleted thing `deleted` and `ttl`.
//!
//! Every `thing-*` event carries the thing's whole state and its version, so a view row is
//! simply replaced by the event's state under a version condition: a row is only ever replaced
//! by a higher version. Any order of delivery, any redelivery and any duplicate give the same
//! final views; no wall-clock time decides which write wins. A deleted thing's row is kept,
//! marked deleted, and expires after [`DELETED_TTL_DAYS`].

use lambda_stream::breaker::CircuitBreaker;
use lambda_stream::connectors::{DynamoDb, EventBridge, EventBridgeFaults, Lambda, S3};
use lambda_stream::expressions::{ttl, version_condition};
use lambda_stream::faults::FaultPublisher;
use lambda_stream::flavors::{Collect, EventStore};
use lambda_stream::idempotency::Idempotency;
use lambda_stream::sinks::{EntityPut, PutEntity};
use lambda_stream::{
    ConfigError, Handler, IntoPipeline, Pipeline, Settings, StepError, UnitOfWork,
};
use serde_json::{Value, json};

/// Days a deleted thing's row is kept.
pub const DELETED_TTL_DAYS: i64 = 30;

fn modified_by(uow: &UnitOfWork) -> &str {
    let e = uow.event();
    // `or_else`: the second lookup only when the first misses (the event's maps are cold by
    // the time the pipelines run, so each lookup costs cache misses)
    e.tag("functionname")
        .or_else(|| e.tag("source"))
        .unwrap_or("unknown")
}

/// The thing's row at the event's version: its whole state, replacing any older version. The
/// row is the event's `thing` less its `id` (the key, `pk`) with the view's fields over it,
/// read from the event when the sink writes it.
pub fn to_put_request(uow: &UnitOfWork) -> Result<EntityPut, StepError> {
    let event = uow.event();
    let thing = event
        .entity("thing")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            StepError::poison_msg(format!("event {} has no `thing` object", event.id))
        })?;
    let id = thing
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| StepError::poison_msg(format!("event {}: thing.id is missing", event.id)))?;
    let version = event
        .entity("version")
        .and_then(Value::as_u64)
        .filter(|v| *v > 0)
        .ok_or_else(|| StepError::poison_msg(format!("event {} has no version", event.id)))?;
    // the row is read from the event as the sink writes it: no copy of the thing is made (and
    // the request is built in place, not moved through a builder once per field)
    let deleted = event.event_type == "thing-deleted";
    let mut with = Vec::with_capacity(if deleted { 8 } else { 6 });
    with.extend([
        ("pk".into(), json!(id)),
        ("sk".into(), json!("thing")),
        ("discriminator".into(), json!("thing")),
        ("version".into(), json!(version)),
        ("timestamp".into(), json!(event.timestamp)),
        ("lastModifiedBy".into(), json!(modified_by(uow))),
    ]);
    if deleted {
        with.push(("deleted".into(), json!(true)));
        with.push(("ttl".into(), json!(ttl(event.timestamp, DELETED_TTL_DAYS))));
    }
    Ok(EntityPut {
        table: None,
        entity: "thing".into(),
        without: vec!["id".into()],
        with,
        condition: Some(version_condition("version", version)),
    })
}

/// Thing events the listener collects into its event store, for the trigger's complex event
/// processing (`thing-hot`, `thing-stale`); the higher-order events themselves are collected
/// too, so the store holds a thing's whole story.
pub const COLLECTED: [&str; 5] = [
    "thing-created",
    "thing-updated",
    "thing-deleted",
    "thing-hot",
    "thing-stale",
];

/// The handler: views into `table`, one pipeline for live things and one for deleted ones,
/// a key's events applied one at a time across both (`in_key_order`). With an idempotency
/// table in the settings, both are guarded: a redelivered event already applied is skipped
/// without a write, and one that keeps failing is faulted with its data after
/// `IDEMPOTENCY_MAX_ATTEMPTS` attempts. With an event `store`, the [`COLLECTED`] events are
/// collected into it (idempotent by event id, so unguarded).
pub fn handler(
    settings: &Settings,
    db: DynamoDb,
    table: &str,
    faults: impl FaultPublisher + 'static,
    store: Option<EventStore>,
) -> Result<Handler, ConfigError> {
    let guard = Idempotency::from_settings(settings, &db);
    let view = |id: &str, types: &[&str], db: DynamoDb| {
        let p = Pipeline::new(id)
            .on_event_type(types.to_vec())
            .map(|uow: UnitOfWork| {
                let request = to_put_request(&uow)?;
                Ok(uow.with(request))
            })
            .pipe(PutEntity::new(db).table(table))
            .into_pipeline();
        match &guard {
            Some(g) => p.idempotent(g.clone()),
            None => p,
        }
    };
    let mut builder = Handler::builder(faults)
        .settings(settings)
        .in_key_order()
        .pipeline(view(
            "thing-view",
            &["thing-created", "thing-updated"],
            db.clone(),
        ))
        .pipeline(view("thing-deleted", &["thing-deleted"], db));
    if let Some(store) = store {
        builder = builder.pipeline(Collect::new("collect-things", COLLECTED.to_vec(), store));
    }
    builder.build()
}

/// The handler as deployed: `VIEWS_TABLE` (else `ENTITY_TABLE_NAME`), `EVENT_STORE_TABLE`
/// (when set) for the event store, faults to `BUS_NAME`
/// (and `FAULTS_BUCKET` for faults too large or rejected), and the circuit breaker the
/// `CIRCUIT_BREAKER_*` settings describe.
pub async fn from_env() -> Result<Handler, ConfigError> {
    let settings = Settings::from_env();
    let table = std::env::var("VIEWS_TABLE").unwrap_or_else(|_| settings.entity_table.clone());
    let faults = EventBridgeFaults(EventBridge::from_settings(&settings).await);
    let db = DynamoDb::shared().await;
    let store = std::env::var("EVENT_STORE_TABLE")
        .ok()
        .filter(|t| !t.is_empty())
        .map(|t| EventStore::new(db.clone(), t));
    let mut handler = handler(&settings, db, &table, faults, store)?;
    if let Some(store) = S3::faults(&settings).await {
        handler = handler.with_fault_store(store);
    }
    if let Some(breaker) = CircuitBreaker::from_settings(&settings, Lambda::shared().await) {
        handler = handler.with_circuit_breaker(breaker);
    }
    Ok(handler)
}
