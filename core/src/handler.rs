//! The handler: runs a batch through the pipelines and answers Lambda.

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::Duration;

use futures::future::join_all;
use futures::stream::{self, BoxStream, StreamExt};
use lambda_runtime::Context;
use std::future::ready;
use tracing::Instrument;

use crate::ahead::{Ahead, Progress, chunk_of};
use crate::breaker::CircuitBreaker;
use crate::claimcheck::ClaimCheckStore;
use crate::deadline::{self, Deadline};
use crate::delivery::{self, Redelivery};
use crate::encryption::Envelope;
use crate::error::{BatchError, StepError};
use crate::event::FaultEvent;
use crate::faults::{self, FaultPublisher, FaultStore, PendingFault, storage_id, storage_key};
use crate::metrics::{self, InvocationMetrics, PipelineMetrics};
use crate::outcome::{Outcome, Transformed};
use crate::pipeline::{
    AssembledPipeline, BLOCKED, Blocked, IntoPipeline, KeyGate, NOT_STARTED, RunCtx, Takers,
    panic_error,
};
use crate::prepare::Prepare;
use crate::response::Outcomes;
use crate::settings::Settings;
use crate::sources::{Bytes, DecodeOptions, Decoded, DynamoDbOptions, Source};
use crate::uow::{Anchor, UnitOfWork, anchor_of, keys_of};

type Items<T> = BoxStream<'static, T>;

/// The handler could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Two pipelines share an id; faults and logs could not tell them apart.
    #[error("two pipelines have the id `{0}`")]
    DuplicatePipeline(String),
    /// The deadline margin leaves no time to publish faults, or more than any Lambda has.
    #[error(
        "deadline margin of {0} ms: it must be at least 100 ms (time to publish faults and answer) and under 15 minutes"
    )]
    Margin(u128),
    /// A pipeline waits for every unit (`group_by`, `compact`), which order per key across
    /// pipelines cannot allow: a key's next unit only enters once the previous one is out.
    #[error(
        "pipeline `{0}` groups or compacts, which cannot keep order per key across pipelines (in_key_order)"
    )]
    GathersInKeyOrder(String),
    /// A function's own setting does not parse.
    #[error("setting {name}: {reason}")]
    Setting {
        /// The environment variable.
        name: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
}

/// What one window of a batch leaves the next.
struct Carry {
    /// When the invocation's processing began.
    started: std::time::Instant,
    /// The keys a retry blocked: `[0]` shared by the pipelines in key order, `[1 + i]`
    /// pipeline `i`'s own otherwise. Empty until the first window runs.
    blocked: Vec<Arc<Blocked>>,
    /// The idempotency keys claimed so far, by pipeline.
    claimed: Vec<Arc<std::sync::Mutex<HashSet<String>>>>,
    /// A stream's earlier window left a record to retry: Lambda delivers every later record
    /// again, so this window's faults wait for that (they are raised again then).
    comes_back: bool,
    /// The invocation's metrics so far.
    metrics: Option<InvocationMetrics>,
    /// How far the window running has come.
    progress: Arc<Progress>,
}

impl Carry {
    fn new(started: std::time::Instant) -> Self {
        Carry {
            started,
            blocked: Vec::new(),
            claimed: Vec::new(),
            comes_back: false,
            metrics: None,
            progress: Arc::default(),
        }
    }

    /// Adds a window's metrics, its records' age taken as at the invocation's start.
    fn absorb(&mut self, mut m: InvocationMetrics) {
        match &mut self.metrics {
            Some(all) => {
                let since = self.started.elapsed().as_millis() as i64;
                m.iterator_age_ms = m.iterator_age_ms.map(|age| age - since);
                all.absorb(m);
            }
            None => self.metrics = Some(m),
        }
    }
}

/// What one invocation knows about itself.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// When to stop starting work.
    pub deadline: Deadline,
    /// The function's name, for fault events.
    pub function_name: String,
}

/// Runs Lambda batches through a set of pipelines.
///
/// ```
/// use lambda_stream::{Event, Handler, Pipeline, StepError};
/// use lambda_stream::testing::{MemoryFaults, context, to_kinesis_records};
/// use std::time::Duration;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let handler = Handler::builder(MemoryFaults::default())
///     .pipeline(Pipeline::new("p1").on_event_type("thing-created")
///         .then(|uow| async move { Ok::<_, StepError>(uow) }))
///     .build()
///     .unwrap();
/// let batch = to_kinesis_records(&[Event::new("1", "thing-created", 1).with_partition_key("t1")]);
/// let response = handler.handle::<lambda_stream::sources::Kinesis>(batch, &context(Duration::from_secs(30))).await.unwrap();
/// assert!(response.batch_item_failures.is_empty());
/// # });
/// ```
pub struct Handler {
    pipelines: Vec<AssembledPipeline>,
    faults: Arc<dyn FaultPublisher>,
    store: Option<Arc<dyn FaultStore>>,
    key_order: bool,
    margin: Duration,
    decode: DecodeOptions,
    function_name: Option<String>,
    settings: Arc<Settings>,
    breaker: Option<Arc<CircuitBreaker>>,
    prepare: Prepare,
    metrics_out: Option<MetricsOut>,
}

