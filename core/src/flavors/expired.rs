//! `expired`: a stored event's TTL expiry emits an event (trigger side).

use serde_json::Value;

use super::cdc::Target;
use super::store;
use crate::error::StepError;
use crate::event::Event;
use crate::pipeline::{AssembledPipeline, EventType, IntoPipeline, Pipeline};
use crate::record::SourceRecord;
use crate::uow::UnitOfWork;

/// Emits an event when DynamoDB's TTL removes a stored event flagged with `expire` (a
/// trigger's rule on the store's stream), as aws-lambda-stream's `expired`: the stored event
/// with the REMOVE record's id, the type `expire` names (or the event's type with
/// `-expired`), the TTL as its time and `triggers: [the stored event]`.
///
/// - Only removals at or after the item's TTL count (a delete by hand is not an expiry).
/// - For "nothing happened for N days" rather than "N days after each event", expire the
///   items of a [`Correlate::latest`](super::Correlate::latest) rule: one per key, its TTL
///   moved by each later event. (Asking the store at expiry whether a later event exists
///   would not do: DynamoDB removes items that expire close together in one sweep.)
/// - The REMOVE record's id names the event, so a redelivered record publishes the same event.
///
/// ```
/// # async fn example() {
/// use lambda_stream::connectors::EventBridge;
/// use lambda_stream::flavors::Expired;
/// use lambda_stream::Settings;
///
/// let bus = EventBridge::from_settings(&Settings::default()).await;
/// let rule = Expired::new("thing-stale", bus).event_type(["thing-created", "thing-updated"]);
/// # let _ = rule;
/// # }
/// ```
pub struct Expired {
    id: String,
    event_type: EventType,
    target: Target,
}

impl Expired {
    /// A rule publishing expiries of any stored event type to `target`.
    pub fn new(id: impl Into<String>, target: impl Into<Target>) -> Self {
        Expired {
            id: id.into(),
            event_type: EventType::Any,
            target: target.into(),
        }
    }

    /// Only expiries of stored events of `event_type`.
    pub fn event_type(mut self, event_type: impl Into<EventType>) -> Self {
        self.event_type = event_type.into();
        self
    }
}

/// Whether the unit is a REMOVE of an expiring store item at or after its TTL.
fn is_expiry(uow: &UnitOfWork) -> bool {
    let SourceRecord::DynamoDb(record) = uow.record() else {
        return false;
    };
    if record.event_name() != "REMOVE" {
        return false;
    }
    let Some(image) = store::image(uow, "old") else {
        return false;
    };
    let (Some(ttl), Some(expire)) = (
        image.get("ttl").and_then(Value::as_i64),
        image.get("expire"),
    ) else {
        return false;
    };
    if expire.is_null() || expire == &Value::Bool(false) {
        return false;
    }
    record.is_ttl_expiry() || record.approximate_creation_millis().div_euclid(1000) >= ttl
}

fn expired_event(uow: &UnitOfWork) -> Result<Event, StepError> {
    let image =
        store::image(uow, "old").ok_or_else(|| StepError::poison_msg("not a stored event"))?;
    let stored = store::stored(image)?;
    let expire = stored.expire.as_ref().unwrap_or(&Value::Bool(true));
    let ttl = stored.ttl.unwrap_or_default();
    let trigger = stored.event;
    let mut event = trigger.clone();
    event.id = uow.event().id.clone();
    event.event_type = store::expired_type(&trigger.event_type, expire);
    event.timestamp = ttl * 1000 + trigger.timestamp.rem_euclid(1000);
    event.raw = None;
    event.eem = None;
    event
        .fields
        .insert("triggers".into(), store::triggers([&trigger]));
    Ok(event)
}

impl IntoPipeline for Expired {
    fn into_pipeline(self) -> AssembledPipeline {
        let event_type = self.event_type;
        Pipeline::new(self.id)
            .on(move |uow| {
                is_expiry(uow)
                    && store::image(uow, "old")
                        .and_then(store::stored_type)
                        .is_some_and(|t| event_type.matches(t))
            })
            .map(|uow: UnitOfWork| {
                let event = expired_event(&uow)?;
                Ok(uow.with(event))
            })
            .pipe(self.target)
            .into_pipeline()
    }
}
