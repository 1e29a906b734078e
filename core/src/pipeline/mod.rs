//! Pipelines: named chains of steps over the units of work a rule accepts.
//!
//! A handler runs every enabled pipeline on the units its rule accepts (fan-out) and merges
//! their outcomes per record (the worst wins: retry, then faulted, then done).
//!
//! Steps run stage by stage over the whole micro-batch: every unit finishes step *n* before any
//! starts step *n + 1*. That keeps order per key by construction (a unit sent back for retry
//! stops the later units of its key within the same stage, so none of them reaches a later
//! stage), costs nothing in throughput that matters for micro-batches (each async stage still
//! runs `parallel` keys at once, and pipelines run concurrently), and makes each stage easy to
//! test.

mod lanes;
mod retry;
mod rule;
mod stage;

use std::collections::HashMap;
use std::future::{Future, ready};
use std::num::NonZeroU32;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, stream};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

pub use retry::Retry;
pub use rule::EventType;
pub(crate) use stage::{Cause, StageCtx, Verdict};

use crate::error::{ErrorClass, StepError};
use crate::uow::{Batch, Compacted, Group, UnitOfWork, Work, anchor_of, first_position};
use rule::Rule;
use stage::{Blocked, panic_error};

type RunFn<T> =
    Arc<dyn Fn(Arc<StageCtx>, Vec<UnitOfWork>) -> BoxFuture<'static, Vec<T>> + Send + Sync>;

/// A named chain of steps, producing items of type `T`.
///
/// ```
/// use lambda_stream::{Pipeline, StepError};
///
/// #[derive(Clone)]
/// struct Request { pk: String }
///
/// let p = Pipeline::new("thing-view")
///     .on_event_type(["thing-created", "thing-updated"])
///     .map(|uow| {
///         let pk = uow.event().partition_key.clone()
///             .ok_or_else(|| StepError::poison_msg("no partitionKey"))?;
///         Ok(uow.with(Request { pk }))
///     })
///     .parallel(8)
///     .then(|uow| async move {
///         // write uow.state somewhere
///         Ok::<_, StepError>(uow)
///     });
/// assert_eq!(p.id(), "thing-view");
/// ```
pub struct Pipeline<T = UnitOfWork> {
    id: Arc<str>,
    rule: Rule,
    parallel: usize,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    run: RunFn<T>,
}

fn default_parallel() -> usize {
    std::env::var("PARALLEL")
        .ok()
        .and_then(|p| p.parse().ok())
        .filter(|p| *p > 0)
        .unwrap_or(4)
}

impl Pipeline<UnitOfWork> {
    /// A pipeline that accepts every event; narrow it with [`on_event_type`](Self::on_event_type)
    /// and [`on`](Self::on). `parallel` defaults to the `PARALLEL` environment variable, else 4.
    pub fn new(id: impl Into<String>) -> Self {
        Pipeline {
            id: Arc::from(id.into()),
            rule: Rule::default(),
            parallel: default_parallel(),
            limiter: None,
            run: Arc::new(|_, units| Box::pin(ready(units))),
        }
    }
}

impl<T: Work> Pipeline<T> {
    /// The pipeline's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Accept only events whose type matches (string, list, regex or predicate).
    pub fn on_event_type(mut self, event_type: impl Into<EventType>) -> Self {
        self.rule.event_type = event_type.into();
        self
    }

    /// Accept only units the content filter passes (in addition to the event type).
    pub fn on(mut self, filter: impl Fn(&UnitOfWork) -> bool + Send + Sync + 'static) -> Self {
        self.rule.filters.push(Arc::new(filter));
        self
    }

    /// How many keys the following async steps run at once.
    pub fn parallel(mut self, parallel: usize) -> Self {
        self.parallel = parallel.max(1);
        self
    }

