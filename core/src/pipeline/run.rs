//! What one pipeline run knows and records: its deadline, the keys that must not start, and how
//! each unit it accepted ended.
//!
//! Every accepted unit is *pending* until a step settles it: done (it reached the end, or a
//! filter dropped it), faulted or retry. Whatever is still pending when the run ends (a step
//! dropped it, or the deadline cut the run short) is retry: nothing is lost by construction.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::ahead::Progress;
use crate::deadline::Deadline;
use crate::error::{ErrorClass, StepError};
use crate::faults::quoted;
use crate::outcome::{Outcome, Transformed};
use crate::settings::Settings;
use crate::uow::{Anchor, Origin, Work, anchor_of};

use super::gate::KeyGate;

/// Why a unit ended faulted.
#[derive(Debug, Clone)]
pub(crate) struct Cause {
    pub(crate) name: String,
    pub(crate) message: String,
    pub(crate) stack: String,
}

impl Cause {
    pub(crate) fn of(err: &StepError) -> Self {
        Cause {
            name: err.name().to_owned(),
            message: err.to_string(),
            stack: err.chain(),
        }
    }
}

/// A fault raised in a run: the units that fail together, and why.
#[derive(Debug)]
pub(crate) struct RaisedFault {
    pub(crate) anchor: Anchor,
    pub(crate) cause: Cause,
}

/// Ordering keys with a unit waiting for retry: later units with one of them must not start.
/// Shared by the steps of a run (and by the runs of a handler that orders keys across
/// pipelines).
#[derive(Debug, Default)]
pub(crate) struct Blocked {
    any: AtomicBool,
    keys: Mutex<HashSet<u64>>,
}

impl Blocked {
    /// Blocks `keys` (a window's retried records' keys, for the windows after it).
    pub(crate) fn block_keys(&self, keys: impl IntoIterator<Item = u64>) {
        let mut blocked = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        for k in keys {
            blocked.insert(k);
            self.any.store(true, Ordering::Release);
        }
    }

    fn block(&self, anchor: &Anchor) {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        for origin in anchor {
            if let Some(k) = origin.key_hash {
                keys.insert(k);
                self.any.store(true, Ordering::Release);
            }
        }
    }

    pub(crate) fn touches(&self, keys: &[u64]) -> bool {
        if keys.is_empty() || !self.any.load(Ordering::Acquire) {
            return false;
        }
        let blocked = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.iter().any(|k| blocked.contains(k))
    }
}

const PENDING: u8 = 1;

fn code(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Done => 2,
        Outcome::Faulted => 3,
        Outcome::Retry => 4,
    }
}

/// Shared by the steps of one pipeline run.
pub(crate) struct RunCtx {
    pub(crate) pipeline: Arc<str>,
    pub(crate) deadline: Deadline,
    /// The handler's settings: default parallelism, standard tags.
    pub(crate) settings: Arc<Settings>,
    blocked: Arc<Blocked>,
    /// The idempotency keys claimed (or found completed) in this invocation, in any window: a
    /// duplicate later in the batch is done.
    pub(crate) claimed: Arc<Mutex<HashSet<String>>>,
    /// By unit ordinal: 0 not accepted, then pending, done, faulted, retry (worst wins).
    settled: Vec<AtomicU8>,
    faults: Mutex<Vec<RaisedFault>>,
    /// With order per key across pipelines: told when a unit is over here.
    gate: OnceLock<Arc<KeyGate>>,
    /// The window's progress, told of every unit taken and over here.
    progress: OnceLock<Arc<Progress>>,
    /// Units whose step failed transiently, and why (what idempotency counts as attempts).
    failures: Mutex<Vec<(u32, String)>>,
    /// Work to do once the batch is over and its faults published (settling claims).
    finishers: Mutex<Vec<Finisher>>,
    /// What units answered (a Firehose transformation's data), with the unit that gave each.
    answers: Mutex<Vec<(Arc<Origin>, Transformed)>>,
    /// Units sent back for retry, by the name of why (metrics).
    retried_by: Mutex<std::collections::BTreeMap<String, usize>>,
}

/// Work a step leaves for the end of its run: it gets the run, and every unit's final outcome
/// (its record's, once faults are published or deferred), by unit ordinal; it ends before the
/// invocation answers.
pub(crate) type Finisher = Box<
    dyn FnOnce(Arc<RunCtx>, Arc<Vec<Outcome>>) -> futures::future::BoxFuture<'static, ()> + Send,
>;

/// Reasons a unit did not start.
pub(crate) const BLOCKED: &str = "an earlier record with the same key is being retried";
pub(crate) const NOT_STARTED: &str = "deadline: not started";

impl RunCtx {
    /// A run over `units` units in all (the batch's), with shared `blocked` keys.
    pub(crate) fn new(
        pipeline: Arc<str>,
        deadline: Deadline,
        units: usize,
        blocked: Arc<Blocked>,
        claimed: Arc<Mutex<HashSet<String>>>,
        settings: Arc<Settings>,
    ) -> Self {
        RunCtx {
            pipeline,
            deadline,
            settings,
            blocked,
            claimed,
            settled: (0..units).map(|_| AtomicU8::new(0)).collect(),
            faults: Mutex::new(Vec::new()),
            gate: OnceLock::new(),
            progress: OnceLock::new(),
            failures: Mutex::new(Vec::new()),
            finishers: Mutex::new(Vec::new()),
            answers: Mutex::new(Vec::new()),
            retried_by: Mutex::new(std::collections::BTreeMap::new()),
        }
    }

    /// Orders this run's units with the other pipelines' through `gate`.
    pub(crate) fn set_gate(&self, gate: Arc<KeyGate>) {
        let _ = self.gate.set(gate);
    }