/// Where a handler writes its metrics documents instead of stdout (tests, a log shipper).
type MetricsOut = Arc<std::sync::Mutex<dyn std::io::Write + Send>>;

/// Builds a [`Handler`]. [`settings`](Self::settings) gives it what the environment says
/// (margin, pipelines switched on and off, function name, region, default parallelism); the
/// other methods set one thing each.
pub struct HandlerBuilder {
    pipelines: Vec<AssembledPipeline>,
    faults: Arc<dyn FaultPublisher>,
    store: Option<Arc<dyn FaultStore>>,
    key_order: bool,
    margin: Duration,
    decode: DecodeOptions,
    function_name: Option<String>,
    enabled: Option<HashSet<String>>,
    disabled: HashSet<String>,
    settings: Arc<Settings>,
    breaker: Option<Arc<CircuitBreaker>>,
    claim_checks: Option<Arc<dyn ClaimCheckStore>>,
    envelope: Option<Envelope>,
    metrics_out: Option<MetricsOut>,
}

fn id_list(list: &str) -> HashSet<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Handler {
    /// Starts a handler whose fault events go to `faults`.
    pub fn builder(faults: impl FaultPublisher + 'static) -> HandlerBuilder {
        HandlerBuilder {
            pipelines: Vec::new(),
            faults: Arc::new(faults),
            store: None,
            key_order: false,
            margin: Settings::default().deadline_margin,
            decode: DecodeOptions::default(),
            function_name: None,
            enabled: None,
            disabled: HashSet::new(),
            settings: Arc::new(Settings::default()),
            breaker: None,
            claim_checks: None,
            envelope: None,
            metrics_out: None,
        }
    }
}

impl HandlerBuilder {
    /// Takes the handler's defaults from `settings` (read once, with
    /// [`Settings::from_env`]): the deadline margin, the pipelines switched on and off, the
    /// function's name and region, and the parallelism and standard tags pipelines use. Call it
    /// first; the other methods override what it set.
    pub fn settings(mut self, settings: &Settings) -> Self {
        self.margin = settings.deadline_margin;
        self.function_name.clone_from(&settings.function_name);
        self.enabled = settings
            .enabled_pipelines
            .as_ref()
            .map(|ids| ids.iter().cloned().collect());
        self.disabled = settings.disabled_pipelines.iter().cloned().collect();
        self.decode.dynamodb.region.clone_from(&settings.region);
        self.settings = Arc::new(settings.clone());
        self
    }

    /// Adds a pipeline (or a flavor's rule).
    pub fn pipeline(mut self, pipeline: impl IntoPipeline) -> Self {
        self.pipelines.push(pipeline.into_pipeline());
        self
    }

    /// Adds pipelines, e.g. a list of flavor rules.
    pub fn pipelines<P: IntoPipeline>(mut self, pipelines: impl IntoIterator<Item = P>) -> Self {
        self.pipelines
            .extend(pipelines.into_iter().map(IntoPipeline::into_pipeline));
        self
    }

