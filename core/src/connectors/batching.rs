//! The batch APIs (EventBridge `PutEvents`, Kinesis `PutRecords`, SQS `SendMessageBatch`) in one
//! place: a connector says what differs ([`BatchApi`]: its entries, their size, one request and
//! its answer) and [`publish_all`] does the rest: requests sized to the limits, several at once,
//! only the failed entries sent again (these APIs succeed partially), with backoff and jitter,
//! up to a bound, and the answers put back in order.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use futures::future::{BoxFuture, Either, select};
use futures::stream::FuturesUnordered;
use serde::Serialize;

use super::wire::Wire;
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
///
/// An entry is made when the request it goes into is formed, as a request's turn comes (up to
/// the limits' `parallel` at once), so a batch of thousands holds the JSON of a few requests
/// rather than of every event.
pub async fn publish_all<A: BatchApi, P: Publishable + Sync>(
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
    let limit = api.limits().max_entry_bytes.min(api.limits().max_bytes);
    let now = chrono::Utc::now().timestamp_millis();
    // a claim-checked event's pointer, to make its entry again for a retry without storing
    // its object twice
    let pointers: Mutex<HashMap<usize, String>> = Mutex::new(HashMap::new());
    let make = |i: usize| {
        let (event, pointers) = (&events[i], &pointers);
        async move {
            let kept = lock(pointers).get(&i).cloned();
            if let Some(pointer) = kept {
                return api.entry(event, pointer);
            }
            let entry = made(api, event, sealer)?;
            match wire.claim_checks() {
                Some(claim_check) if api.size(&entry) > limit => {
                    // the rare oversize event is serialized again rather than its JSON kept
                    let json = wire.json(event, sealer)?;
                    let pointer = claim_check.store(&json, now).await?;
                    lock(pointers).insert(i, pointer.clone());
                    api.entry(event, pointer)
                }
                _ => Ok(entry),
            }
        }
    };
    send_all(
        events.len(),
        api.limits(),
        make,
        |entry: &A::Entry| api.size(entry),
        |entries| api.send(entries),
    )
    .await
}

