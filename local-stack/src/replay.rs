//! Replay: a function's handler run in-process on a captured event.
//!
//! The function is found in the template (by logical id, function name or binary), its
//! environment is the template's (resource names resolved for the stack name given), and its
//! handler is the one its `main.rs` runs. With `--dry-run` the AWS configuration is
//! [`crate::dry_run`]'s: every write lands in memory and is printed as a JSON line, then one
//! summary line follows.

use std::path::Path;
use std::time::Instant;

use lambda_stream::Handler;
use serde::Serialize;
use serde_json::{Value, json};

use crate::Error;
use crate::dry_run::{Recorder, Write};
use crate::provision::names_only;
use crate::spec::FunctionSpec;
use crate::template::Template;

/// The functions whose handlers this binary links, by cargo binary name.
pub const REPLAYABLE: &[&str] = &[
    "command-intake",
    "event-processor",
    "trigger",
    "listener",
    "fault-monitor",
];

/// The function `name` names in `template`, resolved for `stack`.
pub fn find(template: &Path, stack: &str, region: &str, name: &str) -> Result<FunctionSpec, Error> {
    let template = Template::load(template)?;
    let names = names_only(&template, stack, region)?;
    let specs = FunctionSpec::all(&template, &names)?;
    let known: Vec<String> = specs.iter().map(|s| s.binary.clone()).collect();
    specs
        .into_iter()
        .find(|s| s.logical_id == name || s.name == name || s.binary == name)
        .ok_or_else(|| {
            Error::Other(format!(
                "no function `{name}` in the template; its functions are: {}",
                known.join(", ")
            ))
        })
}

/// The outcome of a replay.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The function's name.
    pub function: String,
    /// Records in the event (1 for an HTTP request).
    pub records: usize,
    /// Outcomes: `done`, `faulted`, `retry` counts, or the HTTP status.
    pub outcomes: Value,
    /// Writes captured (dry run only).
    pub writes: usize,
    /// Wall time of the handler, in milliseconds.
    pub elapsed_ms: u128,
}

/// Runs `spec`'s handler on `event` (the environment must already be set, see
/// [`environment`]); with `recorder`, the AWS configuration must be the dry run's.
pub async fn run(
    spec: &FunctionSpec,
    event: &[u8],
    recorder: Option<&Recorder>,
) -> Result<(Vec<Write>, Summary), Error> {
    let ctx = lambda_stream::testing::context(spec.timeout);
    let started = Instant::now();
    let (records, outcomes) = match spec.binary.as_str() {
        "command-intake" => {
            let text = std::str::from_utf8(event)
                .map_err(|e| Error::Other(format!("the event is not UTF-8: {e}")))?;
            let request = lambda_http::request::from_str(text).map_err(|e| {
                Error::Other(format!("not an API Gateway or ALB request event: {e}"))
            })?;
            let intake = command_intake::Intake::from_env().await;
            let response = intake.handle(request).await;
            let status = response.status().as_u16();
            let body = String::from_utf8_lossy(response.body().as_ref()).into_owned();
            (
                1,
                json!({"status": status, "body": serde_json::from_str::<Value>(&body).unwrap_or(Value::String(body))}),
            )
        }
        binary => {
            let handler = handler_for(binary).await?;
            let decoded = handler.decode_json(event).map_err(Error::Other)?;
            let outcomes = handler.process(decoded, &handler.invocation(&ctx)).await;
            let s = outcomes.summary();
            (
                s.records,
                json!({"done": s.done, "faulted": s.faulted, "retry": s.retry}),
            )
        }
    };
    let elapsed_ms = started.elapsed().as_millis();
    let writes = recorder.map(Recorder::take).unwrap_or_default();
    let count = writes.len();
    Ok((
        writes,
        Summary {
            function: spec.name.clone(),
            records,
            outcomes,
            writes: count,
            elapsed_ms,
        },
    ))
}

async fn handler_for(binary: &str) -> Result<Handler, Error> {
    let built = match binary {
        "event-processor" => event_processor::from_env().await,
        "trigger" => trigger::from_env().await,
        "listener" => listener::from_env().await,
        "fault-monitor" => fault_monitor::from_env().await,
        other => {
            return Err(Error::Other(format!(
                "`{other}` cannot be replayed in-process: replay links {}; a function that holds a connection (connection-manager) is run with `up` instead",
                REPLAYABLE.join(", ")
            )));
        }
    };
    built.map_err(|e| Error::Other(e.to_string()))
}

/// The environment `spec` runs with, as `(name, value)` pairs, for the caller to set before
/// any thread starts.
pub fn environment(spec: &FunctionSpec) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = spec.environment.clone().into_iter().collect();
    env.push(("AWS_LAMBDA_FUNCTION_NAME".into(), spec.name.clone()));
    env.push((
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(),
        spec.memory.to_string(),
    ));
    // logs go to stderr, so stdout carries only the JSON lines
    env.push((
        "RUST_LOG".into(),
        std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
    ));
    env
}
