//! Lambda's delivery rules for event source mappings, as pure decisions: what an invocation's
//! answer says failed, and what a shard does next (checkpoint, retry, bisect, give up). The
//! pollers do the I/O around these; the rules are tested here without an emulator.

use std::time::Duration;

/// What a function's answer says about a batch of `n` records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failed {
    /// Every record succeeded.
    None,
    /// The whole batch failed: a function error, or a reported identifier that names no record
    /// of the batch.
    All,
    /// These records (positions in the batch, ascending) were reported failed.
    Some(Vec<usize>),
}

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<'a> {
    /// The function answered this body.
    Response(&'a [u8]),
    /// The function failed (an error, a timeout, a crash).
    Error,
}

/// The item identifiers a partial batch response reports, or `None` when the response is not
/// one (then the batch succeeded).
///
/// ```
/// use local_stack::mapping::policy::reported_failures;
/// assert_eq!(reported_failures(br#"{"batchItemFailures":[{"itemIdentifier":"7"}]}"#), Some(vec![Some("7".to_string())]));
/// assert_eq!(reported_failures(br#"{"batchItemFailures":[]}"#), Some(vec![]));
/// assert_eq!(reported_failures(b"null"), None);
/// ```
pub fn reported_failures(response: &[u8]) -> Option<Vec<Option<String>>> {
    let v: serde_json::Value = serde_json::from_slice(response).ok()?;
    let list = v.get("batchItemFailures")?.as_array()?;
    Some(
        list.iter()
            .map(|f| {
                f.get("itemIdentifier")
                    .and_then(serde_json::Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
            })
            .collect(),
    )
}

/// What failed in a batch whose records have `ids` (sequence numbers or message ids), given
/// the answer; `report_failures` is the mapping's `ReportBatchItemFailures`.
pub fn failed(ids: &[&str], report_failures: bool, answer: &Answer<'_>) -> Failed {
    let body = match answer {
        Answer::Error => return Failed::All,
        Answer::Response(_) if !report_failures => return Failed::None,
        Answer::Response(body) => body,
    };
    let Some(reported) = reported_failures(body) else {
        return Failed::None;
    };
    if reported.is_empty() {
        return Failed::None;
    }
    let positions: Option<Vec<usize>> = reported
        .iter()
        .map(|id| ids.iter().position(|i| Some(*i) == id.as_deref()))
        .collect();
    match positions {
        // an identifier that names no record of the batch fails it all
        None => Failed::All,
        Some(mut p) => {
            p.sort_unstable();
            p.dedup();
            Failed::Some(p)
        }
    }
}

/// Which messages of an SQS batch are done (deleted); the others come back.
pub fn queue_done(n: usize, failed: &Failed) -> Vec<bool> {
    match failed {
        Failed::None => vec![true; n],
        Failed::All => vec![false; n],
        Failed::Some(p) => (0..n).map(|i| !p.contains(&i)).collect(),
    }
}

/// The wait before retry `attempt` (1-based): 100 ms doubling to 2 s (Lambda's is slower).
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(5))).min(Duration::from_secs(2))
}

/// A stream mapping's rules, from the template.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// `BatchSize`.
    pub batch_size: usize,
    /// `BisectBatchOnFunctionError`.
    pub bisect: bool,
    /// `MaximumRetryAttempts` (`None`: until the record expires).
    pub max_retries: Option<u32>,
    /// `MaximumRecordAgeInSeconds`.
    pub max_age: Option<Duration>,
}

/// Why records are given up to the on-failure destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// They are older than `MaximumRecordAgeInSeconds`.
    RecordAgeExceeded,
    /// They failed more than `MaximumRetryAttempts` times.
    RetryAttemptsExhausted,
}

impl Condition {
    /// As the on-failure record names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::RecordAgeExceeded => "RecordAgeExceeded",
            Condition::RetryAttemptsExhausted => "RetryAttemptsExhausted",
        }
    }
}

/// What a shard's poller does next with the records at the head of its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Invoke the function with the first `count` records.
    Invoke {
        /// How many.
        count: usize,
    },
    /// Describe the first `count` records on the on-failure destination and drop them.
    GiveUp {
        /// How many.
        count: usize,
        /// Why.
        condition: Condition,
        /// Invocations they had.
        attempts: u32,
    },
}

/// What a shard's poller does after an invocation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Settle {
    /// The first `done` records are done (the checkpoint moves past them); go on at once.
    Advance {
        /// How many.
        done: usize,
    },
    /// The first `done` records are done; the rest are invoked again after `delay`.
    Retry {
        /// How many are done.
        done: usize,
        /// The wait.
        delay: Duration,
    },
    /// A function error: the batch is halved and invoked again at once (not a retry).
    Bisect,
    /// The first `done` records are done, and the next `count` are given up.
    GiveUp {
        /// How many are done.
        done: usize,
        /// How many are given up.
        count: usize,
        /// Invocations they had.
        attempts: u32,
    },
}

/// One shard's delivery state: the batch size in force (smaller while bisecting) and the
/// attempts of the records at its head.
#[derive(Debug, Clone, PartialEq)]
pub struct Shard {
    rules: Rules,
    limit: usize,
    attempts: u32,
}

impl Shard {
    /// A shard at its start.
    pub fn new(rules: Rules) -> Self {
        Shard {
            limit: rules.batch_size.max(1),
            attempts: 0,
            rules,
        }
    }

    /// What to do with a buffer whose records arrived at `arrivals` (epoch seconds, in order),
    /// at time `now`. The buffer must not be empty.
    pub fn next(&self, arrivals: &[f64], now: f64) -> Next {
        if let Some(max_age) = self.rules.max_age {
            let oldest_allowed = now - max_age.as_secs_f64();
            let expired = arrivals.iter().take_while(|a| **a < oldest_allowed).count();
            if expired > 0 {
                return Next::GiveUp {
                    count: expired,
                    condition: Condition::RecordAgeExceeded,
                    attempts: self.attempts,
                };
            }
        }
        Next::Invoke {
            count: self.limit.min(arrivals.len()).max(1),
        }
    }

