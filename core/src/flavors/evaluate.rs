//! `evaluate`: an expression over a key's correlated events emits higher-order events
//! (trigger side), each match exactly once.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::cdc::Target;
use super::store::{self, DEFAULT_TTL, EMITTED, EventStore, Stored, ttl_after};
use crate::error::StepError;
use crate::event::Event;
use crate::expressions::pk_condition;
use crate::pipeline::{AssembledPipeline, EventType, IntoPipeline, Pipeline};
use crate::uow::UnitOfWork;

/// One match of an [`Evaluate`] expression: the events that make it, oldest first. The last
/// one anchors it: the higher-order event's id is `<its id>.<rule id>` and its time is the
/// anchor's, so a match found again (a redelivery, or another event of the same window
/// arriving later) is the same event and is emitted once.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    triggers: Vec<Event>,
}

impl Match {
    /// A match of `events` (oldest first); `None` when there are none.
    ///
    /// ```
    /// use lambda_stream::Event;
    /// use lambda_stream::flavors::Match;
    ///
    /// let events = [Event::new("a", "x", 1), Event::new("b", "x", 2)];
    /// assert_eq!(Match::of(&events).unwrap().anchor().id, "b");
    /// assert!(Match::of(&[]).is_none());
    /// ```
    pub fn of<'a>(events: impl IntoIterator<Item = &'a Event>) -> Option<Self> {
        let triggers: Vec<Event> = events.into_iter().cloned().collect();
        (!triggers.is_empty()).then_some(Match { triggers })
    }

    /// The events of the match, oldest first.
    pub fn triggers(&self) -> &[Event] {
        &self.triggers
    }

    /// The event that completes the match (the last).
    pub fn anchor(&self) -> &Event {
        // `of` never builds an empty match
        &self.triggers[self.triggers.len() - 1]
    }
}

/// The events of the window that ends at `end`: those within `within` before it, and it.
fn window<'a>(
    events: &'a [Event],
    end: &'a Event,
    within: Duration,
) -> impl Iterator<Item = &'a Event> + Clone {
    let from = end.timestamp - within.as_millis() as i64;
    events
        .iter()
        .filter(move |e| e.timestamp > from && (e.timestamp, &e.id) <= (end.timestamp, &end.id))
}

/// "At least `at_least` events within `within`", the expression of a sliding window in
/// event time: a [`Match`] for each window ending at a stored event that holds at least
/// `at_least` events, `trigger` among them. Every window is found again whatever the order in
/// which its events arrive, and the window's last event anchors it, so [`Evaluate`] emits each
/// exactly once.
///
/// ```
/// use lambda_stream::Event;
/// use lambda_stream::flavors::count_within;
/// use std::time::Duration;
///
/// let at = |id: &str, s: i64| Event::new(id, "thing-updated", s * 1000);
/// let events = [at("a", 0), at("b", 10), at("c", 20), at("d", 100)];
/// let minute = Duration::from_secs(60);
/// let found = count_within(&events[1], &events, minute, 3);
/// assert_eq!(found.len(), 1);
/// assert_eq!(found[0].anchor().id, "c");
/// assert!(count_within(&events[3], &events, minute, 3).is_empty());
/// ```
pub fn count_within(
    trigger: &Event,
    events: &[Event],
    within: Duration,
    at_least: usize,
) -> Vec<Match> {
    events
        .iter()
        .filter(|end| {
            let w = window(events, end, within);
            w.clone().any(|e| e.id == trigger.id) && w.count() >= at_least
        })
        .filter_map(|end| Match::of(window(events, end, within)))
        .collect()
}

type Expression = Arc<dyn Fn(&Event, &[Event]) -> Vec<Match> + Send + Sync>;

/// Evaluates an expression over the events correlated under a key (a trigger's rule on the
/// store's stream) and emits a higher-order event per match, as aws-lambda-stream's
/// `evaluate`:
///
/// - It runs for each newly stored event of `event_type` (collected, or correlated under the
///   rule's [`suffix`](Self::suffix)); the expression gets that event and every event stored
///   under its key, oldest first (a correlation's partition is read strongly consistent).
/// - Each [`Match`] becomes an event of type `emit`: the anchor's entity fields, the key
///   (without suffix) as `partitionKey`, the triggers' tags merged (but `region` and
///   `source`), and `triggers: [{id, type, timestamp}]`.
/// - **Exactly once per match**: a match is written to the store as an `EMIT` item under a
///   condition that it is new, and [`PublishEmitted`] publishes each new item from the
///   store's stream. An expression that only ever gains matches as events arrive (a count
///   in a window, a sequence) thus emits the same events in any order of arrival; where
///   aws-lambda-stream publishes at once, once per evaluation.
///
/// ```
/// # async fn example() {
/// use lambda_stream::connectors::DynamoDb;
/// use lambda_stream::flavors::{EventStore, Evaluate, count_within};
/// use std::time::Duration;
///
/// let store = EventStore::new(DynamoDb::shared().await, "my-service-events");
/// let rule = Evaluate::new("thing-hot", "thing-updated", store, "thing-hot", |trigger, events| {
///     count_within(trigger, events, Duration::from_secs(60), 3)
/// })
/// .suffix("hot");
/// # let _ = rule;
/// # }
/// ```
pub struct Evaluate {
    id: String,
    event_type: EventType,
    store: EventStore,
    emit: String,
    expression: Expression,
    suffix: Option<String>,
    ttl: Duration,
}

