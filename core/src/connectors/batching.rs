//! The batch APIs (EventBridge `PutEvents`, Kinesis `PutRecords`, SQS `SendMessageBatch`) in one
//! place: a connector says what differs ([`BatchApi`]: its entries, their size, one request and
//! its answer) and [`publish_all`] does the rest: requests sized to the limits, several at once,
//! only the failed entries sent again (these APIs succeed partially), with backoff and jitter,
//! up to a bound, and the answers put back in order.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{StreamExt, stream};
use serde::Serialize;

use super::wire::Wire;
use crate::claimcheck::ClaimCheck;
use crate::encryption::Sealer;
use crate::error::{ErrorClass, StepError};
use crate::event::{Event, FaultEvent};
use crate::retry::Retry;

/// Something published as an event: its JSON is the entry's detail (the record's data, the
/// message body), its type the detail type, its partition key the shard or message group.
pub trait Publishable: Serialize {
    /// The event's id.
    fn id(&self) -> &str;
    /// The event's type.
    fn event_type(&self) -> &str;
    /// The event's partition key, if any.
    fn partition_key(&self) -> Option<&str>;
}

// events and fault events carry the same three fields
macro_rules! publishable {
    ($($t:ty),*) => {$(
        impl Publishable for $t {
            fn id(&self) -> &str {
                &self.id
            }
            fn event_type(&self) -> &str {
                &self.event_type
            }
            fn partition_key(&self) -> Option<&str> {
                self.partition_key.as_deref()
            }
        }
    )*};
}
publishable!(Event, FaultEvent);

impl Publishable for crate::EventRef<'_> {
    fn id(&self) -> &str {
        crate::EventRef::id(self)
    }
    fn event_type(&self) -> &str {
        crate::EventRef::event_type(self)
    }
    fn partition_key(&self) -> Option<&str> {
        crate::EventRef::partition_key(self)
    }
}

impl<P: Publishable> Publishable for &P {
    fn id(&self) -> &str {
        (**self).id()
    }
    fn event_type(&self) -> &str {
        (**self).event_type()
    }
    fn partition_key(&self) -> Option<&str> {
        (**self).partition_key()
    }
}

/// What one batch API does differently from the others.
pub trait BatchApi: Sync {
    /// One entry of a request.
    type Entry: Send + Sync;
    /// The limits of a request.
    fn limits(&self) -> &BatchLimits;
    /// How events are written: compressed, claim-checked.
    fn wire(&self) -> &Wire;
    /// The entry for `event`, whose JSON as published is `json`; an error means it can never
    /// be sent (poison).
    fn entry<P: Publishable>(&self, event: &P, json: String) -> Result<Self::Entry, StepError>;
    /// The bytes the entry counts for, as the service counts them.
    fn size(&self, entry: &Self::Entry) -> usize;
    /// Sends one request of `entries`; the answer for each entry, in order.
    ///
    /// The entries are the request's own: an entry is made once and moved into the request
    /// that first sends it (made again only for a retry), so the hot path copies no detail.
    fn send(&self, entries: Vec<Self::Entry>)
    -> BoxFuture<'_, Result<Vec<EntryResult>, StepError>>;
}

/// Publishes `events` through `api`, one result per event, in order: each written as
/// [`BatchApi::wire`] says, an entry over the limits claim-checked when the wire has a
/// claim-check.
pub async fn publish_all<A: BatchApi, P: Publishable>(
    api: &A,
    events: &[P],
) -> Vec<Result<(), StepError>> {
    let wire = api.wire();
    // one data key for the batch (made once per container, then cached)
    let sealer = match wire.encryption() {
        Some(e) => match e.envelope.sealer(&e.master_key).await {
            Ok(sealer) => Some(sealer),
            Err(err) => return events.iter().map(|_| Err(copy(&err))).collect(),
        },
        None => None,
    };
    let sealer = sealer.as_ref();
    let mut entries: Vec<Result<A::Entry, StepError>> =
        events.iter().map(|e| made(api, e, sealer)).collect();
    let pointers = match wire.claim_checks() {
        Some(claim_check) => {
            claim_check_oversize(api, claim_check, events, sealer, &mut entries).await
        }
        None => HashMap::new(),
    };
    // what can be sent moves into its first request; the rest is already answered
    let mut answered: Vec<Option<StepError>> = Vec::with_capacity(entries.len());
    let mut unsent: Vec<Option<A::Entry>> = Vec::with_capacity(entries.len());
    let mut origin: Vec<usize> = Vec::with_capacity(entries.len());
    let mut sizes: Vec<usize> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        match entry {
            Ok(entry) => {
                sizes.push(api.size(&entry));
                unsent.push(Some(entry));
                origin.push(i);
                answered.push(None);
            }
            Err(e) => answered.push(Some(e)),
        }
    }
    let unsent = Mutex::new(unsent);
    let results = send_all(&sizes, api.limits(), |idx| {
        let taken: Vec<Option<A::Entry>> = {
            let mut unsent = unsent.lock().unwrap_or_else(PoisonError::into_inner);
            idx.iter().map(|i| unsent[*i].take()).collect()
        };
        let (origin, pointers) = (&origin, &pointers);
        async move {
            let mut request = Vec::with_capacity(taken.len());
            for (i, entry) in idx.iter().zip(taken) {
                let entry = match entry {
                    Some(entry) => entry,
                    None => {
                        let at = origin[*i];
                        match pointers.get(&at) {
                            Some(pointer) => api.entry(&events[at], pointer.clone())?,
                            None => made(api, &events[at], sealer)?,
                        }
                    }
                };
                request.push(entry);
            }
            api.send(request).await
        }
    })
    .await;
    merge(answered, results)
}

