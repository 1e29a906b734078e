//! A record's mark in the idempotency store, and the pure rules that read it.
//!
//! No I/O here: the stores apply [`Mark::claimable`] atomically (DynamoDB as a condition
//! expression), and the guard turns what a claim answered into a [`Decision`].

/// Where a record's work stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// An invocation holds the lock until the mark's `lock_expiry_ms`.
    InProgress,
    /// The work is done: a redelivery skips it until the mark expires.
    Completed,
    /// The last attempt did not complete (retry or fault); the record may be claimed again.
    Failed,
}

impl Status {
    /// The status as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "INPROGRESS",
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
        }
    }

    /// The status from its stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "INPROGRESS" => Some(Status::InProgress),
            "COMPLETED" => Some(Status::Completed),
            "FAILED" => Some(Status::Failed),
            _ => None,
        }
    }
}

/// One record's mark, per pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// Where the work stands.
    pub status: Status,
    /// While in progress, the lock's end (epoch ms); never later than the invocation's end.
    pub lock_expiry_ms: u64,
    /// When the mark expires (epoch seconds; the table's TTL attribute).
    pub expiration_s: u64,
    /// The payload's hash, when the guard validates payloads.
    pub payload_hash: Option<String>,
    /// Attempts that failed transiently (or never finished) so far.
    pub attempts: u32,
    /// The last failure's reason, at most a few hundred bytes.
    pub last_error: Option<String>,
    /// The claim holding the lock (a token per claim), while in progress.
    pub owner: Option<String>,
}

impl Mark {
    /// True once the mark has expired (the TTL service may not have removed it yet).
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expiration_s.saturating_mul(1000) < now_ms
    }

    /// True when a new claim may take the record: expired, failed, or in progress under a lock
    /// that has ended. (A claim also takes a mark its own token holds: the same claim sent
    /// again after a lost answer.)
    ///
    /// ```
    /// use lambda_stream::idempotency::{Mark, Status};
    ///
    /// let mark = Mark { status: Status::InProgress, lock_expiry_ms: 1_000, expiration_s: 3_600,
    ///     payload_hash: None, attempts: 0, last_error: None, owner: None };
    /// assert!(!mark.claimable(999));
    /// assert!(mark.claimable(1_001));
    /// ```
    pub fn claimable(&self, now_ms: u64) -> bool {
        self.expired(now_ms)
            || match self.status {
                Status::Failed => true,
                Status::InProgress => self.lock_expiry_ms < now_ms,
                Status::Completed => false,
            }
    }
}

/// What a store answered to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The lock is ours; `previous` is the mark it replaced, if any.
    Taken {
        /// The mark before the claim.
        previous: Option<Mark>,
    },
    /// Another mark stands: completed, or in progress under a live lock.
    Held {
        /// The mark that stands.
        current: Mark,
    },
}

/// What the guard does with a unit, given what its claim answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Run it; `attempts` failed before.
    Run { attempts: u32 },
    /// Completed before: done without running.
    Skip,
    /// Another invocation is running it: retry.
    Busy,
    /// The same identity with other content: a poison fault.
    Mismatch { stored: String },
    /// Failed `attempts` times already, at least the maximum: a fault with its data.
    Exhausted {
        attempts: u32,
        last_error: Option<String>,
    },
}

/// Why the attempt before this claim did not settle: its lock ran out.
pub(crate) const LOST_LOCK: &str =
    "an earlier attempt did not finish (the function timed out or crashed)";