/// The entry for `event` as the wire writes it.
fn made<A: BatchApi, P: Publishable + Sync>(
    api: &A,
    event: &P,
    sealer: Option<&Sealer>,
) -> Result<A::Entry, StepError> {
    api.wire()
        .json(event, sealer)
        .and_then(|json| api.entry(event, json))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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

/// Sends `n` entries in requests within `limits`, up to `limits.parallel` requests at once.
/// `make` makes entry `i` (an error answers for it); a request is formed, greedily and in
/// order, when a slot frees, and `send` gets its entries and answers per entry. An entry
/// retried is made again. Returns one result per entry.
async fn send_all<E, M, MF, Z, S, SF>(
    n: usize,
    limits: &BatchLimits,
    make: M,
    size: Z,
    send: S,
) -> Vec<Result<(), StepError>>
where
    M: Fn(usize) -> MF,
    MF: Future<Output = Result<E, StepError>>,
    Z: Fn(&E) -> usize,
    S: Fn(Vec<E>) -> SF,
    SF: Future<Output = Result<Vec<EntryResult>, StepError>>,
{
    let mut results: Vec<Option<Result<(), StepError>>> = (0..n).map(|_| None).collect();
    let limit = limits.max_entry_bytes.min(limits.max_bytes);
    let max_count = limits.max_count.max(1);
    // the next entry to make, and one made that did not fit the request before
    let mut next = 0;
    let mut carried: Option<(usize, E, usize)> = None;
    let mut in_flight = FuturesUnordered::new();
    loop {
        // a request is formed when a slot is free, so only the requests in flight hold entries
        while in_flight.len() < limits.parallel.max(1) {
            let mut request: Vec<(usize, E)> = Vec::new();
            let mut bytes = 0;
            if let Some((i, entry, s)) = carried.take() {
                request.push((i, entry));
                bytes = s;
            }
            // full by count: sent before the next entry is made
            while next < n && request.len() < max_count {
                let i = next;
                next += 1;
                // an entry made with I/O (a claim-check's object stored) lets the requests in
                // flight go on meanwhile: their answers and retries are not held up
                let mut making = pin!(make(i));
                let made = loop {
                    if in_flight.is_empty() {
                        break making.await;
                    }
                    match select(making, in_flight.next()).await {
                        Either::Left((made, _)) => break made,
                        Either::Right((done, unfinished)) => {
                            for (sent, r) in done.into_iter().flatten() {
                                results[sent] = Some(r);
                            }
                            making = unfinished;
                        }
                    }
                };
                let entry = match made {
                    Ok(entry) => entry,
                    Err(e) => {
                        results[i] = Some(Err(e));
                        continue;
                    }
                };
                let s = size(&entry);
                if s > limit {
                    let e = StepError::poison_msg(format!(
                        "entry of {s} bytes exceeds the limit of {limit} bytes"
                    ));
                    results[i] = Some(Err(e.named("OversizeError")));
                    continue;
                }
                if !request.is_empty() && bytes + s > limits.max_bytes {
                    carried = Some((i, entry, s));
                    break;
                }
                bytes += s;
                request.push((i, entry));
            }
            if request.is_empty() {
                break;
            }
            in_flight.push(send_request(request, limits, &send, &make));
        }
        match in_flight.next().await {
            Some(done) => {
                for (i, r) in done {
                    results[i] = Some(r);
                }
            }
            None => break,
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(StepError::transient("entry was not sent"))))
        .collect()
}

/// One request, with selective retries of its failed entries (made again by `make`).
async fn send_request<E, M, MF, S, SF>(
    request: Vec<(usize, E)>,
    limits: &BatchLimits,
    send: &S,
    make: &M,
) -> Vec<(usize, Result<(), StepError>)>
where
    M: Fn(usize) -> MF,
    MF: Future<Output = Result<E, StepError>>,
    S: Fn(Vec<E>) -> SF,
    SF: Future<Output = Result<Vec<EntryResult>, StepError>>,
{
    let mut out = Vec::with_capacity(request.len());
    let (mut pending, mut entries): (Vec<usize>, Vec<E>) = request.into_iter().unzip();
    let mut delays = limits.retry.delays();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut again = Vec::new();
        let mut last: Option<StepError> = None;
        match send(std::mem::take(&mut entries)).await {
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
                // the entries went into the request that failed them: made again
                pending = Vec::with_capacity(again.len());
                for i in again {
                    match make(i).await {
                        Ok(entry) => {
                            pending.push(i);
                            entries.push(entry);
                        }
                        Err(e) => out.push((i, Err(e))),
                    }
                }
                if pending.is_empty() {
                    return out;
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claimcheck::ClaimCheck;

    /// `send_all` over entries that are their own positions, sized by `sizes`.
    async fn by_size<S, SF>(
        sizes: &[usize],
        limits: &BatchLimits,
        send: S,
    ) -> Vec<Result<(), StepError>>
    where
        S: Fn(Vec<usize>) -> SF,
        SF: Future<Output = Result<Vec<EntryResult>, StepError>>,
    {
        send_all(
            sizes.len(),
            limits,
            |i| std::future::ready(Ok(i)),
            |i: &usize| sizes[*i],
            send,
        )
        .await
    }

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
        let results = by_size(&[4, 4, 4, 1, 20, 1], &limits(2, 8), |idx| {
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
        let results = by_size(&[1, 1, 1], &limits(10, 100), |idx| {
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
            by_size(&[1], &slow, |idx| {
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
        let results = by_size(&[1, 1], &limits(10, 100), |idx| {
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

    #[tokio::test]
    async fn an_entry_is_made_when_its_request_is_formed() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let made = AtomicUsize::new(0);
        let made_at_each_send = std::sync::Mutex::new(Vec::new());
        let results = send_all(
            7,
            &limits(2, 100),
            |i| {
                made.fetch_add(1, SeqCst);
                std::future::ready(Ok(i))
            },
            |_: &usize| 1,
            |entries: Vec<usize>| {
                made_at_each_send.lock().unwrap().push(made.load(SeqCst));
                let n = entries.len();
                async move { Ok(vec![EntryResult::Ok; n]) }
            },
        )
        .await;
        assert!(results.iter().all(Result::is_ok));
        // one request at a time (parallel 1) of two: its entries are all that is made before
        // it is sent
        assert_eq!(made_at_each_send.into_inner().unwrap(), vec![2, 4, 6, 7]);
    }

    /// A claim-check store whose objects take 100 ms to store.
    #[derive(Debug, Default)]
    struct SlowStore(crate::testing::MemoryClaimChecks);

    impl crate::claimcheck::ClaimCheckStore for SlowStore {
        fn put<'a>(
            &'a self,
            bucket: &'a str,
            key: &'a str,
            json: Vec<u8>,
        ) -> BoxFuture<'a, Result<(), StepError>> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                self.0.put(bucket, key, json).await
            })
        }
        fn get<'a>(
            &'a self,
            bucket: &'a str,
            key: &'a str,
        ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StepError>> {
            self.0.get(bucket, key)
        }
    }

    /// Records when each entry was sent.
    struct Timed {
        limits: BatchLimits,
        wire: Wire,
        started: tokio::time::Instant,
        sent: std::sync::Mutex<Vec<(String, Duration)>>,
    }

    impl BatchApi for Timed {
        type Entry = String;
        fn limits(&self) -> &BatchLimits {
            &self.limits
        }
        fn wire(&self) -> &Wire {
            &self.wire
        }
        fn entry<P: Publishable>(&self, event: &P, json: String) -> Result<String, StepError> {
            Ok(if json.contains("claimchecks") {
                format!("{}-pointer", event.id())
            } else {
                event.id().to_owned()
            })
        }
        fn size(&self, entry: &String) -> usize {
            // the big event's JSON is over the limit: claim-checked
            if entry == "big" { 10_000 } else { 1 }
        }
        fn send(&self, entries: Vec<String>) -> BoxFuture<'_, Result<Vec<EntryResult>, StepError>> {
            let at = self.started.elapsed();
            let n = entries.len();
            let mut sent = self.sent.lock().unwrap();
            sent.extend(entries.into_iter().map(|e| (e, at)));
            Box::pin(async move { Ok(vec![EntryResult::Ok; n]) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_check_being_stored_does_not_hold_up_the_requests_in_flight() {
        let claim_check = ClaimCheck::new(
            std::sync::Arc::new(SlowStore::default()),
            "claims",
            "eu-west-1",
        );
        let mut two = limits(1, 2_000);
        two.parallel = 2;
        let api = Timed {
            limits: two,
            wire: Wire::plain().claim_check(claim_check),
            started: tokio::time::Instant::now(),
            sent: Default::default(),
        };
        let events = [
            Event::new("e0", "t", 1),
            Event::new("big", "t", 1),
            Event::new("e2", "t", 1),
        ];
        let results = publish_all(&api, &events).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let sent = api.sent.into_inner().unwrap();
        let at = |id: &str| {
            sent.iter()
                .find(|(e, _)| e == id)
                .map(|(_, at)| *at)
                .unwrap()
        };
        // e0's request went out while the big event's object was being stored
        assert!(at("e0") < Duration::from_millis(100), "{sent:?}");
        assert!(at("big-pointer") >= Duration::from_millis(100), "{sent:?}");
    }
}
