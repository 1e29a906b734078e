//! event-processor: commands (commands table stream) and ingested messages (ingest table
//! stream) → domain events appended to the event log (events table).
//!
//! **Commands are decided once, against the entity's current state.** Each command stream is
//! one entity (`thing#<id>`); the events table keeps, per stream, a snapshot item
//! (`sk = "snapshot"`: the entity's state, its version and the last command decided) and the
//! events (`sk = <version>`, zero-padded). A command is decided against the snapshot and its
//! outcome written in one transaction, under conditions on the snapshot:
//! - accepted: the event (version n + 1, the entity's whole state after the change) is put if
//!   absent and the snapshot moves from version n to n + 1;
//! - rejected by the rules: a rejection item (`sk = "rejected#<sequence>"`, with the reason) is
//!   put and the snapshot records the command as decided; the command becomes a fault event.
//!
//! A command the snapshot says was decided already (a redelivery, or a retry after a lost
//! answer) is not decided again: an accepted one is done, a rejected one raises its fault again
//! from the recorded reason (the same fault, stored once). So every command is exactly one
//! event or one fault, whatever the redeliveries, and versions have no gaps.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use lambda_stream::connectors::{DynamoDb, EventBridge, EventBridgeFaults, S3};
use lambda_stream::expressions::pk_condition;
use lambda_stream::faults::FaultPublisher;
use lambda_stream::idempotency::Idempotency;
use lambda_stream::sinks::{self, PutRequest};
use lambda_stream::{
    AssembledPipeline, ConfigError, ErrorClass, Event, Handler, IntoPipeline, Pipeline, Settings,
    StepError, UnitOfWork,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The discriminator of event-log items (the trigger publishes `event-created` changes).
pub const EVENT_DISCRIMINATOR: &str = "event";
/// The snapshot item's sort key.
pub const SNAPSHOT: &str = "snapshot";
/// Attempts to decide a command when its snapshot changes under it.
const ATTEMPTS: usize = 5;

/// A command as command-intake stores it on its stream item.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredCommand {
    /// The stream key: the entity (`thing#<id>`), or the type when the command named none.
    pub pk: String,
    /// The command's position in its stream.
    pub sequence: u64,
    /// What to do, e.g. `create-thing`.
    pub command: String,
    /// The client's request id.
    pub request_id: String,
    /// The command's data.
    #[serde(default)]
    pub data: Value,
    /// When the command was accepted (epoch ms).
    pub timestamp: i64,
}

/// An entity's current state in the event log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Its events so far (the last event's version).
    pub version: u64,
    /// The last command decided on it (accepted or rejected).
    pub last_command: u64,
    /// The thing's whole state (the last one, for a deleted thing).
    pub thing: Map<String, Value>,
    /// Whether it exists (created and not deleted).
    pub live: bool,
}

impl Snapshot {
    /// From the snapshot item, if there is one.
    pub fn from_item(item: Option<&Value>) -> Self {
        let Some(item) = item else {
            return Snapshot::default();
        };
        Snapshot {
            version: item["version"].as_u64().unwrap_or(0),
            last_command: item["lastCommand"].as_u64().unwrap_or(0),
            thing: item["thing"].as_object().cloned().unwrap_or_default(),
            live: item["live"].as_bool().unwrap_or(false),
        }
    }
}

fn service() -> String {
    std::env::var("SERVICE").unwrap_or_else(|_| "reference".into())
}

fn rejected(message: impl Into<String>) -> StepError {
    StepError::poison_msg(message).named("InvalidCommand")
}

fn thing_id(data: &Value, command: &str) -> Result<String, StepError> {
    data.get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| rejected(format!("`{command}` needs data.id (a non-empty string)")))
}

