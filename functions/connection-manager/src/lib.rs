//! connection-manager: holds a long-lived upstream HTTP stream open and writes each message to
//! the ingest table, once.
//!
//! - `POST /connections/{streamId}` starts a stream: the request is answered 202 at once and the
//!   function invokes itself asynchronously with `{"streamId", "generation": 0}`.
//! - That invocation connects to `UPSTREAM_URL` (with `{streamId}` replaced), with a bearer
//!   token read from the SSM SecureString named by `UPSTREAM_TOKEN_PARAMETER` (never from plain
//!   environment values, never logged), and splits the body into newline-delimited messages;
//!   blank lines are keepalives.
//! - Each message is written as (`streamId`, sha1 of the message) under `attribute_not_exists`,
//!   so a message sent twice (a replay after a reconnect) is stored once.
//! - A dropped or stalled connection is re-opened with backoff.
//! - Before the Lambda deadline (less `HANDOVER_MARGIN_MS`) it invokes a fresh instance with
//!   `generation + 1` and returns, so the stream is never left unwatched by a timeout.

pub mod lines;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::header::{ACCEPT, AUTHORIZATION};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lambda_stream::connectors::{DynamoDb, Lambda, Written};
use lambda_stream::deadline::Deadline;
use lambda_stream::expressions::pk_condition;
use lambda_stream::{Retry, StepError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha1::{Digest, Sha1};

use crate::lines::Splitter;

/// What an asynchronous invocation carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    /// The upstream stream to hold.
    pub stream_id: String,
    /// How many times the stream was handed over to a fresh invocation.
    #[serde(default)]
    pub generation: u64,
}

/// Settings, from the environment as deployed.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The upstream URL; `{streamId}` is replaced by the stream's id.
    pub url_template: String,
    /// The ingest table.
    pub table: String,
    /// Time kept back before the deadline for the handover.
    pub handover_margin: Duration,
    /// A connection that sends nothing (not even a keepalive) this long is re-opened.
    pub idle_timeout: Duration,
    /// Longest message; longer lines are discarded as garbage.
    pub max_message_bytes: usize,
    /// Pauses between reconnections.
    pub reconnect: Retry,
}

fn env_ms(name: &str, default: u64) -> Duration {
    Duration::from_millis(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

impl Settings {
    /// `UPSTREAM_URL`, `INGEST_TABLE`, `HANDOVER_MARGIN_MS` (default 15000), `IDLE_TIMEOUT_MS`
    /// (default 60000), `MAX_MESSAGE_BYTES` (default 262144).
    pub fn from_env() -> Self {
        Settings {
            url_template: std::env::var("UPSTREAM_URL").unwrap_or_default(),
            table: std::env::var("INGEST_TABLE").unwrap_or_default(),
            handover_margin: env_ms("HANDOVER_MARGIN_MS", 15_000),
            idle_timeout: env_ms("IDLE_TIMEOUT_MS", 60_000),
            max_message_bytes: std::env::var("MAX_MESSAGE_BYTES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(256 * 1024),
            reconnect: RECONNECT,
        }
    }
}

/// Backoff between reconnections: 200 ms doubling to 10 s, with jitter.
pub const RECONNECT: Retry = Retry {
    attempts: 1_000_000,
    min_delay: Duration::from_millis(200),
    max_delay: Duration::from_secs(10),
};

/// Starts a fresh invocation for the stream.
pub trait Handover: Send + Sync {
    /// Invokes the connection manager asynchronously with `run`.
    fn hand_over<'a>(&'a self, run: &'a Run) -> BoxFuture<'a, Result<(), StepError>>;
}

/// Hands over by invoking this function again, asynchronously.
#[derive(Debug, Clone)]
pub struct SelfInvoke {
    /// The Lambda connector.
    pub lambda: Lambda,
    /// This function's name (`AWS_LAMBDA_FUNCTION_NAME`).
    pub function: String,
}

impl Handover for SelfInvoke {
    fn hand_over<'a>(&'a self, run: &'a Run) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async move {
            let payload = serde_json::to_value(run)?;
            self.lambda.invoke_async(&self.function, &payload).await
        })
    }
}

/// Reads the upstream token from an SSM SecureString.
pub async fn token_from_ssm(client: &aws_sdk_ssm::Client, name: &str) -> Result<String, StepError> {
    let out = client
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| {
            StepError::transient(format!(
                "reading the upstream token parameter: {}",
                aws_sdk_ssm::error::DisplayErrorContext(&e)
            ))
        })?;
    out.parameter
        .and_then(|p| p.value)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| StepError::poison_msg(format!("SSM parameter {name} is empty")))
}

