use std::sync::Arc;

use serde_json::Value;

use crate::connectors::{DynamoDb, EventBridge, Kinesis, QueryRequest};
use crate::error::StepError;
use crate::event::Event;
use crate::pipeline::{AssembledPipeline, EventType, IntoPipeline, Pipeline, Step};
use crate::sinks::{Locate, Publish, PublishInPlace};
use crate::uow::UnitOfWork;

type Query = Arc<dyn Fn(&UnitOfWork) -> Option<QueryRequest> + Send + Sync>;
type Filter = Arc<dyn Fn(&UnitOfWork) -> bool + Send + Sync>;

/// Where a [`Cdc`] or [`CdcStored`] rule publishes.
#[derive(Debug, Clone)]
pub enum Target {
    /// An EventBridge bus.
    EventBridge(EventBridge),
    /// A Kinesis stream.
    Kinesis(Kinesis),
}

impl From<EventBridge> for Target {
    fn from(bus: EventBridge) -> Self {
        Target::EventBridge(bus)
    }
}

impl From<Kinesis> for Target {
    fn from(stream: Kinesis) -> Self {
        Target::Kinesis(stream)
    }
}

/// Publishes each unit's event to the target (through [`Publish`]).
impl Step<UnitOfWork<Event>> for Target {
    type Output = UnitOfWork<()>;

    fn attach(self, pipeline: Pipeline<UnitOfWork<Event>>) -> Pipeline<UnitOfWork<()>> {
        match self {
            Target::EventBridge(bus) => pipeline.pipe(Publish(bus)),
            Target::Kinesis(stream) => pipeline.pipe(Publish(stream)),
        }
    }
}

/// Change data capture (a trigger): DynamoDB stream changes → domain events on the bus (or a
/// Kinesis stream).
/// Latched rows (views written by a listener) are skipped; `to_event` maps each change, with the
/// rows of an optional related query, to the event to publish.
///
/// ```
/// use lambda_stream::flavors::Cdc;
/// use lambda_stream::{Event, StepError, UnitOfWork};
/// use serde_json::Value;
///
/// fn to_event(uow: &UnitOfWork, _related: &[Value]) -> Result<Event, StepError> {
///     let change = uow.event();
///     let thing = change.raw.as_ref().and_then(|r| r.get("new")).cloned().unwrap_or_default();
///     Ok(Event::new(change.id.clone(), change.event_type.clone(), change.timestamp)
///         .with_partition_key(change.partition_key.clone().unwrap_or_default())
///         .with_entity("thing", thing))
/// }
/// # async fn rules(bus: lambda_stream::connectors::EventBridge) {
/// let rule = Cdc::new("thing-events", regex::Regex::new("^thing-").unwrap(), to_event, bus);
/// # }
/// ```
pub struct Cdc<F> {
    id: String,
    event_type: EventType,
    to_event: F,
    target: Target,
    query: Option<(DynamoDb, Query)>,
    when: Vec<Filter>,
}

impl<F> Cdc<F>
where
    F: Fn(&UnitOfWork, &[Value]) -> Result<Event, StepError> + Send + Sync + 'static,
{
    /// A rule publishing to `target` (an [`EventBridge`] bus or a [`Kinesis`] stream).
    pub fn new(
        id: impl Into<String>,
        event_type: impl Into<EventType>,
        to_event: F,
        target: impl Into<Target>,
    ) -> Self {
        Cdc {
            id: id.into(),
            event_type: event_type.into(),
            to_event,
            target: target.into(),
            query: None,
            when: Vec::new(),
        }
    }

    /// Only the changes `filter` accepts (aws-lambda-stream's rule `filters`), e.g. not the
    /// items of a micro event store sharing the table:
    /// `.when(|uow| !lambda_stream::flavors::is_store_item(uow))`.
    pub fn when(mut self, filter: impl Fn(&UnitOfWork) -> bool + Send + Sync + 'static) -> Self {
        self.when.push(Arc::new(filter));
        self
    }

    /// Queries related rows first (all pages); `query` returns `None` where none are needed.
    pub fn with_query(
        mut self,
        db: DynamoDb,
        query: impl Fn(&UnitOfWork) -> Option<QueryRequest> + Send + Sync + 'static,
    ) -> Self {
        self.query = Some((db, Arc::new(query)));
        self
    }
}

