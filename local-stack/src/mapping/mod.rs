//! Event source mappings, emulated: pollers that read DynamoDB Streams, Kinesis shards and SQS
//! queues in the emulator and invoke functions with Lambda's event shapes.
//!
//! What each honours, as Lambda documents it:
//! - batch size and batching window; event filters (records that match no filter are skipped and
//!   checkpointed, SQS messages that match none are deleted);
//! - partial batch responses: a stream resumes at the lowest reported sequence number (records
//!   before it are not delivered again), an SQS mapping deletes every message but the reported
//!   ones; an invalid item identifier fails the whole batch;
//! - function errors: the whole batch is retried; with `BisectBatchOnFunctionError` it is split
//!   in two until the failing record is alone (splits do not count as retries);
//! - `MaximumRetryAttempts` and `MaximumRecordAgeInSeconds`: the batch is then described on the
//!   on-failure destination (an SQS queue) and the shard moves on;
//! - `ParallelizationFactor` (1–10): a shard's records are split by partition key hash into that
//!   many lanes, each delivering one batch at a time in order, concurrently with the others; a
//!   retry holds its own lane only, and the shard's checkpoint moves past a record only when it
//!   and every record before it has finished ([`checkpoint`]);
//! - SQS `ScalingConfig.MaximumConcurrency`: that many batches in flight at once (else 5, as
//!   Lambda starts), and a batching window that gathers several receives into one batch.
//!
//! The rules themselves are pure and tested on their own ([`policy`]); the pollers read, invoke
//! and write around them. `UpdateEventSourceMapping` (enabled, batch size) reaches a running
//! poller through its [`control`].
//!
//! Local differences, for speed: retries wait 100 ms doubling to 2 s rather than Lambda's
//! schedule, and an SQS message a function failed becomes visible again after 1 s rather than
//! after the queue's visibility timeout.

pub mod checkpoint;
pub mod control;
pub mod policy;
pub mod queue;
pub mod records;
pub mod stream;

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

/// What one mapping has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Invocations made.
    pub invocations: u64,
    /// Records delivered (counting redeliveries).
    pub delivered: u64,
    /// Records (or messages) finished: succeeded, or skipped by a filter.
    pub finished: u64,
    /// Records skipped (or messages deleted) because no filter matched.
    pub filtered: u64,
    /// Invocations that asked for (part of) the batch again, or failed.
    pub retried: u64,
    /// Records given up on and described on the on-failure destination.
    pub given_up: u64,
    /// Streams: the oldest record's age when its batch was delivered, at most (milliseconds).
    pub max_iterator_age_ms: u64,
    /// Streams: each shard's checkpoint, the last sequence number up to which every record
    /// has finished.
    pub checkpoints: BTreeMap<String, String>,
}

/// Counters of every mapping, by `function/event`.
#[derive(Debug, Default)]
pub struct Activity(Mutex<BTreeMap<String, Counters>>);

impl Activity {
    /// Updates one mapping's counters.
    pub fn update(&self, key: &str, f: impl FnOnce(&mut Counters)) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(key.to_owned()).or_default());
    }

    /// A copy of every mapping's counters.
    pub fn snapshot(&self) -> BTreeMap<String, Counters> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