impl Evaluate {
    /// A rule emitting `emit` events for the matches `expression` finds.
    pub fn new(
        id: impl Into<String>,
        event_type: impl Into<EventType>,
        store: EventStore,
        emit: impl Into<String>,
        expression: impl Fn(&Event, &[Event]) -> Vec<Match> + Send + Sync + 'static,
    ) -> Self {
        Evaluate {
            id: id.into(),
            event_type: event_type.into(),
            store,
            emit: emit.into(),
            expression: Arc::new(expression),
            suffix: None,
            ttl: DEFAULT_TTL,
        }
    }

    /// Evaluates the correlations made with this suffix (none: collected events and
    /// correlations without a suffix), as aws-lambda-stream's `correlationKeySuffix`.
    pub fn suffix(mut self, suffix: impl Into<String>) -> Self {
        self.suffix = Some(suffix.into());
        self
    }

    /// How long an emitted match is remembered (and so not emitted again).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
}

/// The higher-order event of a match.
fn higher_order(rule: &str, emit: &str, stored: &Stored, m: &Match) -> Event {
    let anchor = m.anchor();
    let mut event = Event::new(format!("{}.{rule}", anchor.id), emit, anchor.timestamp)
        .with_partition_key(stored.correlation.entity());
    event.fields = anchor.fields.clone();
    event
        .fields
        .insert("triggers".into(), store::triggers(m.triggers()));
    for t in m.triggers() {
        for (k, v) in &t.tags {
            event.tags.insert(k.clone(), v.clone());
        }
    }
    event.tags.remove("region");
    event.tags.remove("source");
    event
}

impl IntoPipeline for Evaluate {
    fn into_pipeline(self) -> AssembledPipeline {
        let Evaluate {
            id,
            event_type,
            store,
            emit,
            expression,
            suffix,
            ttl,
        } = self;
        let rule: Arc<str> = Arc::from(id.as_str());
        let emit: Arc<str> = Arc::from(emit);
        let (reader, writer) = (store.clone(), store);
        Pipeline::new(id)
            .on(move |uow| {
                store::event_name(uow) == Some("INSERT")
                    && store::image(uow, "new").is_some_and(|image| {
                        image.get("suffix").and_then(Value::as_str) == suffix.as_deref()
                            && store::stored_type(image).is_some_and(|t| event_type.matches(t))
                    })
            })
            .then(move |uow: UnitOfWork| {
                let (store, expression) = (reader.clone(), Arc::clone(&expression));
                let (rule, emit) = (Arc::clone(&rule), Arc::clone(&emit));
                async move {
                    let image = store::image(&uow, "new")
                        .ok_or_else(|| StepError::poison_msg("not a stored event"))?;
                    let stored = store::stored(image)?;
                    let mut events = store.correlated(&stored.correlation).await?;
                    // an index may not show the newest item yet; the trigger is always in
                    if !events.iter().any(|e| e.id == stored.event.id) {
                        events.push(stored.event.clone());
                        events.sort_by(|a, b| (a.timestamp, &a.id).cmp(&(b.timestamp, &b.id)));
                    }
                    let emitted: Vec<Event> = expression(&stored.event, &events)
                        .iter()
                        .map(|m| higher_order(&rule, &emit, &stored, m))
                        .collect();
                    Ok::<_, StepError>(uow.with(emitted))
                }
            })
            .then(move |uow: UnitOfWork<Vec<Event>>| {
                let store = writer.clone();
                async move {
                    for event in &uow.state {
                        let mut item = Map::new();
                        item.insert("pk".into(), json!(event.id));
                        item.insert("sk".into(), json!(EMITTED));
                        item.insert("discriminator".into(), json!(EMITTED));
                        item.insert("timestamp".into(), json!(event.timestamp));
                        item.insert("ttl".into(), json!(ttl_after(event.timestamp, ttl)));
                        item.insert("event".into(), serde_json::to_value(event)?);
                        let condition = pk_condition("pk");
                        let written = store
                            .db()
                            .put(store.table(), &Value::Object(item), Some(&condition))
                            .await?;
                        tracing::debug!(id = %crate::faults::quoted(&event.id), ?written, "match stored");
                    }
                    Ok::<_, StepError>(uow.with(()))
                }
            })
            .into_pipeline()
    }
}

