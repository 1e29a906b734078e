//! Publishing sinks: events to a bus, a stream, a queue or a topic, with the standard tags.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::connectors::{EventBridge, Kinesis, Publishable, Sns, Sqs};
use crate::error::StepError;
use crate::event::Event;
use crate::event_ref::EventRef;
use crate::pipeline::{Pipeline, Step};
use crate::settings::Settings;
use crate::uow::UnitOfWork;

/// A batch API that publishes events and answers per event: EventBridge, Kinesis, SQS.
pub trait BatchPublisher: Clone + Send + Sync + 'static {
    /// Publishes `events`, one result per event, in order.
    fn publish_all<'a, E: Publishable + Sync>(
        &'a self,
        events: &'a [E],
    ) -> BoxFuture<'a, Vec<Result<(), StepError>>>;
}

impl BatchPublisher for EventBridge {
    fn publish_all<'a, E: Publishable + Sync>(
        &'a self,
        events: &'a [E],
    ) -> BoxFuture<'a, Vec<Result<(), StepError>>> {
        Box::pin(self.put_events(events))
    }
}

impl BatchPublisher for Kinesis {
    fn publish_all<'a, E: Publishable + Sync>(
        &'a self,
        events: &'a [E],
    ) -> BoxFuture<'a, Vec<Result<(), StepError>>> {
        Box::pin(self.put_records(events))
    }
}

impl BatchPublisher for Sqs {
    fn publish_all<'a, E: Publishable + Sync>(
        &'a self,
        events: &'a [E],
    ) -> BoxFuture<'a, Vec<Result<(), StepError>>> {
        Box::pin(self.send_message_batch(events))
    }
}

impl BatchPublisher for Sns {
    fn publish_all<'a, E: Publishable + Sync>(
        &'a self,
        events: &'a [E],
    ) -> BoxFuture<'a, Vec<Result<(), StepError>>> {
        Box::pin(self.publish_batch(events))
    }
}

/// Publishes each unit's [`Event`] through a batch API (an [`EventBridge`] bus, a [`Kinesis`]
/// stream, an [`Sqs`] queue): requests sized to its limits, only failed entries retried,
/// `PUBLISH_PARALLEL` calls at once, the standard tags added. Units whose entries still fail
/// are faulted (rejected) or retry (throttled).
#[derive(Debug, Clone)]
pub struct Publish<P>(pub P);

impl<P: BatchPublisher> Step<UnitOfWork<Event>> for Publish<P> {
    type Output = UnitOfWork<()>;

    fn attach(self, pipeline: Pipeline<UnitOfWork<Event>>) -> Pipeline<UnitOfWork<()>> {
        let (publisher, id): (P, Arc<str>) = (self.0, Arc::from(pipeline.id()));
        pipeline.then_all_with_settings(Settings::publish_parallel, move |settings| {
            let (publisher, id) = (publisher.clone(), Arc::clone(&id));
            let standard = Arc::new(settings.standard_tags());
            move |mut units: Vec<UnitOfWork<Event>>| {
                let (publisher, id, standard) =
                    (publisher.clone(), Arc::clone(&id), Arc::clone(&standard));
                async move {
                    for uow in &mut units {
                        crate::tags::add_standard(&mut uow.state.tags, &standard, &id);
                    }
                    let events: Vec<&Event> = units.iter().map(|u| &u.state).collect();
                    let results = publisher.publish_all(&events).await;
                    drop(events);
                    units
                        .into_iter()
                        .zip(results)
                        .map(|(uow, r)| r.map(|()| uow.with(())))
                        .collect::<Vec<Result<UnitOfWork<()>, StepError>>>()
                }
            }
        })
    }
}

/// Where a unit's change holds the event to publish (e.g. the stored `event` of a new image).
pub type Locate = Arc<dyn Fn(&UnitOfWork) -> Option<&Value> + Send + Sync>;

/// The event `locate` finds in `uow`'s change, read in place; a change without one, or whose
/// event is malformed or has no id, is poison.
pub fn stored_event<'u>(
    locate: &dyn Fn(&UnitOfWork) -> Option<&Value>,
    uow: &'u UnitOfWork,
) -> Result<EventRef<'u>, StepError> {
    let change = || crate::faults::truncate(&uow.event().id, 128);
    let json = locate(uow).ok_or_else(|| {
        StepError::poison_msg(format!("change {} holds no event to publish", change()))
    })?;
    let event = EventRef::from_json(json).map_err(|e| {
        StepError::poison_msg(format!(
            "the event in change {} does not read: {e}",
            change()
        ))
    })?;
    if event.id().is_empty() {
        return Err(StepError::poison_msg(format!(
            "the event in change {} has no id",
            change()
        )));
    }
    Ok(event)
}

