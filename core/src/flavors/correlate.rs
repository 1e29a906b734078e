//! `correlate`: collected events stored again under other correlation keys (trigger side).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::store::{self, CORRELATION, EventStore, Expire, ttl_after};
use crate::error::StepError;
use crate::event::Event;
use crate::expressions::{Expression, pk_condition};
use crate::pipeline::{AssembledPipeline, EventType, IntoPipeline, Pipeline};
use crate::sinks::{Put, PutRequest};
use crate::uow::UnitOfWork;

type KeyFn = Arc<dyn Fn(&Event) -> Option<String> + Send + Sync>;

/// Correlates collected events under another key (a trigger's rule on the store's stream), as
/// aws-lambda-stream's `correlate`: for each newly collected event of `event_type`, an item
/// `{pk: key[.suffix], sk: event id, discriminator: CORREL}` holding the event, so that
/// [`Evaluate`](super::Evaluate) reads a key's events from one partition, strongly consistent.
///
/// - The key is the event's `partitionKey` unless [`key`](Self::key) says otherwise; a
///   [`suffix`](Self::suffix) keeps separate correlations of the same key for separate rules.
/// - The TTL is the collected item's unless [`ttl`](Self::ttl) sets one; with
///   [`expire`](Self::expire), the item's expiry emits an event through [`Expired`](super::Expired).
/// - Idempotent: one item per key and event id; a repeat is skipped as a success.
/// - With [`latest`](Self::latest), one item per key holding its latest event (sort key
///   [`LATEST`]): its TTL moves with each later event, so its expiry means "nothing for that
///   long", once per quiet spell (an older event arriving later is skipped).
///
/// ```
/// # async fn example() {
/// use lambda_stream::connectors::DynamoDb;
/// use lambda_stream::flavors::{Correlate, EventStore};
/// use std::time::Duration;
///
/// let store = EventStore::new(DynamoDb::shared().await, "my-service-events");
/// let rule = Correlate::new("correlate-hot", "thing-updated", store)
///     .suffix("hot")
///     .ttl(Duration::from_secs(180));
/// # let _ = rule;
/// # }
/// ```
pub struct Correlate {
    id: String,
    event_type: EventType,
    store: EventStore,
    key: Option<KeyFn>,
    suffix: Option<String>,
    ttl: Option<Duration>,
    expire: Option<Expire>,
    latest: bool,
}

/// The sort key of a [`Correlate::latest`] item.
pub const LATEST: &str = "LATEST";

impl Correlate {
    /// A rule correlating collected events of `event_type` by their `partitionKey`.
    pub fn new(id: impl Into<String>, event_type: impl Into<EventType>, store: EventStore) -> Self {
        Correlate {
            id: id.into(),
            event_type: event_type.into(),
            store,
            key: None,
            suffix: None,
            ttl: None,
            expire: None,
            latest: false,
        }
    }

    /// Keeps one item per key, holding its latest event by timestamp: the basis of "nothing
    /// happened for a while" with [`expire`](Self::expire) and [`Expired`](super::Expired).
    pub fn latest(mut self) -> Self {
        self.latest = true;
        self
    }

    /// The correlation key of an event (`None`: the event is faulted).
    pub fn key(mut self, key: impl Fn(&Event) -> Option<String> + Send + Sync + 'static) -> Self {
        self.key = Some(Arc::new(key));
        self
    }

    /// Appends `.suffix` to the key: a correlation of its own for the rules that name it.
    pub fn suffix(mut self, suffix: impl Into<String>) -> Self {
        self.suffix = Some(suffix.into());
        self
    }

    /// How long after the event's time the correlation expires (default: with the collected item).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Flags the correlations so that their expiry emits an event.
    pub fn expire(mut self, expire: Expire) -> Self {
        self.expire = Some(expire);
        self
    }
}

