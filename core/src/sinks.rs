//! Sinks: pipeline steps that write through the connectors.
//!
//! Defaults come from the environment as in aws-lambda-stream: `ENTITY_TABLE_NAME` for the
//! table, `UPDATE_PARALLEL` (else `PARALLEL`, else 4) for concurrent writes, `BUS_NAME` for the bus.

use serde_json::Value;

use crate::connectors::{DynamoDb, EventBridge, UpdateRequest, Written};
use crate::error::StepError;
use crate::event::Event;
use crate::pipeline::Pipeline;
use crate::uow::UnitOfWork;

fn env_parallel(var: &str) -> usize {
    [var, "PARALLEL"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
        .filter(|p| *p > 0)
        .unwrap_or(4)
}

/// Where and how [`Pipeline::update`] writes.
#[derive(Debug, Clone)]
pub struct UpdateOptions {
    /// The table when the request names none (default `ENTITY_TABLE_NAME`).
    pub table: String,
    /// Concurrent writes across keys (default `UPDATE_PARALLEL`, else `PARALLEL`, else 4).
    pub parallel: usize,
}

impl Default for UpdateOptions {
    fn default() -> Self {
        UpdateOptions {
            table: std::env::var("ENTITY_TABLE_NAME").unwrap_or_default(),
            parallel: env_parallel("UPDATE_PARALLEL"),
        }
    }
}

impl Pipeline<UnitOfWork<UpdateRequest>> {
    /// Writes each unit's update request; a stale write (timestamp condition) is a success.
    /// The state becomes what the write did.
    pub fn update(self, db: DynamoDb, options: UpdateOptions) -> Pipeline<UnitOfWork<Written>> {
        let table = std::sync::Arc::<str>::from(options.table);
        self.parallel(options.parallel).then(move |uow| {
            let (db, table) = (db.clone(), table.clone());
            async move {
                let written = db.update(&table, &uow.state).await?;
                if written == Written::Stale {
                    tracing::debug!(id = %uow.event().id, "stale update skipped");
                }
                Ok(uow.with(written))
            }
        })
    }
}

impl Pipeline<UnitOfWork<Event>> {
    /// Publishes each unit's event to the bus, in requests of at most 10 entries and 256 KB,
    /// retrying only failed entries; standard tags are added. Units whose entries still fail
    /// are faulted (rejected) or retry (throttled).
    pub fn publish_to_event_bridge(self, bus: EventBridge) -> Pipeline<UnitOfWork<()>> {
        let pipeline = self.id().to_owned();
        self.then_all(move |units: Vec<UnitOfWork<Event>>| {
            let (bus, pipeline) = (bus.clone(), pipeline.clone());
            async move {
                let mut units = units;
                for uow in &mut units {
                    crate::tags::add_standard(&mut uow.state.tags, &pipeline);
                }
                let events: Vec<&Event> = units.iter().map(|u| &u.state).collect();
                let results = bus.put_events(&events).await;
                units
                    .into_iter()
                    .zip(results)
                    .map(|(uow, r)| r.map(|()| uow.with(())))
                    .collect::<Vec<Result<UnitOfWork<()>, StepError>>>()
            }
        })
    }
}

/// The JSON fields of an update: convenience for `to_update_request` functions.
pub fn fields(pairs: &[(&str, Value)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    )
}