    /// Where whole faults go when they cannot be published as they are (too large, or
    /// rejected for good): the fault monitor's bucket, at the key the monitor would use. See
    /// [`faults`].
    pub fn fault_store(mut self, store: impl FaultStore + 'static) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Applies each key's records one at a time, in batch order, across every pipeline: a
    /// record enters the pipelines that accept it only once the key's previous record has
    /// finished in all the pipelines that accepted that one, and a retry in any pipeline stops
    /// the key's later records in all of them. Without it, order is kept per pipeline (and per
    /// step). Pipelines that group or compact cannot be ordered so (`ConfigError`).
    ///
    /// ```
    /// use lambda_stream::{Handler, Pipeline, testing::MemoryFaults};
    ///
    /// let handler = Handler::builder(MemoryFaults::default())
    ///     .in_key_order()
    ///     .pipeline(Pipeline::new("upserts").on_event_type(["thing-created", "thing-updated"]))
    ///     .pipeline(Pipeline::new("deletes").on_event_type("thing-deleted"))
    ///     .build()
    ///     .unwrap();
    /// # let _ = handler;
    /// ```
    pub fn in_key_order(mut self) -> Self {
        self.key_order = true;
        self
    }

    /// Time kept back before the Lambda deadline (at least 100 ms): no new work starts within
    /// it, running steps are abandoned halfway through it, and fault publishing ends a tenth
    /// before the deadline (see [`Deadline`]).
    pub fn deadline_margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// How DynamoDB stream records are read.
    pub fn dynamodb_options(mut self, options: DynamoDbOptions) -> Self {
        self.decode.dynamodb = options;
        self
    }

    /// The function name for fault events when the Lambda context has none.
    pub fn function_name(mut self, name: impl Into<String>) -> Self {
        self.function_name = Some(name.into());
        self
    }

    /// Runs only these pipelines (comma-separated ids), overriding the settings'.
    pub fn enabled_pipelines(mut self, ids: &str) -> Self {
        self.enabled = Some(id_list(ids));
        self
    }

    /// Never runs these pipelines (comma-separated ids), overriding the settings'.
    pub fn disabled_pipelines(mut self, ids: &str) -> Self {
        self.disabled = id_list(ids);
        self
    }

    /// Watches every batch with `breaker`: when it trips, the function's own event source
    /// mapping is switched off or its batch size lowered (see [`crate::breaker`]).
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(Arc::new(breaker));
        self
    }

    /// Where claim-check pointers are redeemed (by default the shared S3 client, made when the
    /// first pointer arrives).
    pub fn claim_checks(mut self, store: impl ClaimCheckStore + 'static) -> Self {
        self.claim_checks = Some(Arc::new(store));
        self
    }

    /// How events with an `eem` are decrypted (by default over the shared KMS client, in the
    /// settings' region, made when the first such event arrives; its data keys are cached for
    /// the handler's life).
    pub fn envelope(mut self, envelope: Envelope) -> Self {
        self.envelope = Some(envelope);
        self
    }

    /// Writes the metrics documents (when `METRICS` asks for them) to `out` instead of stdout.
    ///
    /// ```
    /// use lambda_stream::{Event, Handler, Pipeline, Settings, sources, testing::*};
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let settings = Settings::from_vars(|v| (v == "METRICS").then(|| "batch".to_owned()));
    /// let out = Arc::new(Mutex::new(Vec::<u8>::new()));
    /// let handler = Handler::builder(MemoryFaults::default())
    ///     .settings(&settings)
    ///     .pipeline(Pipeline::new("p1"))
    ///     .metrics_to(Arc::clone(&out))
    ///     .build()
    ///     .unwrap();
    /// let batch = to_kinesis_records(&[Event::new("1", "thing-created", 1)]);
    /// handler.handle::<sources::Kinesis>(batch, &context(Duration::from_secs(30))).await.unwrap();
    /// let line = String::from_utf8(out.lock().unwrap().clone()).unwrap();
    /// let doc: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    /// assert_eq!(doc["stream.batch.size"], 1);
    /// # });
    /// ```
    pub fn metrics_to(
        mut self,
        out: Arc<std::sync::Mutex<impl std::io::Write + Send + 'static>>,
    ) -> Self {
        self.metrics_out = Some(out);
        self
    }

    /// The handler, with the switched-off pipelines left out.
    pub fn build(self) -> Result<Handler, ConfigError> {
        if self.margin < Duration::from_millis(100) || self.margin >= Duration::from_secs(900) {
            return Err(ConfigError::Margin(self.margin.as_millis()));
        }
        let mut seen = HashSet::new();
        for p in &self.pipelines {
            if !seen.insert(p.id.clone()) {
                return Err(ConfigError::DuplicatePipeline(p.id.to_string()));
            }
            if self.key_order && p.gathers {
                return Err(ConfigError::GathersInKeyOrder(p.id.to_string()));
            }
        }
        let (enabled, disabled) = (self.enabled, self.disabled);
        let pipelines = self
            .pipelines
            .into_iter()
            .filter(|p| {
                let on = enabled.as_ref().is_none_or(|e| e.contains(&*p.id))
                    && !disabled.contains(&*p.id);
                if !on {
                    tracing::info!(pipeline = %p.id, "pipeline switched off");
                }
                on
            })
            .collect();
        Ok(Handler {
            pipelines,
            faults: self.faults,
            store: self.store,
            key_order: self.key_order,
            margin: self.margin,
            decode: self.decode,
            function_name: self.function_name,
            settings: self.settings,
            breaker: self.breaker,
            prepare: Prepare::new(self.claim_checks, self.envelope),
            metrics_out: self.metrics_out,
        })
    }
}