fn expires_after_now(uow: &UnitOfWork, ttl: Option<Duration>) -> bool {
    let Some(image) = store::image(uow, "new") else {
        return true;
    };
    let expires = match ttl {
        Some(after) => image
            .get("timestamp")
            .and_then(Value::as_i64)
            .map(|ts| ttl_after(ts, after)),
        None => image.get("ttl").and_then(Value::as_i64),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    expires.is_none_or(|t| t > now)
}

/// The latest item is replaced only by a later event; an earlier or equal one is skipped.
fn newer_condition(timestamp: i64) -> Expression {
    let mut e = Expression::default();
    e.names.insert("#pk".into(), "pk".into());
    e.names.insert("#ts".into(), "timestamp".into());
    e.values.insert(":ts".into(), json!(timestamp));
    e.condition = Some("attribute_not_exists(#pk) OR #ts < :ts".into());
    e.stale_on_condition_failure = true;
    e
}

impl IntoPipeline for Correlate {
    fn into_pipeline(self) -> AssembledPipeline {
        let Correlate {
            id,
            event_type,
            store,
            key,
            suffix,
            ttl,
            expire,
            latest,
        } = self;
        let rule_id = id.clone();
        let expire = expire.map(|e| e.to_value());
        let sink = Put::new(store.db().clone()).table(store.table());
        Pipeline::new(id)
            .on(move |uow| {
                store::event_name(uow) == Some("INSERT")
                    && store::image(uow, "new").is_some_and(|image| {
                        image.get("sk").and_then(Value::as_str) == Some(store::COLLECTED)
                            && store::stored_type(image).is_some_and(|t| event_type.matches(t))
                    })
            })
            .filter(move |uow: &UnitOfWork| {
                // a latest item already past its TTL would expire at once, announcing a quiet
                // spell that a later event (stored, then expired) has already announced
                !latest || expires_after_now(uow, ttl)
            })
            .map(move |uow: UnitOfWork| {
                let image = store::image(&uow, "new")
                    .ok_or_else(|| StepError::poison_msg("not a collected event"))?;
                let stored = store::stored(image)?;
                let event = &stored.event;
                let base = match &key {
                    Some(f) => f(event),
                    None => event.partition_key.clone(),
                }
                .filter(|k| !k.is_empty())
                .ok_or_else(|| {
                    StepError::poison_msg(format!("event {} has no correlation key", event.id))
                        .named("NoCorrelationKey")
                })?;
                let pk = match &suffix {
                    Some(s) => format!("{base}.{s}"),
                    None => base,
                };
                let mut item = Map::new();
                item.insert("pk".into(), Value::String(pk));
                item.insert(
                    "sk".into(),
                    if latest {
                        json!(LATEST)
                    } else {
                        json!(event.id)
                    },
                );
                item.insert("discriminator".into(), json!(CORRELATION));
                item.insert("timestamp".into(), json!(event.timestamp));
                if let Some(seq) = image.get("sequenceNumber") {
                    item.insert("sequenceNumber".into(), seq.clone());
                }
                let ttl = match ttl {
                    Some(after) => Some(ttl_after(event.timestamp, after)),
                    None => stored.ttl,
                };
                if let Some(ttl) = ttl {
                    item.insert("ttl".into(), json!(ttl));
                }
                if let Some(expire) = &expire {
                    item.insert("expire".into(), expire.clone());
                }
                if let Some(s) = &suffix {
                    item.insert("suffix".into(), json!(s));
                }
                item.insert("ruleId".into(), json!(rule_id));
                item.insert(
                    "event".into(),
                    image.get("event").cloned().unwrap_or_default(),
                );
                let condition = if latest {
                    newer_condition(event.timestamp)
                } else {
                    pk_condition("pk")
                };
                let request = PutRequest {
                    table: None,
                    item: Value::Object(item),
                    condition: Some(condition),
                };
                Ok(uow.with(request))
            })
            .pipe(sink)
            .into_pipeline()
    }
}
