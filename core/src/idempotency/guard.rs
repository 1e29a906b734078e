//! The guard in front of an idempotent pipeline: claims each unit before its first step, and
//! settles every claim once the run is over.

use std::collections::HashMap;
use std::future::ready;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::stream::StreamExt;
use sha2::{Digest, Sha256};

use super::mark::{Claim, Decision, Mark, Status, decide};
use super::{ClaimRequest, Idempotency};
use crate::connectors::BatchLimits;
use crate::error::{ErrorClass, StepError};
use crate::faults::truncate;
use crate::outcome::Outcome;
use crate::pipeline::{Items, RunCtx, each};
use crate::uow::UnitOfWork;

/// Reasons quoted in marks and logs are cut to this many bytes.
const REASON_BYTES: usize = 300;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A claim taken in this run, to settle at its end.
struct Taken {
    unit: u32,
    id: String,
    hash: Option<String>,
    attempts: u32,
    /// Faulted for its attempts without running: settled as it stood.
    exhausted: Option<String>,
}

/// The claims of one run.
#[derive(Default)]
struct Claims {
    taken: Vec<Taken>,
    /// Claims whose answer never came (id, owner token): released at the end if they hold.
    uncertain: Vec<(String, String)>,
}

fn lock(claims: &Mutex<Claims>) -> std::sync::MutexGuard<'_, Claims> {
    claims.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the claim step lets through.
enum Admitted {
    /// The claim is ours: on to the steps.
    Run,
    /// Nothing to run (completed before, or a duplicate in this batch): done.
    Done,
}

/// One pipeline's guard.
pub(crate) struct Guard {
    pipeline: Arc<str>,
    idem: Idempotency,
}

impl Guard {
    pub(crate) fn new(pipeline: Arc<str>, idem: Idempotency) -> Self {
        Guard { pipeline, idem }
    }

    /// Puts the claims in front of `units` (a step in order per key, `parallel` keys at once)
    /// and leaves their settling for the end of the run.
    pub(crate) fn claims(
        self: &Arc<Self>,
        ctx: Arc<RunCtx>,
        units: Items<UnitOfWork>,
    ) -> Items<UnitOfWork> {
        let claims = Arc::new(Mutex::new(Claims::default()));
        let (guard, settled) = (Arc::clone(self), Arc::clone(&claims));
        ctx.on_finish(Box::new(move |ctx, finals| {
            Box::pin(async move { guard.settle(&ctx, &settled, &finals).await })
        }));
        let (guard, run) = (Arc::clone(self), Arc::clone(&ctx));
        let admit = Arc::new(move |u: UnitOfWork| {
            let (guard, ctx, claims) = (Arc::clone(&guard), Arc::clone(&run), Arc::clone(&claims));
            async move { guard.admit(&ctx, &claims, u).await }
        });
        let parallel = ctx.settings.parallel;
        each(Arc::clone(&ctx), units, parallel, None, admit)
            .filter_map(move |u: UnitOfWork<Admitted>| {
                ready(match u.state {
                    Admitted::Run => Some(u.with(())),
                    Admitted::Done => {
                        ctx.done(&u);
                        None
                    }
                })
            })
            .boxed()
    }

    /// The lock's end: the configured longest lock, and never past the invocation's end.
    fn lock_until(&self, ctx: &RunCtx, now: u64) -> u64 {
        now + self.lock_left(ctx).as_millis() as u64
    }

    fn lock_left(&self, ctx: &RunCtx) -> Duration {
        ctx.deadline.publish_by().map_or(self.idem.lock, |end| {
            end.saturating_duration_since(tokio::time::Instant::now())
                .min(self.idem.lock)
        })
    }

    fn expiration_s(&self, now: u64) -> u64 {
        (now + self.idem.ttl.as_millis() as u64).div_ceil(1000)
    }