impl Handler {
    /// The handler with a fault store (as [`HandlerBuilder::fault_store`]), for a handler
    /// built elsewhere.
    pub fn with_fault_store(mut self, store: impl FaultStore + 'static) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The handler with a circuit breaker (as [`HandlerBuilder::circuit_breaker`]), for a
    /// handler built elsewhere.
    pub fn with_circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(Arc::new(breaker));
        self
    }

    /// The ids of the pipelines this handler runs.
    pub fn pipeline_ids(&self) -> Vec<&str> {
        self.pipelines.iter().map(|p| p.id()).collect()
    }

    /// The invocation's deadline and function name, from the Lambda context.
    pub fn invocation(&self, ctx: &Context) -> Invocation {
        let from_ctx = &ctx.env_config.function_name;
        Invocation {
            deadline: Deadline::from_context(ctx, self.margin),
            function_name: if from_ctx.is_empty() {
                self.function_name
                    .clone()
                    .unwrap_or_else(|| "unknown".into())
            } else {
                from_ctx.clone()
            },
        }
    }

    /// The invocation, refusing one that began with no more time than the margin.
    fn start(&self, ctx: &Context) -> Result<Invocation, BatchError> {
        let invocation = self.invocation(ctx);
        if let Some((remaining, margin)) = invocation.deadline.no_room() {
            let err = BatchError::NoTime {
                remaining_ms: remaining.as_millis() as u64,
                margin_ms: margin.as_millis() as u64,
            };
            tracing::error!(error = %err, "configuration error");
            return Err(err);
        }
        Ok(invocation)
    }

    /// Handles one Lambda event of source `S`: decodes its records, runs them through every
    /// pipeline that accepts them, publishes the faults, and answers as `S` answers (a partial
    /// batch response, or an error that fails the invocation so it is delivered again).
    ///
    /// ```
    /// use lambda_stream::{Event, Handler, Pipeline, sources, testing::*};
    /// use std::time::Duration;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let handler = Handler::builder(MemoryFaults::default()).pipeline(Pipeline::new("p1")).build().unwrap();
    /// let batch = to_kinesis_records(&[Event::new("1", "thing-created", 1)]);
    /// let response = handler.handle::<sources::Kinesis>(batch, &context(Duration::from_secs(30))).await.unwrap();
    /// assert!(response.batch_item_failures.is_empty());
    /// # });
    /// ```
    pub async fn handle<S: Source>(
        &self,
        event: impl Into<S::Event>,
        ctx: &Context,
    ) -> Result<S::Response, BatchError> {
        let invocation = self.start(ctx)?;
        let windows = S::windows(event.into(), chunk_of(self.settings.window)).into_iter();
        // boxed: the whole run nested in a caller's future is deeper than the compiler's
        // default layout limit
        Box::pin(self.handle_windows::<S>(windows, invocation)).await
    }

    /// Handles one invocation of source `S` from its payload's bytes, as [`run`](crate::run)
    /// does: as [`handle`](Self::handle), with the batch taken from
    /// [`Source::event_windows`] (a big Kinesis batch is parsed a few dozen records at a time,
    /// so little more than one window's records are held at once). A payload that does not parse is
    /// [`BatchError::Payload`].
    ///
    /// ```
    /// use lambda_stream::{Event, Handler, Pipeline, sources, testing::*};
    /// use std::time::Duration;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let handler = Handler::builder(MemoryFaults::default()).pipeline(Pipeline::new("p1")).build().unwrap();
    /// let batch = to_kinesis_records(&[Event::new("1", "thing-created", 1)]);
    /// let payload = sources::Bytes::from(serde_json::to_vec(&batch).unwrap());
    /// let ctx = context(Duration::from_secs(30));
    /// let response = handler.handle_payload::<sources::Kinesis>(payload, &ctx).await.unwrap();
    /// assert!(response.batch_item_failures.is_empty());
    /// # });
    /// ```
    pub async fn handle_payload<S: Source>(
        &self,
        payload: Bytes,
        ctx: &Context,
    ) -> Result<S::Response, BatchError> {
        let windows = S::event_windows(payload, chunk_of(self.settings.window)).map_err(|e| {
            // serde's message can quote a whole string of the payload
            let reason = e.to_string();
            BatchError::Payload(crate::faults::truncate(&reason, 300).to_owned())
        })?;
        let invocation = self.start(ctx)?;
        // boxed, as in `handle`
        Box::pin(self.handle_windows::<S>(windows, invocation)).await
    }