/// The entry for `event` as the wire writes it.
fn made<A: BatchApi, P: Publishable>(
    api: &A,
    event: &P,
    sealer: Option<&Sealer>,
) -> Result<A::Entry, StepError> {
    api.wire()
        .json(event, sealer)
        .and_then(|json| api.entry(event, json))
}

/// Stores each entry too big for a request in the claim-check and puts its pointer event in
/// its place; an entry whose object could not be stored fails with that error. Returns the
/// pointers by event, to make an entry again for a retry without storing its object twice.
async fn claim_check_oversize<A: BatchApi, P: Publishable>(
    api: &A,
    claim_check: &ClaimCheck,
    events: &[P],
    sealer: Option<&Sealer>,
    entries: &mut [Result<A::Entry, StepError>],
) -> HashMap<usize, String> {
    let limit = api.limits().max_entry_bytes.min(api.limits().max_bytes);
    let over: Vec<usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.as_ref().is_ok_and(|e| api.size(e) > limit))
        .map(|(i, _)| i)
        .collect();
    let mut kept = HashMap::new();
    if over.is_empty() {
        return kept;
    }
    let now = chrono::Utc::now().timestamp_millis();
    // the rare oversize event is serialized again rather than every event's JSON kept
    let stores: Vec<_> = over
        .iter()
        .map(|&i| {
            let event = &events[i];
            async move {
                let json = api.wire().json(event, sealer)?;
                claim_check.store(&json, now).await
            }
        })
        .collect();
    let pointers: Vec<Result<String, StepError>> = stream::iter(stores)
        .buffered(api.limits().parallel.max(1))
        .collect()
        .await;
    for (i, pointer) in over.into_iter().zip(pointers) {
        entries[i] = pointer.and_then(|pointer| {
            let entry = api.entry(&events[i], pointer.clone());
            kept.insert(i, pointer);
            entry
        });
    }
    kept
}

/// The limits of one batch request, and how requests are sent.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Entries per request.
    pub max_count: usize,
    /// Bytes per request, counted as the service counts them.
    pub max_bytes: usize,
    /// Bytes per entry.
    pub max_entry_bytes: usize,
    /// Requests in flight at once.
    pub parallel: usize,
    /// Retries of failed entries.
    pub retry: Retry,
}

impl BatchLimits {
    /// The retry of failed entries the batch connectors start from: four attempts, 100 ms to
    /// 2 s apart, the back-off the AWS SDKs use for throttled batch entries.
    pub const RETRY: Retry = Retry {
        attempts: 4,
        min_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(2),
    };

    /// These limits with the batch size (`BATCH_SIZE`, capped at the API's maximum) and the
    /// requests in flight (`PUBLISH_PARALLEL`, else `PARALLEL`) the settings give.
    ///
    /// ```
    /// use lambda_stream::{Settings, connectors::EVENTBRIDGE_LIMITS};
    /// let mut settings = Settings::default();
    /// settings.batch_size = Some(50);
    /// assert_eq!(EVENTBRIDGE_LIMITS.tuned(&settings).max_count, 10);
    /// ```
    pub fn tuned(self, settings: &crate::Settings) -> Self {
        BatchLimits {
            max_count: settings
                .batch_size
                .map_or(self.max_count, |n| n.min(self.max_count)),
            parallel: settings.publish_parallel(),
            ..self
        }
    }
}

