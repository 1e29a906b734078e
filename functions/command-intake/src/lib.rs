//! command-intake: `POST /commands` (API Gateway HTTP API).
//!
//! A command is `{"type", "command", "requestId", "data"?}`. The stream it joins is its entity:
//! `<type>#<data.id>` (`thing#t1`), or `type` alone when it names no id. Commands of one stream
//! are numbered 1, 2, 3... by one conditional write each, so the commands table's stream
//! carries each entity's commands in strict order, and commands of different entities never
//! contend for one sequence. The write is a transaction of two items: the stream's item (its
//! sequence moves from n to n + 1 only if it is still n) and a marker for the request id (only
//! if absent). A repeated request id finds its marker: it is acknowledged with the sequence it
//! got the first time, and nothing is written again.
//!
//! Answers: 202 `{"requestId", "stream", "sequence", "duplicate"}`; 400 `{"error"}` naming what
//! is wrong with the body (nothing is written); 503 when the table is busy or unavailable.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, Put, TransactWriteItem, Update};
use lambda_http::http::StatusCode;
use lambda_http::{Body, Request, Response};
use lambda_stream::Retry;
use serde::Serialize;
use serde_json::{Map, Value, json};

/// The largest body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The longest `type` (stream name) or `requestId`.
pub const MAX_NAME_LEN: usize = 128;
/// How long a request id is remembered (seconds).
pub const DEDUPE_SECONDS: i64 = 7 * 24 * 3600;
/// Attempts to take the next sequence when other commands of the stream race for it.
const RETRY: Retry = Retry {
    attempts: 12,
    min_delay: Duration::from_millis(5),
    max_delay: Duration::from_millis(200),
};

/// A valid command.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The stream it joins: its entity (`thing#t1`), or its type when it names no id.
    pub stream: String,
    /// What to do.
    pub command: String,
    /// The client's id for this request.
    pub request_id: String,
    /// The command's data (an object, possibly empty).
    pub data: Map<String, Value>,
}

fn name(body: &Map<String, Value>, field: &str) -> Result<String, String> {
    match body.get(field) {
        None => Err(format!("`{field}` is missing")),
        Some(Value::String(s)) if s.trim().is_empty() => Err(format!("`{field}` is empty")),
        Some(Value::String(s)) if s.len() > MAX_NAME_LEN => Err(format!(
            "`{field}` is longer than {MAX_NAME_LEN} characters"
        )),
        Some(Value::String(s)) if s.chars().any(char::is_control) => {
            Err(format!("`{field}` contains control characters"))
        }
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("`{field}` must be a string")),
    }
}

/// Checks a request body; the error says what is wrong.
///
/// ```
/// let c = command_intake::validate(br#"{"type":"thing","command":"create-thing","requestId":"r1","data":{"id":"t1"}}"#).unwrap();
/// assert_eq!(c.stream, "thing#t1");
/// let c = command_intake::validate(br#"{"type":"thing","command":"list-things","requestId":"r2"}"#).unwrap();
/// assert_eq!(c.stream, "thing");
/// assert_eq!(command_intake::validate(b"[1]").unwrap_err(), "the body must be a JSON object");
/// ```
pub fn validate(body: &[u8]) -> Result<Command, String> {
    if body.is_empty() {
        return Err("the body is empty; send a JSON command".into());
    }
    if body.len() > MAX_BODY_BYTES {
        return Err(format!(
            "the body is {} bytes; the limit is {MAX_BODY_BYTES}",
            body.len()
        ));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON: {e}"))?;
    let Value::Object(object) = value else {
        return Err("the body must be a JSON object".into());
    };
    let kind = name(&object, "type")?;
    let command = name(&object, "command")?;
    let request_id = name(&object, "requestId")?;
    let data = match object.get("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(d)) => d.clone(),
        Some(_) => return Err("`data` must be a JSON object".into()),
    };
    // one stream per entity; a command that names none joins its type's stream
    let stream = match data.get("id") {
        None | Some(Value::Null) => kind,
        Some(_) => {
            let id = name(&data, "id").map_err(|e| e.replacen("`id`", "`data.id`", 1))?;
            format!("{kind}#{id}")
        }
    };
    Ok(Command {
        stream,
        command,
        request_id,
        data,
    })
}

/// What the client is told when a command is accepted.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// The client's request id.
    pub request_id: String,
    /// The stream.
    pub stream: String,
    /// The command's position in the stream.
    pub sequence: u64,
    /// True when this request id was seen before (nothing was written).
    pub duplicate: bool,
}

/// Why a command could not be stored.
#[derive(Debug)]
pub enum SubmitError {
    /// The table is busy or unavailable: the client may retry with the same request id.
    Unavailable(String),
    /// Anything else (a bug, a misconfiguration).
    Failed(String),
}

