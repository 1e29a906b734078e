//! An event published where it lies: the stored event inside a DynamoDB image, say, written
//! out with the standard tags laid over its own, without first copying it into an [`Event`].

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::event::{EpochMillis, Event};

/// An event read in place from a JSON value: what [`Event::from_json`] would give, without
/// the copy. It serializes as that event would after
/// [`tags::add_standard`](crate::tags::add_standard) (the same fields and values; the order of
/// keys may differ), so a sink can publish an event stored in a change (the event-sourcing
/// trigger's case) straight from the change.
///
/// It accepts exactly the values [`Event::from_json`] accepts, and gives the same errors.
///
/// ```
/// use lambda_stream::{Event, EventRef};
/// use serde_json::{Map, json};
///
/// let stored = json!({"id": "e1", "type": "thing-created", "timestamp": 5,
///     "tags": {"region": "eu-west-1"}, "thing": {"id": "t1"}});
/// let standard = Map::from_iter([("stage".to_owned(), json!("dev"))]);
/// let view = EventRef::from_json(&stored).unwrap().with_standard_tags(&standard, "p1");
/// assert_eq!(view.id(), "e1");
///
/// let mut event = Event::from_json(&stored).unwrap();
/// lambda_stream::tags::add_standard(&mut event.tags, &standard, "p1");
/// assert_eq!(serde_json::to_value(&view).unwrap(), serde_json::to_value(&event).unwrap());
/// assert!(EventRef::from_json(&json!({"id": "e1"})).is_err()); // no type
/// ```
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    map: &'a Map<String, Value>,
    id: &'a str,
    event_type: &'a str,
    timestamp: i64,
    partition_key: Option<&'a str>,
    tags: Option<&'a Map<String, Value>>,
    raw: Option<&'a Value>,
    eem: Option<&'a Value>,
    standard: Option<(&'a Map<String, Value>, &'a str)>,
}

/// The keys an [`Event`] holds in fields of its own, not among [`Event::fields`].
fn is_known(key: &str) -> bool {
    matches!(
        key,
        "id" | "type" | "timestamp" | "partitionKey" | "tags" | "raw" | "eem"
    )
}

impl<'a> EventRef<'a> {
    /// The event `value` holds; errs as [`Event::from_json`] does.
    pub fn from_json(value: &'a Value) -> Result<Self, serde_json::Error> {
        // every other shape is an error; serde's reading of it says which
        let unusual = || match Event::from_json(value) {
            Err(e) => Err(e),
            Ok(_) => Err(serde::de::Error::custom("an event of an unusual shape")),
        };
        let Value::Object(map) = value else {
            return unusual();
        };
        let mut parts = EventRef {
            map,
            id: "",
            event_type: "",
            timestamp: 0,
            partition_key: None,
            tags: None,
            raw: None,
            eem: None,
            standard: None,
        };
        let mut has_type = false;
        for (key, v) in map {
            match (key.as_str(), v) {
                ("id", Value::String(s)) => parts.id = s,
                ("type", Value::String(s)) => {
                    parts.event_type = s;
                    has_type = true;
                }
                ("timestamp", v) => {
                    parts.timestamp =
                        serde::Deserialize::deserialize(v).map(|t: EpochMillis| t.0)?
                }
                ("partitionKey", Value::String(s)) => parts.partition_key = Some(s),
                ("tags", Value::Object(tags)) => parts.tags = Some(tags),
                ("partitionKey" | "tags" | "raw" | "eem", Value::Null) => {}
                ("raw", v) => parts.raw = Some(v),
                ("eem", v) => parts.eem = Some(v),
                ("id" | "type" | "partitionKey" | "tags", _) => return unusual(),
                _ => {}
            }
        }
        if !has_type {
            return unusual();
        }
        Ok(parts)
    }

    /// Lays the standard tags (`Settings::standard_tags`) and the pipeline's id over the
    /// event's own tags when it is written out, as [`tags::add_standard`](crate::tags::add_standard)
    /// does: a tag the event has is kept.
    #[must_use]
    pub fn with_standard_tags(
        mut self,
        standard: &'a Map<String, Value>,
        pipeline: &'a str,
    ) -> Self {
        self.standard = Some((standard, pipeline));
        self
    }

    /// The event's id.
    pub fn id(&self) -> &'a str {
        self.id
    }

    /// The event's type.
    pub fn event_type(&self) -> &'a str {
        self.event_type
    }

    /// The event's partition key, if any.
    pub fn partition_key(&self) -> Option<&'a str> {
        self.partition_key
    }
}

/// The event's tags with the standard ones laid over, as `tags::add_standard` leaves them.
struct Tags<'a> {
    own: Option<&'a Map<String, Value>>,
    standard: Option<(&'a Map<String, Value>, &'a str)>,
}

