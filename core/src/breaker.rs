//! Circuit breaking: when a downstream is down, every invocation burns time and retries. A
//! handler with a [`CircuitBreaker`] watches its batches; when too many in a row end with
//! records to retry (or one batch's retry ratio is too high), it switches off its own event
//! source mapping, or lowers its batch size, through the Lambda API.
//!
//! A lowered batch size is restored by the breaker itself once the cool-down has passed and a
//! batch succeeds. A switched-off mapping receives nothing, so something else switches it on
//! again: the [`CircuitBreakerRule`](crate::flavors::CircuitBreakerRule) flavor, on an alarm
//! returning to `OK` or on a schedule once the cool-down has passed.
//!
//! ```
//! use lambda_stream::breaker::{Breaker, Tripped};
//! use lambda_stream::Summary;
//!
//! let mut breaker = Breaker::default().after_failed_batches(3);
//! let failed = Summary { records: 10, done: 8, faulted: 0, retry: 2 };
//! let ok = Summary { records: 10, done: 10, faulted: 0, retry: 0 };
//! assert_eq!(breaker.observe(&failed), None);
//! assert_eq!(breaker.observe(&ok), None); // a good batch starts the count again
//! assert_eq!(breaker.observe(&failed), None);
//! assert_eq!(breaker.observe(&failed), None);
//! assert_eq!(breaker.observe(&failed), Some(Tripped::FailedBatches(3)));
//! ```

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::connectors::Lambda;
use crate::response::{Outcomes, Summary};
use crate::settings::Settings;

/// Why the breaker tripped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tripped {
    /// This many batches in a row had records to retry.
    FailedBatches(u32),
    /// One batch retried this share of its records.
    RetryRatio(f64),
}

/// What tripping does to the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Switch it off.
    Disable,
    /// Lower its batch size to this.
    BatchSize(i32),
}

/// The breaker's rules and count, without I/O.
#[derive(Debug, Clone, PartialEq)]
pub struct Breaker {
    failed_batches: u32,
    retry_ratio: Option<(f64, usize)>,
    consecutive: u32,
}

impl Default for Breaker {
    /// Trips after 5 batches in a row with records to retry.
    fn default() -> Self {
        Breaker {
            failed_batches: 5,
            retry_ratio: None,
            consecutive: 0,
        }
    }
}

impl Breaker {
    /// Trips after `n` batches in a row with records to retry (`0`: never for this reason).
    pub fn after_failed_batches(mut self, n: u32) -> Self {
        self.failed_batches = n;
        self
    }

    /// Trips when one batch of at least `min_records` retries `ratio` (0 to 1) of them or more.
    pub fn retry_ratio(mut self, ratio: f64, min_records: usize) -> Self {
        self.retry_ratio = Some((ratio.clamp(0.0, 1.0), min_records.max(1)));
        self
    }

    /// Counts a batch; `Some` when it trips the breaker (the count starts again).
    pub fn observe(&mut self, s: &Summary) -> Option<Tripped> {
        if s.retry == 0 {
            self.consecutive = 0;
            return None;
        }
        self.consecutive += 1;
        let ratio = s.retry as f64 / s.records.max(1) as f64;
        let tripped = match self.retry_ratio {
            Some((limit, min)) if s.records >= min && ratio >= limit => {
                Some(Tripped::RetryRatio(ratio))
            }
            _ if self.failed_batches > 0 && self.consecutive >= self.failed_batches => {
                Some(Tripped::FailedBatches(self.consecutive))
            }
            _ => None,
        };
        if tripped.is_some() {
            self.consecutive = 0;
        }
        tripped
    }
}

/// A batch size lowered by the breaker, to restore.
#[derive(Debug)]
struct Lowered {
    at: Instant,
    uuid: String,
    original: i32,
}

#[derive(Debug)]
struct State {
    breaker: Breaker,
    lowered: Option<Lowered>,
}

/// A [`Breaker`] that acts on the function's own event source mapping through the Lambda API.
/// Given to [`HandlerBuilder::circuit_breaker`](crate::HandlerBuilder::circuit_breaker).
#[derive(Debug)]
pub struct CircuitBreaker {
    lambda: Lambda,
    action: Action,
    cool_down: Duration,
    state: Mutex<State>,
}

impl CircuitBreaker {
    /// Trips as `breaker` says, then does `action`; a lowered batch size is restored after
    /// `cool_down` once a batch succeeds.
    pub fn new(lambda: Lambda, breaker: Breaker, action: Action, cool_down: Duration) -> Self {
        CircuitBreaker {
            lambda,
            action,
            cool_down,
            state: Mutex::new(State {
                breaker,
                lowered: None,
            }),
        }
    }