    /// Tells `progress` of every unit taken and over from now on.
    pub(crate) fn set_progress(&self, progress: Arc<Progress>) {
        let _ = self.progress.set(progress);
    }

    /// Marks a unit accepted by the pipeline: pending until settled.
    pub(crate) fn accept(&self, unit: u32) {
        if let Some(s) = self.settled.get(unit as usize) {
            s.store(PENDING, Ordering::Relaxed);
            if let Some(progress) = self.progress.get() {
                progress.took();
            }
        }
    }

    fn settle_unit(&self, unit: u32, outcome: Outcome) {
        let Some(s) = self.settled.get(unit as usize) else {
            return;
        };
        let before = s.fetch_max(code(outcome), Ordering::AcqRel);
        if before == PENDING {
            if let Some(progress) = self.progress.get() {
                progress.over();
            }
            if let Some(gate) = self.gate.get() {
                gate.finished(unit);
            }
        }
    }

    fn settle(&self, anchor: &Anchor, outcome: Outcome) {
        for origin in anchor {
            self.settle_unit(origin.unit, outcome);
        }
    }

    fn settle_item<T: Work>(&self, item: &T, outcome: Outcome) {
        item.for_each_origin(&mut |o| self.settle_unit(o.unit, outcome));
    }

    /// The item reached the end of the pipeline, or a filter dropped it.
    pub(crate) fn done<T: Work>(&self, item: &T) {
        self.settle_item(item, Outcome::Done);
    }

    /// True when one of the item's keys has a unit waiting for retry.
    pub(crate) fn blocked(&self, keys: &[u64]) -> bool {
        self.blocked.touches(keys)
    }

    /// Records a failed step: poison is a fault, transient a retry (its keys block).
    pub(crate) fn failed(&self, anchor: Anchor, err: StepError) {
        match err.class() {
            ErrorClass::Poison => self.fault(anchor, err),
            ErrorClass::Transient => {
                let reason = err.to_string();
                self.count_retry(err.name(), anchor.len());
                {
                    let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
                    failures.extend(anchor.iter().map(|o| (o.unit, reason.clone())));
                }
                self.retry(anchor, &reason)
            }
        }
    }

    /// The units whose step failed transiently in this run, and why (the last reason wins).
    pub(crate) fn failures(&self) -> std::collections::HashMap<u32, String> {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Leaves `f` for the end of the run (see [`Finisher`]).
    pub(crate) fn on_finish(&self, f: Finisher) {
        self.finishers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(f);
    }

    /// The work left for the end of the run, taken once.
    pub(crate) fn take_finishers(&self) -> Vec<Finisher> {
        std::mem::take(
            &mut *self
                .finishers
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    pub(crate) fn fault(&self, anchor: Anchor, err: StepError) {
        let first = anchor.first().map(|o| &o.event);
        tracing::warn!(
            pipeline = %self.pipeline,
            // both are the event's own, untrusted: quoted at most in part
            event = first.map_or("", |e| quoted(&e.id)),
            correlation = first.map_or("", |e| quoted(e.correlation_id())),
            error = %err,
            records = anchor.len(),
            "fault"
        );
        self.settle(&anchor, Outcome::Faulted);
        self.faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(RaisedFault {
                anchor,
                cause: Cause::of(&err),
            });
    }

    pub(crate) fn retry(&self, anchor: Anchor, reason: &str) {
        let first = anchor.first().map(|o| &o.event);
        tracing::debug!(
            pipeline = %self.pipeline,
            // both are the event's own, untrusted: quoted at most in part
            event = first.map_or("", |e| quoted(&e.id)),
            correlation = first.map_or("", |e| quoted(e.correlation_id())),
            %reason,
            records = anchor.len(),
            "retry"
        );
        self.settle(&anchor, Outcome::Retry);
        self.blocked.block(&anchor);
    }

    /// Sends the item back for retry without starting it.
    pub(crate) fn not_started<T: Work>(&self, item: &T, reason: &str) {
        let anchor = anchor_of(item);
        let name = if reason == BLOCKED {
            "KeyBlocked"
        } else {
            "NotStarted"
        };
        self.count_retry(name, anchor.len());
        self.retry(anchor, reason);
    }

    fn count_retry(&self, name: &str, units: usize) {
        let mut by = self
            .retried_by
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for _ in 0..units {
            crate::metrics::count_error(&mut by, name);
        }
    }

    /// Units sent back for retry by the name of why, taken once the run is over.
    pub(crate) fn take_retried_by(&self) -> std::collections::BTreeMap<String, usize> {
        std::mem::take(
            &mut *self
                .retried_by
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Records what a unit answers (moved in: the data is not copied on its way out).
    pub(crate) fn answer(&self, origin: Arc<Origin>, answer: Transformed) {
        self.answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((origin, answer));
    }

    /// The answers given, with the unit that gave each, taken once the run is over.
    pub(crate) fn take_answers(&self) -> Vec<(Arc<Origin>, Transformed)> {
        std::mem::take(&mut *self.answers.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The faults raised, taken once the run is over.
    pub(crate) fn take_faults(&self) -> Vec<RaisedFault> {
        std::mem::take(&mut *self.faults.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// How each accepted unit ended, by unit ordinal (`None`: not accepted); a unit still
    /// pending did not finish in time and is retry.
    pub(crate) fn outcomes(&self) -> impl Iterator<Item = (usize, Outcome)> + '_ {
        self.settled
            .iter()
            .enumerate()
            .filter_map(|(unit, s)| match s.load(Ordering::Relaxed) {
                0 => None,
                2 => Some((unit, Outcome::Done)),
                3 => Some((unit, Outcome::Faulted)),
                _ => Some((unit, Outcome::Retry)),
            })
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