/// What a batch call said about one entry.
#[derive(Debug, Clone)]
pub enum EntryResult {
    /// Accepted.
    Ok,
    /// Rejected.
    Failed {
        /// The entry's error code.
        code: String,
        /// The entry's error message.
        message: String,
        /// Whether sending it again may succeed (throttling, an internal failure).
        transient: bool,
    },
}

fn copy(e: &StepError) -> StepError {
    StepError::new(e.class(), e.name().to_owned(), e.to_string())
}

/// Sends entries (given by their sizes) in requests within `limits`, up to `limits.parallel`
/// requests at once; `send` gets the positions of one request's entries and answers per entry.
/// Returns one result per entry.
async fn send_all<F, Fut>(
    sizes: &[usize],
    limits: &BatchLimits,
    send: F,
) -> Vec<Result<(), StepError>>
where
    F: Fn(Vec<usize>) -> Fut,
    Fut: Future<Output = Result<Vec<EntryResult>, StepError>>,
{
    let mut results: Vec<Option<Result<(), StepError>>> = (0..sizes.len()).map(|_| None).collect();
    let mut requests: Vec<Vec<usize>> = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for (i, &size) in sizes.iter().enumerate() {
        let limit = limits.max_entry_bytes.min(limits.max_bytes);
        if size > limit {
            let e = StepError::poison_msg(format!(
                "entry of {size} bytes exceeds the limit of {limit} bytes"
            ));
            results[i] = Some(Err(e.named("OversizeError")));
            continue;
        }
        if current.len() == limits.max_count.max(1) || bytes + size > limits.max_bytes {
            requests.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(i);
    }
    if !current.is_empty() {
        requests.push(current);
    }
    let send = &send;
    let done: Vec<Vec<(usize, Result<(), StepError>)>> = stream::iter(requests)
        .map(|request| send_request(request, limits, send))
        .buffer_unordered(limits.parallel.max(1))
        .collect()
        .await;
    for (i, r) in done.into_iter().flatten() {
        results[i] = Some(r);
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(StepError::transient("entry was not sent"))))
        .collect()
}

/// One request, with selective retries of its failed entries.
async fn send_request<F, Fut>(
    request: Vec<usize>,
    limits: &BatchLimits,
    send: &F,
) -> Vec<(usize, Result<(), StepError>)>
where
    F: Fn(Vec<usize>) -> Fut,
    Fut: Future<Output = Result<Vec<EntryResult>, StepError>>,
{
    let mut out = Vec::with_capacity(request.len());
    let mut pending = request;
    let mut delays = limits.retry.delays();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut again = Vec::new();
        let mut last: Option<StepError> = None;
        match send(pending.clone()).await {
            Ok(per_entry) if per_entry.len() == pending.len() => {
                for (i, r) in pending.iter().zip(per_entry) {
                    match r {
                        EntryResult::Ok => out.push((*i, Ok(()))),
                        EntryResult::Failed {
                            code,
                            message,
                            transient: true,
                        } => {
                            last = Some(
                                StepError::transient(format!("{code}: {message}")).named(code),
                            );
                            again.push(*i);
                        }
                        EntryResult::Failed {
                            code,
                            message,
                            transient: false,
                        } => {
                            let e = StepError::poison(format!("{code}: {message}")).named(code);
                            out.push((*i, Err(e)));
                        }
                    }
                }
            }
            Ok(per_entry) => {
                let msg = format!("{} results for {} entries", per_entry.len(), pending.len());
                last = Some(StepError::transient(msg).named("MismatchedResponse"));
                again = pending;
            }
            Err(e) if e.class() == ErrorClass::Transient => {
                last = Some(e);
                again = pending;
            }
            Err(e) => {
                out.extend(pending.iter().map(|i| (*i, Err(copy(&e)))));
            }
        }
        if again.is_empty() {
            return out;
        }
        // a retry never sleeps past the invocation's margin: what is left is retried later
        let delay = delays.next();
        let slept = match delay {
            Some(delay) => crate::deadline::sleep_for_retry(delay).await,
            None => false,
        };
        match delay {
            Some(delay) if slept => {
                tracing::debug!(
                    entries = again.len(),
                    ?delay,
                    "retried failed batch entries"
                );
                pending = again;
            }
            _ => {
                let e = last.unwrap_or_else(|| StepError::transient("batch entries failed"));
                let e =
                    StepError::transient(format!("still failing after {attempts} attempts: {e}"))
                        .named(e.name().to_owned());
                out.extend(again.iter().map(|i| (*i, Err(copy(&e)))));
                return out;
            }
        }
    }
}