    /// Claims one unit: it goes on to the steps only when the claim is ours to run; an error
    /// is its fault (poison) or retry (transient), as in any step.
    async fn admit(
        &self,
        ctx: &RunCtx,
        claims: &Mutex<Claims>,
        u: UnitOfWork,
    ) -> Result<UnitOfWork<Admitted>, StepError> {
        let key = (self.idem.key)(&u);
        let hash = self
            .idem
            .payload
            .as_ref()
            .map(|p| hex(&Sha256::digest(p(&u))));
        let id = format!("{}#{key}", self.pipeline);
        let first = ctx
            .claimed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.clone());
        if !first {
            tracing::debug!(pipeline = %self.pipeline, id = %crate::faults::quoted(&id), "duplicate in this batch: done");
            return Ok(u.with(Admitted::Done));
        }
        if self.seen(&id, now_ms()) {
            tracing::debug!(pipeline = %self.pipeline, id = %crate::faults::quoted(&id), "completed before (cached): done");
            return Ok(u.with(Admitted::Done));
        }
        let owner = claim_token();
        let mut backoff = Duration::from_millis(100);
        let (claim, now) = loop {
            let now = now_ms();
            let req = ClaimRequest {
                owner: &owner,
                id: &id,
                now_ms: now,
                lock_expiry_ms: self.lock_until(ctx, now),
                expiration_s: self.expiration_s(now),
                payload_hash: hash.as_deref(),
            };
            let claim = match self.idem.store.claim(&req).await {
                Ok(claim) => claim,
                Err(e) => {
                    // the claim may have been written with its answer lost: released at the
                    // end if it is ours; and never run unguarded, nor set data aside for the
                    // guard's own trouble
                    lock(claims).uncertain.push((id, owner));
                    return Err(StepError::new(
                        ErrorClass::Transient,
                        "IdempotencyStoreError",
                        e.to_string(),
                    ));
                }
            };
            // a lock that lapses before this invocation must stop (its holder crashed, or
            // will have finished): wait for it rather than spend one of Lambda's retries
            let lapses = match &claim {
                Claim::Held { current } if current.status == Status::InProgress => {
                    let left = Duration::from_millis(current.lock_expiry_ms.saturating_sub(now));
                    (left < self.lock_left(ctx)).then_some(left)
                }
                _ => None,
            };
            match lapses {
                Some(left) if !ctx.deadline.passed() => {
                    let wait = backoff.min(left + Duration::from_millis(10));
                    tracing::debug!(pipeline = %self.pipeline, id = %crate::faults::quoted(&id), ?wait, "in progress elsewhere; its lock lapses before ours");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                _ => break (claim, now),
            }
        };
        match decide(&claim, &owner, hash.as_deref(), self.idem.max_attempts, now) {
            Decision::Run { attempts } => {
                lock(claims).taken.push(Taken {
                    unit: u.shared.unit,
                    id,
                    hash,
                    attempts,
                    exhausted: None,
                });
                Ok(u.with(Admitted::Run))
            }
            Decision::Skip => {
                tracing::debug!(pipeline = %self.pipeline, id = %crate::faults::quoted(&id), "completed before: done");
                self.remember(id, &claim);
                Ok(u.with(Admitted::Done))
            }
            Decision::Busy => Err(StepError::new(
                ErrorClass::Transient,
                "IdempotencyInProgress",
                format!("{id} is in progress in another invocation"),
            )),
            Decision::Mismatch { stored } => Err(StepError::poison_msg(format!(
                "{id} was completed with payload hash {stored}, this one is {}",
                hash.as_deref().unwrap_or("-")
            ))
            .named("IdempotencyMismatch")),
            Decision::Exhausted {
                attempts,
                last_error,
            } => {
                let last = last_error.unwrap_or_else(|| "unknown".into());
                let msg = format!(
                    "{attempts} failed attempts (at most {}); last error: {}",
                    self.idem.max_attempts.unwrap_or(attempts),
                    truncate(&last, REASON_BYTES)
                );
                lock(claims).taken.push(Taken {
                    unit: u.shared.unit,
                    id,
                    hash,
                    attempts,
                    exhausted: Some(last),
                });
                Err(StepError::poison_msg(msg).named("AttemptsExhausted"))
            }
        }
    }

