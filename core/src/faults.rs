//! Fault events: raised by poison units, published once the batch is over.
//!
//! Faults are buffered while the batch runs and published after it, so a batch that ends up
//! failing as a whole leaves no premature fault events behind. A fault's identity derives only
//! from the function, the pipeline and its original records (never from the time it is
//! raised), so a fault raised twice is the same fault and is stored once.
//!
//! A fault that cannot be published as it is never keeps its records retrying:
//! - one too large for the publisher is trimmed (marked [`FaultEvent::trimmed`]); with a
//!   [`FaultStore`] the whole fault is stored first and the trimmed one points to it;
//! - one the publisher rejects for good (not a throttle) is stored whole in the [`FaultStore`]
//!   where the fault monitor would have stored it, or, without a store, logged and set aside.
//!
//! Either way the record ends faulted. A fault that fails to publish for a transient reason (or
//! not in time) turns its records to retry: it is raised again on redelivery, with the same id.

use std::fmt::Write as _;
use std::sync::Arc;

use chrono::DateTime;
use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::{Map, Value};
use smallvec::SmallVec;

use crate::error::{DecodeError, StepError};
use crate::event::{ErrorInfo, FAULT_EVENT_TYPE, FaultEvent, FaultRecord, FaultUow, Trimmed};
use crate::pipeline::{Cause, RaisedFault};
use crate::record::SourceRecord;
use crate::uow::Anchor;

/// The largest fault event the default publishers send: EventBridge's 256 KB entry, less room
/// for the entry's source and detail type.
pub const DEFAULT_MAX_FAULT_BYTES: usize = 255 * 1024;

/// Publishes fault events.
///
/// ```
/// use futures::future::BoxFuture;
/// use lambda_stream::FaultEvent;
/// use lambda_stream::faults::{FaultPublisher, PublishError};
///
/// struct Stdout;
/// impl FaultPublisher for Stdout {
///     fn publish<'a>(&'a self, faults: &'a [FaultEvent]) -> BoxFuture<'a, Result<(), PublishError>> {
///         Box::pin(async move {
///             for f in faults {
///                 println!("{}", serde_json::to_string(f).map_err(|e| PublishError::all(e.to_string()))?);
///             }
///             Ok(())
///         })
///     }
/// }
/// ```
pub trait FaultPublisher: Send + Sync {
    /// Publishes `faults`; on error, says which of them failed, and which were rejected for
    /// good.
    fn publish<'a>(&'a self, faults: &'a [FaultEvent]) -> BoxFuture<'a, Result<(), PublishError>>;

    /// The largest fault event this publisher sends, in bytes of JSON; larger ones are trimmed.
    fn max_fault_bytes(&self) -> usize {
        DEFAULT_MAX_FAULT_BYTES
    }
}

impl<P: FaultPublisher + ?Sized> FaultPublisher for Arc<P> {
    fn publish<'a>(&'a self, faults: &'a [FaultEvent]) -> BoxFuture<'a, Result<(), PublishError>> {
        (**self).publish(faults)
    }

    fn max_fault_bytes(&self) -> usize {
        (**self).max_fault_bytes()
    }
}

/// Publishing fault events failed, for all of them or for some.
#[derive(Debug, Clone, thiserror::Error)]
#[error("publishing fault events failed: {message}")]
pub struct PublishError {
    /// Positions (in the slice given to `publish`) of the faults not published; `None`: all.
    pub failed: Option<Vec<usize>>,
    /// Positions of the faults the destination rejected for good (publishing them again cannot
    /// succeed); they are among the failed.
    pub rejected: Vec<usize>,
    /// What went wrong.
    pub message: String,
}

impl PublishError {
    /// None of the faults was published (a transient failure).
    pub fn all(message: impl Into<String>) -> Self {
        PublishError {
            failed: None,
            rejected: Vec::new(),
            message: message.into(),
        }
    }

    /// Only the faults at these positions were not published.
    pub fn some(failed: Vec<usize>, message: impl Into<String>) -> Self {
        PublishError {
            failed: Some(failed),
            rejected: Vec::new(),
            message: message.into(),
        }
    }

