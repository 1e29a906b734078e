//! Pipelines: named chains of steps over the units of work a rule accepts.
//!
//! A handler runs every enabled pipeline on the units its rule accepts (fan-out) and merges
//! their outcomes per record (the worst wins: retry, then faulted, then done).
//!
//! Steps are pipelined: a unit goes on to the next step as soon as it leaves one, without
//! waiting for the other units. Async steps run up to `parallel` keys at once and a key's units
//! one after another, in batch order; once a unit is retry, the later units of its key start
//! no step. So the units that start early finish early, whatever the deadline.
//!
//! `batch` gathers the units ready together; `group_by` and `compact` wait for every unit
//! that reaches them (put them before slow steps).

mod gate;
mod gather;
mod limit;
mod ordered;
mod rule;
mod run;
mod step;

use std::future::{Future, ready};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};

pub(crate) use gate::{KeyGate, Takers};
pub(crate) use ordered::each;
pub use rule::EventType;
pub(crate) use run::{BLOCKED, Blocked, Cause, NOT_STARTED, RaisedFault, RunCtx, panic_error};
pub use step::Step;

use crate::error::{ErrorClass, StepError};
use crate::outcome::Transformed;
use crate::retry::Retry;
use crate::settings::Settings;
use crate::uow::{Batch, Compacted, Group, UnitOfWork, Work, anchor_of, keys_of};
use limit::Limiter;
use rule::Rule;

/// The items flowing out of a step.
pub(crate) type Items<T> = BoxStream<'static, T>;

type Build<T> = Arc<dyn Fn(Arc<RunCtx>, Items<UnitOfWork>) -> Items<T> + Send + Sync>;

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
    /// `None`: the handler's settings decide, at run time.
    parallel: Option<usize>,
    limiter: Option<Arc<Limiter>>,
    gathers: bool,
    build: Build<T>,
}

