//! The handler: runs a batch through the pipelines and answers Lambda.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::SqsBatchResponse;
use aws_lambda_events::event::streams::{DynamoDbEventResponse, KinesisEventResponse};
use futures::future::join_all;
use lambda_runtime::Context;
use serde_json::Value;
use smallvec::SmallVec;
use tracing::Instrument;

use crate::batch::{Outcome, Outcomes};
use crate::deadline::Deadline;
use crate::error::BatchError;
use crate::faults::{FaultPublisher, PendingFault, now_millis};
use crate::pipeline::{AssembledPipeline, Cause, IntoPipeline, StageCtx, Verdict};
use crate::sources::{
    Decoded, DynamoDbBatch, DynamoDbOptions, KinesisBatch, S3Batch, SnsBatch, SqsBatch,
    from_dynamodb, from_eventbridge, from_kinesis, from_s3, from_sns, from_sqs, from_sqs_sns_s3,
};

/// The handler could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Two pipelines share an id; faults and logs could not tell them apart.
    #[error("two pipelines have the id `{0}`")]
    DuplicatePipeline(String),
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
/// let response = handler.kinesis(batch, &context(Duration::from_secs(30))).await.unwrap();
/// assert!(response.batch_item_failures.is_empty());
/// # });
/// ```
pub struct Handler {
    pipelines: Vec<AssembledPipeline>,
    faults: Arc<dyn FaultPublisher>,
    margin: Duration,
    dynamodb: DynamoDbOptions,
    function_name: Option<String>,
}

/// Builds a [`Handler`]. Defaults come from the environment: `ENABLED_PIPELINES` and
/// `DISABLED_PIPELINES` (comma-separated ids), `DEADLINE_MARGIN_MS` (default 1000).
pub struct HandlerBuilder {
    pipelines: Vec<AssembledPipeline>,
    faults: Arc<dyn FaultPublisher>,
    margin: Duration,
    dynamodb: DynamoDbOptions,
    function_name: Option<String>,
    enabled: Option<HashSet<String>>,
    disabled: HashSet<String>,
}

fn id_list(list: &str) -> HashSet<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Handler {
    /// Starts a handler whose fault events go to `faults`.
    pub fn builder(faults: impl FaultPublisher + 'static) -> HandlerBuilder {
        HandlerBuilder {
            pipelines: Vec::new(),
            faults: Arc::new(faults),
            margin: Duration::from_millis(
                env("DEADLINE_MARGIN_MS")
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(1000),
            ),
            dynamodb: DynamoDbOptions::default(),
            function_name: env("AWS_LAMBDA_FUNCTION_NAME"),
            enabled: env("ENABLED_PIPELINES").map(|l| id_list(&l)),
            disabled: env("DISABLED_PIPELINES")
                .map(|l| id_list(&l))
                .unwrap_or_default(),
        }
    }
}

impl HandlerBuilder {
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

    /// Time kept back before the Lambda deadline: no new work starts within it.
    pub fn deadline_margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// How DynamoDB stream records are read.
    pub fn dynamodb_options(mut self, options: DynamoDbOptions) -> Self {
        self.dynamodb = options;
        self
    }

    /// The function name for fault events when the Lambda context has none.
    pub fn function_name(mut self, name: impl Into<String>) -> Self {
        self.function_name = Some(name.into());
        self
    }

    /// Runs only these pipelines (comma-separated ids), overriding `ENABLED_PIPELINES`.
    pub fn enabled_pipelines(mut self, ids: &str) -> Self {
        self.enabled = Some(id_list(ids));
        self
    }

    /// Never runs these pipelines (comma-separated ids), overriding `DISABLED_PIPELINES`.
    pub fn disabled_pipelines(mut self, ids: &str) -> Self {
        self.disabled = id_list(ids);
        self
    }

    /// The handler, with the switched-off pipelines left out.
    pub fn build(self) -> Result<Handler, ConfigError> {
        let mut seen = HashSet::new();
        for p in &self.pipelines {
            if !seen.insert(p.id.clone()) {
                return Err(ConfigError::DuplicatePipeline(p.id.to_string()));
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
            margin: self.margin,
            dynamodb: self.dynamodb,
            function_name: self.function_name,
        })
    }
}

impl Handler {
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

    /// Handles a Kinesis event.
    pub async fn kinesis(
        &self,
        event: impl Into<KinesisBatch>,
        ctx: &Context,
    ) -> Result<KinesisEventResponse, BatchError> {
        let outcomes = self
            .process(from_kinesis(event), &self.invocation(ctx))
            .await;
        outcomes.kinesis_response()
    }

