//! The batch APIs (EventBridge `PutEvents`, Kinesis `PutRecords`, SQS `SendMessageBatch`) in one
//! place: a connector says what differs ([`BatchApi`]: its entries, their size, one request and
//! its answer) and [`publish_all`] does the rest: requests sized to the limits, several at once,
//! only the failed entries sent again (these APIs succeed partially), with backoff and jitter,
//! up to a bound, and the answers put back in order.

use std::future::Future;
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
    fn send<'a>(
        &'a self,
        entries: Vec<&'a Self::Entry>,
    ) -> BoxFuture<'a, Result<Vec<EntryResult>, StepError>>;
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
    let mut entries: Vec<Result<A::Entry, StepError>> = events
        .iter()
        .map(|e| wire.json(e, sealer).and_then(|json| api.entry(e, json)))
        .collect();
    if let Some(claim_check) = wire.claim_checks() {
        claim_check_oversize(api, claim_check, events, sealer, &mut entries).await;
    }
    let sendable: Vec<&A::Entry> = entries.iter().filter_map(|e| e.as_ref().ok()).collect();
    let sizes: Vec<usize> = sendable.iter().map(|e| api.size(e)).collect();
    let results = send_all(&sizes, api.limits(), |idx| {
        api.send(idx.iter().map(|i| sendable[*i]).collect())
    })
    .await;
    merge(&entries, results)
}

/// Stores each entry too big for a request in the claim-check and puts its pointer event in
/// its place; an entry whose object could not be stored fails with that error.
async fn claim_check_oversize<A: BatchApi, P: Publishable>(
    api: &A,
    claim_check: &ClaimCheck,
    events: &[P],
    sealer: Option<&Sealer>,
    entries: &mut [Result<A::Entry, StepError>],
) {
    let limit = api.limits().max_entry_bytes.min(api.limits().max_bytes);
    let over: Vec<usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.as_ref().is_ok_and(|e| api.size(e) > limit))
        .map(|(i, _)| i)
        .collect();
    if over.is_empty() {
        return;
    }
    let now = chrono::Utc::now().timestamp_millis();
    // the rare oversize event is serialized again rather than every event's JSON kept
    let stores: Vec<_> = over
        .iter()
        .map(|&i| {
            let event = &events[i];
            async move {
                let json = api.wire().json(event, sealer)?;
                let pointer = claim_check.store(&json, now).await?;
                api.entry(event, pointer)
            }
        })
        .collect();
    let pointers: Vec<Result<A::Entry, StepError>> = stream::iter(stores)
        .buffered(api.limits().parallel.max(1))
        .collect()
        .await;
    for (i, pointer) in over.into_iter().zip(pointers) {
        entries[i] = pointer;
    }
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
fn merge<T>(
    prepared: &[Result<T, StepError>],
    results: Vec<Result<(), StepError>>,
) -> Vec<Result<(), StepError>> {
    let mut results = results.into_iter();
    prepared
        .iter()
        .map(|p| match p {
            Ok(_) => results
                .next()
                .unwrap_or_else(|| Err(StepError::transient("entry was not sent"))),
            Err(e) => Err(copy(e)),
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

    /// A batch API whose entries are the JSON, sized by length, all accepted.
    struct Echo {
        limits: BatchLimits,
        wire: Wire,
        sent: std::sync::Mutex<Vec<String>>,
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
        fn send<'a>(
            &'a self,
            entries: Vec<&'a String>,
        ) -> BoxFuture<'a, Result<Vec<EntryResult>, StepError>> {
            let n = entries.len();
            self.sent
                .lock()
                .unwrap()
                .extend(entries.into_iter().cloned());
            Box::pin(async move { Ok(vec![EntryResult::Ok; n]) })
        }
    }

    #[tokio::test]
    async fn only_oversize_entries_are_claim_checked_and_their_pointers_sent() {
        let store = std::sync::Arc::new(crate::testing::MemoryClaimChecks::default());
        let claim_check = ClaimCheck::new(store.clone(), "claims", "eu-west-1");
        let api = Echo {
            limits: limits(10, 2_000),
            wire: Wire::plain().claim_check(claim_check),
            sent: Default::default(),
        };
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
}