    /// The breaker the settings describe (`CIRCUIT_BREAKER_FAILED_BATCHES`,
    /// `CIRCUIT_BREAKER_RETRY_RATIO`, `CIRCUIT_BREAKER_BATCH_SIZE` to lower instead of switching
    /// off, `CIRCUIT_BREAKER_COOL_DOWN_SECONDS`); `None` when neither threshold is set.
    pub fn from_settings(settings: &Settings, lambda: Lambda) -> Option<Self> {
        let b = &settings.breaker;
        if b.failed_batches.is_none() && b.retry_ratio.is_none() {
            return None;
        }
        let mut breaker = Breaker::default().after_failed_batches(b.failed_batches.unwrap_or(0));
        if let Some(ratio) = b.retry_ratio {
            breaker = breaker.retry_ratio(ratio, b.min_records.unwrap_or(10));
        }
        let action = b.batch_size.map_or(Action::Disable, Action::BatchSize);
        Some(CircuitBreaker::new(lambda, breaker, action, b.cool_down))
    }

    /// Counts the batch; trips (once) or restores the batch size as the rules say. Errors are
    /// logged: the batch's answer never depends on the breaker.
    pub async fn observe(&self, outcomes: &Outcomes, function: &str) {
        let summary = outcomes.summary();
        let (tripped, restore) = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let tripped = state.breaker.observe(&summary);
            let restore = match &state.lowered {
                Some(l) if summary.retry == 0 && l.at.elapsed() >= self.cool_down => {
                    state.lowered.take()
                }
                _ => None,
            };
            (tripped, restore)
        };
        if let Some(l) = restore {
            match self
                .lambda
                .update_mapping(&l.uuid, None, Some(l.original))
                .await
            {
                Ok(()) => {
                    tracing::warn!(mapping = %l.uuid, batch_size = l.original, "circuit breaker: batch size restored")
                }
                Err(e) => {
                    tracing::error!(mapping = %l.uuid, error = %e, "circuit breaker: batch size not restored")
                }
            }
        }
        let Some(why) = tripped else { return };
        let source = outcomes.event_source_arn();
        let mappings = match self.lambda.mappings(function, source).await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(?why, error = %e, "circuit breaker tripped but its mapping could not be listed");
                return;
            }
        };
        for m in mappings.iter().filter(|m| m.enabled()) {
            let (enabled, batch_size) = match self.action {
                Action::Disable => (Some(false), None),
                Action::BatchSize(n) => (None, Some(n)),
            };
            match self
                .lambda
                .update_mapping(&m.uuid, enabled, batch_size)
                .await
            {
                Ok(()) => {
                    tracing::warn!(?why, mapping = %m.uuid, action = ?self.action, "circuit breaker tripped");
                    if let (Action::BatchSize(_), Some(original)) = (self.action, m.batch_size) {
                        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                        state.lowered.get_or_insert(Lowered {
                            at: Instant::now(),
                            uuid: m.uuid.clone(),
                            original,
                        });
                    }
                }
                Err(e) => {
                    tracing::error!(?why, mapping = %m.uuid, error = %e, "circuit breaker tripped but its mapping was not changed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(records: usize, retry: usize) -> Summary {
        Summary {
            records,
            done: records - retry,
            faulted: 0,
            retry,
        }
    }

    #[test]
    fn a_high_retry_ratio_trips_at_once_when_the_batch_is_large_enough() {
        let mut b = Breaker::default()
            .after_failed_batches(0)
            .retry_ratio(0.5, 10);
        assert_eq!(b.observe(&batch(4, 4)), None, "too few records to judge");
        assert_eq!(b.observe(&batch(10, 4)), None);
        assert_eq!(b.observe(&batch(10, 6)), Some(Tripped::RetryRatio(0.6)));
        assert_eq!(b.observe(&batch(100, 1)), None);
    }

    #[test]
    fn failed_batches_in_a_row_trip_and_the_count_starts_again() {
        let mut b = Breaker::default().after_failed_batches(2);
        assert_eq!(b.observe(&batch(10, 1)), None);
        assert_eq!(b.observe(&batch(10, 1)), Some(Tripped::FailedBatches(2)));
        assert_eq!(b.observe(&batch(10, 1)), None, "counting again");
        assert_eq!(b.observe(&batch(10, 1)), Some(Tripped::FailedBatches(2)));
    }
}