/// The business rules: the domain event a command produces given the entity's snapshot, or why
/// it is rejected. The event carries the entity's whole state after the change and its version.
///
/// - `create-thing` needs `data.id` and a string `data.name`, and a thing that does not exist
///   (a deleted one may be created again);
/// - `update-thing` sets each field of `data` (`null` removes it) on a thing that exists;
/// - `delete-thing` deletes a thing that exists.
pub fn decide(cmd: &StoredCommand, snapshot: &Snapshot) -> Result<Event, StepError> {
    let data = cmd.data.as_object().cloned().unwrap_or_default();
    let (event_type, thing) = match cmd.command.as_str() {
        "create-thing" => {
            let id = thing_id(&cmd.data, &cmd.command)?;
            if !data.get("name").is_some_and(Value::is_string) {
                return Err(rejected("`create-thing` needs data.name (a string)"));
            }
            if snapshot.live {
                return Err(rejected(format!("thing `{id}` already exists")));
            }
            ("thing-created", data)
        }
        "update-thing" => {
            let id = thing_id(&cmd.data, &cmd.command)?;
            if !snapshot.live {
                return Err(rejected(format!("thing `{id}` does not exist")));
            }
            let mut thing = snapshot.thing.clone();
            for (k, v) in data {
                if v.is_null() {
                    thing.remove(&k);
                } else {
                    thing.insert(k, v);
                }
            }
            ("thing-updated", thing)
        }
        "delete-thing" => {
            let id = thing_id(&cmd.data, &cmd.command)?;
            if !snapshot.live {
                return Err(rejected(format!("thing `{id}` does not exist")));
            }
            ("thing-deleted", snapshot.thing.clone())
        }
        other => {
            return Err(rejected(format!(
                "unknown command `{other}` on stream `{}`",
                cmd.pk
            )));
        }
    };
    let version = snapshot.version + 1;
    let key = thing
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut event = Event::new(format!("{}:v{version}", cmd.pk), event_type, cmd.timestamp)
        .with_partition_key(key)
        .with_entity("thing", Value::Object(thing));
    event.fields.insert("version".into(), json!(version));
    event.tags.insert("source".into(), json!(service()));
    event.tags.insert("requestId".into(), json!(cmd.request_id));
    // one record followed across functions by the request that caused it (logs, faults)
    event
        .tags
        .insert("correlationId".into(), json!(cmd.request_id));
    event.tags.insert("command".into(), json!(cmd.sequence));
    Ok(event)
}

/// The event-log item of `event` at (`stream`, `sequence`).
pub fn event_item(stream: &str, sequence: &str, event: &Event) -> Result<Value, StepError> {
    Ok(json!({
        "pk": stream,
        "sk": sequence,
        "discriminator": EVENT_DISCRIMINATOR,
        "timestamp": event.timestamp,
        "event": serde_json::to_value(event)?,
    }))
}

/// The event-log item for `event` at (`stream`, `sequence`), written only if absent.
pub fn append(stream: &str, sequence: &str, event: &Event) -> Result<PutRequest, StepError> {
    Ok(PutRequest {
        table: None,
        item: event_item(stream, sequence, event)?,
        condition: Some(pk_condition("pk")),
    })
}

fn new_image(uow: &UnitOfWork) -> Result<&Value, StepError> {
    uow.event()
        .raw
        .as_ref()
        .and_then(|raw| raw.get("new"))
        .ok_or_else(|| StepError::poison_msg(format!("change {} has no new image", uow.event().id)))
}

/// The command a change carries.
pub fn stored_command(uow: &UnitOfWork) -> Result<StoredCommand, StepError> {
    serde_json::from_value(new_image(uow)?.clone())
        .map_err(|e| rejected(format!("malformed command item: {e}")))
}

fn item(value: Value) -> Result<HashMap<String, AttributeValue>, StepError> {
    Ok(serde_dynamo::aws_sdk_dynamodb_1::to_item(value)?)
}

fn av(value: Value) -> Result<AttributeValue, StepError> {
    Ok(serde_dynamo::aws_sdk_dynamodb_1::to_attribute_value(value)?)
}

fn build_error(e: impl std::fmt::Display) -> StepError {
    StepError::poison_msg(format!("cannot build the transaction: {e}"))
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Its event was appended now.
    Appended(Box<Event>),
    /// It had been decided before (accepted): nothing to do.
    Already,
}

/// Decides commands against the event log's snapshots.
#[derive(Debug, Clone)]
pub struct Processor {
    db: DynamoDb,
    table: String,
}