/// Publishes, through a batch API, the event each unit's change holds, read where it lies
/// ([`EventRef`]) rather than copied into an [`Event`] first, with the standard tags laid over
/// its own: the event-sourcing trigger's case, where the change is the appended event. Limits,
/// retries and outcomes as [`Publish`]; a unit whose change holds no publishable event (see
/// [`stored_event`]) is poison.
///
/// ```
/// use lambda_stream::sinks::PublishInPlace;
/// # async fn rule(bus: lambda_stream::connectors::EventBridge) {
/// let sink = PublishInPlace::new(bus, |uow| uow.event().raw.as_ref()?.get("new")?.get("event"));
/// # }
/// ```
#[derive(Clone)]
pub struct PublishInPlace<P> {
    publisher: P,
    locate: Locate,
}

impl<P> PublishInPlace<P> {
    /// Publishes through `publisher` the event `locate` finds in each unit's change.
    pub fn new(
        publisher: P,
        locate: impl Fn(&UnitOfWork) -> Option<&Value> + Send + Sync + 'static,
    ) -> Self {
        Self::located(publisher, Arc::new(locate))
    }

    /// [`new`](Self::new) with a shared `locate`.
    pub fn located(publisher: P, locate: Locate) -> Self {
        PublishInPlace { publisher, locate }
    }
}

impl<P: std::fmt::Debug> std::fmt::Debug for PublishInPlace<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PublishInPlace")
            .field(&self.publisher)
            .finish_non_exhaustive()
    }
}

impl<P: BatchPublisher> Step<UnitOfWork> for PublishInPlace<P> {
    type Output = UnitOfWork<()>;

    fn attach(self, pipeline: Pipeline<UnitOfWork>) -> Pipeline<UnitOfWork<()>> {
        let (publisher, locate, id): (P, Locate, Arc<str>) =
            (self.publisher, self.locate, Arc::from(pipeline.id()));
        pipeline.then_all_with_settings(Settings::publish_parallel, move |settings| {
            let (publisher, locate, id) = (publisher.clone(), Arc::clone(&locate), Arc::clone(&id));
            let standard = Arc::new(settings.standard_tags());
            move |units: Vec<UnitOfWork>| {
                let (publisher, locate, id, standard) = (
                    publisher.clone(),
                    Arc::clone(&locate),
                    Arc::clone(&id),
                    Arc::clone(&standard),
                );
                async move {
                    let mut events = Vec::with_capacity(units.len());
                    let mut unpublishable = Vec::new();
                    for (i, uow) in units.iter().enumerate() {
                        match stored_event(&*locate, uow) {
                            Ok(event) => events.push(event.with_standard_tags(&standard, &id)),
                            Err(e) => unpublishable.push((i, e)),
                        }
                    }
                    let published = publisher.publish_all(&events).await;
                    // answers that cannot be matched to the events are none: each is retried
                    let matched = published.len() == events.len();
                    drop(events);
                    let mut published = published.into_iter().filter(|_| matched);
                    let mut unpublishable = unpublishable.into_iter().peekable();
                    units
                        .into_iter()
                        .enumerate()
                        .map(|(i, uow)| match unpublishable.next_if(|(j, _)| *j == i) {
                            Some((_, e)) => Err(e),
                            None => match published.next() {
                                Some(r) => r.map(|()| uow),
                                None => Err(StepError::transient("entry was not sent")),
                            },
                        })
                        .collect::<Vec<Result<UnitOfWork<()>, StepError>>>()
                }
            }
        })
    }
}

/// Publishes each unit's [`Event`] to an SNS topic, `PUBLISH_PARALLEL` at once, with the
/// standard tags.
#[derive(Debug, Clone)]
pub struct PublishToSns(pub Sns);

impl Step<UnitOfWork<Event>> for PublishToSns {
    type Output = UnitOfWork<()>;

    fn attach(self, pipeline: Pipeline<UnitOfWork<Event>>) -> Pipeline<UnitOfWork<()>> {
        let (topic, id): (Sns, Arc<str>) = (self.0, Arc::from(pipeline.id()));
        pipeline.then_with_settings(Settings::publish_parallel, move |settings| {
            let (topic, id) = (topic.clone(), Arc::clone(&id));
            let standard = Arc::new(settings.standard_tags());
            move |mut uow: UnitOfWork<Event>| {
                let (topic, id, standard) = (topic.clone(), Arc::clone(&id), Arc::clone(&standard));
                async move {
                    crate::tags::add_standard(&mut uow.state.tags, &standard, &id);
                    topic.publish(&uow.state).await?;
                    Ok(uow.with(()))
                }
            }
        })
    }
}