    /// Pace the following async steps to at most `n` calls per `per` (explicit backpressure for
    /// a service that throttles). `n == 0` removes the limit.
    pub fn rate_limit(mut self, n: u32, per: Duration) -> Self {
        self.limiter = NonZeroU32::new(n)
            .and_then(|burst| Quota::with_period(per / burst.get()).map(|q| q.allow_burst(burst)))
            .map(|quota| Arc::new(RateLimiter::direct(quota)));
        self
    }

    /// Adds a stage: `f` takes the stage's items and returns the survivors.
    fn stage<U, F, Fut>(self, f: F) -> Pipeline<U>
    where
        U: Work,
        F: Fn(Arc<StageCtx>, Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<U>> + Send + 'static,
    {
        let prev = self.run;
        let f = Arc::new(f);
        Pipeline {
            id: self.id,
            rule: self.rule,
            parallel: self.parallel,
            limiter: self.limiter,
            run: Arc::new(move |ctx, units| {
                let prev = Arc::clone(&prev);
                let f = Arc::clone(&f);
                Box::pin(async move {
                    let items = prev(Arc::clone(&ctx), units).await;
                    if items.is_empty() {
                        return Vec::new();
                    }
                    f(ctx, items).await
                })
            }),
        }
    }

    /// Keeps the items `f` accepts; the rest are done.
    pub fn filter(self, f: impl Fn(&T) -> bool + Send + Sync + 'static) -> Self {
        self.stage(move |ctx, items| {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match catch_unwind(AssertUnwindSafe(|| f(&item))) {
                    Ok(true) => out.push(item),
                    Ok(false) => {}
                    Err(p) => ctx.fault(anchor_of(&item), panic_error(p)),
                }
            }
            ready(out)
        })
    }

    /// Looks at each item (logging, metrics) without changing it.
    pub fn tap(self, f: impl Fn(&T) + Send + Sync + 'static) -> Self {
        self.filter(move |item| {
            f(item);
            true
        })
    }

    /// Maps each item. An error faults it (poison) or sends it back for retry (transient, and
    /// the later items of its key with it); a panic is a poison fault.
    pub fn map<U, F>(self, f: F) -> Pipeline<U>
    where
        U: Work,
        F: Fn(T) -> Result<U, StepError> + Send + Sync + 'static,
    {
        self.stage(move |ctx, items| {
            if ctx.deadline.passed() {
                ctx.retry_all(items, "deadline: not started");
                return ready(Vec::new());
            }
            let mut out = Vec::with_capacity(items.len());
            let mut blocked = Blocked::default();
            for item in items {
                if blocked.touches(&item) {
                    ctx.retry(anchor_of(&item), BLOCKED.into());
                    continue;
                }
                let anchor = anchor_of(&item);
                match catch_unwind(AssertUnwindSafe(|| f(item))) {
                    Ok(Ok(u)) => out.push(u),
                    Ok(Err(e)) => {
                        if e.class() == ErrorClass::Transient {
                            blocked.block(&anchor);
                        }
                        ctx.failed(anchor, e);
                    }
                    Err(p) => ctx.fault(anchor, panic_error(p)),
                }
            }
            ready(out)
        })
    }

    /// An async step (a write, a call), up to `parallel` keys at once, in order within a key.
    /// Errors end as in [`map`](Self::map); no in-invocation retry here (the AWS SDK and the
    /// connectors retry their own calls); see [`then_retry`](Self::then_retry).
    pub fn then<U, F, Fut>(self, f: F) -> Pipeline<U>
    where
        U: Work,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<U, StepError>> + Send + 'static,
    {
        let parallel = self.parallel;
        let limiter = self.limiter.clone();
        let f = Arc::new(f);
        self.stage(move |ctx, items| {
            let f = Arc::clone(&f);
            let limiter = limiter.clone();
            async move { run_async(&ctx, items, parallel, limiter.as_deref(), &*f).await }
        })
    }