impl Processor {
    /// Over `db`, with the event log in `table`.
    pub fn new(db: DynamoDb, table: impl Into<String>) -> Self {
        Processor {
            db,
            table: table.into(),
        }
    }

    async fn snapshot(&self, stream: &str) -> Result<Snapshot, StepError> {
        let item = self
            .db
            .get(&self.table, &json!({"pk": stream, "sk": SNAPSHOT}))
            .await?;
        Ok(Snapshot::from_item(item.as_ref()))
    }

    fn advance(
        &self,
        cmd: &StoredCommand,
        before: &Snapshot,
        after: Option<(&Event, bool)>,
    ) -> Result<TransactWriteItem, StepError> {
        // the snapshot moves only from what was read, and only forward
        let mut names = HashMap::from([
            ("#last".to_owned(), "lastCommand".to_owned()),
            ("#disc".to_owned(), "discriminator".to_owned()),
        ]);
        let mut values = HashMap::from([
            (
                ":seq".to_owned(),
                AttributeValue::N(cmd.sequence.to_string()),
            ),
            (
                ":before".to_owned(),
                AttributeValue::N(before.last_command.to_string()),
            ),
            (":disc".to_owned(), AttributeValue::S(SNAPSHOT.into())),
        ]);
        let mut set = vec!["#last = :seq", "#disc = :disc"];
        if let Some((event, live)) = after {
            names.insert("#version".into(), "version".into());
            names.insert("#thing".into(), "thing".into());
            names.insert("#live".into(), "live".into());
            values.insert(
                ":version".into(),
                AttributeValue::N((before.version + 1).to_string()),
            );
            values.insert(
                ":thing".into(),
                av(event.entity("thing").cloned().unwrap_or_default())?,
            );
            values.insert(":live".into(), AttributeValue::Bool(live));
            set.extend(["#version = :version", "#thing = :thing", "#live = :live"]);
        }
        let update = Update::builder()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(cmd.pk.clone()))
            .key("sk", AttributeValue::S(SNAPSHOT.into()))
            .update_expression(format!("SET {}", set.join(", ")))
            .condition_expression("attribute_not_exists(#last) OR #last = :before")
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    fn put_if_absent(&self, value: Value) -> Result<TransactWriteItem, StepError> {
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item(value)?))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// Decides `cmd` once: appends its event, or records its rejection and returns it as a
    /// poison error (its fault). A command decided before is not decided again.
    pub async fn apply(&self, cmd: &StoredCommand) -> Result<Applied, StepError> {
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let snapshot = self.snapshot(&cmd.pk).await?;
            if snapshot.last_command >= cmd.sequence {
                return self.decided_before(cmd).await;
            }
            let decision = decide(cmd, &snapshot);
            let writes = match &decision {
                Ok(event) => {
                    let sk = format!("{:012}", snapshot.version + 1);
                    let live = event.event_type != "thing-deleted";
                    vec![
                        self.put_if_absent(event_item(&cmd.pk, &sk, event)?)?,
                        self.advance(cmd, &snapshot, Some((event, live)))?,
                    ]
                }
                Err(e) => vec![
                    self.put_if_absent(json!({
                        "pk": cmd.pk,
                        "sk": format!("rejected#{:012}", cmd.sequence),
                        "discriminator": "rejection",
                        "name": e.name(),
                        "message": e.to_string(),
                    }))?,
                    self.advance(cmd, &snapshot, None)?,
                ],
            };
            match self.db.transact_write(writes).await {
                Ok(()) => return decision.map(|e| Applied::Appended(Box::new(e))),
                // the snapshot moved since it was read (our own earlier attempt, whose answer
                // was lost, perhaps): read it again
                Err(e) if e.name() == "TransactionCanceledException" => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(StepError::transient(format!(
            "stream `{}` kept changing while command {} was decided: {}",
            cmd.pk,
            cmd.sequence,
            last.map(|e| e.to_string()).unwrap_or_default()
        )))
    }

    async fn decided_before(&self, cmd: &StoredCommand) -> Result<Applied, StepError> {
        let key = json!({"pk": cmd.pk, "sk": format!("rejected#{:012}", cmd.sequence)});
        match self.db.get(&self.table, &key).await? {
            None => Ok(Applied::Already),
            Some(r) => {
                let message = r["message"].as_str().unwrap_or("rejected").to_owned();
                // the recorded reason, as it was raised: the same fault again
                let message = message
                    .strip_prefix("InvalidCommand: ")
                    .unwrap_or(&message)
                    .to_owned();
                Err(StepError::new(
                    ErrorClass::Poison,
                    r["name"].as_str().unwrap_or("InvalidCommand").to_owned(),
                    message,
                ))
            }
        }
    }
}

