//! Fault events: built from poison units after the batch, published through a [`FaultPublisher`].
//!
//! Faults are buffered while the batch runs and published once it is done, so a batch that ends
//! up failing as a whole does not leave premature fault events behind. If publishing fails, the
//! faulted records become retry: nothing is lost.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use serde_json::{Map, Value};
use smallvec::SmallVec;

use crate::event::{ErrorInfo, FAULT_EVENT_TYPE, FaultEvent, FaultRecord, FaultUow};
use crate::pipeline::Cause;
use crate::sources::SourceRecord;

/// Publishes fault events (the EventBridge publisher arrives with the connectors).
///
/// ```
/// use futures::future::BoxFuture;
/// use lambda_stream::{FaultEvent, FaultPublisher, PublishError};
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
    /// Publishes `faults`; on error, says which of them failed.
    fn publish<'a>(&'a self, faults: &'a [FaultEvent]) -> BoxFuture<'a, Result<(), PublishError>>;
}

impl<P: FaultPublisher + ?Sized> FaultPublisher for Arc<P> {
    fn publish<'a>(&'a self, faults: &'a [FaultEvent]) -> BoxFuture<'a, Result<(), PublishError>> {
        (**self).publish(faults)
    }
}

/// Publishing fault events failed, for all of them or for some.
#[derive(Debug, Clone, thiserror::Error)]
#[error("publishing fault events failed: {message}")]
pub struct PublishError {
    /// Positions (in the slice given to `publish`) of the faults not published; `None`: all.
    pub failed: Option<Vec<usize>>,
    /// What went wrong.
    pub message: String,
}

impl PublishError {
    /// None of the faults was published.
    pub fn all(message: impl Into<String>) -> Self {
        PublishError {
            failed: None,
            message: message.into(),
        }
    }

    /// Only the faults at these positions were not published.
    pub fn some(failed: Vec<usize>, message: impl Into<String>) -> Self {
        PublishError {
            failed: Some(failed),
            message: message.into(),
        }
    }
}

/// A fault waiting for the end of the batch.
#[derive(Debug)]
pub(crate) struct PendingFault {
    pub(crate) positions: SmallVec<[u32; 1]>,
    pub(crate) pipeline: Arc<str>,
    pub(crate) cause: Cause,
    pub(crate) partition_key: Option<String>,
}

pub(crate) fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl PendingFault {
    pub(crate) fn to_event(
        &self,
        records: &[Arc<SourceRecord>],
        function_name: &str,
        now: i64,
    ) -> FaultEvent {
        let record = |p: &u32| records.get(*p as usize);
        let first = self.positions.first().and_then(record);
        let first_name = first
            .and_then(|r| r.name())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{}", self.positions.first().copied().unwrap_or(0)));
        let id = match self.positions.len() {
            0 | 1 => format!("fault:{function_name}:{}:{first_name}", self.pipeline),
            n => format!(
                "fault:{function_name}:{}:{first_name}+{}",
                self.pipeline,
                n - 1
            ),
        };
        let json = |p: &u32| record(p).map(|r| r.to_json()).unwrap_or(Value::Null);
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
        if let Ok(region) = std::env::var("AWS_REGION") {
            tags.insert("region".into(), Value::from(region));
        }
        FaultEvent {
            id,
            event_type: FAULT_EVENT_TYPE.into(),
            timestamp: now,
            partition_key: self.partition_key.clone(),
            tags,
            err: ErrorInfo {
                name: self.cause.name.clone(),
                message: self.cause.message.clone(),
                stack: self.cause.stack.clone(),
            },
            uow,
        }
    }
}