/// Puts the results of the sent entries back in place among the entries that could not be
/// prepared (serialized), whose own errors stand.
fn merge(
    answered: Vec<Option<StepError>>,
    results: Vec<Result<(), StepError>>,
) -> Vec<Result<(), StepError>> {
    let mut results = results.into_iter();
    answered
        .into_iter()
        .map(|a| match a {
            None => results
                .next()
                .unwrap_or_else(|| Err(StepError::transient("entry was not sent"))),
            Some(e) => Err(e),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_count: usize, max_bytes: usize) -> BatchLimits {
        BatchLimits {
            max_count,
            max_bytes,
            max_entry_bytes: max_bytes,
            parallel: 1,
            retry: Retry {
                attempts: 3,
                min_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(2),
            },
        }
    }

    #[tokio::test]
    async fn requests_respect_count_and_bytes_and_oversize_entries_are_poison() {
        let requests = std::sync::Mutex::new(Vec::new());
        let results = send_all(&[4, 4, 4, 1, 20, 1], &limits(2, 8), |idx| {
            requests.lock().unwrap().push(idx.clone());
            let n = idx.len();
            async move { Ok(vec![EntryResult::Ok; n]) }
        })
        .await;
        assert_eq!(
            requests.into_inner().unwrap(),
            vec![vec![0, 1], vec![2, 3], vec![5]]
        );
        assert!(
            results[4]
                .as_ref()
                .is_err_and(|e| e.name() == "OversizeError")
        );
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 5);
    }

    #[tokio::test]
    async fn only_failed_entries_are_retried_and_non_transient_failures_are_poison() {
        let calls: std::sync::Mutex<Vec<Vec<usize>>> = Default::default();
        let results = send_all(&[1, 1, 1], &limits(10, 100), |idx| {
            let first = {
                let mut calls = calls.lock().unwrap();
                calls.push(idx.clone());
                calls.len() == 1
            };
            async move {
                Ok(idx
                    .iter()
                    .map(|i| match (*i, first) {
                        (1, true) => EntryResult::Failed {
                            code: "ThrottlingException".into(),
                            message: "slow down".into(),
                            transient: true,
                        },
                        (2, _) => EntryResult::Failed {
                            code: "ValidationException".into(),
                            message: "bad".into(),
                            transient: false,
                        },
                        _ => EntryResult::Ok,
                    })
                    .collect())
            }
        })
        .await;
        assert_eq!(calls.into_inner().unwrap(), vec![vec![0, 1, 2], vec![1]]);
        assert!(results[0].is_ok() && results[1].is_ok());
        assert_eq!(results[2].as_ref().unwrap_err().class(), ErrorClass::Poison);
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_sleeps_past_the_deadline_margin() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let mut slow = limits(10, 100);
        slow.retry = Retry {
            attempts: 5,
            min_delay: Duration::from_millis(400),
            max_delay: Duration::from_millis(400),
        };
        let limit = tokio::time::Instant::now() + Duration::from_millis(500);
        let started = tokio::time::Instant::now();
        let results = crate::deadline::bounded(
            Some(limit),
            send_all(&[1], &slow, |idx| {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    Ok(idx
                        .iter()
                        .map(|_| EntryResult::Failed {
                            code: "ThrottlingException".into(),
                            message: "slow down".into(),
                            transient: true,
                        })
                        .collect())
                }
            }),
        )
        .await;
        // one retry fits before the limit (at ~400 ms, with jitter), a second would not
        assert!(calls.into_inner() <= 2);
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(
            results[0].as_ref().unwrap_err().class(),
            ErrorClass::Transient
        );
    }

    /// A batch API whose entries are the JSON, sized by length, all accepted (but the
    /// entries of the first `refused` requests, refused as throttled).
    struct Echo {
        limits: BatchLimits,
        wire: Wire,
        sent: std::sync::Mutex<Vec<String>>,
        refused: std::sync::atomic::AtomicUsize,
    }

    impl Echo {
        fn new(limits: BatchLimits, wire: Wire) -> Echo {
            Echo {
                limits,
                wire,
                sent: Default::default(),
                refused: Default::default(),
            }
        }
    }

    impl BatchApi for Echo {
        type Entry = String;
        fn limits(&self) -> &BatchLimits {
            &self.limits
        }
        fn wire(&self) -> &Wire {
            &self.wire
        }
        fn entry<P: Publishable>(&self, _: &P, json: String) -> Result<String, StepError> {
            Ok(json)
        }
        fn size(&self, entry: &String) -> usize {
            entry.len()
        }
        fn send(&self, entries: Vec<String>) -> BoxFuture<'_, Result<Vec<EntryResult>, StepError>> {
            let n = entries.len();
            self.sent.lock().unwrap().extend(entries);
            let refuse = self
                .refused
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |left| left.checked_sub(1),
                )
                .is_ok();
            let answer = if refuse {
                EntryResult::Failed {
                    code: "ThrottlingException".into(),
                    message: "slow down".into(),
                    transient: true,
                }
            } else {
                EntryResult::Ok
            };
            Box::pin(async move { Ok(vec![answer; n]) })
        }
    }

    #[tokio::test]
    async fn only_oversize_entries_are_claim_checked_and_their_pointers_sent() {
        let store = std::sync::Arc::new(crate::testing::MemoryClaimChecks::default());
        let claim_check = ClaimCheck::new(store.clone(), "claims", "eu-west-1");
        let api = Echo::new(limits(10, 2_000), Wire::plain().claim_check(claim_check));
        let big = Event::new("big", "t", 1)
            .with_partition_key("k")
            .with_entity("blob", serde_json::json!("x".repeat(5_000)));
        let small = Event::new("small", "t", 1);
        let results = publish_all(&api, &[big.clone(), small]).await;
        assert!(results.iter().all(Result::is_ok));
        let sent = api.sent.into_inner().unwrap();
        let pointer: serde_json::Value = serde_json::from_str(&sent[0]).unwrap();
        assert_eq!(pointer["partitionKey"], "k");
        assert!(pointer.get("blob").is_none());
        let key = pointer["s3"]["key"].as_str().unwrap();
        assert!(key.starts_with("eu-west-1/claimchecks/") && key.ends_with("/big"));
        let objects = store.objects();
        assert_eq!(objects.len(), 1);
        let stored: Event =
            serde_json::from_slice(&objects[&("claims".to_owned(), key.to_owned())]).unwrap();
        assert_eq!(stored, big);
        assert!(sent[1].contains("small"));
    }

    #[tokio::test]
    async fn retries_are_bounded_then_the_entries_are_transient_failures() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let results = send_all(&[1, 1], &limits(10, 100), |idx| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                Ok(idx
                    .iter()
                    .map(|_| EntryResult::Failed {
                        code: "InternalFailure".into(),
                        message: "x".into(),
                        transient: true,
                    })
                    .collect())
            }
        })
        .await;
        assert_eq!(calls.into_inner(), 3);
        for r in results {
            let e = r.unwrap_err();
            assert_eq!(e.class(), ErrorClass::Transient);
            assert!(e.to_string().contains("after 3 attempts"), "{e}");
        }
    }

    #[tokio::test]
    async fn a_retried_entry_is_made_again_as_it_was_and_an_object_is_stored_once() {
        let store = std::sync::Arc::new(crate::testing::MemoryClaimChecks::default());
        let claim_check = ClaimCheck::new(store.clone(), "claims", "eu-west-1");
        let api = Echo::new(limits(3, 2_000), Wire::plain().claim_check(claim_check));
        // the first request (e0, e1, e2) is refused whole once, then sent again
        api.refused.store(1, std::sync::atomic::Ordering::SeqCst);
        let events: Vec<Event> = (0..6)
            .map(|i| {
                let e = Event::new(format!("e{i}"), "t", 1).with_partition_key("k");
                if i == 1 {
                    e.with_entity("blob", serde_json::json!("x".repeat(5_000)))
                } else {
                    e
                }
            })
            .collect();
        let results = publish_all(&api, &events).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let sent = api.sent.into_inner().unwrap();
        for (i, e) in events.iter().enumerate() {
            let sends: Vec<&String> = sent
                .iter()
                .filter(|s| s.contains(&format!("\"{}\"", e.id)))
                .collect();
            assert_eq!(sends.len(), if i < 3 { 2 } else { 1 }, "{}", e.id);
            assert!(
                sends.iter().all(|s| *s == sends[0]),
                "a retried entry is the entry first sent: {sends:?}"
            );
        }
        // the claim-checked event's pointer is sent again, its object stored once
        assert_eq!(sent.iter().filter(|s| s.contains("claimchecks")).count(), 2);
        assert_eq!(store.objects().len(), 1);
    }
}