impl Serialize for Tags<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let has = |tag: &str| self.own.is_some_and(|own| own.contains_key(tag));
        let mut map = serializer.serialize_map(None)?;
        for (tag, value) in self.own.into_iter().flatten() {
            map.serialize_entry(tag, value)?;
        }
        if let Some((standard, pipeline)) = self.standard {
            for (tag, value) in standard.iter().filter(|(tag, _)| !has(tag)) {
                map.serialize_entry(tag, value)?;
            }
            if !has("pipeline") && !standard.contains_key("pipeline") {
                map.serialize_entry("pipeline", pipeline)?;
            }
        }
        map.end()
    }
}

// the fields in the order `Event`'s derived serialization writes them
impl Serialize for EventRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let tags = Tags {
            own: self.tags,
            standard: self.standard,
        };
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", self.id)?;
        map.serialize_entry("type", self.event_type)?;
        map.serialize_entry("timestamp", &self.timestamp)?;
        if let Some(key) = self.partition_key {
            map.serialize_entry("partitionKey", key)?;
        }
        map.serialize_entry("tags", &tags)?;
        if let Some(raw) = self.raw {
            map.serialize_entry("raw", raw)?;
        }
        if let Some(eem) = self.eem {
            map.serialize_entry("eem", eem)?;
        }
        for (key, value) in self.map.iter().filter(|(key, _)| !is_known(key)) {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn standard() -> Map<String, Value> {
        Map::from_iter([
            ("account".to_owned(), json!("dev")),
            ("region".to_owned(), json!("us-east-1")),
            ("source".to_owned(), json!("trigger")),
        ])
    }

    /// What publishing the copy wrote: `Event::from_json`, the standard tags, serialized.
    fn through_event(value: &Value, standard: &Map<String, Value>) -> Result<Value, String> {
        let mut event = Event::from_json(value).map_err(|e| e.to_string())?;
        crate::tags::add_standard(&mut event.tags, standard, "p1");
        Ok(serde_json::to_value(&event).unwrap())
    }

    #[test]
    fn writes_what_the_copy_wrote_and_errs_as_it_erred() {
        let standard = standard();
        let cases = [
            json!({"id": "e1", "type": "thing-created", "timestamp": 1.7e12, "partitionKey": "t1",
                "tags": {"region": "eu-west-1", "n": [1, {"a": null}]}, "raw": {"new": {"x": 1}},
                "eem": {"dataKeys": {}}, "thing": {"id": "t1", "deep": {"list": [1, "2", true]}},
                "other": 3}),
            json!({"type": "t", "partitionKey": null, "tags": null, "raw": null, "eem": null}),
            json!({"type": "t", "tags": {"pipeline": "mine", "source": "upstream"}}),
            json!({"type": "t", "tags": {}}),
            json!({"thing": {}, "type": "t", "id": "late keys", "timestamp": "17"}),
            json!({"type": "t", "timestamp": 18446744073709551615u64}),
            json!({"type": "t", "timestamp": "soon"}),
            json!({"id": 5, "type": "t"}),
            json!({"id": null, "type": "t", "thing": 1}),
            json!({"type": ["t"]}),
            json!({"type": "t", "tags": "not a map"}),
            json!({"type": "t", "partitionKey": 7}),
            json!({"id": "no type"}),
            json!(["not", "an", "object"]),
            json!("text"),
        ];
        for case in cases {
            let view = EventRef::from_json(&case)
                .map(|v| serde_json::to_value(v.with_standard_tags(&standard, "p1")).unwrap())
                .map_err(|e| e.to_string());
            assert_eq!(view, through_event(&case, &standard), "{case}");
        }
        // standard tags that name a pipeline: theirs wins over the pipeline's id, as before
        let mut with_pipeline = standard.clone();
        with_pipeline.insert("pipeline".into(), json!("configured"));
        let case = json!({"type": "t", "tags": {"region": "eu-west-1"}});
        let view = EventRef::from_json(&case)
            .unwrap()
            .with_standard_tags(&with_pipeline, "p1");
        let view = serde_json::to_value(view).unwrap();
        assert_eq!(Ok(view.clone()), through_event(&case, &with_pipeline));
        assert_eq!(view["tags"]["pipeline"], "configured");
    }

    #[test]
    fn answers_as_the_event_would_and_without_standard_tags_is_the_event() {
        let stored = json!({"id": "e1", "type": "thing-created", "partitionKey": "t1",
            "timestamp": 3, "tags": {"a": 1}, "thing": {"id": "t1"}});
        let view = EventRef::from_json(&stored).unwrap();
        assert_eq!(
            (view.id(), view.event_type(), view.partition_key()),
            ("e1", "thing-created", Some("t1"))
        );
        assert_eq!(
            serde_json::to_string(&view).unwrap(),
            serde_json::to_string(&Event::from_json(&stored).unwrap()).unwrap()
        );
    }
}