    /// Like [`then`](Self::then), retrying transient errors with backoff within the invocation
    /// (never past the deadline) before sending the item back for redelivery. Each attempt gets
    /// a clone of the item.
    pub fn then_retry<U, F, Fut>(self, retry: Retry, f: F) -> Pipeline<U>
    where
        T: Clone,
        U: Work,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<U, StepError>> + Send + 'static,
    {
        let parallel = self.parallel;
        let limiter = self.limiter.clone();
        let f = Arc::new(f);
        self.stage(move |ctx, items| {
            let f = Arc::clone(&f);
            let limiter = limiter.clone();
            async move {
                let deadline = ctx.deadline;
                let call = |item: T| {
                    let f = Arc::clone(&f);
                    async move {
                        let mut delays = retry.delays();
                        loop {
                            match f(item.clone()).await {
                                Err(e) if e.class() == ErrorClass::Transient => {
                                    let Some(delay) = delays.next() else {
                                        return Err(e);
                                    };
                                    if deadline.remaining().is_some_and(|left| left <= delay) {
                                        return Err(e);
                                    }
                                    tracing::debug!(error = %e, ?delay, "retrying transient error");
                                    tokio::time::sleep(delay).await;
                                }
                                other => return other,
                            }
                        }
                    }
                };
                run_async(&ctx, items, parallel, limiter.as_deref(), &call).await
            }
        })
    }

    /// An async step over all items at once (in batch order) that answers per item: for APIs
    /// that succeed partially (`PutEvents`, `PutRecords`, `SendMessageBatch`), whose connectors
    /// batch and retry by themselves. A transient failure stops the later items of its key as
    /// everywhere else: they are retry even if they went through (and are redelivered, so
    /// consumers see each key in order).
    pub fn then_all<U, F, Fut>(self, f: F) -> Pipeline<U>
    where
        U: Work,
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<U, StepError>>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.stage(move |ctx, items| {
            let f = Arc::clone(&f);
            async move { run_all(&ctx, items, |items| f(items)).await }
        })
    }

    /// Collects items into batches of at most `size`, in order; a batch succeeds or fails as one.
    pub fn batch(self, size: usize) -> Pipeline<Batch<T>> {
        let size = size.max(1);
        self.stage(move |_, items| {
            let mut out = Vec::with_capacity(items.len().div_ceil(size));
            let mut it = items.into_iter().peekable();
            while it.peek().is_some() {
                out.push(Batch(it.by_ref().take(size).collect()));
            }
            ready(out)
        })
    }

    /// Collects items into batches of at most `max_count` items and `max_bytes` bytes by `size`
    /// (e.g. the serialized entry). An item larger than `max_bytes` alone can never be sent: it
    /// is faulted (`OversizeError`).
    pub fn batch_by_bytes(
        self,
        max_count: usize,
        max_bytes: usize,
        size: impl Fn(&T) -> usize + Send + Sync + 'static,
    ) -> Pipeline<Batch<T>> {
        let max_count = max_count.max(1);
        self.stage(move |ctx, items| {
            let mut out = Vec::new();
            let mut current = Vec::new();
            let mut bytes = 0;
            for item in items {
                let n = match catch_unwind(AssertUnwindSafe(|| size(&item))) {
                    Ok(n) => n,
                    Err(p) => {
                        ctx.fault(anchor_of(&item), panic_error(p));
                        continue;
                    }
                };
                if n > max_bytes {
                    let e = StepError::poison_msg(format!(
                        "entry of {n} bytes exceeds the batch limit of {max_bytes} bytes"
                    ));
                    ctx.fault(anchor_of(&item), e.named("OversizeError"));
                    continue;
                }
                if current.len() == max_count || bytes + n > max_bytes {
                    out.push(Batch(std::mem::take(&mut current)));
                    bytes = 0;
                }
                bytes += n;
                current.push(item);
            }
            if !current.is_empty() {
                out.push(Batch(current));
            }
            ready(out)
        })
    }

    /// Groups items by `key`, groups in order of first appearance, members in batch order.
    pub fn group_by(
        self,
        key: impl Fn(&T) -> String + Send + Sync + 'static,
    ) -> Pipeline<Group<T>> {
        self.stage(move |ctx, items| ready(group(&ctx, items, &key)))
    }

    /// Keeps the last item per `key`; the earlier ones end with it (see [`Compacted`]).
    pub fn compact(
        self,
        key: impl Fn(&T) -> String + Send + Sync + 'static,
    ) -> Pipeline<Compacted<T>> {
        self.stage(move |ctx, items| {
            let out = group(&ctx, items, &key)
                .into_iter()
                .filter_map(|mut g| {
                    let latest = g.items.pop()?;
                    Some(Compacted {
                        latest,
                        superseded: g.items,
                    })
                })
                .collect();
            ready(out)
        })
    }
}

