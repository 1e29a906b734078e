//! fault-monitor: fault events (an SQS queue fed by the bus rule on `type: fault`) → S3, and the
//! library behind the `faults` CLI.
//!
//! Each fault is stored at `faults/YYYY/MM/DD/HH/<id>.json`, where the id is
//! `<timestamp ms>-<functionname>-<pipeline>-<hash of the fault id>` (the layout of
//! [`lambda_stream::faults::storage_key`]): keys sort by the faulted event's time and say where
//! the fault came from, and the same fault raised or delivered twice lands on the same key. A
//! fault too large to publish whole arrives trimmed, naming the key where the function that
//! raised it stored it whole: that one is not stored again.
//!
//! The monitor never publishes fault events of its own (a broken monitor would feed itself):
//! what it cannot store is retried and, after the queue's receive limit, set aside in its
//! dead-letter queue.

pub mod cli;

use futures::future::BoxFuture;
use lambda_stream::connectors::{Lambda, S3};
use lambda_stream::faults::{FaultPublisher, PublishError};
use lambda_stream::sinks::{PutObject, S3Object};
use lambda_stream::{
    ConfigError, FaultEvent, Handler, Pipeline, Settings, StepError, UnitOfWork, faults,
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

/// The fault's id in the store: `<timestamp>-<function>-<pipeline>-<hash>` (see
/// [`lambda_stream::faults::storage_id`]).
pub fn fault_id(fault: &FaultEvent) -> String {
    faults::storage_id(fault)
}

/// The object key of a fault id; `None` when the id does not start with a timestamp.
pub fn key_of(id: &str) -> Option<String> {
    faults::storage_key(id)
}

fn parse(uow: &UnitOfWork) -> Result<FaultEvent, StepError> {
    serde_json::from_value(serde_json::to_value(uow.event())?)
        .map_err(|e| StepError::poison_msg(format!("not a fault event: {e}")))
}

/// A trimmed fault whose whole self the raising function already stored needs no storing.
fn stored_whole(uow: &UnitOfWork) -> bool {
    uow.event()
        .entity("trimmed")
        .and_then(|t| t.get("stored"))
        .is_some_and(|s| s.is_string())
}

fn to_object(uow: UnitOfWork) -> Result<UnitOfWork<S3Object>, StepError> {
    let fault = parse(&uow)?;
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
pub fn handler(settings: &Settings, bucket: S3) -> Result<Handler, ConfigError> {
    Handler::builder(DeadLetterOnly)
        .settings(settings)
        .pipeline(
            Pipeline::new("store-faults")
                .on_event_type("fault")
                .filter(|uow: &UnitOfWork| !stored_whole(uow))
                .map(to_object)
                .pipe(PutObject(bucket)),
        )
        .build()
}

/// The handler as deployed: `BUCKET_NAME`.
pub async fn from_env() -> Result<Handler, ConfigError> {
    let settings = Settings::from_env();
    handler(&settings, S3::from_settings(&settings).await)
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
    Ok(Resubmission {
        function: function.to_owned(),
        payload: original_event(fault)?,
    })
}

/// The Lambda event of the fault's original records.
fn original_event(fault: &FaultEvent) -> Result<Value, String> {
    let records: Vec<Value> = fault.uow.records().into_iter().cloned().collect();
    if records.is_empty() || records.iter().any(Value::is_null) {
        return Err(format!(
            "fault {} does not carry its original records",
            fault.id
        ));
    }
    Ok(match records.as_slice() {
        [single] if single.get("detail-type").is_some() => single.clone(),
        _ => json!({ "Records": records }),
    })
}

/// A fault's records opened: the events they carry, as the function that raised it saw them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Opened {
    /// The events, claim checks redeemed and encrypted fields decrypted.
    pub events: Vec<Value>,
    /// Why a record could not be opened (a claim check gone, a data key this caller may not
    /// use), one line each.
    pub unopened: Vec<String>,
}

/// Collects what could not be opened instead of publishing it.
#[derive(Debug, Default)]
struct Unopened(std::sync::Mutex<Vec<String>>);

impl FaultPublisher for Unopened {
    fn publish<'a>(&'a self, faults: &'a [FaultEvent]) -> BoxFuture<'a, Result<(), PublishError>> {
        let mut out = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        out.extend(
            faults
                .iter()
                .map(|f| format!("{}: {}", f.err.name, f.err.message)),
        );
        Box::pin(async { Ok(()) })
    }
}

/// Opens `fault`'s records with the caller's own rights, through the same sources the function
/// used: claim checks are redeemed from S3 and `eem` fields decrypted with KMS (`settings`
/// give the region and the data keys' age). What is printed is the caller's to see; nothing
/// decrypted is logged.
pub async fn open(fault: &FaultEvent, settings: &Settings) -> Result<Opened, String> {
    use lambda_stream::sources::{self, Source};
    let payload = original_event(fault)?;
    let source = payload
        .get("Records")
        .and_then(|r| r.get(0))
        .and_then(|r| r.get("eventSource").or_else(|| r.get("EventSource")))
        .and_then(Value::as_str)
        .unwrap_or(if payload.get("detail-type").is_some() {
            "aws:events"
        } else {
            ""
        })
        .to_owned();
    let unopened = std::sync::Arc::new(Unopened::default());
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&events);
    let handler = Handler::builder(std::sync::Arc::clone(&unopened))
        .settings(settings)
        .function_name("faults")
        .pipeline(Pipeline::new("open").map(move |u: UnitOfWork| {
            if let Ok(v) = serde_json::to_value(u.event()) {
                seen.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(v);
            }
            Ok(u)
        }))
        .build()
        .map_err(|e| e.to_string())?;
    let invocation = lambda_stream::Invocation {
        deadline: lambda_stream::deadline::Deadline::none(),
        function_name: "faults".into(),
    };
    fn parsed<S: Source>(
        payload: Value,
        options: &sources::DecodeOptions,
    ) -> Result<sources::Decoded, String> {
        let event: S::Event = serde_json::from_value(payload).map_err(|e| e.to_string())?;
        Ok(S::decode(event, options))
    }
    let options = sources::DecodeOptions::default();
    let decoded = match source.as_str() {
        "aws:kinesis" => parsed::<sources::Kinesis>(payload, &options)?,
        "aws:sqs" => parsed::<sources::Sqs>(payload, &options)?,
        "aws:sns" => parsed::<sources::Sns>(payload, &options)?,
        "aws:dynamodb" => parsed::<sources::DynamoDb>(payload, &options)?,
        "aws:events" => parsed::<sources::EventBridge>(payload, &options)?,
        other => return Err(format!("records of an unknown source {other:?}")),
    };
    let outcomes = handler.process(decoded, &invocation).await;
    let mut unopened = std::mem::take(
        &mut *unopened
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let retried = outcomes
        .outcomes()
        .iter()
        .filter(|o| **o == lambda_stream::Outcome::Retry)
        .count();
    if retried > 0 {
        unopened.push(format!(
            "{retried} record(s) not opened: a claim check or a data key could not be had"
        ));
    }
    let events = std::mem::take(
        &mut *events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    Ok(Opened { events, unopened })
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