/// What one invocation did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Connections opened.
    pub connections: u64,
    /// Messages stored.
    pub stored: u64,
    /// Messages already stored (replays).
    pub duplicates: u64,
    /// Lines discarded as garbage.
    pub discarded: u64,
    /// The generation handed over to, if any.
    pub handed_over_to: Option<u64>,
    /// Why the stream stopped without a handover, if it did.
    pub stopped: Option<String>,
}

type Https = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Holds upstream streams open.
pub struct Manager {
    settings: Settings,
    token: Option<String>,
    db: DynamoDb,
    handover: Arc<dyn Handover>,
    http: Https,
}

enum Ended {
    /// The connection dropped, stalled or failed: reconnect.
    Reconnect(String),
    /// The upstream refused the stream for good (auth, not found): stop.
    Refused(String),
    /// The deadline came: hand over.
    Deadline,
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The sha1 of a message, hex: its key in the ingest table.
pub fn message_key(message: &str) -> String {
    Sha1::digest(message.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Manager {
    /// A manager; `token` is sent as a bearer credential. Fails when the system has no TLS
    /// root certificates.
    pub fn new(
        settings: Settings,
        token: Option<String>,
        db: DynamoDb,
        handover: Arc<dyn Handover>,
    ) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .map_err(|e| format!("no TLS root certificates: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Manager {
            settings,
            token,
            db,
            handover,
            http: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    fn url(&self, stream_id: &str) -> String {
        self.settings.url_template.replace("{streamId}", stream_id)
    }

    async fn store(
        &self,
        stream_id: &str,
        message: &str,
        report: &mut Report,
    ) -> Result<(), StepError> {
        let item = json!({
            "pk": stream_id,
            "sk": message_key(message),
            "discriminator": "message",
            "message": message,
            "receivedAt": now_millis(),
        });
        let condition = pk_condition("pk");
        let mut delays = Retry::default().delays();
        loop {
            match self
                .db
                .put(&self.settings.table, &item, Some(&condition))
                .await
            {
                Ok(Written::Applied) => report.stored += 1,
                Ok(Written::Stale) => report.duplicates += 1,
                Err(e) if e.class() == lambda_stream::ErrorClass::Transient => {
                    match delays.next() {
                        Some(delay) => {
                            tokio::time::sleep(delay).await;
                            continue;
                        }
                        None => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
            return Ok(());
        }
    }

    async fn connection(
        &self,
        run: &Run,
        deadline: &Deadline,
        splitter: &mut Splitter,
        report: &mut Report,
    ) -> Ended {
        let mut request =
            http::Request::get(self.url(&run.stream_id)).header(ACCEPT, "application/x-ndjson");
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match request.body(Empty::new()) {
            Ok(r) => r,
            Err(e) => return Ended::Refused(format!("bad upstream URL: {e}")),
        };
        let left = deadline
            .remaining()
            .map_or(self.settings.idle_timeout, |d| {
                d.min(self.settings.idle_timeout)
            });
        let response = match tokio::time::timeout(left, self.http.request(request)).await {
            Err(_) if deadline.passed() => return Ended::Deadline,
            Err(_) => return Ended::Reconnect("connect timed out".into()),
            Ok(Err(e)) => return Ended::Reconnect(format!("connect failed: {e}")),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
            return Ended::Refused(format!("upstream answered {status}"));
        }
        if !status.is_success() {
            return Ended::Reconnect(format!("upstream answered {status}"));
        }
        tracing::info!(stream = %run.stream_id, generation = run.generation, "connected");
        let mut body = response.into_body();
        loop {
            let wait = match deadline.remaining() {
                Some(left) if left.is_zero() => return Ended::Deadline,
                Some(left) => left.min(self.settings.idle_timeout),
                None => self.settings.idle_timeout,
            };
            match tokio::time::timeout(wait, body.frame()).await {
                Err(_) if deadline.passed() => return Ended::Deadline,
                Err(_) => return Ended::Reconnect(format!("stalled: nothing for {wait:?}")),
                Ok(None) => return Ended::Reconnect("upstream closed the stream".into()),
                Ok(Some(Err(e))) => return Ended::Reconnect(format!("connection dropped: {e}")),
                Ok(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    for message in splitter.push(&data) {
                        if let Err(e) = self.store(&run.stream_id, &message, report).await {
                            // the upstream may replay on reconnect; the key makes that harmless
                            return Ended::Reconnect(format!("storing a message failed: {e}"));
                        }
                    }
                }
            }
        }
    }

    /// Holds the stream until the deadline, then hands over.
    pub async fn run(&self, run: &Run, deadline: Deadline) -> Report {
        let deadline = match deadline.remaining() {
            Some(left) => Deadline::after(left, self.settings.handover_margin),
            None => deadline,
        };
        let mut report = Report::default();
        let mut splitter = Splitter::new(self.settings.max_message_bytes);
        let mut delays = self.settings.reconnect.delays();
        loop {
            if deadline.passed() {
                break;
            }
            report.connections += 1;
            let stored_before = report.stored + report.duplicates;
            let ended = self
                .connection(run, &deadline, &mut splitter, &mut report)
                .await;
            splitter.reset();
            report.discarded = splitter.discarded();
            match ended {
                Ended::Deadline => break,
                Ended::Refused(reason) => {
                    tracing::error!(stream = %run.stream_id, %reason, "upstream refused the stream; stopping");
                    report.stopped = Some(reason);
                    return report;
                }
                Ended::Reconnect(reason) => {
                    tracing::warn!(stream = %run.stream_id, %reason, "reconnecting");
                    if report.stored + report.duplicates > stored_before {
                        // the connection worked for a while: start the backoff over
                        delays = self.settings.reconnect.delays();
                    }
                    let delay = delays.next().unwrap_or(self.settings.reconnect.max_delay);
                    if deadline.remaining().is_some_and(|left| left <= delay) {
                        break;
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
        let next = Run {
            stream_id: run.stream_id.clone(),
            generation: run.generation + 1,
        };
        match self.handover.hand_over(&next).await {
            Ok(()) => report.handed_over_to = Some(next.generation),
            Err(e) => {
                tracing::error!(stream = %run.stream_id, error = %e, "handover failed");
                report.stopped = Some(format!("handover failed: {e}"));
            }
        }
        tracing::info!(stream = %run.stream_id, ?report, "invocation done");
        report
    }

    /// Answers `POST /connections/{streamId}` (an API Gateway HTTP API event): starts the stream
    /// in a fresh asynchronous invocation and answers 202, or 400 naming what is wrong.
    pub async fn start(&self, request: &Value) -> Value {
        let stream_id = request
            .pointer("/pathParameters/streamId")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Err(problem) = validate_stream_id(stream_id) {
            return http_response(400, &json!({"error": problem}));
        }
        let run = Run {
            stream_id: stream_id.to_owned(),
            generation: 0,
        };
        match self.handover.hand_over(&run).await {
            Ok(()) => http_response(202, &json!({"streamId": stream_id, "generation": 0})),
            Err(e) => {
                tracing::error!(error = %e, "could not start the stream");
                http_response(
                    503,
                    &json!({"error": "the stream could not be started now; retry"}),
                )
            }
        }
    }

    /// The manager the deployed function runs: [`Settings::from_env`], the token from the SSM
    /// parameter `UPSTREAM_TOKEN_PARAMETER` names (none when unset), handover by invoking this
    /// function (`AWS_LAMBDA_FUNCTION_NAME`) asynchronously.
    pub async fn from_env() -> Result<Self, lambda_runtime::Error> {
        let token = match std::env::var("UPSTREAM_TOKEN_PARAMETER") {
            Ok(name) if !name.is_empty() => {
                let ssm = aws_sdk_ssm::Client::new(lambda_stream::aws::config().await);
                Some(token_from_ssm(&ssm, &name).await?)
            }
            _ => None,
        };
        let handover = Arc::new(SelfInvoke {
            lambda: Lambda::shared().await,
            function: std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default(),
        });
        Ok(Manager::new(
            Settings::from_env(),
            token,
            DynamoDb::shared().await,
            handover,
        )?)
    }

    /// Dispatches an invocation: an HTTP request starts a stream, a [`Run`] holds one.
    pub async fn handle(&self, event: Value, deadline: Deadline) -> Value {
        if event.get("requestContext").is_some() {
            return self.start(&event).await;
        }
        match serde_json::from_value::<Run>(event) {
            Ok(run) if validate_stream_id(&run.stream_id).is_ok() => {
                json!(self.run(&run, deadline).await)
            }
            Ok(run) => json!({"stopped": format!("invalid streamId `{}`", run.stream_id)}),
            Err(e) => json!({"stopped": format!("not a run: {e}")}),
        }
    }
}

/// Runs the function: the manager built from the environment ([`Manager::from_env`]) as the
/// Lambda runtime's handler, until the runtime stops.
pub async fn run() -> Result<(), lambda_runtime::Error> {
    let manager = Arc::new(Manager::from_env().await?);
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<Value>| {
            let manager = Arc::clone(&manager);
            async move {
                // the manager applies its own handover margin
                let deadline = Deadline::from_context(&event.context, Duration::ZERO);
                Ok::<_, lambda_runtime::Error>(manager.handle(event.payload, deadline).await)
            }
        },
    ))
    .await
}

/// A stream id: 1 to 128 characters of letters, digits, `-`, `_`, `.`.
pub fn validate_stream_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err("streamId must be 1 to 128 characters".into());
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("streamId may hold only letters, digits, '-', '_' and '.'".into());
    }
    Ok(())
}

fn http_response(status: u16, body: &Value) -> Value {
    json!({
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": body.to_string(),
    })
}