const BLOCKED: &str = "an earlier record with the same key is being retried";

fn group<T: Work>(ctx: &StageCtx, items: Vec<T>, key: &impl Fn(&T) -> String) -> Vec<Group<T>> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut groups: Vec<Group<T>> = Vec::new();
    for item in items {
        let k = match catch_unwind(AssertUnwindSafe(|| key(&item))) {
            Ok(k) => k,
            Err(p) => {
                ctx.fault(anchor_of(&item), panic_error(p));
                continue;
            }
        };
        match index.get(&k) {
            Some(&i) => groups[i].items.push(item),
            None => {
                index.insert(k.clone(), groups.len());
                groups.push(Group {
                    key: k,
                    items: vec![item],
                });
            }
        }
    }
    groups
}

pub(crate) async fn run_all<T, U, F, Fut>(ctx: &StageCtx, items: Vec<T>, f: F) -> Vec<U>
where
    T: Work,
    U: Work,
    F: FnOnce(Vec<T>) -> Fut,
    Fut: Future<Output = Vec<Result<U, StepError>>>,
{
    if ctx.deadline.passed() {
        ctx.retry_all(items, "deadline: not started");
        return Vec::new();
    }
    let anchors: Vec<_> = items.iter().map(anchor_of).collect();
    let n = items.len();
    let results = match AssertUnwindSafe(f(items)).catch_unwind().await {
        Ok(results) if results.len() == n => results,
        Ok(results) => {
            let msg = format!("step answered {} results for {n} items", results.len());
            (0..n)
                .map(|_| Err(StepError::poison_msg(msg.clone())))
                .collect()
        }
        Err(p) => {
            let e = panic_error(p);
            (0..n)
                .map(|_| Err(StepError::poison_msg(e.to_string()).named("Panic")))
                .collect()
        }
    };
    let mut out = Vec::with_capacity(n);
    let mut blocked = Blocked::default();
    for (anchor, result) in anchors.into_iter().zip(results) {
        if blocked.touches_anchor(&anchor) {
            ctx.retry(anchor, BLOCKED.into());
            continue;
        }
        match result {
            Ok(u) => out.push(u),
            Err(e) => {
                if e.class() == ErrorClass::Transient {
                    blocked.block(&anchor);
                }
                ctx.failed(anchor, e);
            }
        }
    }
    out
}

async fn run_async<T, U, C, CF>(
    ctx: &StageCtx,
    items: Vec<T>,
    parallel: usize,
    limiter: Option<&DefaultDirectRateLimiter>,
    call: &C,
) -> Vec<U>
where
    T: Work,
    U: Work,
    C: Fn(T) -> CF,
    CF: Future<Output = Result<U, StepError>>,
{
    let lanes = if parallel <= 1 {
        vec![items.into_iter().map(|i| (first_position(&i), i)).collect()]
    } else {
        lanes::plan(items)
    };
    let single = lanes.len() == 1;
    let done: Vec<Vec<(u32, U)>> = stream::iter(lanes)
        .map(|lane| run_lane(ctx, lane, limiter, call))
        .buffer_unordered(parallel)
        .collect()
        .await;
    let mut out: Vec<(u32, U)> = done.into_iter().flatten().collect();
    if !single {
        out.sort_unstable_by_key(|(position, _)| *position);
    }
    out.into_iter().map(|(_, u)| u).collect()
}