impl<F> IntoPipeline for Cdc<F>
where
    F: Fn(&UnitOfWork, &[Value]) -> Result<Event, StepError> + Send + Sync + 'static,
{
    fn into_pipeline(self) -> AssembledPipeline {
        let to_event = self.to_event;
        let query = self.query;
        let mut rule = Pipeline::new(self.id)
            .on_event_type(self.event_type)
            .on(|uow| !uow.is_latched());
        for filter in self.when {
            rule = rule.on(move |uow| filter(uow));
        }
        let events = rule
            .then(move |uow: UnitOfWork| {
                let query = query.clone();
                async move {
                    let rows = match &query {
                        Some((db, q)) => match q(&uow) {
                            Some(request) => db.query(&request).await?,
                            None => Vec::new(),
                        },
                        None => Vec::new(),
                    };
                    Ok::<_, StepError>(uow.with(rows))
                }
            })
            .map(move |mut uow: UnitOfWork<Vec<Value>>| {
                let rows = std::mem::take(&mut uow.state);
                let uow = uow.with(());
                let event = to_event(&uow, &rows)?;
                Ok(uow.with(event))
            });
        events.pipe(self.target).into_pipeline()
    }
}

/// Change data capture of appended events (the event-sourcing trigger): each change holds the
/// event to publish (`locate` finds it, e.g. the `event` of the new image), and it is published
/// where it lies, with the standard tags laid over its own ([`PublishInPlace`]), rather than
/// copied into an [`Event`] by a [`Cdc`] mapping and dropped after. Latched rows are skipped;
/// a change holding no publishable event is poison.
///
/// ```
/// use lambda_stream::flavors::CdcStored;
/// # async fn rules(bus: lambda_stream::connectors::EventBridge) {
/// let rule = CdcStored::new(
///     "publish-events",
///     "event-created",
///     |uow| uow.event().raw.as_ref()?.get("new")?.get("event"),
///     bus,
/// );
/// # }
/// ```
pub struct CdcStored {
    id: String,
    event_type: EventType,
    locate: Locate,
    target: Target,
    when: Vec<Filter>,
}

impl CdcStored {
    /// A rule publishing the event `locate` finds in each change to `target`.
    pub fn new(
        id: impl Into<String>,
        event_type: impl Into<EventType>,
        locate: impl Fn(&UnitOfWork) -> Option<&Value> + Send + Sync + 'static,
        target: impl Into<Target>,
    ) -> Self {
        CdcStored {
            id: id.into(),
            event_type: event_type.into(),
            locate: Arc::new(locate),
            target: target.into(),
            when: Vec::new(),
        }
    }

    /// Only the changes `filter` accepts (see [`Cdc::when`]).
    pub fn when(mut self, filter: impl Fn(&UnitOfWork) -> bool + Send + Sync + 'static) -> Self {
        self.when.push(Arc::new(filter));
        self
    }
}

impl IntoPipeline for CdcStored {
    fn into_pipeline(self) -> AssembledPipeline {
        let mut rule = Pipeline::new(self.id)
            .on_event_type(self.event_type)
            .on(|uow| !uow.is_latched());
        for filter in self.when {
            rule = rule.on(move |uow| filter(uow));
        }
        match self.target {
            Target::EventBridge(bus) => rule.pipe(PublishInPlace::located(bus, self.locate)),
            Target::Kinesis(stream) => rule.pipe(PublishInPlace::located(stream, self.locate)),
        }
        .into_pipeline()
    }
}
