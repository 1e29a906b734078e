//! What a pipeline run records: the units it faulted or sent back for retry. Units that reach
//! the end of a pipeline, or that a filter drops, are done and need no entry.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use crate::deadline::Deadline;
use crate::error::{ErrorClass, StepError};
use crate::uow::{Anchor, Work, anchor_of};

/// Why a unit ended faulted.
#[derive(Debug, Clone)]
pub(crate) struct Cause {
    pub(crate) name: String,
    pub(crate) message: String,
    pub(crate) stack: String,
}

#[derive(Debug)]
pub(crate) enum Verdict {
    Fault(Cause),
    Retry,
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) anchor: Anchor,
    pub(crate) verdict: Verdict,
}

/// Shared by the stages of one pipeline run.
pub(crate) struct StageCtx {
    pub(crate) pipeline: Arc<str>,
    pub(crate) deadline: Deadline,
    entries: Mutex<Vec<Entry>>,
}

impl StageCtx {
    pub(crate) fn new(pipeline: Arc<str>, deadline: Deadline) -> Self {
        StageCtx {
            pipeline,
            deadline,
            entries: Mutex::new(Vec::new()),
        }
    }

    fn push(&self, entry: Entry) {
        // a panic elsewhere cannot leave a Vec half-pushed, so a poisoned lock is still sound
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(entry);
    }

    pub(crate) fn take_entries(&self) -> Vec<Entry> {
        std::mem::take(&mut *self.entries.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Records a failed step; returns true when the unit is to be retried (its key blocks).
    pub(crate) fn failed(&self, anchor: Anchor, err: StepError) -> bool {
        match err.class() {
            ErrorClass::Poison => {
                self.fault(anchor, err);
                false
            }
            ErrorClass::Transient => {
                self.retry(anchor, err.to_string());
                true
            }
        }
    }

    pub(crate) fn fault(&self, anchor: Anchor, err: StepError) {
        tracing::warn!(pipeline = %self.pipeline, error = %err, records = anchor.len(), "fault");
        let cause = Cause {
            name: err.name().to_owned(),
            message: err.to_string(),
            stack: err.chain(),
        };
        self.push(Entry {
            anchor,
            verdict: Verdict::Fault(cause),
        });
    }

    pub(crate) fn retry(&self, anchor: Anchor, reason: String) {
        tracing::info!(pipeline = %self.pipeline, %reason, records = anchor.len(), "retry");
        self.push(Entry {
            anchor,
            verdict: Verdict::Retry,
        });
    }

    /// Sends every item back for retry (the deadline passed before the stage began).
    pub(crate) fn retry_all<T: Work>(&self, items: Vec<T>, reason: &str) {
        for item in items {
            self.retry(anchor_of(&item), reason.to_owned());
        }
    }
}

/// Keys that have a unit waiting for retry: later units with one of these keys must not start.
#[derive(Default)]
pub(crate) struct Blocked(HashSet<String>);

impl Blocked {
    pub(crate) fn block(&mut self, anchor: &Anchor) {
        for origin in anchor {
            if let Some(key) = origin.partition_key() {
                self.0.insert(key.to_owned());
            }
        }
    }

    pub(crate) fn touches_anchor(&self, anchor: &Anchor) -> bool {
        !self.0.is_empty()
            && anchor
                .iter()
                .any(|o| o.partition_key().is_some_and(|k| self.0.contains(k)))
    }

    pub(crate) fn touches<T: Work>(&self, item: &T) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let mut hit = false;
        item.for_each_origin(&mut |o| {
            hit |= o.partition_key().is_some_and(|k| self.0.contains(k));
        });
        hit
    }
}

/// A panic in user code is a bug in a mapping: poison, not a crash of the whole batch.
pub(crate) fn panic_error(payload: Box<dyn std::any::Any + Send>) -> StepError {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".to_owned());
    StepError::poison_msg(format!("step panicked: {message}")).named("Panic")
}