async fn run_lane<T, U, C, CF>(
    ctx: &StageCtx,
    lane: Vec<(u32, T)>,
    limiter: Option<&DefaultDirectRateLimiter>,
    call: &C,
) -> Vec<(u32, U)>
where
    T: Work,
    U: Work,
    C: Fn(T) -> CF,
    CF: Future<Output = Result<U, StepError>>,
{
    let mut out = Vec::with_capacity(lane.len());
    let mut blocked = Blocked::default();
    for (position, item) in lane {
        if blocked.touches(&item) {
            ctx.retry(anchor_of(&item), BLOCKED.into());
            continue;
        }
        if ctx.deadline.passed() {
            ctx.retry(anchor_of(&item), "deadline: not started".into());
            continue;
        }
        if let Some(limiter) = limiter {
            limiter.until_ready().await;
        }
        let anchor = anchor_of(&item);
        let result = match catch_unwind(AssertUnwindSafe(|| call(item))) {
            Ok(fut) => AssertUnwindSafe(fut)
                .catch_unwind()
                .await
                .unwrap_or_else(|p| Err(panic_error(p))),
            Err(p) => Err(panic_error(p)),
        };
        match result {
            Ok(u) => out.push((position, u)),
            Err(e) => {
                if e.class() == ErrorClass::Transient {
                    blocked.block(&anchor);
                }
                ctx.failed(anchor, e);
            }
        }
    }
    out
}

type ErasedRun =
    Arc<dyn Fn(Arc<StageCtx>, Vec<UnitOfWork>) -> BoxFuture<'static, usize> + Send + Sync>;

/// A pipeline ready for a [`Handler`](crate::Handler): its steps, with the item type erased.
pub struct AssembledPipeline {
    pub(crate) id: Arc<str>,
    pub(crate) rule: Rule,
    pub(crate) run: ErasedRun,
}

impl AssembledPipeline {
    /// The pipeline's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Anything a handler can run as a pipeline: a [`Pipeline`], or a flavor's rule.
///
/// A flavor is a rule type (its id, event type and the functions it needs) whose
/// `into_pipeline` assembles the flavor's steps around them:
///
/// ```
/// use lambda_stream::{AssembledPipeline, IntoPipeline, Pipeline, StepError, UnitOfWork};
///
/// /// A flavor that logs every event of a type.
/// struct Audit { id: &'static str, event_type: &'static str }
///
/// impl IntoPipeline for Audit {
///     fn into_pipeline(self) -> AssembledPipeline {
///         Pipeline::new(self.id)
///             .on_event_type(self.event_type)
///             .tap(|uow: &UnitOfWork| tracing::info!(id = %uow.event().id, "audit"))
///             .into_pipeline()
///     }
/// }
/// let rules = [Audit { id: "a1", event_type: "thing-created" }];
/// let assembled: Vec<AssembledPipeline> = rules.into_iter().map(IntoPipeline::into_pipeline).collect();
/// assert_eq!(assembled[0].id(), "a1");
/// ```
pub trait IntoPipeline {
    /// Assembles the pipeline.
    fn into_pipeline(self) -> AssembledPipeline;
}

impl IntoPipeline for AssembledPipeline {
    fn into_pipeline(self) -> AssembledPipeline {
        self
    }
}

impl<T: Work> IntoPipeline for Pipeline<T> {
    fn into_pipeline(self) -> AssembledPipeline {
        let run = self.run;
        AssembledPipeline {
            id: self.id,
            rule: self.rule,
            run: Arc::new(move |ctx, units| {
                let fut = run(ctx, units);
                Box::pin(async move { fut.await.len() })
            }),
        }
    }
}
