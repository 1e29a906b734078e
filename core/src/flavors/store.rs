//! The micro event store that the complex-event-processing flavors share, in
//! aws-lambda-stream's single-table layout, so a store written by its `collect` is read by our
//! `correlate`/`evaluate`/`expired` and the other way round:
//!
//! | item | `pk` | `sk` | `discriminator` | also |
//! |---|---|---|---|---|
//! | a collected event | event id | `EVENT` | `EVENT` | `data` (the correlation key), `ttl`, `expire`, `event` |
//! | a correlation | key (`.suffix`) | event id | `CORREL` | `suffix`, `ruleId`, `ttl`, `expire`, `event` |
//! | an emitted match | higher-order event id | `EMIT` | `EMIT` | `ttl`, `event` |
//!
//! A global secondary index on `data` (default `DataIndex`) finds the collected events of a
//! key; a correlation's items share a partition and are read strongly consistent.

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::connectors::{DynamoDb, QueryRequest};
use crate::error::StepError;
use crate::event::Event;
use crate::expressions::Expression;
use crate::record::SourceRecord;
use crate::uow::UnitOfWork;

/// The sort key (and discriminator) of a collected event.
pub const COLLECTED: &str = "EVENT";
/// The discriminator of a correlation.
pub const CORRELATION: &str = "CORREL";
/// The sort key (and discriminator) of a match written by `evaluate`.
pub const EMITTED: &str = "EMIT";
/// The index on `data` that finds a key's collected events.
pub const DATA_INDEX: &str = "DataIndex";
/// How long stored items live when a rule names no TTL (aws-lambda-stream's 33 days).
pub const DEFAULT_TTL: Duration = Duration::from_secs(33 * 24 * 3600);

/// The store: a DynamoDB table with `pk`/`sk`, the `data` index, TTL on `ttl` and a
/// NEW_AND_OLD_IMAGES stream for the trigger side.
///
/// ```
/// # async fn example() {
/// use lambda_stream::connectors::DynamoDb;
/// use lambda_stream::flavors::EventStore;
///
/// let store = EventStore::new(DynamoDb::shared().await, "my-service-events");
/// assert_eq!(store.table(), "my-service-events");
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct EventStore {
    db: DynamoDb,
    table: String,
    index: String,
}

impl EventStore {
    /// The store in `table`, its collected events found through [`DATA_INDEX`].
    pub fn new(db: DynamoDb, table: impl Into<String>) -> Self {
        EventStore {
            db,
            table: table.into(),
            index: DATA_INDEX.to_owned(),
        }
    }

    /// Finds collected events through `index` instead.
    pub fn index(mut self, index: impl Into<String>) -> Self {
        self.index = index.into();
        self
    }

    /// The table.
    pub fn table(&self) -> &str {
        &self.table
    }

    pub(crate) fn db(&self) -> &DynamoDb {
        &self.db
    }

    /// The events stored under a correlation key, oldest first (by timestamp, then id):
    /// a correlation's partition read strongly consistent, or a collected key's events through
    /// the index (eventually consistent, as DynamoDB's indexes are).
    pub async fn correlated(&self, key: &Correlation) -> Result<Vec<Event>, StepError> {
        let mut expression = Expression::default();
        let (index, attr) = match key.kind {
            Kind::Correlated => (None, "pk"),
            Kind::Collected => (Some(self.index.clone()), "data"),
        };
        expression.condition = Some("#k = :k".into());
        expression.names.insert("#k".into(), attr.into());
        expression.values.insert(":k".into(), json!(key.key));
        let rows = self
            .db
            .query(&QueryRequest {
                table: self.table.clone(),
                index,
                expression,
                page_size: None,
                consistent_read: key.kind == Kind::Correlated,
            })
            .await?;
        let mut events = rows
            .into_iter()
            .filter(|row| match key.kind {
                Kind::Collected => row.get("sk").and_then(Value::as_str) == Some(COLLECTED),
                Kind::Correlated => true,
            })
            .filter_map(|mut row| row.get_mut("event").map(Value::take))
            .map(serde_json::from_value::<Event>)
            .collect::<Result<Vec<_>, _>>()?;
        events.sort_by(|a, b| (a.timestamp, &a.id).cmp(&(b.timestamp, &b.id)));
        Ok(events)
    }
}

/// Which kind of store item a stream record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Written by `collect` (`sk` = `EVENT`).
    Collected,
    /// Written by `correlate` (`discriminator` = `CORREL`).
    Correlated,
}

/// A correlation key and the kind of item that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correlation {
    /// The key as stored: a collected event's `data`, a correlation's `pk` (with its suffix).
    pub key: String,
    /// The rule suffix of a correlation, if any.
    pub suffix: Option<String>,
    /// Where the key is kept.
    pub kind: Kind,
}

impl Correlation {
    /// The key without its suffix (the entity the events are about).
    pub fn entity(&self) -> &str {
        match &self.suffix {
            Some(s) => self
                .key
                .strip_suffix(s.as_str())
                .and_then(|k| k.strip_suffix('.'))
                .unwrap_or(&self.key),
            None => &self.key,
        }
    }
}

/// What a store item's stream record holds: the stored event and where it sits.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The event as stored.
    pub event: Event,
    /// Its correlation key.
    pub correlation: Correlation,
    /// Its TTL (epoch seconds), if any.
    pub ttl: Option<i64>,
    /// Its `expire` flag: `true` or the type of the event its expiry emits.
    pub expire: Option<Value>,
}