    /// Runs the windows, lets the circuit breaker observe the outcomes and answers as `S` does.
    async fn handle_windows<S: Source>(
        &self,
        windows: impl ExactSizeIterator<Item = S::Event>,
        invocation: Invocation,
    ) -> Result<S::Response, BatchError> {
        let outcomes = self.process_windows::<S>(windows, &invocation).await;
        if let Some(breaker) = &self.breaker {
            let observe = breaker.observe(&outcomes, &invocation.function_name);
            match invocation.deadline.publish_by() {
                Some(by) => {
                    if tokio::time::timeout_at(by, observe).await.is_err() {
                        tracing::error!("deadline: the circuit breaker did not finish in time");
                    }
                }
                None => observe.await,
            }
        }
        S::respond(outcomes)
    }

    /// Runs decoded records through every pipeline that accepts them, publishes the faults and
    /// returns every record's outcome.
    pub async fn process(&self, decoded: Decoded, invocation: &Invocation) -> Outcomes {
        let started = std::time::Instant::now();
        let source = decoded.source;
        let mut carry = Carry::new(started);
        let outcomes = self.run_window(decoded, invocation, &mut carry).await;
        self.report(source, &outcomes, carry.metrics, started);
        outcomes
    }

    /// Runs each window when the one before it has ended (see [`Settings::window`]), carrying
    /// what a window leaves the next ([`Carry`]); `chunks` is the batch cut as [`chunk_of`]
    /// says, and a window is decoded while the one before it runs ([`Ahead`]).
    async fn process_windows<S: Source>(
        &self,
        chunks: impl ExactSizeIterator<Item = S::Event>,
        invocation: &Invocation,
    ) -> Outcomes {
        let started = std::time::Instant::now();
        let mut carry = Carry::new(started);
        let mut all: Option<Outcomes> = None;
        let mut source = "";
        let mut windows = Ahead::<S, _>::new(chunks, self.settings.window, &self.decode);
        let mut i = 0;
        while let Some(decoded) = windows.window() {
            let many = i > 0 || windows.more();
            source = decoded.source;
            // the first window runs whatever the time: the pipelines say what did not start
            let mut outcomes = if i > 0 && invocation.deadline.passed() {
                if self.settings.metrics.any() {
                    let m = InvocationMetrics::of_batch(decoded.source, &decoded.records);
                    carry.absorb(m);
                }
                Outcomes::all_retry(decoded.records)
            } else {
                let progress = Arc::new(Progress::default());
                carry.progress = Arc::clone(&progress);
                let run = self.run_window(decoded, invocation, &mut carry);
                windows.overlap(run, &progress).await
            };
            i += 1;
            carry.comes_back |= S::REDELIVERY == Redelivery::FromCheckpoint
                && outcomes.outcomes.contains(&Outcome::Retry);
            if many {
                // the answer needs only the records to retry: the others' are let go with
                // their window
                outcomes.let_go();
            }
            match &mut all {
                Some(all) => all.append(outcomes),
                None => all = Some(outcomes),
            }
        }
        let outcomes = all.unwrap_or_else(|| Outcomes::all_retry(Vec::new()));
        self.report(source, &outcomes, carry.metrics, started);
        outcomes
    }

    /// Logs the batch's outcomes and writes its metrics documents.
    fn report(
        &self,
        source: &'static str,
        outcomes: &Outcomes,
        metrics: Option<InvocationMetrics>,
        started: std::time::Instant,
    ) {
        let s = outcomes.summary();
        tracing::info!(
            source,
            records = s.records,
            done = s.done,
            faulted = s.faulted,
            retry = s.retry,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch processed"
        );
        if let Some(mut m) = metrics {
            (m.done, m.faulted, m.retry) = (s.done, s.faulted, s.retry);
            m.time_ms = started.elapsed().as_secs_f64() * 1000.0;
            let tags = self.settings.standard_tags();
            match &self.metrics_out {
                Some(out) => {
                    let mut out = out
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    m.write(&self.settings.metrics, &tags, &mut *out);
                }
                None => m.write(&self.settings.metrics, &tags, &mut std::io::stdout().lock()),
            }
        }
    }