    /// Handles a DynamoDB stream event.
    pub async fn dynamodb(
        &self,
        event: impl Into<DynamoDbBatch>,
        ctx: &Context,
    ) -> Result<DynamoDbEventResponse, BatchError> {
        let decoded = from_dynamodb(event, &self.dynamodb);
        let outcomes = self.process(decoded, &self.invocation(ctx)).await;
        outcomes.dynamodb_response()
    }

    /// Handles an SQS event whose bodies are events (or SNS notifications of events).
    pub async fn sqs(
        &self,
        event: impl Into<SqsBatch>,
        ctx: &Context,
    ) -> Result<SqsBatchResponse, BatchError> {
        let outcomes = self.process(from_sqs(event), &self.invocation(ctx)).await;
        outcomes.sqs_response()
    }

    /// Handles an SQS event carrying S3 notifications through SNS.
    pub async fn sqs_sns_s3(
        &self,
        event: impl Into<SqsBatch>,
        ctx: &Context,
    ) -> Result<SqsBatchResponse, BatchError> {
        let outcomes = self
            .process(from_sqs_sns_s3(event), &self.invocation(ctx))
            .await;
        outcomes.sqs_response()
    }

    /// Handles an SNS event; any retry fails the invocation.
    pub async fn sns(&self, event: impl Into<SnsBatch>, ctx: &Context) -> Result<(), BatchError> {
        let outcomes = self.process(from_sns(event), &self.invocation(ctx)).await;
        outcomes.async_result()
    }

    /// Handles an S3 notification event; any retry fails the invocation.
    pub async fn s3(&self, event: impl Into<S3Batch>, ctx: &Context) -> Result<(), BatchError> {
        let outcomes = self.process(from_s3(event), &self.invocation(ctx)).await;
        outcomes.async_result()
    }

    /// Handles an EventBridge event; a retry fails the invocation.
    pub async fn eventbridge(
        &self,
        event: EventBridgeEvent<Value>,
        ctx: &Context,
    ) -> Result<(), BatchError> {
        let outcomes = self
            .process(from_eventbridge(event), &self.invocation(ctx))
            .await;
        outcomes.async_result()
    }