/// Writes commands to the commands table.
#[derive(Debug, Clone)]
pub struct Intake {
    client: Client,
    table: String,
}

fn av(v: &Value) -> Result<AttributeValue, SubmitError> {
    serde_dynamo::aws_sdk_dynamodb_1::to_attribute_value(v)
        .map_err(|e| SubmitError::Failed(e.to_string()))
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// An item's `sequence`, if it has one.
fn sequence_of(item: &HashMap<String, AttributeValue>) -> Option<u64> {
    item.get("sequence")
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Intake {
    /// Over `client`, writing to `table`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Intake {
            client,
            table: table.into(),
        }
    }

    /// As deployed: the shared client and `COMMANDS_TABLE`.
    pub async fn from_env() -> Self {
        let table = std::env::var("COMMANDS_TABLE").unwrap_or_default();
        Intake::new(lambda_stream::aws::dynamodb().await.clone(), table)
    }

    fn key(pk: &str, sk: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
    }

    async fn read_sequence(&self, pk: &str, sk: &str) -> Result<Option<u64>, SubmitError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| SubmitError::Unavailable(lambda_stream::aws::classify(e).to_string()))?;
        Ok(out.item.as_ref().and_then(sequence_of))
    }

    /// The sequence the request's marker holds (a repeat) and the stream's head, read in one
    /// `BatchGetItem` of two strongly consistent reads: one call per command instead of two
    /// (the read units are the same). The two are not one snapshot, and need not be: the
    /// transaction's conditions decide. Keys DynamoDB leaves unprocessed (throttling) are asked
    /// for again after a pause.
    async fn read_marker_and_stream(
        &self,
        marker: &str,
        stream: &str,
    ) -> Result<(Option<u64>, Option<u64>), SubmitError> {
        let keys = KeysAndAttributes::builder()
            .keys(Self::key(marker, "request"))
            .keys(Self::key(stream, "stream"))
            .consistent_read(true)
            .build()
            .map_err(|e| SubmitError::Failed(e.to_string()))?;
        let (mut seen, mut head) = (None, None);
        let mut pending = Some(keys);
        let mut delays = RETRY.delays();
        while let Some(keys) = pending.take() {
            let out = self
                .client
                .batch_get_item()
                .request_items(&self.table, keys)
                .send()
                .await
                .map_err(|e| {
                    SubmitError::Unavailable(lambda_stream::aws::classify(e).to_string())
                })?;
            let items = out
                .responses
                .and_then(|mut r| r.remove(&self.table))
                .unwrap_or_default();
            for item in &items {
                // the sort key tells the two apart (a stream may share a marker's pk)
                match item
                    .get("sk")
                    .and_then(|v| v.as_s().ok())
                    .map(String::as_str)
                {
                    Some("request") => seen = sequence_of(item),
                    Some("stream") => head = sequence_of(item),
                    _ => {}
                }
            }
            pending = out
                .unprocessed_keys
                .and_then(|mut u| u.remove(&self.table))
                .filter(|k| !k.keys().is_empty());
            if pending.is_some() {
                let Some(delay) = delays.next() else {
                    return Err(SubmitError::Unavailable(
                        "reads throttled; retry with the same requestId".into(),
                    ));
                };
                tokio::time::sleep(delay).await;
            }
        }
        Ok((seen, head))
    }

    /// Appends `cmd` to its stream once.
    pub async fn submit(&self, cmd: &Command) -> Result<Accepted, SubmitError> {
        let marker = format!("request#{}", cmd.request_id);
        // a repeated request is answered from its marker without attempting a write (a
        // cancelled transaction still consumes write capacity); the marker is read with the
        // stream's sequence, so a new command waits for no extra round trip
        let (seen, head) = self.read_marker_and_stream(&marker, &cmd.stream).await?;
        let mut stream_read = Ok(head);
        if let Some(sequence) = seen {
            return Ok(Accepted {
                request_id: cmd.request_id.clone(),
                stream: cmd.stream.clone(),
                sequence,
                duplicate: true,
            });
        }
        let mut delays = RETRY.delays();
        loop {
            let current = stream_read?.unwrap_or(0);
            let next = current + 1;
            let now = now_millis();
            let put_marker = Put::builder()
                .table_name(&self.table)
                .set_item(Some(HashMap::from([
                    ("pk".to_owned(), s(&marker)),
                    ("sk".to_owned(), s("request")),
                    ("stream".to_owned(), s(&cmd.stream)),
                    ("sequence".to_owned(), n(next)),
                    ("ttl".to_owned(), n(now / 1000 + DEDUPE_SECONDS)),
                ])))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(|e| SubmitError::Failed(e.to_string()))?;
            let advance = Update::builder()
                .table_name(&self.table)
                .set_key(Some(Self::key(&cmd.stream, "stream")))
                .update_expression(
                    "SET #seq = :next, #cmd = :cmd, #req = :req, #data = :data, #ts = :ts, #disc = :disc",
                )
                .condition_expression("attribute_not_exists(#seq) OR #seq = :current")
                .set_expression_attribute_names(Some(HashMap::from([
                    ("#seq".to_owned(), "sequence".to_owned()),
                    ("#cmd".to_owned(), "command".to_owned()),
                    ("#req".to_owned(), "requestId".to_owned()),
                    ("#data".to_owned(), "data".to_owned()),
                    ("#ts".to_owned(), "timestamp".to_owned()),
                    ("#disc".to_owned(), "discriminator".to_owned()),
                ])))
                .set_expression_attribute_values(Some(HashMap::from([
                    (":next".to_owned(), n(next)),
                    (":current".to_owned(), n(current)),
                    (":cmd".to_owned(), s(&cmd.command)),
                    (":req".to_owned(), s(&cmd.request_id)),
                    (":data".to_owned(), av(&Value::Object(cmd.data.clone()))?),
                    (":ts".to_owned(), n(now)),
                    (":disc".to_owned(), s("command")),
                ])))
                .build()
                .map_err(|e| SubmitError::Failed(e.to_string()))?;
            let result = self
                .client
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().put(put_marker).build())
                .transact_items(TransactWriteItem::builder().update(advance).build())
                .send()
                .await;
            let err = match result {
                Ok(_) => {
                    return Ok(Accepted {
                        request_id: cmd.request_id.clone(),
                        stream: cmd.stream.clone(),
                        sequence: next,
                        duplicate: false,
                    });
                }
                Err(err) => err,
            };
            let reasons: Vec<Option<String>> = match err.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(c)) => c
                    .cancellation_reasons()
                    .iter()
                    .map(|r| r.code().map(str::to_owned))
                    .collect(),
                _ => {
                    return Err(SubmitError::Unavailable(
                        lambda_stream::aws::classify(err).to_string(),
                    ));
                }
            };
            let failed = |i: usize| {
                reasons.get(i).and_then(Option::as_deref) == Some("ConditionalCheckFailed")
            };
            if failed(0) {
                let sequence = self.read_sequence(&marker, "request").await?.unwrap_or(0);
                return Ok(Accepted {
                    request_id: cmd.request_id.clone(),
                    stream: cmd.stream.clone(),
                    sequence,
                    duplicate: true,
                });
            }
            let raced = reasons
                .iter()
                .flatten()
                .any(|code| code == "ConditionalCheckFailed" || code == "TransactionConflict");
            if !raced {
                return Err(SubmitError::Unavailable(format!(
                    "transaction cancelled: {reasons:?}"
                )));
            }
            // another command took sequence `next` first: read again and retry, after a jittered
            // pause so racing writers do not collide in lockstep
            tracing::debug!(stream = %cmd.stream, next, ?reasons, "sequence taken, retrying");
            match delays.next() {
                Some(delay) => {
                    tokio::time::sleep(delay).await;
                    stream_read = self.read_sequence(&cmd.stream, "stream").await;
                }
                None => {
                    return Err(SubmitError::Unavailable(format!(
                        "stream `{}` is busy; retry with the same requestId",
                        cmd.stream
                    )));
                }
            }
        }
    }

    /// Handles one HTTP request.
    pub async fn handle(&self, request: Request) -> Response<Body> {
        let command = match validate(request.body().as_ref()) {
            Ok(c) => c,
            Err(problem) => {
                tracing::info!(%problem, "command rejected");
                return respond(StatusCode::BAD_REQUEST, &json!({"error": problem}));
            }
        };
        match self.submit(&command).await {
            Ok(accepted) => {
                tracing::info!(stream = %accepted.stream, sequence = accepted.sequence, duplicate = accepted.duplicate, "command accepted");
                respond(StatusCode::ACCEPTED, &accepted)
            }
            Err(SubmitError::Unavailable(reason)) => {
                tracing::warn!(%reason, "command not stored");
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"error": "the command could not be stored now; retry with the same requestId"}),
                )
            }
            Err(SubmitError::Failed(reason)) => {
                tracing::error!(%reason, "command not stored");
                respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &json!({"error": "internal error"}),
                )
            }
        }
    }
}

fn respond(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    let mut response = Response::new(Body::Text(serde_json::to_string(body).unwrap_or_default()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        lambda_http::http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Runs the function: [`Intake::from_env`] as the HTTP handler of the Lambda runtime, until the
/// runtime stops.
pub async fn run() -> Result<(), lambda_http::Error> {
    let intake = std::sync::Arc::new(Intake::from_env().await);
    lambda_http::run(lambda_http::service_fn(move |request: Request| {
        let intake = std::sync::Arc::clone(&intake);
        async move { Ok::<_, lambda_http::Error>(intake.handle(request).await) }
    }))
    .await
}
