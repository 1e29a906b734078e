//! listener: domain events from the Kinesis stream (fed by a bus rule) → the views table
//! (materialize flavor), single-table: `pk`, `sk`, `discriminator`, `timestamp`,
//! `lastModifiedBy`, `ttl`.
//!
//! `thing-created` / `thing-updated` upsert the thing's row; `thing-deleted` marks it deleted and
//! sets a TTL so DynamoDB removes it later. Rows are written under the timestamp condition, so
//! redeliveries and late events never move a row back in time.

use lambda_stream::connectors::{DynamoDb, EventBridge, EventBridgeFaults, UpdateRequest};
use lambda_stream::expressions::{ttl, update_expression};
use lambda_stream::flavors::Materialize;
use lambda_stream::sinks::UpdateOptions;
use lambda_stream::{ConfigError, FaultPublisher, Handler, StepError, UnitOfWork};
use serde_json::{Value, json};

/// Days a deleted thing's row is kept.
pub const DELETED_TTL_DAYS: i64 = 30;

fn thing_of(uow: &UnitOfWork) -> Result<(&Value, &str), StepError> {
    let event = uow.event();
    let thing = event
        .entity("thing")
        .filter(|t| t.is_object())
        .ok_or_else(|| {
            StepError::poison_msg(format!("event {} has no `thing` object", event.id))
        })?;
    let id = thing
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| StepError::poison_msg(format!("event {}: thing.id is missing", event.id)))?;
    Ok((thing, id))
}

fn modified_by(uow: &UnitOfWork) -> &str {
    let e = uow.event();
    e.tag("functionname")
        .or(e.tag("source"))
        .unwrap_or("unknown")
}

/// Upserts the thing's row.
pub fn to_update_request(uow: &UnitOfWork) -> Result<UpdateRequest, StepError> {
    let (thing, id) = thing_of(uow)?;
    let mut fields = thing.as_object().cloned().unwrap_or_default();
    fields.remove("id");
    fields.insert("discriminator".into(), json!("thing"));
    fields.insert("timestamp".into(), json!(uow.event().timestamp));
    fields.insert("lastModifiedBy".into(), json!(modified_by(uow)));
    fields.insert("deleted".into(), Value::Null);
    fields.insert("ttl".into(), Value::Null);
    Ok(UpdateRequest {
        table: None,
        key: json!({"pk": id, "sk": "thing"}),
        expression: update_expression(&Value::Object(fields))?.timestamp_condition()?,
    })
}

/// Marks the thing's row deleted, to expire after [`DELETED_TTL_DAYS`].
pub fn to_delete_request(uow: &UnitOfWork) -> Result<UpdateRequest, StepError> {
    let (_, id) = thing_of(uow)?;
    let timestamp = uow.event().timestamp;
    let fields = json!({
        "discriminator": "thing",
        "deleted": true,
        "timestamp": timestamp,
        "lastModifiedBy": modified_by(uow),
        "ttl": ttl(timestamp, DELETED_TTL_DAYS),
    });
    Ok(UpdateRequest {
        table: None,
        key: json!({"pk": id, "sk": "thing"}),
        expression: update_expression(&fields)?.timestamp_condition()?,
    })
}

/// The handler: materialize rules into `table`.
pub fn handler(
    db: DynamoDb,
    table: &str,
    faults: impl FaultPublisher + 'static,
) -> Result<Handler, ConfigError> {
    let options = UpdateOptions {
        table: table.to_owned(),
        ..UpdateOptions::default()
    };
    let mut upsert = Materialize::new(
        "thing-view",
        ["thing-created", "thing-updated"],
        to_update_request,
        db.clone(),
    );
    upsert.options = options.clone();
    let mut delete = Materialize::new("thing-deleted", "thing-deleted", to_delete_request, db);
    delete.options = options;
    // the views are written only here, from this service's own event log: its own events are
    // exactly the ones to materialize (the flavor's default skips them, for services that
    // write their views directly)
    upsert.service = None;
    delete.service = None;
    Handler::builder(faults)
        .pipeline(upsert)
        .pipeline(delete)
        .build()
}

/// The handler as deployed: `VIEWS_TABLE` (else `ENTITY_TABLE_NAME`), faults to `BUS_NAME`.
pub async fn from_env() -> Result<Handler, ConfigError> {
    let table = std::env::var("VIEWS_TABLE")
        .or_else(|_| std::env::var("ENTITY_TABLE_NAME"))
        .unwrap_or_default();
    let faults = EventBridgeFaults(EventBridge::from_env().await);
    handler(DynamoDb::shared().await, &table, faults)
}