/// Reads a claim's answer. A mark whose lock ran out counts as one more failed attempt (the
/// invocation ended without settling it: a timeout or crash), so a record that kills its
/// function ends faulted, too.
pub(crate) fn decide(
    claim: &Claim,
    owner: &str,
    hash: Option<&str>,
    max_attempts: Option<u32>,
    now_ms: u64,
) -> Decision {
    let mismatch = |stored: &Option<String>| match (hash, stored) {
        (Some(h), Some(s)) if h != s => Some(Decision::Mismatch { stored: s.clone() }),
        _ => None,
    };
    match claim {
        Claim::Held { current } => match current.status {
            Status::Completed => mismatch(&current.payload_hash).unwrap_or(Decision::Skip),
            Status::InProgress | Status::Failed => Decision::Busy,
        },
        Claim::Taken { previous } => {
            let previous = previous.as_ref().filter(|m| !m.expired(now_ms));
            let Some(previous) = previous else {
                return Decision::Run { attempts: 0 };
            };
            if previous.owner.as_deref() == Some(owner) {
                // our own claim, sent again after its answer was lost: not another attempt
                return Decision::Run {
                    attempts: previous.attempts,
                };
            }
            if let Some(m) = mismatch(&previous.payload_hash) {
                return m;
            }
            let (attempts, last_error) = match previous.status {
                Status::InProgress => (previous.attempts + 1, Some(LOST_LOCK.to_owned())),
                _ => (previous.attempts, previous.last_error.clone()),
            };
            match max_attempts {
                Some(max) if attempts >= max => Decision::Exhausted {
                    attempts,
                    last_error,
                },
                _ => Decision::Run { attempts },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(status: Status, attempts: u32) -> Mark {
        Mark {
            status,
            lock_expiry_ms: 5_000,
            expiration_s: 100,
            payload_hash: Some("h1".into()),
            attempts,
            last_error: Some("throttled".into()),
            owner: Some("them".into()),
        }
    }

    #[test]
    fn what_a_claim_may_take() {
        assert!(!mark(Status::Completed, 0).claimable(10_000));
        assert!(mark(Status::Completed, 0).claimable(100_001), "expired");
        assert!(mark(Status::Failed, 3).claimable(0));
        assert!(!mark(Status::InProgress, 0).claimable(5_000));
        assert!(mark(Status::InProgress, 0).claimable(5_001));
    }

    #[test]
    fn decisions() {
        let now = 10_000;
        let held = |m| Claim::Held { current: m };
        let taken = |m: Option<Mark>| Claim::Taken { previous: m };
        assert_eq!(
            decide(
                &held(mark(Status::Completed, 0)),
                "us",
                Some("h1"),
                None,
                now
            ),
            Decision::Skip
        );
        assert_eq!(
            decide(&held(mark(Status::Completed, 0)), "us", None, None, now),
            Decision::Skip,
            "no hash asked for: nothing to compare"
        );
        assert_eq!(
            decide(
                &held(mark(Status::Completed, 0)),
                "us",
                Some("h2"),
                None,
                now
            ),
            Decision::Mismatch {
                stored: "h1".into()
            }
        );
        assert_eq!(
            decide(
                &held(mark(Status::InProgress, 0)),
                "us",
                Some("h1"),
                None,
                now
            ),
            Decision::Busy
        );
        assert_eq!(
            decide(&taken(None), "us", Some("h1"), Some(3), now),
            Decision::Run { attempts: 0 }
        );
        assert_eq!(
            decide(
                &taken(Some(mark(Status::Failed, 2))),
                "us",
                Some("h1"),
                Some(3),
                now
            ),
            Decision::Run { attempts: 2 }
        );
        assert_eq!(
            decide(
                &taken(Some(mark(Status::Failed, 3))),
                "us",
                Some("h1"),
                Some(3),
                now
            ),
            Decision::Exhausted {
                attempts: 3,
                last_error: Some("throttled".into())
            }
        );
        assert_eq!(
            decide(
                &taken(Some(mark(Status::Failed, 30))),
                "us",
                None,
                None,
                now
            ),
            Decision::Run { attempts: 30 },
            "no maximum: attempts are only counted"
        );
        assert_eq!(
            decide(
                &taken(Some(mark(Status::InProgress, 2))),
                "us",
                None,
                Some(3),
                now
            ),
            Decision::Exhausted {
                attempts: 3,
                last_error: Some(LOST_LOCK.into())
            },
            "a lock that ran out was an attempt that never settled"
        );
        let mut ours = mark(Status::InProgress, 2);
        ours.owner = Some("us".into());
        ours.lock_expiry_ms = now + 1_000;
        assert_eq!(
            decide(&taken(Some(ours)), "us", None, Some(3), now),
            Decision::Run { attempts: 2 },
            "our own claim again (its answer was lost) is not an attempt"
        );
        let mut expired = mark(Status::Failed, 9);
        expired.expiration_s = 1;
        assert_eq!(
            decide(&taken(Some(expired)), "us", Some("h2"), Some(3), now),
            Decision::Run { attempts: 0 },
            "an expired mark is forgotten"
        );
    }
}
