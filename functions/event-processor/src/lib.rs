//! event-processor: commands (commands table stream) and ingested messages (ingest table
//! stream) → domain events appended to the event log (events table).
//!
//! Each append is a conditional put on the event's (stream, sequence) key, so a redelivered
//! record never appends twice: the second put finds the item and is skipped as a success.
//! A command the business rules reject becomes a fault event.

use lambda_stream::connectors::{DynamoDb, EventBridge, EventBridgeFaults};
use lambda_stream::expressions::pk_condition;
use lambda_stream::sinks::{PutRequest, UpdateOptions};
use lambda_stream::{ConfigError, Event, FaultPublisher, Handler, Pipeline, StepError, UnitOfWork};
use serde::Deserialize;
use serde_json::{Value, json};

/// The discriminator of event-log items (the trigger publishes `event-created` changes).
pub const EVENT_DISCRIMINATOR: &str = "event";

/// A command as command-intake stores it on its stream item.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredCommand {
    /// The stream key (the command's `type`).
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

fn service() -> String {
    std::env::var("SERVICE").unwrap_or_else(|_| "reference".into())
}

fn thing_id(data: &Value, command: &str) -> Result<String, StepError> {
    data.get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            StepError::poison_msg(format!("`{command}` needs data.id (a non-empty string)"))
        })
}

/// The business rules: the domain event a command produces, or why it is rejected.
pub fn decide(cmd: &StoredCommand) -> Result<Event, StepError> {
    let (event_type, thing) = match cmd.command.as_str() {
        "create-thing" => {
            let id = thing_id(&cmd.data, &cmd.command)?;
            if !cmd.data.get("name").is_some_and(Value::is_string) {
                return Err(StepError::poison_msg(
                    "`create-thing` needs data.name (a string)",
                ));
            }
            let mut thing = cmd.data.clone();
            thing["id"] = json!(id);
            ("thing-created", thing)
        }
        "update-thing" => {
            thing_id(&cmd.data, &cmd.command)?;
            ("thing-updated", cmd.data.clone())
        }
        "delete-thing" => (
            "thing-deleted",
            json!({"id": thing_id(&cmd.data, &cmd.command)?}),
        ),
        other => {
            return Err(StepError::poison_msg(format!(
                "unknown command `{other}` on stream `{}`",
                cmd.pk
            ))
            .named("InvalidCommand"));
        }
    };
    let key = thing["id"].as_str().unwrap_or_default().to_owned();
    let mut event = Event::new(
        format!("{}:{}", cmd.pk, cmd.sequence),
        event_type,
        cmd.timestamp,
    )
    .with_partition_key(key)
    .with_entity("thing", thing);
    event.tags.insert("source".into(), json!(service()));
    event.tags.insert("requestId".into(), json!(cmd.request_id));
    Ok(event)
}

/// The event-log item for `event` at (`stream`, `sequence`), written only if absent.
pub fn append(stream: &str, sequence: &str, event: &Event) -> Result<PutRequest, StepError> {
    Ok(PutRequest {
        table: None,
        item: json!({
            "pk": stream,
            "sk": sequence,
            "discriminator": EVENT_DISCRIMINATOR,
            "timestamp": event.timestamp,
            "event": serde_json::to_value(event)?,
        }),
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

/// A command's append.
pub fn apply_command(uow: UnitOfWork) -> Result<UnitOfWork<PutRequest>, StepError> {
    let cmd: StoredCommand = serde_json::from_value(new_image(&uow)?.clone()).map_err(|e| {
        StepError::poison_msg(format!("malformed command item: {e}")).named("InvalidCommand")
    })?;
    let event = decide(&cmd)?;
    let request = append(&cmd.pk, &format!("{:012}", cmd.sequence), &event)?;
    Ok(uow.with(request))
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

/// The handler: appends into `events_table`.
pub fn handler(
    db: DynamoDb,
    events_table: &str,
    faults: impl FaultPublisher + 'static,
) -> Result<Handler, ConfigError> {
    let options = UpdateOptions {
        table: events_table.to_owned(),
        ..UpdateOptions::default()
    };
    Handler::builder(faults)
        .pipeline(
            Pipeline::new("apply-commands")
                .on_event_type(["command-created", "command-updated"])
                .map(apply_command)
                .put(db.clone(), options.clone()),
        )
        .pipeline(
            Pipeline::new("record-messages")
                .on_event_type("message-created")
                .map(record_message)
                .put(db, options),
        )
        .build()
}

/// The handler as deployed: `EVENTS_TABLE`, faults to `BUS_NAME`.
pub async fn from_env() -> Result<Handler, ConfigError> {
    let table = std::env::var("EVENTS_TABLE").unwrap_or_default();
    let faults = EventBridgeFaults(EventBridge::from_env().await);
    handler(DynamoDb::shared().await, &table, faults)
}