/// The image (`new` or `old`) of a DynamoDB change when it is a collected event or a
/// correlation; `None` for any other item.
pub(crate) fn image<'a>(uow: &'a UnitOfWork, which: &str) -> Option<&'a Map<String, Value>> {
    let image = uow.event().raw.as_ref()?.get(which)?.as_object()?;
    let collected = image.get("sk").and_then(Value::as_str) == Some(COLLECTED);
    let correlated = image.get("discriminator").and_then(Value::as_str) == Some(CORRELATION);
    (collected || correlated).then_some(image)
}

/// The stored event's type in an image, without parsing the event.
pub(crate) fn stored_type(image: &Map<String, Value>) -> Option<&str> {
    image.get("event")?.get("type")?.as_str()
}

/// The stored event and its correlation in an image that [`image`] accepted.
pub(crate) fn stored(image: &Map<String, Value>) -> Result<Stored, StepError> {
    let text = |name: &str| image.get(name).and_then(Value::as_str).map(str::to_owned);
    let event: Event = serde_json::from_value(
        image
            .get("event")
            .cloned()
            .ok_or_else(|| StepError::poison_msg("store item has no `event`"))?,
    )?;
    let collected = text("sk").as_deref() == Some(COLLECTED);
    let correlation = if collected {
        Correlation {
            key: text("data").unwrap_or_default(),
            suffix: None,
            kind: Kind::Collected,
        }
    } else {
        Correlation {
            key: text("pk").unwrap_or_default(),
            suffix: text("suffix"),
            kind: Kind::Correlated,
        }
    };
    Ok(Stored {
        event,
        correlation,
        ttl: image.get("ttl").and_then(Value::as_i64),
        expire: image.get("expire").filter(|v| !v.is_null()).cloned(),
    })
}

/// Whether the unit's DynamoDB record is an INSERT (or, with `remove`, a REMOVE).
pub(crate) fn event_name(uow: &UnitOfWork) -> Option<&str> {
    match uow.record() {
        SourceRecord::DynamoDb(r) => Some(r.event_name()),
        _ => None,
    }
}

/// Whether a unit's record is an item of a micro event store (collected, correlated or
/// emitted): a cdc rule on a table that also holds a store skips them with this.
///
/// ```
/// use lambda_stream::flavors::is_store_item;
/// use lambda_stream::{Event, UnitOfWork};
///
/// let mut change = Event::new("1", "event-created", 0);
/// change.raw = Some(serde_json::json!({"new": {"pk": "e1", "sk": "EVENT"}}));
/// assert!(is_store_item(&UnitOfWork::for_test(change)));
/// ```
pub fn is_store_item(uow: &UnitOfWork) -> bool {
    let Some(raw) = uow.event().raw.as_ref() else {
        return false;
    };
    let image = raw.get("new").or_else(|| raw.get("old"));
    let field = |name: &str| image.and_then(|i| i.get(name)).and_then(Value::as_str);
    matches!(field("sk"), Some(COLLECTED) | Some(EMITTED))
        || field("discriminator") == Some(CORRELATION)
}

/// A TTL (epoch seconds) `after` the event's time, as aws-lambda-stream's `ttlRule` counts it.
pub(crate) fn ttl_after(timestamp_ms: i64, after: Duration) -> i64 {
    timestamp_ms.div_euclid(1000) + after.as_secs() as i64
}

/// The event as stored: without its `raw` source data (aws-lambda-stream's default).
pub(crate) fn without_raw(event: &Event) -> Result<Value, StepError> {
    let mut value = serde_json::to_value(event)?;
    if let Some(map) = value.as_object_mut() {
        map.remove("raw");
    }
    Ok(value)
}

/// What an item's expiry emits: `true` (the type with `-expired`) or a type of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expire {
    /// The stored event's type with `-expired` (or `.expired` for dotted types).
    Suffixed,
    /// This event type.
    As(String),
}

impl Expire {
    pub(crate) fn to_value(&self) -> Value {
        match self {
            Expire::Suffixed => Value::Bool(true),
            Expire::As(t) => Value::String(t.clone()),
        }
    }
}

/// The type an expiry emits, from the stored event's type and the item's `expire` flag.
pub(crate) fn expired_type(event_type: &str, expire: &Value) -> String {
    match expire {
        Value::String(t) => t.clone(),
        _ if event_type.contains('.') => format!("{event_type}.expired"),
        _ => format!("{event_type}-expired"),
    }
}

/// `{id, type, timestamp}` of each trigger, as aws-lambda-stream's higher-order events list
/// them.
pub(crate) fn triggers<'a>(events: impl IntoIterator<Item = &'a Event>) -> Value {
    Value::Array(
        events
            .into_iter()
            .map(|e| json!({"id": e.id, "type": e.event_type, "timestamp": e.timestamp}))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_types_follow_the_delimiter() {
        assert_eq!(
            expired_type("thing-updated", &json!(true)),
            "thing-updated-expired"
        );
        assert_eq!(
            expired_type("thing.updated", &json!(true)),
            "thing.updated.expired"
        );
        assert_eq!(
            expired_type("thing-updated", &json!("thing-stale")),
            "thing-stale"
        );
    }

    #[test]
    fn ttl_counts_seconds_from_the_event_time() {
        assert_eq!(
            ttl_after(1_700_000_000_999, Duration::from_secs(60)),
            1_700_000_060
        );
    }

    #[test]
    fn a_correlation_names_its_entity_without_the_suffix() {
        let c = Correlation {
            key: "thing-1.hot".into(),
            suffix: Some("hot".into()),
            kind: Kind::Correlated,
        };
        assert_eq!(c.entity(), "thing-1");
    }
}
