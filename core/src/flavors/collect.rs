//! `collect`: events into the micro event store (listener side).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::store::{COLLECTED, DEFAULT_TTL, EventStore, Expire, ttl_after, without_raw};
use crate::error::StepError;
use crate::event::Event;
use crate::expressions::pk_condition;
use crate::pipeline::{AssembledPipeline, EventType, IntoPipeline, Pipeline};
use crate::record::SourceRecord;
use crate::sinks::{Put, PutRequest};
use crate::uow::UnitOfWork;

type KeyFn = Arc<dyn Fn(&Event) -> Option<String> + Send + Sync>;

/// Collects events into an [`EventStore`] (a listener's rule), as aws-lambda-stream's
/// `collect`: one item per event id (`sk` `EVENT`), its correlation key in `data`, a TTL from
/// the event's time, and the `expire` flag when the rule sets one.
///
/// - Idempotent by event id: the first write wins and a redelivered or duplicated event is
///   skipped as a success (a conditional put, where aws-lambda-stream overwrites).
/// - The correlation key is the event's `partitionKey` unless [`key`](Self::key) says
///   otherwise; an event without one is faulted with the reason.
///
/// ```
/// # async fn example() {
/// use lambda_stream::connectors::DynamoDb;
/// use lambda_stream::flavors::{Collect, EventStore, Expire};
/// use std::time::Duration;
///
/// let store = EventStore::new(DynamoDb::shared().await, "my-service-events");
/// let rule = Collect::new("collect-things", ["thing-created", "thing-updated"], store)
///     .ttl(Duration::from_secs(7 * 24 * 3600))
///     .expire(Expire::As("thing-stale".into()));
/// # let _ = rule;
/// # }
/// ```
pub struct Collect {
    id: String,
    event_type: EventType,
    store: EventStore,
    key: Option<KeyFn>,
    ttl: Duration,
    expire: Option<Expire>,
    parallel: Option<usize>,
}

impl Collect {
    /// A rule collecting events of `event_type` into `store`, keyed by their `partitionKey`,
    /// kept for [`DEFAULT_TTL`](super::DEFAULT_TTL).
    pub fn new(id: impl Into<String>, event_type: impl Into<EventType>, store: EventStore) -> Self {
        Collect {
            id: id.into(),
            event_type: event_type.into(),
            store,
            key: None,
            ttl: DEFAULT_TTL,
            expire: None,
            parallel: None,
        }
    }

    /// The correlation key of an event (`None`: the event is faulted).
    pub fn key(mut self, key: impl Fn(&Event) -> Option<String> + Send + Sync + 'static) -> Self {
        self.key = Some(Arc::new(key));
        self
    }

    /// How long after the event's time its item expires.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Flags the items so that their expiry emits an event (see [`Expired`](super::Expired)).
    pub fn expire(mut self, expire: Expire) -> Self {
        self.expire = Some(expire);
        self
    }

    /// Writes up to `n` items at once.
    pub fn parallel(mut self, n: usize) -> Self {
        self.parallel = Some(n);
        self
    }
}

/// The record's position in its stream, kept with a stored event as aws-lambda-stream does.
pub(crate) fn sequence_number(record: &SourceRecord) -> Option<&str> {
    match record {
        SourceRecord::Kinesis(r) => Some(&r.kinesis.sequence_number),
        SourceRecord::Sqs(r) => r.attributes.get("SequenceNumber").map(String::as_str),
        _ => None,
    }
}

impl IntoPipeline for Collect {
    fn into_pipeline(self) -> AssembledPipeline {
        let Collect {
            id,
            event_type,
            store,
            key,
            ttl,
            expire,
            parallel,
        } = self;
        let expire = expire.map(|e| e.to_value());
        let mut sink = Put::new(store.db().clone()).table(store.table());
        if let Some(n) = parallel {
            sink = sink.parallel(n);
        }
        Pipeline::new(id)
            .on_event_type(event_type)
            .map(move |uow: UnitOfWork| {
                let event = uow.event();
                let data = match &key {
                    Some(f) => f(event),
                    None => event.partition_key.clone(),
                }
                .filter(|k| !k.is_empty())
                .ok_or_else(|| {
                    StepError::poison_msg(format!("event {} has no correlation key", event.id))
                        .named("NoCorrelationKey")
                })?;
                let mut item = Map::new();
                item.insert("pk".into(), json!(event.id));
                item.insert("sk".into(), json!(COLLECTED));
                item.insert("discriminator".into(), json!(COLLECTED));
                item.insert("timestamp".into(), json!(event.timestamp));
                if let Some(seq) = sequence_number(uow.record()) {
                    item.insert("sequenceNumber".into(), json!(seq));
                }
                item.insert("ttl".into(), json!(ttl_after(event.timestamp, ttl)));
                if let Some(expire) = &expire {
                    item.insert("expire".into(), expire.clone());
                }
                item.insert("data".into(), Value::String(data));
                item.insert("event".into(), without_raw(event)?);
                let request = PutRequest {
                    table: None,
                    item: Value::Object(item),
                    condition: Some(pk_condition("pk")),
                };
                Ok(uow.with(request))
            })
            .pipe(sink)
            .into_pipeline()
    }
}