    /// After invoking `count` records: what failed decides.
    pub fn settle(&mut self, count: usize, failed: &Failed, function_error: bool) -> Settle {
        let done = match failed {
            Failed::None => {
                self.reset();
                return Settle::Advance { done: count };
            }
            Failed::Some(p) => p.first().copied().unwrap_or(0).min(count),
            Failed::All => 0,
        };
        if function_error && self.rules.bisect && count > 1 {
            // halving is not a retry: the attempts stand
            self.limit = count.div_ceil(2);
            return Settle::Bisect;
        }
        if done > 0 {
            // progress: the records now at the head have not been tried alone yet
            self.attempts = 0;
        }
        self.attempts += 1;
        let failing = count - done;
        if self
            .rules
            .max_retries
            .is_some_and(|max| self.attempts > max)
        {
            let attempts = self.attempts;
            self.reset();
            return Settle::GiveUp {
                done,
                count: failing,
                attempts,
            };
        }
        Settle::Retry {
            done,
            delay: retry_delay(self.attempts),
        }
    }

    /// After records were given up on for their age.
    pub fn gave_up(&mut self) {
        self.reset();
    }

    fn reset(&mut self) {
        self.attempts = 0;
        self.limit = self.rules.batch_size.max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: [&str; 5] = ["1", "2", "3", "4", "5"];

    fn rules() -> Rules {
        Rules {
            batch_size: 5,
            bisect: false,
            max_retries: Some(2),
            max_age: None,
        }
    }

    fn response(ids: &[&str]) -> Vec<u8> {
        let failures: Vec<_> = ids
            .iter()
            .map(|i| serde_json::json!({"itemIdentifier": i}))
            .collect();
        serde_json::json!({"batchItemFailures": failures})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn an_answer_fails_the_reported_records_or_all_when_one_names_none() {
        let body = response(&["4", "2"]);
        assert_eq!(
            failed(&IDS, true, &Answer::Response(&body)),
            Failed::Some(vec![1, 3])
        );
        let unknown = response(&["9"]);
        assert_eq!(failed(&IDS, true, &Answer::Response(&unknown)), Failed::All);
        assert_eq!(failed(&IDS, false, &Answer::Response(&body)), Failed::None);
        assert_eq!(failed(&IDS, true, &Answer::Response(b"null")), Failed::None);
        assert_eq!(failed(&IDS, true, &Answer::Error), Failed::All);
        assert_eq!(queue_done(3, &Failed::Some(vec![1])), [true, false, true]);
    }

    #[test]
    fn a_stream_checkpoints_at_the_first_failure_and_retries_from_there() {
        let mut shard = Shard::new(rules());
        assert_eq!(shard.next(&[0.0; 10], 1.0), Next::Invoke { count: 5 });
        let s = shard.settle(5, &Failed::Some(vec![3]), false);
        assert_eq!(
            s,
            Settle::Retry {
                done: 3,
                delay: retry_delay(1)
            }
        );
        // success resets the attempts
        assert_eq!(
            shard.settle(5, &Failed::None, false),
            Settle::Advance { done: 5 }
        );
        assert_eq!(shard, Shard::new(rules()));
    }

    #[test]
    fn retries_are_bounded_then_the_failing_records_are_given_up() {
        let mut shard = Shard::new(rules());
        for attempt in 1..=2 {
            assert!(
                matches!(
                    shard.settle(5, &Failed::All, true),
                    Settle::Retry { done: 0, .. }
                ),
                "attempt {attempt}"
            );
        }
        assert_eq!(
            shard.settle(5, &Failed::All, true),
            Settle::GiveUp {
                done: 0,
                count: 5,
                attempts: 3
            }
        );
        assert_eq!(shard, Shard::new(rules()));
    }

    #[test]
    fn bisecting_halves_the_batch_until_the_failing_record_is_alone() {
        let mut shard = Shard::new(Rules {
            bisect: true,
            max_retries: Some(0),
            ..rules()
        });
        assert_eq!(shard.settle(5, &Failed::All, true), Settle::Bisect);
        assert_eq!(shard.next(&[0.0; 5], 1.0), Next::Invoke { count: 3 });
        assert_eq!(shard.settle(3, &Failed::All, true), Settle::Bisect);
        assert_eq!(shard.settle(2, &Failed::All, true), Settle::Bisect);
        // alone, it is retried, then given up (no retries allowed)
        assert_eq!(shard.next(&[0.0; 5], 1.0), Next::Invoke { count: 1 });
        assert!(matches!(
            shard.settle(1, &Failed::All, true),
            Settle::GiveUp { count: 1, .. }
        ));
        // a reported failure is not a function error: no halving
        let mut shard = Shard::new(Rules {
            bisect: true,
            ..rules()
        });
        assert!(matches!(
            shard.settle(5, &Failed::Some(vec![0]), false),
            Settle::Retry { .. }
        ));
    }

    #[test]
    fn records_past_their_maximum_age_are_given_up_first() {
        let shard = Shard::new(Rules {
            max_age: Some(Duration::from_secs(60)),
            ..rules()
        });
        assert_eq!(
            shard.next(&[10.0, 20.0, 95.0], 100.0),
            Next::GiveUp {
                count: 2,
                condition: Condition::RecordAgeExceeded,
                attempts: 0
            }
        );
        assert_eq!(shard.next(&[95.0], 100.0), Next::Invoke { count: 1 });
    }
}
