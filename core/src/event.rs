//! The standard event format, wire-compatible with aws-lambda-stream.
//!
//! Every source normalises its records into an [`Event`], and every sink publishes one, so Rust
//! and Node services can share a bus. The canonical entity (for example `"thing"`) and any field
//! this crate does not know are kept in [`Event::fields`] under their own names and written back
//! unchanged.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// The `type` of a [`FaultEvent`].
pub const FAULT_EVENT_TYPE: &str = "fault";

/// A domain event in the aws-lambda-stream format.
///
/// ```
/// use lambda_stream::Event;
///
/// let json = r#"{"id":"1","type":"thing-created","timestamp":1700000000000,
///                "partitionKey":"t1","tags":{"source":"svc"},"thing":{"name":"x"},"extra":7}"#;
/// let event: Event = serde_json::from_str(json).unwrap();
/// assert_eq!(event.event_type, "thing-created");
/// assert_eq!(event.entity("thing").unwrap()["name"], "x");
/// // unknown fields survive a round trip; absent optional fields stay absent
/// let back = serde_json::to_value(&event).unwrap();
/// assert_eq!(back["extra"], 7);
/// assert!(back.get("raw").is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// A unique, deterministic id. Sources fill it from the record id when the payload has none.
    pub id: String,
    /// Generally the namespace, entity and action, e.g. `thing-created`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Epoch milliseconds of the action. Sources fill it from the record when the payload has none.
    pub timestamp: i64,
    /// The entity or correlation id that related events share; drives per-key ordering.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
    /// Routing information (account, region, stage, source, functionname, pipeline, ...).
    pub tags: Map<String, Value>,
    /// The raw data of the event's source, kept for audit (e.g. `raw.new` / `raw.old` of a
    /// DynamoDB change).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<Value>,
    /// Envelope encryption metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eem: Option<Value>,
    /// The canonical entity under its own name (e.g. `"thing"`) and any other field, preserved.
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl Event {
    /// A new event of `event_type` with the given id and timestamp (epoch ms).
    pub fn new(id: impl Into<String>, event_type: impl Into<String>, timestamp: i64) -> Self {
        Event {
            id: id.into(),
            event_type: event_type.into(),
            timestamp,
            ..Event::default()
        }
    }

    /// The id that follows this event's causal chain across functions: its `correlationId`
    /// tag, else a `correlationId` field, else the id of the event it was derived from
    /// (`triggers[0].id` of a higher-order event), else its own id.
    ///
    /// ```
    /// use lambda_stream::Event;
    ///
    /// let mut e = Event::new("e2", "thing-hot", 0);
    /// assert_eq!(e.correlation_id(), "e2");
    /// e.tags.insert("correlationId".into(), "req-7".into());
    /// assert_eq!(e.correlation_id(), "req-7");
    /// ```
    pub fn correlation_id(&self) -> &str {
        self.tags
            .get("correlationId")
            .and_then(Value::as_str)
            .or_else(|| self.fields.get("correlationId").and_then(Value::as_str))
            .or_else(|| {
                self.fields
                    .get("triggers")
                    .and_then(|t| t.get(0))
                    .and_then(|t| t.get("id"))
                    .and_then(Value::as_str)
            })
            .unwrap_or(&self.id)
    }

    /// The entity (or any other extra field) stored under `name`.
    pub fn entity(&self, name: &str) -> Option<&Value> {
        self.fields.get(name)
    }

    /// Sets the entity stored under `name`, builder style.
    ///
    /// ```
    /// let e = lambda_stream::Event::new("1", "thing-created", 0)
    ///     .with_entity("thing", serde_json::json!({"id": "t1"}));
    /// assert_eq!(e.entity("thing").unwrap()["id"], "t1");
    /// ```
    pub fn with_entity(mut self, name: impl Into<String>, value: Value) -> Self {
        self.fields.insert(name.into(), value);
        self
    }

    /// Sets the partition key, builder style.
    pub fn with_partition_key(mut self, key: impl Into<String>) -> Self {
        self.partition_key = Some(key.into());
        self
    }

    /// The tag `name` as a string, if it is one.
    pub fn tag(&self, name: &str) -> Option<&str> {
        self.tags.get(name).and_then(Value::as_str)
    }

    /// The event a JSON value holds, read where it lies (a stored event inside a DynamoDB
    /// image, say). The same as `Event::deserialize(value)`, errors included, but nested values
    /// are copied whole (`Value::clone`) rather than rebuilt entry by entry through serde,
    /// which took the trigger three times as long. One exception: a nested object keyed by
    /// serde_json's private raw-value token, which serde would parse as embedded JSON, is kept
    /// as the data it is.
    ///
    /// ```
    /// use lambda_stream::Event;
    /// use serde_json::json;
    ///
    /// let stored = json!({"id": "e1", "type": "thing-created", "timestamp": 5,
    ///     "tags": {"region": "eu-west-1"}, "thing": {"id": "t1"}});
    /// let event = Event::from_json(&stored).unwrap();
    /// assert_eq!(event.entity("thing").unwrap()["id"], "t1");
    /// assert!(Event::from_json(&json!({"id": "e1"})).is_err()); // no type
    /// ```
    pub fn from_json(value: &Value) -> Result<Event, serde_json::Error> {
        // anything but the usual shape goes the serde way, so that it errs the same
        let serde = || Event::deserialize(value);
        let Value::Object(map) = value else {
            return serde();
        };
        let mut event = Event::default();
        let mut has_type = false;
        for (key, v) in map {
            match (key.as_str(), v) {
                ("id", Value::String(s)) => event.id.clone_from(s),
                ("type", Value::String(s)) => {
                    event.event_type.clone_from(s);
                    has_type = true;
                }
                ("timestamp", v) => event.timestamp = EpochMillis::deserialize(v)?.0,
                ("partitionKey", Value::String(s)) => event.partition_key = Some(s.clone()),
                ("tags", Value::Object(tags)) => event.tags.clone_from(tags),
                ("partitionKey" | "tags" | "raw" | "eem", Value::Null) => {}
                ("raw", v) => event.raw = Some(v.clone()),
                ("eem", v) => event.eem = Some(v.clone()),
                ("id" | "type" | "partitionKey" | "tags", _) => return serde(),
                (_, v) => {
                    event.fields.insert(key.clone(), v.clone());
                }
            }
        }
        if !has_type {
            return serde();
        }
        Ok(event)
    }
}

