//! Publishing sinks: events to a bus, a stream, a queue or a topic, with the standard tags.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::connectors::{EventBridge, Kinesis, Sns, Sqs};
use crate::error::StepError;
use crate::event::Event;
use crate::pipeline::{Pipeline, Step};
use crate::settings::Settings;
use crate::uow::UnitOfWork;

/// A batch API that publishes events and answers per event: EventBridge, Kinesis, SQS.
pub trait BatchPublisher: Clone + Send + Sync + 'static {
    /// Publishes `events`, one result per event, in order.
    fn publish_all<'a>(
        &'a self,
        events: &'a [&'a Event],
    ) -> BoxFuture<'a, Vec<Result<(), StepError>>>;
}

impl BatchPublisher for EventBridge {
    fn publish_all<'a>(
        &'a self,
        events: &'a [&'a Event],
    ) -> BoxFuture<'a, Vec<Result<(), StepError>>> {
        Box::pin(self.put_events(events))
    }
}

impl BatchPublisher for Kinesis {
    fn publish_all<'a>(
        &'a self,
        events: &'a [&'a Event],
    ) -> BoxFuture<'a, Vec<Result<(), StepError>>> {
        Box::pin(self.put_records(events))
    }
}

impl BatchPublisher for Sqs {
    fn publish_all<'a>(
        &'a self,
        events: &'a [&'a Event],
    ) -> BoxFuture<'a, Vec<Result<(), StepError>>> {
        Box::pin(self.send_message_batch(events))
    }
}

impl BatchPublisher for Sns {
    fn publish_all<'a>(
        &'a self,
        events: &'a [&'a Event],
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
