//! Idempotency: work completed once is not done again when Lambda delivers its record again,
//! and a record that keeps failing is faulted with its data after a number of attempts.
//!
//! A partial batch response makes Lambda redeliver a stream's records from the checkpoint on,
//! including those that had succeeded; SQS and asynchronous invocations redeliver too. A
//! pipeline made [idempotent](crate::AssembledPipeline::idempotent) claims each unit in an
//! [`IdempotencyStore`] before its first step, per pipeline and record identity (the event id
//! by default, or [`Idempotency::key`]):
//!
//! | the store holds | the unit |
//! |---|---|
//! | nothing, an expired mark, or `FAILED` | is claimed `INPROGRESS` and runs |
//! | `COMPLETED` | is done without running (and remembered in this container) |
//! | `COMPLETED` with another payload hash | is a poison fault (`IdempotencyMismatch`) |
//! | `INPROGRESS` under a live lock | is retry: another invocation runs it |
//! | `FAILED` (or a lock that ran out) `max_attempts` times | is faulted (`AttemptsExhausted`) with its data, without running; once the fault is published the count starts again, so resubmitting it runs the record |
//!
//! When the batch is over, each claim is settled in one pass (`BatchWriteItem`): `COMPLETED`
//! (until the TTL) for a unit done, `FAILED` for one faulted or retry, its attempts one more
//! when a step failed transiently. The lock lasts at most until the invocation's end, so a
//! crashed or timed-out invocation never holds a record longer than it could have run; a lock
//! that ran out counts as a failed attempt, so a record that kills its function ends faulted
//! too.
//!
//! The guarantee is at-least-once with duplicates suppressed: an effect whose completion mark
//! could not be written (the invocation died between the two) runs again on redelivery.
//!
//! ```
//! use lambda_stream::{Handler, IntoPipeline, Pipeline, StepError, testing::{MemoryFaults, MemoryIdempotency}};
//! use lambda_stream::idempotency::Idempotency;
//!
//! let guard = Idempotency::new(MemoryIdempotency::default()).max_attempts(3);
//! let handler = Handler::builder(MemoryFaults::default())
//!     .pipeline(
//!         Pipeline::new("notify")
//!             .then(|uow| async move { Ok::<_, StepError>(uow) })
//!             .into_pipeline()
//!             .idempotent(guard),
//!     )
//!     .build()
//!     .unwrap();
//! # let _ = handler;
//! ```

mod dynamodb;
mod guard;
mod mark;

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use lru::LruCache;

pub use dynamodb::DynamoDbIdempotency;
pub(crate) use guard::Guard;
pub use mark::{Claim, Mark, Status};

use crate::connectors::DynamoDb;
use crate::error::StepError;
use crate::settings::Settings;
use crate::uow::UnitOfWork;

/// A claim: take the record's mark as `INPROGRESS` when [`Mark::claimable`] says it may, or
/// when its `owner` token holds it already.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    /// The mark's id: the pipeline's id and the record's key.
    pub id: &'a str,
    /// Now (epoch ms), for the claimable test.
    pub now_ms: u64,
    /// The lock's end (epoch ms).
    pub lock_expiry_ms: u64,
    /// The mark's expiry (epoch seconds).
    pub expiration_s: u64,
    /// The payload's hash, when validated.
    pub payload_hash: Option<&'a str>,
    /// A token unique to this claim: sent again (its answer lost), the claim takes its own
    /// lock instead of finding it held.
    pub owner: &'a str,
}

/// Where marks are kept. A claim must be atomic: of two concurrent claims on one id, one is
/// `Taken`, the other `Held`.
pub trait IdempotencyStore: Send + Sync {
    /// Claims a record: the lock when its mark is claimable, else the mark that stands.
    fn claim<'a>(&'a self, req: &'a ClaimRequest<'a>) -> BoxFuture<'a, Result<Claim, StepError>>;

    /// Writes the marks that settle claims (completed or failed), whole.
    fn settle<'a>(&'a self, marks: &'a [(String, Mark)]) -> BoxFuture<'a, Result<(), StepError>>;

    /// Releases a claim whose answer was lost, if it was written: when the mark's owner is
    /// `owner`, it becomes `FAILED` (its attempts kept); otherwise nothing changes.
    fn release<'a>(&'a self, id: &'a str, owner: &'a str) -> BoxFuture<'a, Result<(), StepError>>;
}

impl<S: IdempotencyStore + ?Sized> IdempotencyStore for Arc<S> {
    fn claim<'a>(&'a self, req: &'a ClaimRequest<'a>) -> BoxFuture<'a, Result<Claim, StepError>> {
        (**self).claim(req)
    }

    fn settle<'a>(&'a self, marks: &'a [(String, Mark)]) -> BoxFuture<'a, Result<(), StepError>> {
        (**self).settle(marks)
    }

    fn release<'a>(&'a self, id: &'a str, owner: &'a str) -> BoxFuture<'a, Result<(), StepError>> {
        (**self).release(id, owner)
    }
}

type KeyFn = Arc<dyn Fn(&UnitOfWork) -> String + Send + Sync>;
type PayloadFn = Arc<dyn Fn(&UnitOfWork) -> Vec<u8> + Send + Sync>;

