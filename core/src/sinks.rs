//! Sinks: pipeline steps that write through the connectors.
//!
//! Defaults come from the environment as in aws-lambda-stream: `ENTITY_TABLE_NAME` for the
//! table, `UPDATE_PARALLEL` (else `PARALLEL`, else 4) for concurrent writes, `BUS_NAME` for the bus.

use serde_json::Value;

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::connectors::{
    DynamoDb, EventBridge, Kinesis, Lambda, S3, Sns, Sqs, UpdateRequest, Written,
};
use crate::error::StepError;
use crate::event::Event;
use crate::expressions::Expression;
use crate::pipeline::Pipeline;
use crate::uow::UnitOfWork;

fn env_parallel(var: &str) -> usize {
    [var, "PARALLEL"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
        .filter(|p| *p > 0)
        .unwrap_or(4)
}

/// Where and how [`Pipeline::update`] writes.
#[derive(Debug, Clone)]
pub struct UpdateOptions {
    /// The table when the request names none (default `ENTITY_TABLE_NAME`).
    pub table: String,
    /// Concurrent writes across keys (default `UPDATE_PARALLEL`, else `PARALLEL`, else 4).
    pub parallel: usize,
}

impl Default for UpdateOptions {
    fn default() -> Self {
        UpdateOptions {
            table: std::env::var("ENTITY_TABLE_NAME").unwrap_or_default(),
            parallel: env_parallel("UPDATE_PARALLEL"),
        }
    }
}

impl Pipeline<UnitOfWork<UpdateRequest>> {
    /// Writes each unit's update request; a stale write (timestamp condition) is a success.
    /// The state becomes what the write did.
    pub fn update(self, db: DynamoDb, options: UpdateOptions) -> Pipeline<UnitOfWork<Written>> {
        let table = Arc::<str>::from(options.table);
        self.parallel(options.parallel).then(move |uow| {
            let (db, table) = (db.clone(), table.clone());
            async move {
                let written = db.update(&table, &uow.state).await?;
                if written == Written::Stale {
                    tracing::debug!(id = %uow.event().id, "stale update skipped");
                }
                Ok(uow.with(written))
            }
        })
    }
}

/// A put of one item (for [`Pipeline::put`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PutRequest {
    /// The table; `None` uses the sink's table.
    pub table: Option<String>,
    /// The item as JSON.
    pub item: Value,
    /// An optional condition (e.g. [`pk_condition`](crate::expressions::pk_condition)).
    pub condition: Option<Expression>,
}

impl Pipeline<UnitOfWork<PutRequest>> {
    /// Puts each unit's item; a failed stale-on-failure condition is a success.
    pub fn put(self, db: DynamoDb, options: UpdateOptions) -> Pipeline<UnitOfWork<Written>> {
        let table = Arc::<str>::from(options.table);
        self.parallel(options.parallel).then(move |uow| {
            let (db, table) = (db.clone(), table.clone());
            async move {
                let request = &uow.state;
                let table = request.table.as_deref().unwrap_or(&table);
                let written = db
                    .put(table, &request.item, request.condition.as_ref())
                    .await?;
                Ok(uow.with(written))
            }
        })
    }
}

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

impl Pipeline<UnitOfWork<Event>> {
    /// Publishes each unit's event through a batch API (requests sized to its limits, only
    /// failed entries retried, `PUBLISH_PARALLEL` requests at once), adding the standard tags.
    /// Units whose entries still fail are faulted (rejected) or retry (throttled).
    pub fn publish(self, publisher: impl BatchPublisher) -> Pipeline<UnitOfWork<()>> {
        let pipeline = self.id().to_owned();
        self.then_all(move |mut units: Vec<UnitOfWork<Event>>| {
            let (publisher, pipeline) = (publisher.clone(), pipeline.clone());
            async move {
                for uow in &mut units {
                    crate::tags::add_standard(&mut uow.state.tags, &pipeline);
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
        })
    }

    /// Publishes to an EventBridge bus (10 entries, 256 KB a request).
    pub fn publish_to_event_bridge(self, bus: EventBridge) -> Pipeline<UnitOfWork<()>> {
        self.publish(bus)
    }

    /// Writes to a Kinesis stream (500 records, 5 MB a request; partition key from the event).
    pub fn publish_to_kinesis(self, stream: Kinesis) -> Pipeline<UnitOfWork<()>> {
        self.publish(stream)
    }

    /// Sends to an SQS queue (10 messages, 256 KB a request).
    pub fn send_to_sqs(self, queue: Sqs) -> Pipeline<UnitOfWork<()>> {
        self.publish(queue)
    }

    /// Publishes each event to an SNS topic, `PUBLISH_PARALLEL` (else `PARALLEL`) at once.
    pub fn publish_to_sns(self, topic: Sns) -> Pipeline<UnitOfWork<()>> {
        let pipeline = self.id().to_owned();
        self.parallel(env_parallel("PUBLISH_PARALLEL"))
            .then(move |mut uow: UnitOfWork<Event>| {
                let (topic, pipeline) = (topic.clone(), pipeline.clone());
                async move {
                    crate::tags::add_standard(&mut uow.state.tags, &pipeline);
                    topic.publish(&uow.state).await?;
                    Ok(uow.with(()))
                }
            })
    }
}

/// An object to write (for [`Pipeline::put_object_to_s3`]).
#[derive(Debug, Clone, PartialEq)]
pub struct S3Object {
    /// The key.
    pub key: String,
    /// The content.
    pub body: Vec<u8>,
    /// Its media type, e.g. `application/json`.
    pub content_type: String,
}

impl Pipeline<UnitOfWork<S3Object>> {
    /// Writes each unit's object, `PARALLEL` at once.
    pub fn put_object_to_s3(self, bucket: S3) -> Pipeline<UnitOfWork<()>> {
        self.parallel(env_parallel("PUT_PARALLEL"))
            .then(move |mut uow: UnitOfWork<S3Object>| {
                let bucket = bucket.clone();
                async move {
                    let body = std::mem::take(&mut uow.state.body);
                    bucket
                        .put(&uow.state.key, body, &uow.state.content_type)
                        .await?;
                    Ok(uow.with(()))
                }
            })
    }
}

/// An invocation (for [`Pipeline::invoke_lambda`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LambdaCall {
    /// The function's name or ARN.
    pub function: String,
    /// The payload.
    pub payload: Value,
    /// Queue it (`Event`) rather than wait for the response.
    pub asynchronous: bool,
}

impl Pipeline<UnitOfWork<LambdaCall>> {
    /// Invokes a function per unit, `PARALLEL` at once; the state becomes the response (`null`
    /// for asynchronous invocations).
    pub fn invoke_lambda(self, lambda: Lambda) -> Pipeline<UnitOfWork<Value>> {
        self.parallel(env_parallel("INVOKE_PARALLEL"))
            .then(move |uow: UnitOfWork<LambdaCall>| {
                let lambda = lambda.clone();
                async move {
                    let call = &uow.state;
                    let response = if call.asynchronous {
                        lambda.invoke_async(&call.function, &call.payload).await?;
                        Value::Null
                    } else {
                        lambda.invoke(&call.function, &call.payload).await?
                    };
                    Ok(uow.with(response))
                }
            })
    }
}
