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
//!   on-failure destination (an SQS queue) and the shard moves on.
//!
//! Local differences, for speed: retries wait 100 ms doubling to 2 s rather than Lambda's
//! schedule, and an SQS message a function failed becomes visible again after 1 s rather than
//! after the queue's visibility timeout.

pub mod queue;
pub mod records;
pub mod stream;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

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

/// The URL of the SQS queue with this ARN.
pub async fn queue_url(sqs: &aws_sdk_sqs::Client, arn: &str) -> Result<String, crate::Error> {
    let name = arn.rsplit(':').next().unwrap_or(arn);
    let out = sqs
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .map_err(crate::Error::aws)?;
    Ok(out.queue_url().unwrap_or_default().to_owned())
}

/// The wait before retry `attempt` (1-based).
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(5))).min(Duration::from_secs(2))
}

/// The item identifiers a partial batch response reports, or `None` when the response is not
/// one (then the batch succeeded).
///
/// ```
/// use local_stack::mapping::reported_failures;
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