    /// Decodes a captured Lambda event (its JSON) by its source, as this handler's entry points
    /// would: Kinesis, DynamoDB, SQS (events or SNS notifications in the body), SNS, S3 or
    /// EventBridge. For replaying a batch with [`Handler::process`].
    ///
    /// ```
    /// # use lambda_stream::{Handler, testing::MemoryFaults};
    /// let handler = Handler::builder(MemoryFaults::default()).build().unwrap();
    /// let sqs = br#"{"Records":[{"messageId":"m1","body":"{\"id\":\"1\",\"type\":\"t\",\"timestamp\":1}","eventSource":"aws:sqs"}]}"#;
    /// assert_eq!(handler.decode_json(sqs).unwrap().records().len(), 1);
    /// assert!(handler.decode_json(b"{}").is_err());
    /// ```
    pub fn decode_json(&self, event: &[u8]) -> Result<Decoded, String> {
        let value: Value =
            serde_json::from_slice(event).map_err(|e| format!("the event is not JSON: {e}"))?;
        let source = value
            .pointer("/Records/0/eventSource")
            .or_else(|| value.pointer("/Records/0/EventSource"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let parse = |what: &str, e: serde_json::Error| format!("not a {what} event: {e}");
        Ok(match source.as_deref() {
            Some("aws:kinesis") => from_kinesis(
                serde_json::from_value::<KinesisBatch>(value).map_err(|e| parse("Kinesis", e))?,
            ),
            Some("aws:dynamodb") => from_dynamodb(
                serde_json::from_value::<DynamoDbBatch>(value).map_err(|e| parse("DynamoDB", e))?,
                &self.dynamodb,
            ),
            Some("aws:sqs") => {
                from_sqs(serde_json::from_value::<SqsBatch>(value).map_err(|e| parse("SQS", e))?)
            }
            Some("aws:sns") => {
                from_sns(serde_json::from_value::<SnsBatch>(value).map_err(|e| parse("SNS", e))?)
            }
            Some("aws:s3") => {
                from_s3(serde_json::from_value::<S3Batch>(value).map_err(|e| parse("S3", e))?)
            }
            _ if value.get("detail-type").is_some() => from_eventbridge(
                serde_json::from_value(value).map_err(|e| parse("EventBridge", e))?,
            ),
            other => {
                return Err(format!(
                    "unknown event source {other:?}: expected Records[].eventSource of aws:kinesis, aws:dynamodb, aws:sqs, aws:sns or aws:s3, or an EventBridge event"
                ));
            }
        })
    }

    /// Runs decoded records through every pipeline that accepts them, publishes the faults and
    /// returns every record's outcome.
    pub async fn process(&self, decoded: Decoded, invocation: &Invocation) -> Outcomes {
        let started = std::time::Instant::now();
        let mut outcomes = vec![Outcome::Done; decoded.records.len()];
        let mut faults: Vec<PendingFault> = Vec::new();

        for (position, err) in &decoded.failures {
            outcomes[*position as usize] = Outcome::Faulted;
            faults.push(PendingFault {
                positions: SmallVec::from_elem(*position, 1),
                pipeline: Arc::from(decoded.source),
                cause: Cause {
                    name: "DecodeError".into(),
                    message: err.to_string(),
                    stack: err.to_string(),
                },
                partition_key: None,
            });
        }

        let runs = self.pipelines.iter().filter_map(|p| {
            let units: Vec<_> = decoded
                .units
                .iter()
                .filter(|u| p.rule.accepts(u))
                .cloned()
                .collect();
            if units.is_empty() {
                return None;
            }
            let accepted = units.len();
            let ctx = Arc::new(StageCtx::new(Arc::clone(&p.id), invocation.deadline));
            let run = (p.run)(Arc::clone(&ctx), units);
            let span = tracing::info_span!("pipeline", id = %p.id);
            Some(
                async move {
                    let reached_end = run.await;
                    tracing::debug!(accepted, reached_end, "pipeline finished");
                    ctx
                }
                .instrument(span),
            )
        });
        for ctx in join_all(runs).await {
            for entry in ctx.take_entries() {
                let positions: SmallVec<[u32; 1]> = entry.anchor.iter().map(|o| o.index).collect();
                match entry.verdict {
                    Verdict::Retry => {
                        for p in &positions {
                            outcomes[*p as usize] = Outcome::Retry;
                        }
                    }
                    Verdict::Fault(cause) => {
                        for p in &positions {
                            let o = &mut outcomes[*p as usize];
                            *o = (*o).max(Outcome::Faulted);
                        }
                        faults.push(PendingFault {
                            partition_key: entry
                                .anchor
                                .first()
                                .and_then(|o| o.partition_key())
                                .map(str::to_owned),
                            positions,
                            pipeline: Arc::clone(&ctx.pipeline),
                            cause,
                        });
                    }
                }
            }
        }

        self.publish_faults(&decoded, invocation, &mut outcomes, faults)
            .await;

        let outcomes = Outcomes {
            outcomes,
            records: decoded.records,
        };
        let s = outcomes.summary();
        tracing::info!(
            source = decoded.source,
            records = s.records,
            done = s.done,
            faulted = s.faulted,
            retry = s.retry,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch processed"
        );
        outcomes
    }

    /// Publishes the faults of records Lambda will not deliver again (the others fault again
    /// on redelivery, so publishing now would double them); a fault that fails to publish turns
    /// its records to retry.
    async fn publish_faults(
        &self,
        decoded: &Decoded,
        invocation: &Invocation,
        outcomes: &mut [Outcome],
        faults: Vec<PendingFault>,
    ) {
        if faults.is_empty() {
            return;
        }
        let redelivered = Outcomes::redelivered_by(outcomes, decoded.redelivery);
        let (publish, deferred): (Vec<_>, Vec<_>) = faults
            .into_iter()
            .partition(|f| !f.positions.iter().all(|p| redelivered[*p as usize]));
        for f in &deferred {
            for p in &f.positions {
                outcomes[*p as usize] = Outcome::Retry;
            }
        }
        if publish.is_empty() {
            return;
        }
        let now = now_millis();
        let events: Vec<_> = publish
            .iter()
            .map(|f| f.to_event(&decoded.records, &invocation.function_name, now))
            .collect();
        if let Err(e) = self.faults.publish(&events).await {
            tracing::error!(error = %e, faults = events.len(), "fault events not published; their records will be retried");
            let failed: Vec<usize> = match e.failed {
                Some(failed) => failed,
                None => (0..publish.len()).collect(),
            };
            for i in failed {
                if let Some(f) = publish.get(i) {
                    for p in &f.positions {
                        outcomes[*p as usize] = Outcome::Retry;
                    }
                }
            }
        }
    }
}
