//! fault-monitor: fault events (an SQS queue fed by the bus rule on `type: fault`) → S3, and the
//! library behind the `faults` CLI.
//!
//! Each fault is stored at `faults/YYYY/MM/DD/HH/<id>.json`, where the id is
//! `<timestamp ms>-<functionname>-<pipeline>-<hash of the fault id>`: keys sort by time and say
//! where the fault came from, and the same fault delivered twice lands on the same key.
//!
//! The monitor never publishes fault events of its own (a broken monitor would feed itself):
//! what it cannot store is retried and, after the queue's receive limit, set aside in its
//! dead-letter queue.

pub mod cli;

use chrono::DateTime;
use futures::future::BoxFuture;
use lambda_stream::connectors::{Lambda, S3};
use lambda_stream::sinks::S3Object;
use lambda_stream::{
    ConfigError, FaultEvent, FaultPublisher, Handler, Pipeline, PublishError, StepError, UnitOfWork,
};
use serde::Serialize;
use serde_json::{Value, json};

/// Where faults are stored in the bucket.
pub const PREFIX: &str = "faults/";

/// Refuses to publish: the monitor's own poison goes to its dead-letter queue instead.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetterOnly;

impl FaultPublisher for DeadLetterOnly {
    fn publish<'a>(&'a self, _: &'a [FaultEvent]) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async {
            Err(PublishError::all(
                "the fault monitor leaves its poison to its dead-letter queue",
            ))
        })
    }
}

fn clean(part: &str) -> String {
    let cleaned: String = part
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "unknown".into()
    } else {
        cleaned
    }
}

/// FNV-1a: a stable short hash (std's hasher may change between Rust versions).
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The fault's id in the store: `<timestamp>-<function>-<pipeline>-<hash>`.
pub fn fault_id(fault: &FaultEvent) -> String {
    format!(
        "{:013}-{}-{}-{:016x}",
        fault.timestamp.max(0),
        clean(fault.tag("functionname").unwrap_or("unknown")),
        clean(fault.tag("pipeline").unwrap_or("unknown")),
        fnv(&fault.id)
    )
}

/// The object key of a fault id; `None` when the id does not start with a timestamp.
pub fn key_of(id: &str) -> Option<String> {
    let millis: i64 = id.split('-').next()?.parse().ok()?;
    let at = DateTime::from_timestamp_millis(millis)?;
    Some(format!("{PREFIX}{}/{id}.json", at.format("%Y/%m/%d/%H")))
}

fn to_object(uow: UnitOfWork) -> Result<UnitOfWork<S3Object>, StepError> {
    let fault: FaultEvent = serde_json::from_value(serde_json::to_value(uow.event())?)
        .map_err(|e| StepError::poison_msg(format!("not a fault event: {e}")))?;
    let id = fault_id(&fault);
    let key = key_of(&id).ok_or_else(|| {
        StepError::poison_msg(format!("fault {} has no usable timestamp", fault.id))
    })?;
    let body = serde_json::to_vec_pretty(&fault)?;
    Ok(uow.with(S3Object {
        key,
        body,
        content_type: "application/json".into(),
    }))
}

/// The handler: stores each fault event delivered to the queue.
pub fn handler(bucket: S3) -> Result<Handler, ConfigError> {
    Handler::builder(DeadLetterOnly)
        .pipeline(
            Pipeline::new("store-faults")
                .on_event_type("fault")
                .map(to_object)
                .put_object_to_s3(bucket),
        )
        .build()
}

/// The handler as deployed: `BUCKET_NAME`.
pub async fn from_env() -> Result<Handler, ConfigError> {
    handler(S3::from_env().await)
}

/// A line of `faults list`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The fault's id in the store.
    pub id: String,
    /// The function that raised it.
    pub function: String,
    /// The pipeline that raised it.
    pub pipeline: String,
    /// The error's name.
    pub error: String,
    /// The error's message.
    pub message: String,
    /// When (epoch ms).
    pub timestamp: i64,
}

/// What a resubmission sends.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resubmission {
    /// The function to invoke.
    pub function: String,
    /// The Lambda event carrying the original record(s).
    pub payload: Value,
}

/// The Lambda event that resubmits a fault's original records to the function that raised it:
/// `{"Records": [...]}` for stream and queue sources, the event itself for EventBridge.
pub fn resubmission(fault: &FaultEvent) -> Result<Resubmission, String> {
    let function = fault
        .tag("functionname")
        .filter(|f| !f.is_empty() && *f != "unknown")
        .ok_or_else(|| format!("fault {} does not name its function", fault.id))?;
    let records: Vec<Value> = fault.uow.records().into_iter().cloned().collect();
    if records.is_empty() || records.iter().any(Value::is_null) {
        return Err(format!(
            "fault {} does not carry its original records",
            fault.id
        ));
    }
    let payload = match records.as_slice() {
        [single] if single.get("detail-type").is_some() => single.clone(),
        _ => json!({ "Records": records }),
    };
    Ok(Resubmission {
        function: function.to_owned(),
        payload,
    })
}

/// The stored faults.
#[derive(Debug, Clone)]
pub struct FaultStore {
    s3: S3,
}

impl FaultStore {
    /// Over `s3`.
    pub fn new(s3: S3) -> Self {
        FaultStore { s3 }
    }

    /// The newest `limit` faults, newest first, optionally of one function.
    pub async fn list(
        &self,
        function: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Summary>, StepError> {
        let mut keys = self.s3.list(PREFIX).await?;
        keys.reverse();
        let mut out = Vec::new();
        for key in keys {
            if out.len() >= limit {
                break;
            }
            let id = key
                .rsplit('/')
                .next()
                .unwrap_or(&key)
                .trim_end_matches(".json")
                .to_owned();
            let Some(fault) = self.show(&id).await? else {
                continue;
            };
            let f = fault.tag("functionname").unwrap_or("unknown").to_owned();
            if function.is_some_and(|wanted| wanted != f) {
                continue;
            }
            out.push(Summary {
                id,
                function: f,
                pipeline: fault.tag("pipeline").unwrap_or("unknown").to_owned(),
                error: fault.err.name.clone(),
                message: fault.err.message.clone(),
                timestamp: fault.timestamp,
            });
        }
        Ok(out)
    }

    /// One fault by id.
    pub async fn show(&self, id: &str) -> Result<Option<FaultEvent>, StepError> {
        let Some(key) = key_of(id) else {
            return Ok(None);
        };
        match self.s3.get(&key).await? {
            Some(body) => Ok(Some(serde_json::from_slice(&body)?)),
            None => Ok(None),
        }
    }

    /// Re-invokes the function that raised fault `id` with its original records and returns
    /// the function's response; with `dry_run`, only says what it would send.
    pub async fn resubmit(
        &self,
        lambda: &Lambda,
        id: &str,
        dry_run: bool,
    ) -> Result<Value, String> {
        let fault = self
            .show(id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no fault {id}"))?;
        let r = resubmission(&fault)?;
        if dry_run {
            return Ok(json!({"function": r.function, "payload": r.payload}));
        }
        lambda
            .invoke(&r.function, &r.payload)
            .await
            .map_err(|e| e.to_string())
    }
}