/// Accepts integer or floating epoch milliseconds (Node's `Date.now()` is an integer, but some
/// producers send floats).
pub(crate) struct EpochMillis(pub(crate) i64);

impl<'de> Deserialize<'de> for EpochMillis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = EpochMillis;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("epoch milliseconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<EpochMillis, E> {
                Ok(EpochMillis(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<EpochMillis, E> {
                i64::try_from(v)
                    .map(EpochMillis)
                    .map_err(|_| E::custom("timestamp out of range"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<EpochMillis, E> {
                Ok(EpochMillis(v as i64))
            }
        }
        d.deserialize_any(V)
    }
}

// Written by hand rather than with `#[serde(flatten)]`: flatten buffers every field into an
// intermediate tree first, which made decoding an event about twice as slow.
impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Event;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event, A::Error> {
                let mut event = Event::default();
                let mut has_type = false;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match &*key {
                        "id" => event.id = map.next_value()?,
                        "type" => {
                            event.event_type = map.next_value()?;
                            has_type = true;
                        }
                        "timestamp" => event.timestamp = map.next_value::<EpochMillis>()?.0,
                        "partitionKey" => event.partition_key = map.next_value()?,
                        "tags" => event.tags = map.next_value::<Option<_>>()?.unwrap_or_default(),
                        "raw" => event.raw = map.next_value()?,
                        "eem" => event.eem = map.next_value()?,
                        _ => {
                            let value = map.next_value()?;
                            event.fields.insert(key.into_owned(), value);
                        }
                    }
                }
                if !has_type {
                    return Err(de::Error::missing_field("type"));
                }
                Ok(event)
            }
        }
        d.deserialize_map(V)
    }
}

/// The error carried by a [`FaultEvent`], in aws-lambda-stream's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// The kind of error, e.g. `PoisonError`, `DecodeError`, `Panic`.
    pub name: String,
    /// What went wrong, naming the record where possible.
    pub message: String,
    /// The chain of causes, outermost first (Rust has no JS stack; the causes tell more).
    pub stack: String,
}

/// The unit of work of a fault, trimmed to what a resubmission needs: the original record(s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FaultUow {
    /// A fault raised for one record.
    Record {
        /// The original Lambda record, as it arrived.
        record: Value,
    },
    /// A fault raised for a batch or group of records that fail together.
    Batch {
        /// Each original Lambda record, as `{"record": ...}`.
        batch: Vec<FaultRecord>,
    },
}

/// One original record inside a batch fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// The original Lambda record, as it arrived.
    pub record: Value,
}

impl FaultUow {
    /// The original records, in batch order.
    pub fn records(&self) -> Vec<&Value> {
        match self {
            FaultUow::Record { record } => vec![record],
            FaultUow::Batch { batch } => batch.iter().map(|r| &r.record).collect(),
        }
    }
}

/// An event that sets a poison record aside: published to the bus, stored by the fault monitor,
/// and resubmitted from there once the cause is fixed.
///
/// Tags always carry `functionname` and `pipeline`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultEvent {
    /// Deterministic: the same record failing in the same pipeline gives the same id, so a
    /// fault raised twice (after a redelivery) is stored once.
    pub id: String,
    /// Always [`FAULT_EVENT_TYPE`].
    #[serde(rename = "type")]
    pub event_type: String,
    /// Epoch milliseconds of the faulted event (the earliest, for several records), or of the
    /// record's arrival when it did not decode: the same fault raised again (after a
    /// redelivery, or a publish that failed) has the same id and the same time, so it is
    /// stored once.
    pub timestamp: i64,
    /// The partition key of the failed unit, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
    /// `functionname`, `pipeline` and the standard tags.
    pub tags: Map<String, Value>,
    /// What went wrong.
    pub err: ErrorInfo,
    /// The original record(s).
    pub uow: FaultUow,
    /// Present when the fault was too large to publish whole: its records were trimmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trimmed: Option<Trimmed>,
}