    /// True when this container saw `id` completed and its mark still lives.
    fn seen(&self, id: &str, now: u64) -> bool {
        let Some(seen) = &self.idem.seen else {
            return false;
        };
        let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        match seen.get(id) {
            Some(until) if *until > now => true,
            Some(_) => {
                seen.pop(id);
                false
            }
            None => false,
        }
    }

    fn remember(&self, id: String, claim: &super::Claim) {
        let until = match claim {
            super::Claim::Held { current } => current.expiration_s.saturating_mul(1000),
            super::Claim::Taken { .. } => return,
        };
        self.remember_until(id, until);
    }

    fn remember_until(&self, id: String, until_ms: u64) {
        if let Some(seen) = &self.idem.seen {
            seen.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .put(id, until_ms);
        }
    }

    /// Writes every claim's mark: completed for a unit done, failed otherwise (one more attempt
    /// when a step failed transiently). A mark not written leaves its lock to run out.
    async fn settle(&self, ctx: &RunCtx, claims: &Mutex<Claims>, finals: &[Outcome]) {
        let (taken, uncertain) = {
            let mut c = lock(claims);
            (
                std::mem::take(&mut c.taken),
                std::mem::take(&mut c.uncertain),
            )
        };
        for (id, owner) in &uncertain {
            if let Err(e) = self.idem.store.release(id, owner).await {
                tracing::warn!(pipeline = %self.pipeline, id = %crate::faults::quoted(id), error = %truncate(&e.to_string(), REASON_BYTES), "a claim whose answer was lost may hold its lock until the invocation's end");
            }
        }
        if taken.is_empty() {
            return;
        }
        let outcomes: HashMap<u32, Outcome> =
            ctx.outcomes().map(|(unit, o)| (unit as u32, o)).collect();
        let failures = ctx.failures();
        let now = now_ms();
        let expiration_s = self.expiration_s(now);
        let mut completed = Vec::new();
        let marks: Vec<(String, Mark)> = taken
            .into_iter()
            .map(|t| {
                let outcome = outcomes.get(&t.unit).copied().unwrap_or(Outcome::Retry);
                let (status, attempts, last_error) = match (&t.exhausted, outcome) {
                    // faulted with its data: a resubmission of the fault runs afresh; a record
                    // whose fault waits for its redelivery is faulted again at once
                    (Some(last), _) => {
                        let set_aside = finals.get(t.unit as usize) == Some(&Outcome::Faulted);
                        let attempts = if set_aside { 0 } else { t.attempts };
                        (Status::Failed, attempts, Some(last.clone()))
                    }
                    (None, Outcome::Done) => (Status::Completed, t.attempts, None),
                    (None, _) => match failures.get(&t.unit) {
                        Some(reason) => (
                            Status::Failed,
                            t.attempts.saturating_add(1),
                            Some(truncate(reason, REASON_BYTES).to_owned()),
                        ),
                        None => (Status::Failed, t.attempts, None),
                    },
                };
                if status == Status::Completed {
                    completed.push(t.id.clone());
                }
                let mark = Mark {
                    status,
                    lock_expiry_ms: 0,
                    expiration_s,
                    payload_hash: t.hash,
                    attempts,
                    last_error,
                    owner: None,
                };
                (t.id, mark)
            })
            .collect();
        // the marks are worth a few tries: a lock left behind makes redeliveries retry until
        // it lapses
        let mut delays = BatchLimits::RETRY.delays();
        let written = loop {
            match self.idem.store.settle(&marks).await {
                Err(e) if e.class() == ErrorClass::Transient => match delays.next() {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => break Err(e),
                },
                other => break other,
            }
        };
        match written {
            Ok(()) => {
                for id in completed {
                    self.remember_until(id, expiration_s.saturating_mul(1000));
                }
            }
            Err(e) => tracing::error!(
                pipeline = %self.pipeline,
                marks = marks.len(),
                error = %truncate(&e.to_string(), REASON_BYTES),
                "idempotency marks not written; their locks run out with the invocation"
            ),
        }
    }
}

/// A token unique to one claim: this process (its id and start) and a counter.
fn claim_token() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PROCESS: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let process = PROCESS.get_or_init(|| format!("{}-{}", std::process::id(), now_ms()));
    format!("{process}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