/// An ingested message's append: `message-received`, keyed by the message's hash.
pub fn record_message(uow: UnitOfWork) -> Result<UnitOfWork<PutRequest>, StepError> {
    let item = new_image(&uow)?;
    let field = |name: &str| {
        item.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| StepError::poison_msg(format!("ingest item has no `{name}`")))
    };
    let (stream, hash, message) = (field("pk")?, field("sk")?, field("message")?);
    // JSON messages are kept as JSON, anything else as text
    let body = serde_json::from_str::<Value>(message).unwrap_or_else(|_| json!(message));
    let mut event = Event::new(
        format!("{stream}:{hash}"),
        "message-received",
        uow.event().timestamp,
    )
    .with_partition_key(stream)
    .with_entity(
        "message",
        json!({"streamId": stream, "sha1": hash, "body": body}),
    );
    event.tags.insert("source".into(), json!(service()));
    let request = append(&format!("ingest#{stream}"), hash, &event)?;
    Ok(uow.with(request))
}

/// The handler: decides commands and records messages into `events_table`. A stream's
/// commands are decided one at a time, in order (`in_key_order`). With an idempotency table in
/// the settings, both pipelines are guarded: a redelivered change already handled is skipped
/// without reading its snapshot, and one that keeps failing transiently is faulted with its
/// data after `IDEMPOTENCY_MAX_ATTEMPTS` attempts instead of holding its shard.
pub fn handler(
    settings: &Settings,
    db: DynamoDb,
    events_table: &str,
    faults: impl FaultPublisher + 'static,
) -> Result<Handler, ConfigError> {
    let processor = std::sync::Arc::new(Processor::new(db.clone(), events_table));
    let guard = Idempotency::from_settings(settings, &db);
    let guarded = |p: AssembledPipeline| match &guard {
        Some(g) => p.idempotent(g.clone()),
        None => p,
    };
    let commands = Pipeline::new("apply-commands")
        .on_event_type(["command-created", "command-updated"])
        .map(|uow: UnitOfWork| {
            let cmd = stored_command(&uow)?;
            Ok(uow.with(cmd))
        })
        .then(move |uow: UnitOfWork<StoredCommand>| {
            let processor = std::sync::Arc::clone(&processor);
            async move {
                let applied = processor.apply(&uow.state).await?;
                Ok::<_, StepError>(uow.with(applied))
            }
        });
    let messages = Pipeline::new("record-messages")
        .on_event_type("message-created")
        .map(record_message)
        .pipe(sinks::Put::new(db).table(events_table));
    Handler::builder(faults)
        .settings(settings)
        .in_key_order()
        .pipeline(guarded(commands.into_pipeline()))
        .pipeline(guarded(messages.into_pipeline()))
        .build()
}

/// The handler as deployed: `EVENTS_TABLE`, faults to `BUS_NAME` (and `FAULTS_BUCKET` for
/// faults too large or rejected).
pub async fn from_env() -> Result<Handler, ConfigError> {
    let settings = Settings::from_env();
    let table = std::env::var("EVENTS_TABLE").unwrap_or_default();
    let faults = EventBridgeFaults(EventBridge::from_settings(&settings).await);
    let handler = handler(&settings, DynamoDb::shared().await, &table, faults)?;
    Ok(match S3::faults(&settings).await {
        Some(store) => handler.with_fault_store(store),
        None => handler,
    })
}
