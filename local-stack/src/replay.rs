//! Replay: a function run on a captured event, as Lambda would run it.
//!
//! The function is found in the template (by logical id, function name or binary) and its own
//! binary is built and run behind a local Runtime API, with the template's environment
//! (resource names resolved for the stack name given), so any function of the template can be
//! replayed, a user's own included. With `--dry-run` its AWS endpoint is [`crate::dry_run`]'s
//! recording endpoint instead of the emulator: every write lands in memory and is printed as a
//! JSON line, then one summary line follows, with the outcomes the handler itself logged.

use std::path::Path;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};

use crate::Error;
use crate::dry_run::{Recorder, Write};
use crate::invoke::Invoke;
use crate::provision::names_only;
use crate::runtime::LocalFunction;
use crate::spec::FunctionSpec;
use crate::template::Template;

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

/// What the handler logs when a batch is done (`records`, `done`, `faulted`, `retry`,
/// `elapsed_ms`), found in its log.
fn batch_processed(log: &str) -> Option<Value> {
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v["fields"].clone())
        .find(|f| f["message"] == "batch processed")
}

/// Runs `spec`'s own binary (built from the workspace at `root`) on `event`, against the
/// emulator (`AWS_ENDPOINT_URL`) or, `dry_run`, against a recording endpoint; its log goes to
/// `log_dir`.
pub async fn run(
    root: &Path,
    spec: &FunctionSpec,
    event: &[u8],
    dry_run: bool,
    log_dir: &Path,
) -> Result<(Vec<Write>, Summary), Error> {
    let exes = crate::binaries::build(root, &[&spec.binary], false).await?;
    let exe = exes
        .get(&spec.binary)
        .ok_or_else(|| Error::Other(format!("no binary for {}", spec.name)))?;
    let mut spec = spec.clone();
    // the handler's own summary is what replay reports: its log must say it
    spec.environment.insert("RUST_LOG".into(), "info".into());
    let recorder = dry_run.then(Recorder::default);
    let _endpoint = match &recorder {
        Some(r) => {
            let server = crate::dry_run::serve(r.clone()).await?;
            let url = format!("http://{}", server.addr);
            for (k, v) in [
                ("AWS_ENDPOINT_URL", url.as_str()),
                ("AWS_ENDPOINT_URL_LAMBDA", url.as_str()),
                ("AWS_ACCESS_KEY_ID", "dry-run"),
                ("AWS_SECRET_ACCESS_KEY", "dry-run"),
                ("AWS_REGION", "us-east-1"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
                ("AWS_CONFIG_FILE", "/dev/null"),
                ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
            ] {
                spec.environment.insert(k.into(), v.into());
            }
            Some(server)
        }
        None => None,
    };
    std::fs::create_dir_all(log_dir)?;
    let log = log_dir.join(format!("{}.log", spec.name));
    let _ = std::fs::remove_file(&log);
    let function = LocalFunction::start(spec.clone(), exe, log_dir, 1).await?;
    let answer = function.invoke(Bytes::copy_from_slice(event)).await;
    function.stop().await;
    let answer = answer.map_err(|e| Error::Other(format!("{} failed: {e}", spec.name)))?;
    let response: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let (records, outcomes, elapsed_ms) =
        match (response.get("statusCode"), batch_processed(&logged)) {
            // an HTTP function answers API Gateway
            (Some(status), _) => {
                let body = response["body"].as_str().unwrap_or_default();
                let body = serde_json::from_str::<Value>(body)
                    .unwrap_or_else(|_| Value::String(body.to_owned()));
                (1, json!({"status": status, "body": body}), 0)
            }
            (None, Some(f)) => (
                f["records"].as_u64().unwrap_or(0) as usize,
                json!({"done": f["done"], "faulted": f["faulted"], "retry": f["retry"]}),
                f["elapsed_ms"].as_u64().unwrap_or(0) as u128,
            ),
            (None, None) => (0, json!({"response": response}), 0),
        };
    let writes = recorder.map(|r| r.take()).unwrap_or_default();
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
