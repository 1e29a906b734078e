use serde_json::Value;

use crate::connectors::{DynamoDb, UpdateRequest};
use crate::error::StepError;
use crate::pipeline::{AssembledPipeline, EventType, IntoPipeline, Pipeline};
use crate::sinks::UpdateOptions;
use crate::uow::UnitOfWork;

/// Materializes events into a DynamoDB table (a listener's CQRS view): filter by event type →
/// `to_update_request` → update, guarded by the timestamp condition when the request has one.
///
/// - Events this service published itself (`tags.source` equal to `SERVICE`) are skipped, so a
///   service does not re-materialize its own output.
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
    pub id: String,
    /// The event types to materialize.
    pub event_type: EventType,
    /// Maps a unit to its update.
    pub to_update_request: F,
    /// The connector.
    pub db: DynamoDb,
    /// Table and parallelism.
    pub options: UpdateOptions,
    /// This service's name; its own events are skipped (default `SERVICE`).
    pub service: Option<String>,
}

impl<F> Materialize<F>
where
    F: Fn(&UnitOfWork) -> Result<UpdateRequest, StepError> + Send + Sync + 'static,
{
    /// A rule with the default options from the environment.
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
            db,
            options: UpdateOptions::default(),
            service: std::env::var("SERVICE").ok().filter(|s| !s.is_empty()),
        }
    }
}

impl<F> IntoPipeline for Materialize<F>
where
    F: Fn(&UnitOfWork) -> Result<UpdateRequest, StepError> + Send + Sync + 'static,
{
    fn into_pipeline(self) -> AssembledPipeline {
        let to_update_request = self.to_update_request;
        let mut pipeline = Pipeline::new(self.id).on_event_type(self.event_type);
        if let Some(service) = self.service {
            pipeline = pipeline.on(move |uow| uow.event().tag("source") != Some(service.as_str()));
        }
        pipeline
            .map(move |uow| {
                let mut request = to_update_request(&uow)?;
                request.expression = request.expression.set("latched", Value::Bool(true));
                Ok(uow.with(request))
            })
            .update(self.db, self.options)
            .into_pipeline()
    }
}