/// How a fault too large to publish was trimmed (see [`FaultEvent::trimmed`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trimmed {
    /// The size of the whole fault event's JSON, in bytes.
    pub original_bytes: usize,
    /// Where the whole fault is stored (its key in the fault store), when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<String>,
}

impl FaultEvent {
    /// The tag `name` as a string, if it is one.
    pub fn tag(&self, name: &str) -> Option<&str> {
        self.tags.get(name).and_then(Value::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn from_json_reads_as_deserialize_reads() {
        let cases = [
            json!({"id": "e1", "type": "thing-created", "timestamp": 1.7e12, "partitionKey": "t1",
                "tags": {"region": "eu-west-1", "n": [1, {"a": null}]}, "raw": {"new": {"x": 1}},
                "eem": {"dataKeys": {}}, "thing": {"id": "t1", "deep": {"list": [1, "2", true]}},
                "other": 3}),
            json!({"type": "t", "partitionKey": null, "tags": null, "raw": null, "eem": null}),
            json!({"type": "t", "timestamp": 18446744073709551615u64}),
            json!({"type": "t", "timestamp": "soon"}),
            json!({"id": 5, "type": "t"}),
            json!({"type": ["t"]}),
            json!({"type": "t", "tags": "not a map"}),
            json!({"type": "t", "partitionKey": 7}),
            json!({"id": "no type"}),
            json!(["not", "an", "object"]),
        ];
        for case in cases {
            let fast = Event::from_json(&case).map_err(|e| e.to_string());
            let serde = Event::deserialize(&case).map_err(|e| e.to_string());
            assert_eq!(fast, serde, "{case}");
        }
        // the one documented difference: serde_json's private raw-value token is kept as data
        let token = json!({"type": "t", "x": {"$serde_json::private::RawValue": 1}});
        assert!(Event::deserialize(&token).is_err());
        assert_eq!(
            Event::from_json(&token).unwrap().entity("x"),
            Some(&json!({"$serde_json::private::RawValue": 1}))
        );
    }

    #[test]
    fn round_trip_keeps_entity_and_unknown_fields() {
        let wire = json!({
            "id": "e1", "type": "thing-updated", "timestamp": 1_700_000_000_123_i64,
            "partitionKey": "t1", "tags": {"source": "svc", "n": 1},
            "thing": {"id": "t1", "name": "widget"}, "raw": {"new": {}}, "eem": {"dataKeys": {}},
            "somethingNew": [1, 2]
        });
        let event: Event = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(event.partition_key.as_deref(), Some("t1"));
        assert_eq!(event.entity("thing").unwrap()["name"], "widget");
        assert_eq!(serde_json::to_value(&event).unwrap(), wire);
    }

    #[test]
    fn absent_optional_fields_are_omitted_and_defaults_fill_in() {
        let event: Event = serde_json::from_str(r#"{"type":"x"}"#).unwrap();
        assert_eq!(event.id, "");
        assert_eq!(event.timestamp, 0);
        let back = serde_json::to_value(&event).unwrap();
        assert_eq!(
            back,
            json!({"id": "", "type": "x", "timestamp": 0, "tags": {}})
        );
    }

    #[test]
    fn float_timestamps_are_accepted() {
        let event: Event = serde_json::from_str(r#"{"type":"x","timestamp":1.5e12}"#).unwrap();
        assert_eq!(event.timestamp, 1_500_000_000_000);
    }

    #[test]
    fn missing_type_is_an_error() {
        let err = serde_json::from_str::<Event>(r#"{"id":"1"}"#).unwrap_err();
        assert!(err.to_string().contains("type"), "{err}");
    }

    #[test]
    fn fault_event_wire_shape() {
        let fault = FaultEvent {
            id: "f1".into(),
            event_type: FAULT_EVENT_TYPE.into(),
            timestamp: 1,
            partition_key: None,
            tags: Map::from_iter([
                ("functionname".to_string(), json!("listener")),
                ("pipeline".to_string(), json!("p1")),
            ]),
            err: ErrorInfo {
                name: "PoisonError".into(),
                message: "bad".into(),
                stack: "bad".into(),
            },
            uow: FaultUow::Record {
                record: json!({"eventID": "r1"}),
            },
            trimmed: None,
        };
        let wire = serde_json::to_value(&fault).unwrap();
        assert_eq!(wire["type"], "fault");
        assert_eq!(wire["err"]["name"], "PoisonError");
        assert_eq!(wire["tags"]["pipeline"], "p1");
        assert_eq!(wire["uow"]["record"]["eventID"], "r1");
        let back: FaultEvent = serde_json::from_value(wire).unwrap();
        assert_eq!(back, fault);
    }
}
