//! `sendMessages`: a message per event to an SQS queue or SNS topic, batched and size-aware.

use std::sync::Arc;

use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::connectors::{BatchApi, Publishable, Sns, Sqs, Wire, publish_all};
use crate::error::StepError;
use crate::pipeline::{AssembledPipeline, EventType, IntoPipeline, Pipeline};
use crate::settings::Settings;
use crate::uow::UnitOfWork;

/// One message of [`SendMessages`]: its body as sent (JSON, not an event) and, for FIFO
/// queues and topics, its deduplication id and group.
///
/// ```
/// use lambda_stream::flavors::Message;
/// use serde_json::json;
///
/// let m = Message::new("e1", json!({"to": "ann", "text": "hi"})).group("ann");
/// // sent as the body alone
/// assert_eq!(serde_json::to_value(&m).unwrap(), json!({"to": "ann", "text": "hi"}));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    id: String,
    group: Option<String>,
    body: Value,
}

impl Message {
    /// A message with a deterministic `id` (the FIFO deduplication id; use the event's id so a
    /// redelivered event sends the same message) and `body`.
    pub fn new(id: impl Into<String>, body: Value) -> Self {
        Message {
            id: id.into(),
            group: None,
            body,
        }
    }

    /// The FIFO message group (default: the id).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }
}

impl Serialize for Message {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.body.serialize(s)
    }
}

impl Publishable for Message {
    fn id(&self) -> &str {
        &self.id
    }
    fn event_type(&self) -> &str {
        ""
    }
    fn partition_key(&self) -> Option<&str> {
        self.group.as_deref()
    }
}

/// Where [`SendMessages`] sends.
#[derive(Debug, Clone)]
pub enum Destination {
    /// An SQS queue (`SendMessageBatch`).
    Sqs(Sqs),
    /// An SNS topic (`PublishBatch`).
    Sns(Sns),
}

impl From<Sqs> for Destination {
    fn from(queue: Sqs) -> Self {
        Destination::Sqs(queue.with_wire(Wire::plain()))
    }
}

impl From<Sns> for Destination {
    fn from(topic: Sns) -> Self {
        Destination::Sns(topic.with_wire(Wire::plain()))
    }
}

type ToMessage = Arc<dyn Fn(&UnitOfWork) -> Result<Option<Message>, StepError> + Send + Sync>;

/// Sends a message per event (aws-lambda-stream's `sendMessages`): filter by type →
/// `to_message` (`None`: nothing to send) → `SendMessageBatch` to a queue or `PublishBatch` to a
/// topic, requests filled up to the service's limits (10 messages, 256 KB), only the failed
/// entries sent again, `PUBLISH_PARALLEL` requests at once. A message rejected for good is a
/// fault; a throttled one retries.
///
/// Messages are sent as their body says: no event envelope, no compression (the receiver
/// may not be a stream processor). Latched units (a view's own change) are skipped.
///
/// ```
/// # async fn example() {
/// use lambda_stream::connectors::Sqs;
/// use lambda_stream::flavors::{Message, SendMessages};
/// use lambda_stream::Settings;
/// use serde_json::json;
///
/// let queue = Sqs::from_settings(&Settings::default()).await;
/// let rule = SendMessages::new("notify", "thing-created", queue, |uow| {
///     let e = uow.event();
///     Ok(Some(Message::new(e.id.clone(), json!({"created": e.entity("thing")}))))
/// });
/// # let _ = rule;
/// # }
/// ```
pub struct SendMessages {
    id: String,
    event_type: EventType,
    destination: Destination,
    to_message: ToMessage,
}

impl SendMessages {
    /// A rule sending `to_message`'s message for each event of `event_type`.
    pub fn new(
        id: impl Into<String>,
        event_type: impl Into<EventType>,
        destination: impl Into<Destination>,
        to_message: impl Fn(&UnitOfWork) -> Result<Option<Message>, StepError> + Send + Sync + 'static,
    ) -> Self {
        SendMessages {
            id: id.into(),
            event_type: event_type.into(),
            destination: destination.into(),
            to_message: Arc::new(to_message),
        }
    }
}

async fn send<A: BatchApi>(api: &A, messages: &[&Message]) -> Vec<Result<(), StepError>> {
    publish_all(api, messages).await
}

impl IntoPipeline for SendMessages {
    fn into_pipeline(self) -> AssembledPipeline {
        let to_message = self.to_message;
        let destination = Arc::new(self.destination);
        Pipeline::new(self.id)
            .on_event_type(self.event_type)
            .on(|uow| !uow.is_latched())
            .map(move |uow: UnitOfWork| {
                let message = to_message(&uow)?;
                Ok(uow.with(message))
            })
            .filter(|uow: &UnitOfWork<Option<Message>>| uow.state.is_some())
            .then_all_with_settings(Settings::publish_parallel, move |_| {
                let destination = Arc::clone(&destination);
                move |units: Vec<UnitOfWork<Option<Message>>>| {
                    let destination = Arc::clone(&destination);
                    async move {
                        let messages: Vec<&Message> =
                            units.iter().filter_map(|u| u.state.as_ref()).collect();
                        let results = match destination.as_ref() {
                            Destination::Sqs(q) => send(q, &messages).await,
                            Destination::Sns(t) => send(t, &messages).await,
                        };
                        drop(messages);
                        units
                            .into_iter()
                            .zip(results)
                            .map(|(uow, r)| r.map(|()| uow.with(())))
                            .collect::<Vec<Result<UnitOfWork<()>, StepError>>>()
                    }
                }
            })
            .into_pipeline()
    }
}