impl Pipeline<UnitOfWork> {
    /// A pipeline that accepts every event; narrow it with [`on_event_type`](Self::on_event_type)
    /// and [`on`](Self::on). Its async steps run as many keys at once as the handler's settings
    /// say (`PARALLEL`, else 4) unless [`parallel`](Self::parallel) says otherwise.
    pub fn new(id: impl Into<String>) -> Self {
        Pipeline {
            id: Arc::from(id.into()),
            rule: Rule::default(),
            parallel: None,
            limiter: None,
            gathers: false,
            build: Arc::new(|_, units| units),
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

    /// Accept only units the content filter passes (in addition to the event type). A filter
    /// that panics faults the unit in this pipeline.
    pub fn on(mut self, filter: impl Fn(&UnitOfWork) -> bool + Send + Sync + 'static) -> Self {
        self.rule.filters.push(Arc::new(filter));
        self
    }

    /// How many keys the following async steps run at once.
    pub fn parallel(mut self, parallel: usize) -> Self {
        self.parallel = Some(parallel.max(1));
        self
    }

    /// Pace the following async steps to at most `n` calls per `per` (explicit backpressure for
    /// a service that throttles); every attempt of [`then_retry`](Self::then_retry) counts. A
    /// call whose turn would come after the deadline margin is not made: its unit is retry.
    /// `n == 0` removes the limit.
    pub fn rate_limit(mut self, n: u32, per: Duration) -> Self {
        self.limiter = Limiter::new(n, per).map(Arc::new);
        self
    }

    /// Adds a step: `f` turns the items flowing out of the previous step into this step's.
    fn step<U: Work>(
        self,
        f: impl Fn(Arc<RunCtx>, Items<T>) -> Items<U> + Send + Sync + 'static,
    ) -> Pipeline<U> {
        let prev = self.build;
        Pipeline {
            id: self.id,
            rule: self.rule,
            parallel: self.parallel,
            limiter: self.limiter,
            gathers: self.gathers,
            build: Arc::new(move |ctx, units| f(Arc::clone(&ctx), prev(ctx, units))),
        }
    }

    /// Keeps the items `f` accepts; the rest are done.
    pub fn filter(self, f: impl Fn(&T) -> bool + Send + Sync + 'static) -> Self {
        let f = Arc::new(f);
        self.step(move |ctx, items| {
            let f = Arc::clone(&f);
            items
                .filter_map(move |item| {
                    ready(match catch_unwind(AssertUnwindSafe(|| f(&item))) {
                        Ok(true) => Some(item),
                        Ok(false) => {
                            ctx.done(&item);
                            None
                        }
                        Err(p) => {
                            ctx.fault(anchor_of(&item), panic_error(p));
                            None
                        }
                    })
                })
                .boxed()
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
        let f = Arc::new(f);
        self.step(move |ctx, items| {
            let f = Arc::clone(&f);
            items
                .filter_map(move |item| {
                    ready(if ctx.blocked(&keys_of(&item)) {
                        ctx.not_started(&item, BLOCKED);
                        None
                    } else if ctx.deadline.passed() {
                        ctx.not_started(&item, NOT_STARTED);
                        None
                    } else {
                        let anchor = anchor_of(&item);
                        match catch_unwind(AssertUnwindSafe(|| f(item))) {
                            Ok(Ok(u)) => Some(u),
                            Ok(Err(e)) => {
                                ctx.failed(anchor, e);
                                None
                            }
                            Err(p) => {
                                ctx.fault(anchor, panic_error(p));
                                None
                            }
                        }
                    })
                })
                .boxed()
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
        let (parallel, limiter) = (self.parallel, self.limiter.clone());
        let f = Arc::new(f);
        self.step(move |ctx, items| {
            let parallel = parallel.unwrap_or(ctx.settings.parallel);
            ordered::each(ctx, items, parallel, limiter.clone(), Arc::clone(&f))
        })
    }

    /// Like [`then`](Self::then), retrying transient errors with backoff within the invocation
    /// before sending the item back for redelivery. A retry never sleeps, or waits for the rate
    /// limit, past the deadline margin. Each attempt gets a clone of the item.
    pub fn then_retry<U, F, Fut>(self, retry: Retry, f: F) -> Pipeline<U>
    where
        T: Clone,
        U: Work,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<U, StepError>> + Send + 'static,
    {
        let (parallel, limiter) = (self.parallel, self.limiter.clone());
        let f = Arc::new(f);
        self.step(move |ctx, items| {
            let (f, limiter2, deadline) = (Arc::clone(&f), limiter.clone(), ctx.deadline);
            let call = move |item: T| {
                let (f, limiter) = (Arc::clone(&f), limiter2.clone());
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
                                if let Some(limiter) = &limiter
                                    && !limiter.acquire(&deadline).await
                                {
                                    return Err(e);
                                }
                            }
                            other => return other,
                        }
                    }
                }
            };
            let parallel = parallel.unwrap_or(ctx.settings.parallel);
            ordered::each(ctx, items, parallel, limiter.clone(), Arc::new(call))
        })
    }

    /// An async step over the items ready together (every item, when the steps before are
    /// synchronous), in batch order, that answers per item: for APIs that succeed partially
    /// (`PutEvents`, `PutRecords`, `SendMessageBatch`), whose connectors batch and retry by
    /// themselves. Up to `parallel` calls run at once, never two with a key in common. A
    /// transient failure stops the later items of its key as everywhere else: they are retry
    /// even if they went through (and are redelivered, so consumers see each key in order).
    pub fn then_all<U, F, Fut>(self, f: F) -> Pipeline<U>
    where
        U: Work,
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<U, StepError>>> + Send + 'static,
    {
        let parallel = self.parallel;
        let f = Arc::new(f);
        self.step(move |ctx, items| {
            let parallel = parallel.unwrap_or(ctx.settings.parallel);
            ordered::all(ctx, items, parallel, Arc::clone(&f))
        })
    }

    /// [`then`](Self::then) for steps that need the handler's [`Settings`] (sinks: their
    /// table, their standard tags): `make` builds the call from them when the pipeline runs,
    /// and `parallel` (unless the pipeline set its own) says how many keys run at once.
    pub fn then_with_settings<U, F, Fut>(
        self,
        parallel: fn(&Settings) -> usize,
        make: impl Fn(&Settings) -> F + Send + Sync + 'static,
    ) -> Pipeline<U>
    where
        U: Work,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<U, StepError>> + Send + 'static,
    {
        self.then_in_run(parallel, move |run| make(&run.settings))
    }

    /// [`then_with_settings`](Self::then_with_settings) for the crate's own steps that need
    /// the run itself (its pipeline's id).
    pub(crate) fn then_in_run<U, F, Fut>(
        self,
        parallel: fn(&Settings) -> usize,
        make: impl Fn(&RunCtx) -> F + Send + Sync + 'static,
    ) -> Pipeline<U>
    where
        U: Work,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<U, StepError>> + Send + 'static,
    {
        let (own, limiter) = (self.parallel, self.limiter.clone());
        self.step(move |ctx, items| {
            let n = own.unwrap_or_else(|| parallel(&ctx.settings));
            let call = Arc::new(make(&ctx));
            ordered::each(ctx, items, n, limiter.clone(), call)
        })
    }

    /// [`then_all`](Self::then_all) for steps that need the handler's [`Settings`] (see
    /// [`then_with_settings`](Self::then_with_settings)).
    pub fn then_all_with_settings<U, F, Fut>(
        self,
        parallel: fn(&Settings) -> usize,
        make: impl Fn(&Settings) -> F + Send + Sync + 'static,
    ) -> Pipeline<U>
    where
        U: Work,
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<U, StepError>>> + Send + 'static,
    {
        let own = self.parallel;
        self.step(move |ctx, items| {
            let n = own.unwrap_or_else(|| parallel(&ctx.settings));
            let call = Arc::new(make(&ctx.settings));
            ordered::all(ctx, items, n, call)
        })
    }

    /// Collects the items ready together into batches of at most `size`, in order; a batch
    /// succeeds or fails as one.
    pub fn batch(self, size: usize) -> Pipeline<Batch<T>> {
        self.step(move |ctx, items| {
            let limits = gather::Limits {
                max_count: size,
                max_bytes: usize::MAX,
                size: None,
            };
            gather::batches(ctx, items, limits)
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
        let size: gather::SizeOf<T> = Arc::new(size);
        self.step(move |ctx, items| {
            let limits = gather::Limits {
                max_count,
                max_bytes,
                size: Some(Arc::clone(&size)),
            };
            gather::batches(ctx, items, limits)
        })
    }

    /// Groups items by `key`, groups in order of first appearance, members in batch order.
    /// Waits for every item that reaches it.
    pub fn group_by(
        self,
        key: impl Fn(&T) -> String + Send + Sync + 'static,
    ) -> Pipeline<Group<T>> {
        let key: Arc<dyn Fn(&T) -> String + Send + Sync> = Arc::new(key);
        let mut grouped = self.step(move |ctx, items| gather::groups(ctx, items, Arc::clone(&key)));
        grouped.gathers = true;
        grouped
    }

    /// Keeps the last item per `key`; the earlier ones end with it (see [`Compacted`]).
    /// Waits for every item that reaches it.
    pub fn compact(
        self,
        key: impl Fn(&T) -> String + Send + Sync + 'static,
    ) -> Pipeline<Compacted<T>> {
        self.group_by(key).step(|_, groups| {
            groups
                .filter_map(|mut g: Group<T>| {
                    ready(g.items.pop().map(|latest| Compacted {
                        latest,
                        superseded: g.items,
                    }))
                })
                .boxed()
        })
    }
}

impl Pipeline<UnitOfWork<Transformed>> {
    /// Answers each unit's record with the unit's state, for a source whose answer carries
    /// data: a [`Firehose`](crate::sources::Firehose) record answered so, and done, ends `Ok`
    /// with this data (faulted or retried later on, it ends as that says; other sources ignore
    /// answers). The state is moved into the answer, not copied. One answer per record: a
    /// second (another pipeline taking the same record) faults the record. The
    /// [`FirehoseTransform`](crate::flavors::FirehoseTransform) flavor ends with this step.
    ///
    /// ```
    /// use lambda_stream::{Event, Handler, Pipeline, Transformed, sources::Firehose, testing::*};
    /// use std::time::Duration;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let csv = Pipeline::new("csv")
    ///     .on_event_type("thing-created")
    ///     .map(|uow| {
    ///         let line = format!("{},{}\n", uow.event().id, uow.event().timestamp);
    ///         Ok(uow.with(Transformed::new(line.into_bytes())))
    ///     })
    ///     .answer();
    /// let handler = Handler::builder(MemoryFaults::default()).pipeline(csv).build().unwrap();
    /// let records = to_firehose_records(&[Event::new("e1", "thing-created", 7)]);
    /// let answer = handler.handle::<Firehose>(records, &context(Duration::from_secs(30))).await.unwrap();
    /// assert_eq!(answer.records[0].result.as_deref(), Some("Ok"));
    /// assert_eq!(answer.records[0].data.0, b"e1,7\n");
    /// # });
    /// ```
    pub fn answer(self) -> Pipeline<UnitOfWork> {
        self.step(|ctx, items| {
            items
                .map(move |uow: UnitOfWork<Transformed>| {
                    let origin = Arc::clone(&uow.shared);
                    uow.map_state(|answer| ctx.answer(origin, answer))
                })
                .boxed()
        })
    }
}

type ErasedRun =
    Arc<dyn Fn(Arc<RunCtx>, Items<UnitOfWork>) -> BoxFuture<'static, ()> + Send + Sync>;

/// A pipeline ready for a [`Handler`](crate::Handler): its steps, with the item type erased.
pub struct AssembledPipeline {
    pub(crate) id: Arc<str>,
    pub(crate) rule: Rule,
    pub(crate) run: ErasedRun,
    /// A step waits for every unit (`group_by`, `compact`).
    pub(crate) gathers: bool,
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
        let build = self.build;
        AssembledPipeline {
            id: self.id,
            rule: self.rule,
            gathers: self.gathers,
            run: Arc::new(move |ctx, units| {
                let out = build(Arc::clone(&ctx), units);
                Box::pin(out.for_each(move |item| {
                    ctx.done(&item);
                    ready(())
                }))
            }),
        }
    }
}