/// Completed ids this container has seen (until their marks expire, epoch ms), so a
/// redelivery to the same container skips them without a read.
type Seen = Arc<Mutex<LruCache<String, u64>>>;

/// How a pipeline guards its units: the store, the record's identity, how long marks live,
/// whether payloads are compared, and how many failed attempts a record gets.
///
/// Clones share the store and the container's cache.
#[derive(Clone)]
pub struct Idempotency {
    pub(crate) store: Arc<dyn IdempotencyStore>,
    pub(crate) key: KeyFn,
    pub(crate) payload: Option<PayloadFn>,
    pub(crate) ttl: Duration,
    pub(crate) lock: Duration,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) seen: Option<Seen>,
    /// The marks' DynamoDB table, when the store is one: effects written there can complete
    /// their claim in the same transaction.
    pub(crate) table: Option<String>,
}

/// Completed ids remembered per container, by default.
const CACHE_ENTRIES: usize = 1024;

impl Idempotency {
    /// Guards with `store`: identity the event id, completed marks kept 24 hours (a Kinesis
    /// stream's default retention, so no redelivery outlives its mark), locks at most 5
    /// minutes (and never past the invocation's end), no payload validation, attempts counted
    /// but unlimited, 1,024 completed ids cached per container.
    pub fn new(store: impl IdempotencyStore + 'static) -> Self {
        let any: &dyn std::any::Any = &store;
        let table = any
            .downcast_ref::<DynamoDbIdempotency>()
            .or_else(|| any.downcast_ref::<Arc<DynamoDbIdempotency>>().map(|a| &**a))
            .map(|s| s.table().to_owned());
        Idempotency {
            table,
            store: Arc::new(store),
            key: Arc::new(|uow: &UnitOfWork| uow.event().id.clone()),
            payload: None,
            ttl: Duration::from_secs(24 * 3600),
            lock: Duration::from_secs(300),
            max_attempts: None,
            seen: NonZeroUsize::new(CACHE_ENTRIES).map(|n| Arc::new(Mutex::new(LruCache::new(n)))),
        }
    }

    /// The guard the settings describe: marks in `IDEMPOTENCY_TABLE_NAME` through `db`'s
    /// client, at most `IDEMPOTENCY_MAX_ATTEMPTS` failed attempts; `None` when no table is set.
    pub fn from_settings(settings: &Settings, db: &DynamoDb) -> Option<Self> {
        let table = settings.idempotency_table.as_deref()?;
        let guard = Idempotency::new(DynamoDbIdempotency::new(db.client().clone(), table));
        Some(match settings.idempotency_max_attempts {
            Some(n) => guard.max_attempts(n),
            None => guard,
        })
    }

    /// The record's identity within the pipeline (default: the event id).
    pub fn key(mut self, key: impl Fn(&UnitOfWork) -> String + Send + Sync + 'static) -> Self {
        self.key = Arc::new(key);
        self
    }

    /// Compares a hash of the event (its JSON) with the completed mark's: the same identity
    /// with other content is a poison fault, not a silent skip.
    pub fn validate_payload(self) -> Self {
        self.payload(|uow| serde_json::to_vec(uow.event()).unwrap_or_default())
    }

    /// Like [`validate_payload`](Self::validate_payload), over the bytes `payload` picks (say,
    /// the fields that matter, without timestamps).
    pub fn payload(
        mut self,
        payload: impl Fn(&UnitOfWork) -> Vec<u8> + Send + Sync + 'static,
    ) -> Self {
        self.payload = Some(Arc::new(payload));
        self
    }

    /// How long a mark lives after it is written (the table's TTL).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The longest lock, for runs without a deadline; with one, a lock ends with the
    /// invocation.
    pub fn lock_at_most(mut self, lock: Duration) -> Self {
        self.lock = lock;
        self
    }

    /// After `n` failed attempts a record is faulted with its data (`AttemptsExhausted`, the
    /// attempts and the last error in the fault's message) instead of being retried again, so
    /// the shard moves on and the record can be resubmitted from the fault. `0` is unlimited.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = (n > 0).then_some(n);
        self
    }

    /// How many completed ids this container remembers (`0`: none, every unit reads the store).
    pub fn cache(mut self, entries: usize) -> Self {
        self.seen = NonZeroUsize::new(entries).map(|n| Arc::new(Mutex::new(LruCache::new(n))));
        self
    }
}

impl crate::AssembledPipeline {
    /// Guards the pipeline with `idempotency`: each unit is claimed before the first step, and
    /// skipped when completed before (see the [module](crate::idempotency)).
    pub fn idempotent(mut self, idempotency: Idempotency) -> Self {
        let guard = Arc::new(Guard::new(Arc::clone(&self.id), idempotency));
        let run = self.run;
        self.run = Arc::new(move |ctx, units| {
            let units = guard.claims(Arc::clone(&ctx), units);
            run(ctx, units)
        });
        self
    }
}

impl std::fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency")
            .field("ttl", &self.ttl)
            .field("lock", &self.lock)
            .field("max_attempts", &self.max_attempts)
            .field("validates_payload", &self.payload.is_some())
            .finish_non_exhaustive()
    }
}