/// Publishes the matches [`Evaluate`] stored (a trigger's rule on the store's stream): each
/// new `EMIT` item's event, once per item, to `target`.
///
/// ```
/// # async fn example() {
/// use lambda_stream::connectors::EventBridge;
/// use lambda_stream::flavors::PublishEmitted;
/// use lambda_stream::Settings;
///
/// let bus = EventBridge::from_settings(&Settings::default()).await;
/// let rule = PublishEmitted::new("publish-matches", bus);
/// # let _ = rule;
/// # }
/// ```
pub struct PublishEmitted {
    id: String,
    target: Target,
}

impl PublishEmitted {
    /// A rule publishing stored matches to `target` (an EventBridge bus or a Kinesis stream).
    pub fn new(id: impl Into<String>, target: impl Into<Target>) -> Self {
        PublishEmitted {
            id: id.into(),
            target: target.into(),
        }
    }
}

fn emitted(uow: &UnitOfWork) -> Option<&Value> {
    let new = uow.event().raw.as_ref()?.get("new")?;
    (new.get("sk").and_then(Value::as_str) == Some(EMITTED)).then(|| new.get("event"))?
}

impl IntoPipeline for PublishEmitted {
    fn into_pipeline(self) -> AssembledPipeline {
        Pipeline::new(self.id)
            .on(|uow| store::event_name(uow) == Some("INSERT") && emitted(uow).is_some())
            .map(|uow: UnitOfWork| {
                let event: Event = serde_json::from_value(
                    emitted(&uow)
                        .cloned()
                        .ok_or_else(|| StepError::poison_msg("not an emitted match"))?,
                )?;
                Ok(uow.with(event))
            })
            .pipe(self.target)
            .into_pipeline()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flavors::{Correlation, Kind};

    fn at(id: &str, s: i64) -> Event {
        let mut e = Event::new(id, "thing-updated", s * 1000).with_partition_key("t1");
        e.tags.insert("region".into(), json!("us-east-1"));
        e.tags.insert("source".into(), json!("svc"));
        e.tags.insert("tenant".into(), json!("acme"));
        e.fields
            .insert("thing".into(), json!({"id": "t1", "v": id}));
        e
    }

    #[test]
    fn every_window_is_found_from_any_of_its_events_and_named_by_its_last() {
        let events = [
            at("a", 0),
            at("b", 10),
            at("c", 20),
            at("d", 30),
            at("e", 200),
        ];
        let minute = Duration::from_secs(60);
        let anchors = |trigger: &Event| -> Vec<String> {
            count_within(trigger, &events, minute, 3)
                .iter()
                .map(|m| m.anchor().id.clone())
                .collect()
        };
        assert_eq!(anchors(&events[0]), ["c", "d"]);
        assert_eq!(anchors(&events[1]), ["c", "d"]);
        assert_eq!(anchors(&events[3]), ["d"]);
        assert!(anchors(&events[4]).is_empty());
        // ties in time are ordered by id, so a window is the same whatever arrives first
        let same_ms = [at("x", 5), at("y", 5), at("z", 5)];
        let m = count_within(&same_ms[0], &same_ms, minute, 3);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].anchor().id, "z");
    }

    #[test]
    fn a_higher_order_event_carries_its_triggers_the_entity_and_shared_tags() {
        let stored = Stored {
            event: at("c", 20),
            correlation: Correlation {
                key: "t1.hot".into(),
                suffix: Some("hot".into()),
                kind: Kind::Correlated,
            },
            ttl: None,
            expire: None,
        };
        let events = [at("a", 0), at("b", 10), at("c", 20)];
        let m = Match::of(&events).unwrap();
        let e = higher_order("thing-hot", "thing-hot", &stored, &m);
        assert_eq!(e.id, "c.thing-hot");
        assert_eq!(e.event_type, "thing-hot");
        assert_eq!(e.timestamp, 20_000);
        assert_eq!(e.partition_key.as_deref(), Some("t1"));
        assert_eq!(e.fields["thing"]["v"], "c");
        assert_eq!(e.fields["triggers"].as_array().unwrap().len(), 3);
        assert_eq!(
            e.fields["triggers"][0],
            json!({"id": "a", "type": "thing-updated", "timestamp": 0})
        );
        assert_eq!(e.tag("tenant"), Some("acme"));
        assert_eq!((e.tag("region"), e.tag("source")), (None, None));
    }
}
