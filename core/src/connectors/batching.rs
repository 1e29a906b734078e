//! Size-aware batching with selective retry, shared by the batch APIs (EventBridge `PutEvents`,
//! Kinesis `PutRecords`, SQS `SendMessageBatch`). Those APIs succeed partially: only the failed
//! entries are sent again, with backoff and jitter, up to a bound.

use std::future::Future;

use futures::{StreamExt, stream};

use crate::error::{ErrorClass, StepError};
use crate::pipeline::Retry;

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
    /// These limits with the batch size (`BATCH_SIZE`, capped at the API's maximum) and the
    /// requests in flight (`PUBLISH_PARALLEL`, else `PARALLEL`) taken from the environment.
    pub fn from_env(self) -> Self {
        let var = |name: &str| {
            std::env::var(name)
                .ok()?
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
        };
        BatchLimits {
            max_count: var("BATCH_SIZE").map_or(self.max_count, |n| n.min(self.max_count)),
            parallel: var("PUBLISH_PARALLEL")
                .or_else(|| var("PARALLEL"))
                .unwrap_or(self.parallel),
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
pub(crate) async fn send_all<F, Fut>(
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
        match delays.next() {
            Some(delay) => {
                tracing::debug!(
                    entries = again.len(),
                    ?delay,
                    "retrying failed batch entries"
                );
                tokio::time::sleep(delay).await;
                pending = again;
            }
            None => {
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
pub(crate) fn merge<T>(
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
    use std::time::Duration;

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
