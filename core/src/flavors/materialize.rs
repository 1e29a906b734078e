use std::sync::Arc;

use serde_json::Value;

use crate::connectors::{DynamoDb, UpdateRequest};
use crate::encryption::Encryption;
use crate::error::StepError;
use crate::pipeline::{AssembledPipeline, EventType, IntoPipeline, Pipeline};
use crate::sinks::Update;
use crate::uow::UnitOfWork;

/// Materializes events into a DynamoDB table (a listener's CQRS view): filter by event type →
/// `to_update_request` → update, guarded by the timestamp condition when the request has one.
///
/// - With [`skip_events_from`](Materialize::skip_events_from), events a service published itself
///   are skipped, so it does not re-materialize its own output.
/// - Every write sets `latched: true`, so a cdc trigger on the same table recognises the row as
///   a view and does not publish it back to the bus.
///
/// ```
/// use lambda_stream::connectors::UpdateRequest;
/// use lambda_stream::expressions::update_expression;
/// use lambda_stream::flavors::Materialize;
/// use lambda_stream::{StepError, UnitOfWork};
/// use serde_json::json;
///
/// fn to_update_request(uow: &UnitOfWork) -> Result<UpdateRequest, StepError> {
///     let e = uow.event();
///     let thing = e.entity("thing").ok_or_else(|| StepError::poison_msg("no thing"))?;
///     Ok(UpdateRequest {
///         table: None,
///         key: json!({"pk": thing["id"], "sk": "thing"}),
///         expression: update_expression(&json!({"name": thing["name"], "timestamp": e.timestamp}))?
///             .timestamp_condition()?,
///     })
/// }
/// # async fn rules(db: lambda_stream::connectors::DynamoDb) {
/// let rule = Materialize::new("thing-view", ["thing-created", "thing-updated"], to_update_request, db);
/// # }
/// ```
pub struct Materialize<F> {
    /// The pipeline id.
    id: String,
    event_type: EventType,
    to_update_request: F,
    sink: Update,
    skip_source: Option<String>,
    encryption: Option<Encryption>,
}

impl<F> Materialize<F>
where
    F: Fn(&UnitOfWork) -> Result<UpdateRequest, StepError> + Send + Sync + 'static,
{
    /// A rule writing to the handler's table (`ENTITY_TABLE_NAME` in its settings) at its
    /// parallelism; see the builder methods for others.
    pub fn new(
        id: impl Into<String>,
        event_type: impl Into<EventType>,
        to_update_request: F,
        db: DynamoDb,
    ) -> Self {
        Materialize {
            id: id.into(),
            event_type: event_type.into(),
            to_update_request,
            sink: Update::new(db),
            skip_source: None,
            encryption: None,
        }
    }

    /// Writes to `table` when the request names none.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.sink = self.sink.table(table);
        self
    }

    /// Writes up to `n` keys at once.
    pub fn parallel(mut self, n: usize) -> Self {
        self.sink = self.sink.parallel(n);
        self
    }

    /// Skips events whose `source` tag is `service`: a service that writes its views directly
    /// does not materialize its own output again (aws-lambda-stream's listeners do this with
    /// their `SERVICE`).
    pub fn skip_events_from(mut self, service: impl Into<String>) -> Self {
        self.skip_source = Some(service.into());
        self
    }

    /// Encrypts the `encryption`'s fields among the values each update sets, and stores the
    /// row's `eem` with it, as aws-lambda-stream's `encryptData` leaves a row: a DynamoDB
    /// source reading the table decrypts the row's images again.
    pub fn encrypt(mut self, encryption: Encryption) -> Self {
        self.encryption = Some(encryption);
        self
    }
}

impl<F> IntoPipeline for Materialize<F>
where
    F: Fn(&UnitOfWork) -> Result<UpdateRequest, StepError> + Send + Sync + 'static,
{
    fn into_pipeline(self) -> AssembledPipeline {
        let to_update_request = self.to_update_request;
        let mut pipeline = Pipeline::new(self.id).on_event_type(self.event_type);
        if let Some(service) = self.skip_source {
            pipeline = pipeline.on(move |uow| uow.event().tag("source") != Some(service.as_str()));
        }
        let pipeline = pipeline.map(move |uow| {
            let mut request = to_update_request(&uow)?;
            request.expression = request.expression.set("latched", Value::Bool(true));
            Ok(uow.with(request))
        });
        match self.encryption {
            Some(encryption) => {
                let encryption = Arc::new(encryption);
                pipeline
                    .then(move |mut uow: UnitOfWork<UpdateRequest>| {
                        let e = Arc::clone(&encryption);
                        async move {
                            let sealer = e.envelope.sealer(&e.master_key).await?;
                            sealer.seal_update(&mut uow.state.expression, &e.fields);
                            Ok(uow)
                        }
                    })
                    .pipe(self.sink)
                    .into_pipeline()
            }
            None => pipeline.pipe(self.sink).into_pipeline(),
        }
    }
}