    /// Of the failed faults, these positions were rejected for good, builder style.
    pub fn with_rejected(mut self, rejected: Vec<usize>) -> Self {
        self.rejected = rejected;
        self
    }

    /// Whether the fault at `i` was published.
    pub fn published(&self, i: usize) -> bool {
        self.failed.as_ref().is_some_and(|f| !f.contains(&i)) && !self.rejected.contains(&i)
    }
}

/// Where whole faults are kept when they cannot be published as they are: the fault monitor's
/// bucket, under the key the monitor itself would use ([`storage_key`]). Implemented by
/// [`connectors::S3`](crate::connectors::S3).
pub trait FaultStore: Send + Sync {
    /// Stores a fault's JSON under `key`.
    fn store<'a>(&'a self, key: &'a str, json: Vec<u8>) -> BoxFuture<'a, Result<(), StepError>>;
}

/// Where faults are stored in the fault bucket.
pub const FAULTS_PREFIX: &str = "faults/";

fn clean(part: &str) -> String {
    let cleaned: String = part
        .chars()
        .take(64)
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
fn fnv(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A fault's id in the store: `<timestamp>-<function>-<pipeline>-<hash of the fault id>`. Keys
/// sort by time and say where the fault came from; the same fault always gets the same id.
///
/// ```
/// # use lambda_stream::faults::{storage_id, storage_key};
/// # let fault: lambda_stream::FaultEvent = serde_json::from_value(serde_json::json!({
/// #   "id": "fault:listener:p1:r1:0", "type": "fault", "timestamp": 1700000000000_i64,
/// #   "tags": {"functionname": "listener", "pipeline": "p1"},
/// #   "err": {"name": "PoisonError", "message": "bad", "stack": "bad"}, "uow": {"record": {}}})).unwrap();
/// let id = storage_id(&fault);
/// assert!(id.starts_with("1700000000000-listener-p1-"));
/// assert!(storage_key(&id).unwrap().starts_with("faults/2023/11/14/22/1700000000000-listener-p1-"));
/// ```
pub fn storage_id(fault: &FaultEvent) -> String {
    format!(
        "{:013}-{}-{}-{:016x}",
        fault.timestamp.max(0),
        clean(fault.tag("functionname").unwrap_or("unknown")),
        clean(fault.tag("pipeline").unwrap_or("unknown")),
        fnv(fault.id.bytes())
    )
}

/// The object key of a stored fault's id (`faults/YYYY/MM/DD/HH/<id>.json`); `None` when the
/// id does not start with a timestamp.
pub fn storage_key(id: &str) -> Option<String> {
    let millis: i64 = id.split('-').next()?.parse().ok()?;
    let at = DateTime::from_timestamp_millis(millis)?;
    Some(format!(
        "{FAULTS_PREFIX}{}/{id}.json",
        at.format("%Y/%m/%d/%H")
    ))
}

/// A fault waiting for the end of the batch.
#[derive(Debug)]
pub(crate) struct PendingFault {
    /// Batch positions of its records, ascending.
    pub(crate) positions: SmallVec<[u32; 1]>,
    /// Its units (none for a record that did not decode).
    origins: Anchor,
    pipeline: Arc<str>,
    cause: Cause,
}

impl PendingFault {
    /// The name of the error that raised it.
    pub(crate) fn error_name(&self) -> &str {
        &self.cause.name
    }

    /// A record that did not decode.
    pub(crate) fn decode(position: u32, source: &str, err: &DecodeError) -> Self {
        PendingFault {
            positions: SmallVec::from_elem(position, 1),
            origins: Anchor::new(),
            pipeline: Arc::from(source),
            cause: Cause {
                name: err.name.clone(),
                message: err.to_string(),
                stack: err.to_string(),
            },
        }
    }

    /// A fault a pipeline raised.
    pub(crate) fn raised(fault: RaisedFault, pipeline: &Arc<str>) -> Self {
        let mut positions: SmallVec<[u32; 1]> = fault.anchor.iter().map(|o| o.index).collect();
        positions.sort_unstable();
        positions.dedup();
        PendingFault {
            positions,
            origins: fault.anchor,
            pipeline: Arc::clone(pipeline),
            cause: fault.cause,
        }
    }

    /// The fault event: its id from the function, the pipeline and the records (and, for a
    /// record carrying several units, the units' event ids); its time from the events.
    pub(crate) fn to_event(
        &self,
        records: &[Arc<SourceRecord>],
        function_name: &str,
        region: Option<&str>,
    ) -> FaultEvent {
        let record = |p: u32| records.get(p as usize);
        let name = |p: u32| {
            record(p)
                .and_then(|r| r.name())
                .map(str::to_owned)
                .unwrap_or_else(|| p.to_string())
        };
        let first = self.positions.first().copied().unwrap_or(0);
        let mut identity = String::new();
        if self.origins.is_empty() {
            for p in &self.positions {
                let _ = writeln!(identity, "{}", name(*p));
            }
        } else {
            for o in &self.origins {
                let _ = writeln!(identity, "{}\t{}", name(o.index), o.event.id);
            }
        }
        let more = match self.positions.len() {
            0 | 1 => String::new(),
            n => format!("+{}", n - 1),
        };
        let id = format!(
            "fault:{function_name}:{}:{}{more}:{:016x}",
            self.pipeline,
            name(first),
            fnv(identity.bytes())
        );
        let timestamp = self
            .origins
            .iter()
            .map(|o| o.event.timestamp)
            .filter(|t| *t > 0)
            .min()
            .or_else(|| {
                self.positions
                    .iter()
                    .filter_map(|p| record(*p)?.arrival_millis())
                    .min()
            })
            .unwrap_or(0);
        let json = |p: &u32| record(*p).map(|r| r.to_json()).unwrap_or(Value::Null);
        let uow = if self.positions.len() == 1 {
            FaultUow::Record {
                record: json(&self.positions[0]),
            }
        } else {
            FaultUow::Batch {
                batch: self
                    .positions
                    .iter()
                    .map(|p| FaultRecord { record: json(p) })
                    .collect(),
            }
        };
        let mut tags = Map::new();
        tags.insert("functionname".into(), Value::from(function_name));
        tags.insert("pipeline".into(), Value::from(&*self.pipeline));
        if let Some(region) = region {
            tags.insert("region".into(), Value::from(region));
        }
        FaultEvent {
            id,
            event_type: FAULT_EVENT_TYPE.into(),
            timestamp,
            partition_key: self
                .origins
                .first()
                .and_then(|o| o.partition_key())
                .map(str::to_owned),
            tags,
            err: ErrorInfo {
                name: self.cause.name.clone(),
                message: self.cause.message.clone(),
                stack: self.cause.stack.clone(),
            },
            uow,
            trimmed: None,
        }
    }
}

/// Counts the bytes of a value's JSON without keeping them.
fn json_len(value: &impl Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

/// The most of an id (an event's, a correlation's, an idempotency key) a log line quotes, in
/// bytes: ids are the sender's, untrusted.
pub(crate) const ID_BYTES: usize = 200;

/// An id as a log line quotes it: at most [`ID_BYTES`].
pub(crate) fn quoted(id: &str) -> &str {
    truncate(id, ID_BYTES)
}

/// At most `max` bytes of `text` (on a character boundary).
pub(crate) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `value` with every string longer than `cap` bytes cut to `cap`, saying how much was cut.
fn trim_strings(value: &Value, cap: usize) -> Value {
    match value {
        Value::String(s) if s.len() > cap => {
            let kept = truncate(s, cap);
            Value::String(format!("{kept}...[{} bytes trimmed]", s.len() - kept.len()))
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| trim_strings(v, cap)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), trim_strings(v, cap)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn trim_uow(uow: &FaultUow, cap: Option<usize>) -> FaultUow {
    let trim = |v: &Value| match cap {
        Some(cap) => trim_strings(v, cap),
        None => Value::Null,
    };
    match uow {
        FaultUow::Record { record } => FaultUow::Record {
            record: trim(record),
        },
        FaultUow::Batch { batch } => FaultUow::Batch {
            batch: batch
                .iter()
                .map(|r| FaultRecord {
                    record: trim(&r.record),
                })
                .collect(),
        },
    }
}

/// A fault made to fit a publisher: the event to publish and, when it had to be trimmed, the
/// whole fault's JSON (to store).
pub(crate) struct Fitted {
    pub(crate) event: FaultEvent,
    pub(crate) whole: Option<Vec<u8>>,
}

/// Fits `fault` within `limit` bytes of JSON: long strings in its records are cut, shorter and
/// shorter, until it fits (at worst the records are left out); the result says it was trimmed.
pub(crate) fn fit(fault: FaultEvent, limit: usize) -> Fitted {
    let size = json_len(&fault);
    if size <= limit {
        return Fitted {
            event: fault,
            whole: None,
        };
    }
    let whole = serde_json::to_vec(&fault).ok();
    let mut slim = fault;
    slim.err.message = truncate(&slim.err.message, 1024).to_owned();
    slim.err.stack = truncate(&slim.err.stack, 2048).to_owned();
    if let Some(pk) = &mut slim.partition_key {
        let keep = truncate(pk, 256).len();
        pk.truncate(keep);
    }
    slim.trimmed = Some(Trimmed {
        original_bytes: size,
        stored: None,
    });
    let original = std::mem::replace(
        &mut slim.uow,
        FaultUow::Record {
            record: Value::Null,
        },
    );
    for cap in [
        Some(16 * 1024),
        Some(4096),
        Some(1024),
        Some(256),
        Some(64),
        None,
    ] {
        slim.uow = trim_uow(&original, cap);
        if json_len(&slim) <= limit {
            break;
        }
    }
    tracing::warn!(
        fault = %slim.id,
        original_bytes = size,
        limit,
        "fault too large to publish whole; its records are trimmed"
    );
    Fitted { event: slim, whole }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fault_with(record: Value) -> FaultEvent {
        serde_json::from_value(json!({
            "id": "fault:f:p:r1:0", "type": "fault", "timestamp": 1,
            "tags": {"functionname": "f", "pipeline": "p"},
            "err": {"name": "PoisonError", "message": "bad", "stack": "bad"},
            "uow": {"record": record}
        }))
        .unwrap()
    }

    #[test]
    fn a_fault_that_fits_is_left_alone() {
        let f = fault_with(json!({"data": "small"}));
        let fitted = fit(f.clone(), 1024);
        assert_eq!(fitted.event, f);
        assert!(fitted.whole.is_none());
    }

    #[test]
    fn an_oversize_fault_is_trimmed_to_fit_and_says_so() {
        let big = "x".repeat(300 * 1024);
        let f = fault_with(json!({"kinesis": {"data": big, "sequenceNumber": "1"}}));
        let fitted = fit(f, DEFAULT_MAX_FAULT_BYTES);
        assert!(json_len(&fitted.event) <= DEFAULT_MAX_FAULT_BYTES);
        let trimmed = fitted.event.trimmed.as_ref().unwrap();
        assert!(trimmed.original_bytes > 300 * 1024);
        let record = fitted.event.uow.records()[0];
        assert_eq!(record["kinesis"]["sequenceNumber"], "1");
        assert!(
            record["kinesis"]["data"]
                .as_str()
                .unwrap()
                .ends_with("bytes trimmed]")
        );
        let whole: FaultEvent = serde_json::from_slice(&fitted.whole.unwrap()).unwrap();
        assert_eq!(
            whole.uow.records()[0]["kinesis"]["data"]
                .as_str()
                .unwrap()
                .len(),
            300 * 1024
        );
    }

    #[test]
    fn records_too_large_even_trimmed_are_left_out() {
        let many: Vec<Value> = (0..5000).map(|i| json!({ "n": i })).collect();
        let f = fault_with(json!({ "items": many }));
        let fitted = fit(f, 2048);
        assert!(json_len(&fitted.event) <= 2048);
        assert_eq!(fitted.event.uow.records()[0], &Value::Null);
    }
}