    /// Runs one window's decoded records through the pipelines, publishes its faults and
    /// returns its records' outcomes; its metrics are added to `carry`'s.
    async fn run_window(
        &self,
        mut decoded: Decoded,
        invocation: &Invocation,
        carry: &mut Carry,
    ) -> Outcomes {
        let mut metrics = self
            .settings
            .metrics
            .any()
            .then(|| InvocationMetrics::of_batch(decoded.source, &decoded.records));
        self.prepare
            .prepare(&mut decoded, invocation.deadline, &self.settings)
            .await;
        let mut outcomes = vec![Outcome::Done; decoded.records.len()];
        for position in &decoded.retries {
            outcomes[*position as usize] = Outcome::Retry;
        }
        let mut faults: Vec<PendingFault> = Vec::new();

        for (position, err) in &decoded.failures {
            outcomes[*position as usize] = Outcome::Faulted;
            faults.push(PendingFault::decode(*position, decoded.source, err));
        }

        let deadline = invocation.deadline;
        // [0] shared by the pipelines in key order, [1 + i] pipeline i's own
        if carry.blocked.is_empty() {
            carry.blocked = (0..=self.pipelines.len())
                .map(|_| Arc::new(Blocked::default()))
                .collect();
            carry.claimed = (0..self.pipelines.len()).map(|_| Arc::default()).collect();
        }
        // what the end of the window needs of each unit, so the units themselves go to the
        // pipelines: an event is freed as its last pipeline is done with it, in the calls'
        // wait, rather than all of the window's at once after its last call
        let places: Vec<(u32, Option<u64>)> = decoded
            .units
            .iter()
            .map(|u| (u.shared.index, u.shared.key_hash))
            .collect();
        let units = std::mem::take(&mut decoded.units);
        let mut ctxs = Vec::with_capacity(self.pipelines.len());
        let mut accepted: Vec<Vec<UnitOfWork>> = Vec::with_capacity(self.pipelines.len());
        let mut accepted_units: Vec<usize> = Vec::with_capacity(self.pipelines.len());
        let mut takers: Vec<Takers> = vec![Takers::new(); units.len()];
        for (i, p) in self.pipelines.iter().enumerate() {
            let blocked = Arc::clone(&carry.blocked[if self.key_order { 0 } else { 1 + i }]);
            let ctx = Arc::new(RunCtx::new(
                Arc::clone(&p.id),
                deadline,
                units.len(),
                blocked,
                Arc::clone(&carry.claimed[i]),
                Arc::clone(&self.settings),
            ));
            ctx.set_progress(Arc::clone(&carry.progress));
            // in key order the gate hands the units over: a pipeline keeps no list of its own
            let mut own = Vec::new();
            let mut n = 0;
            for u in &units {
                // a rule's predicates are user code: a panic faults the unit in this pipeline
                match catch_unwind(AssertUnwindSafe(|| p.rule.accepts(u))) {
                    Ok(false) => {}
                    Ok(true) => {
                        ctx.accept(u.shared.unit);
                        takers[u.shared.unit as usize].push(i as u16);
                        n += 1;
                        if !self.key_order {
                            own.push(u.clone());
                        }
                    }
                    Err(panic) => {
                        ctx.accept(u.shared.unit);
                        ctx.fault(anchor_of(u), panic_error(panic));
                    }
                }
            }
            ctxs.push(ctx);
            accepted.push(own);
            accepted_units.push(n);
        }
        let sources: Vec<Items<UnitOfWork>> = if self.key_order {
            let (gate, receivers) = KeyGate::new(units, takers, self.pipelines.len());
            let gate = Arc::new(gate);
            ctxs.iter()
                .zip(receivers)
                .map(|(ctx, rx)| {
                    ctx.set_gate(Arc::clone(&gate));
                    let ctx = Arc::clone(ctx);
                    // a key blocked by a retry in any pipeline, or a deadline passed while the
                    // unit waited for its turn: it does not start
                    rx.filter_map(move |u| {
                        ready(if ctx.blocked(&keys_of(&u)) {
                            ctx.not_started(&u, BLOCKED);
                            None
                        } else if ctx.deadline.passed() {
                            ctx.not_started(&u, NOT_STARTED);
                            None
                        } else {
                            Some(u)
                        })
                    })
                    .boxed()
                })
                .collect()
        } else {
            drop(units);
            accepted
                .into_iter()
                .map(|units| stream::iter(units).boxed())
                .collect()
        };
        let mut runs = Vec::with_capacity(self.pipelines.len());
        // each pipeline's time to finish, in µs from the start of the runs (metrics)
        let finished: Arc<Vec<AtomicU64>> = Arc::new(
            (0..self.pipelines.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
        );
        let runs_started = std::time::Instant::now();
        for (i, ((p, ctx), source)) in self.pipelines.iter().zip(&ctxs).zip(sources).enumerate() {
            let span = tracing::info_span!("pipeline", id = %p.id);
            let run = (p.run)(Arc::clone(ctx), source);
            let finished = Arc::clone(&finished);
            runs.push(
                async move {
                    run.await;
                    finished[i].store(
                        runs_started.elapsed().as_micros() as u64,
                        AtomicOrdering::Relaxed,
                    );
                    tracing::debug!("pipeline finished");
                }
                .instrument(span),
            );
        }
        if !runs.is_empty() {
            let all = deadline::bounded(deadline.start_by(), join_all(runs));
            match deadline.cut_at() {
                Some(cut) => {
                    if tokio::time::timeout_at(cut, all).await.is_err() {
                        tracing::warn!(
                            "deadline: steps still running are abandoned; their records will be retried"
                        );
                    }
                }
                None => {
                    all.await;
                }
            }
        }
        // what pipelines answered (a Firehose transformation), by record; one answer a record
        let mut answers: Vec<Option<Transformed>> = Vec::new();
        let mut answered_by: Vec<usize> = Vec::new();
        for (p, ctx) in ctxs.iter().enumerate() {
            for (origin, answer) in ctx.take_answers() {
                let index = origin.index as usize;
                if answers.is_empty() {
                    answers.resize_with(decoded.records.len(), || None);
                    answered_by.resize(decoded.records.len(), 0);
                }
                if answers[index].is_some() {
                    let first = &self.pipelines[answered_by[index]].id;
                    let err = StepError::poison_msg(format!(
                        "pipeline `{first}` already answered for this record: one answer a record"
                    ))
                    .named("AnswerConflict");
                    ctx.fault(Anchor::from_iter([origin]), err);
                } else {
                    answers[index] = Some(answer);
                    answered_by[index] = p;
                }
            }
        }
        for (i, ctx) in ctxs.iter().enumerate() {
            if let Some(m) = metrics.as_mut() {
                let mut p = PipelineMetrics {
                    units: accepted_units.get(i).copied().unwrap_or(0),
                    time_ms: finished[i].load(AtomicOrdering::Relaxed) as f64 / 1000.0,
                    ..PipelineMetrics::default()
                };
                for (_, outcome) in ctx.outcomes() {
                    match outcome {
                        Outcome::Done => p.done += 1,
                        Outcome::Faulted => p.faulted += 1,
                        Outcome::Retry => p.retry += 1,
                    }
                }
                for (name, n) in ctx.take_retried_by() {
                    for _ in 0..n {
                        metrics::count_error(&mut m.retries_by_error, &name);
                    }
                }
                m.pipelines.insert(ctx.pipeline.to_string(), p);
            }
            for (unit, outcome) in ctx.outcomes() {
                let o = &mut outcomes[places[unit].0 as usize];
                *o = (*o).max(outcome);
            }
            faults.extend(
                ctx.take_faults()
                    .into_iter()
                    .map(|f| PendingFault::raised(f, &ctx.pipeline)),
            );
        }

        if let Some(m) = metrics.as_mut() {
            for f in &faults {
                metrics::count_error(&mut m.faults_by_error, f.error_name());
            }
        }
        if carry.comes_back {
            // every record of this window comes back: its faults are raised then
            for f in &faults {
                for p in &f.positions {
                    outcomes[*p as usize] = Outcome::Retry;
                }
            }
        } else {
            self.settle_faults(&decoded, invocation, &mut outcomes, faults)
                .await;
        }

        // then claims settle, knowing which records end faulted and which come back
        let finishers: Vec<_> = ctxs
            .iter()
            .flat_map(|ctx| ctx.take_finishers().into_iter().map(move |f| (ctx, f)))
            .collect();
        if !finishers.is_empty() {
            let finals: Arc<Vec<Outcome>> = Arc::new(
                places
                    .iter()
                    .map(|(index, _)| outcomes[*index as usize])
                    .collect(),
            );
            let all = join_all(
                finishers
                    .into_iter()
                    .map(|(ctx, f)| f(Arc::clone(ctx), Arc::clone(&finals))),
            );
            match deadline.publish_by() {
                Some(by) => {
                    if tokio::time::timeout_at(by, all).await.is_err() {
                        tracing::error!("deadline: idempotency marks not all written in time");
                    }
                }
                None => {
                    all.await;
                }
            }
        }

        // a key with a record to retry stays blocked in the windows after this one, in every
        // pipeline: its later records would otherwise overtake the one coming back
        let retried = places.iter().filter_map(|(index, key_hash)| {
            (outcomes[*index as usize] == Outcome::Retry)
                .then_some(*key_hash)
                .flatten()
        });
        let retried: Vec<u64> = retried.collect();
        if !retried.is_empty() {
            for blocked in &carry.blocked {
                blocked.block_keys(retried.iter().copied());
            }
        }
        if let Some(m) = metrics {
            carry.absorb(m);
        }
        Outcomes {
            outcomes,
            records: decoded.records,
            answers,
        }
    }

    /// Publishes the faults of records Lambda will not deliver again (the others are raised
    /// again on redelivery; a fault with any such record waits whole), within the publishing
    /// budget. What is not confirmed in time turns its records to retry.
    async fn settle_faults(
        &self,
        decoded: &Decoded,
        invocation: &Invocation,
        outcomes: &mut [Outcome],
        faults: Vec<PendingFault>,
    ) {
        let positions: Vec<&[u32]> = faults.iter().map(|f| f.positions.as_slice()).collect();
        let deferred =
            delivery::defer_faults(outcomes, &decoded.records, decoded.redelivery, &positions);
        let publish: Vec<&PendingFault> = faults
            .iter()
            .zip(&deferred)
            .filter(|(_, d)| !**d)
            .map(|(f, _)| f)
            .collect();
        if publish.is_empty() {
            return;
        }
        let mut settled = vec![false; publish.len()];
        let events: Vec<FaultEvent> = publish
            .iter()
            .map(|f| {
                f.to_event(
                    &decoded.records,
                    &invocation.function_name,
                    self.settings.region.as_deref(),
                )
            })
            .collect();
        let deadline = invocation.deadline;
        let work = self.publish_faults(events, &mut settled);
        let work = deadline::bounded(deadline.publish_by(), work);
        match deadline.publish_by() {
            Some(by) => {
                if tokio::time::timeout_at(by, work).await.is_err() {
                    tracing::error!(
                        "deadline: fault publishing did not finish in time; the records of unconfirmed faults will be retried"
                    );
                }
            }
            None => work.await,
        }
        for (f, ok) in publish.iter().zip(settled) {
            if !ok {
                for p in &f.positions {
                    outcomes[*p as usize] = Outcome::Retry;
                }
            }
        }
    }

    /// Stores what must be stored, publishes the rest, and marks each fault settled once its
    /// records may end faulted.
    async fn publish_faults(&self, events: Vec<FaultEvent>, settled: &mut [bool]) {
        let limit = self.faults.max_fault_bytes();
        let mut sendable: Vec<usize> = Vec::with_capacity(events.len());
        let mut slim: Vec<FaultEvent> = Vec::with_capacity(events.len());
        let mut wholes: Vec<Option<Vec<u8>>> = Vec::with_capacity(events.len());
        for (i, event) in events.into_iter().enumerate() {
            let fitted = faults::fit(event, limit);
            let mut event = fitted.event;
            if let (Some(whole), Some(store)) = (&fitted.whole, &self.store) {
                // the whole fault first, so the trimmed one never points at nothing
                let key = storage_key(&storage_id(&event)).unwrap_or_default();
                if let Err(e) = store.store(&key, whole.clone()).await {
                    tracing::error!(fault = %event.id, error = %e, "whole fault not stored; its records will be retried");
                    slim.push(event);
                    wholes.push(None);
                    continue;
                }
                if let Some(t) = event.trimmed.as_mut() {
                    t.stored = Some(key);
                }
            }
            sendable.push(i);
            slim.push(event);
            wholes.push(fitted.whole);
        }
        let to_send: Vec<FaultEvent> = sendable.iter().map(|i| slim[*i].clone()).collect();
        if to_send.is_empty() {
            return;
        }
        let err = match self.faults.publish(&to_send).await {
            Ok(()) => {
                for i in sendable {
                    settled[i] = true;
                }
                return;
            }
            Err(e) => e,
        };
        tracing::error!(error = %err, faults = to_send.len(), "fault events not published; their records will be retried unless rejected for good");
        for (k, i) in sendable.into_iter().enumerate() {
            if err.published(k) {
                settled[i] = true;
            } else if err.rejected.contains(&k) {
                settled[i] = self.dead_letter(&slim[i], wholes[i].take()).await;
            }
        }
    }

    /// A fault rejected for good: stored whole where the fault monitor would have stored it,
    /// or, with no store, logged and set aside. Never retried, which could not help.
    async fn dead_letter(&self, event: &FaultEvent, whole: Option<Vec<u8>>) -> bool {
        let Some(store) = &self.store else {
            tracing::error!(
                fault = %event.id,
                error = %faults::truncate(&event.err.message, 300),
                "fault rejected by the publisher and no fault store configured: set aside with its record"
            );
            return true;
        };
        let json = match whole {
            Some(json) => json,
            None => match serde_json::to_vec(event) {
                Ok(json) => json,
                Err(_) => return false,
            },
        };
        let key = storage_key(&storage_id(event)).unwrap_or_default();
        match store.store(&key, json).await {
            Ok(()) => {
                tracing::warn!(fault = %event.id, %key, "fault rejected by the publisher; stored whole in the fault store");
                true
            }
            Err(e) => {
                tracing::error!(fault = %event.id, error = %e, "fault rejected by the publisher and not stored; its records will be retried");
                false
            }
        }
    }
}
