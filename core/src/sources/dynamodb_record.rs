//! One DynamoDB stream record, read in a single pass over its JSON: the fields the library
//! reads, its images straight from DynamoDB JSON to plain JSON, and the record as it arrived.
//!
//! `aws_lambda_events`' record holds each image as a map of attribute values, which the source
//! then had to walk again to make the event's plain JSON; building, hashing and dropping that
//! intermediate map was two fifths of the trigger's CPU, and it held the whole batch's images
//! twice until the invocation ended.

use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::faults::truncate;

/// A DynamoDB stream record, as the batch types parse it.
///
/// The record keeps its JSON exactly as it arrived (what a fault event carries, so it can be
/// resubmitted) and the fields the library reads. Its images are converted to plain JSON
/// while the record is parsed and move into the event's `raw.new` / `raw.old` when the
/// source decodes it, so they are never held twice.
///
/// ```
/// use lambda_stream::sources::DynamoDbRecord;
///
/// let record: DynamoDbRecord = serde_json::from_str(r#"{"eventID": "1", "eventName": "INSERT",
///   "awsRegion": "us-east-1", "dynamodb": {"Keys": {"pk": {"S": "t1"}},
///   "NewImage": {"pk": {"S": "t1"}}, "SequenceNumber": "100", "SizeBytes": 26,
///   "ApproximateCreationDateTime": 1700000000}}"#).unwrap();
/// assert_eq!(record.event_name(), "INSERT");
/// assert_eq!(record.sequence_number(), Some("100"));
/// assert_eq!(record.approximate_creation_millis(), 1_700_000_000_000);
/// ```
#[derive(Debug, Clone)]
pub struct DynamoDbRecord {
    /// The record's JSON as it arrived: a slice of the payload it came in when the batch was
    /// read in one pass (no copy), else its own copy.
    raw: Bytes,
    event_id: String,
    event_name: String,
    event_source_arn: Option<String>,
    aws_region: String,
    keys: serde_dynamo::Item,
    sequence_number: Option<String>,
    size_bytes: i64,
    created_millis: i64,
    ttl_expiry: bool,
    /// Where in `raw` the new and old images are: each is read when the record is decoded,
    /// so a batch taken in windows holds one window's images at a time.
    new_image: Option<Range<usize>>,
    old_image: Option<Range<usize>>,
}

/// An image as plain JSON, and why it is not whole when it is not: an attribute JSON cannot
/// hold (binary) or a number that does not parse, which the map leaves out. The record still
/// parses, so a record the source skips (another region's write) is skipped whatever its
/// image holds, and one it decodes is a fault naming the record.
#[derive(Debug, Clone, Default)]
pub(crate) struct Image {
    /// The attributes that convert.
    pub(crate) map: Map<String, Value>,
    /// The first that does not, and why.
    pub(crate) error: Option<String>,
}

impl Image {
    /// The whole image, or why it cannot be.
    pub(crate) fn into_result(self) -> Result<Map<String, Value>, String> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.map),
        }
    }
}

impl DynamoDbRecord {
    /// Parses a record from its JSON, keeping the JSON; on failure, the JSON comes back with
    /// the error.
    pub(crate) fn from_raw(raw: Box<RawValue>) -> Result<Self, (Box<RawValue>, serde_json::Error)> {
        let text: Box<str> = raw.into();
        let bytes = Bytes::from(text.into_boxed_bytes());
        // the bytes were a `str` a moment ago
        let text = std::str::from_utf8(&bytes).unwrap_or_default();
        match serde_json::from_str::<Wire>(text) {
            Ok(wire) => {
                let images = (
                    span(text, wire.dynamodb.new_image),
                    span(text, wire.dynamodb.old_image),
                );
                Ok(DynamoDbRecord::from_wire(wire, bytes.clone(), images))
            }
            Err(e) => match RawValue::from_string(text.to_owned()) {
                Ok(raw) => Err((raw, e)),
                Err(other) => Err((RawValue::NULL.to_owned(), other)),
            },
        }
    }

    /// Parses the record that starts at `start` of a whole payload (`text` is the payload), in
    /// one pass: its JSON is the slice of the payload the parse read.
    pub(crate) fn parse_at(payload: &Bytes, text: &str, start: usize) -> Option<(Self, usize)> {
        let (wire, end) = super::value_at::<Wire>(text, start)?;
        // `text` is `payload` as text; a caller that passes other text gets nothing, not a panic
        let raw = (text.len() == payload.len()).then(|| payload.slice(start..end))?;
        let record = text.get(start..end)?;
        let images = (
            span(record, wire.dynamodb.new_image),
            span(record, wire.dynamodb.old_image),
        );
        Some((DynamoDbRecord::from_wire(wire, raw, images), end))
    }

    fn from_wire(
        wire: Wire<'_>,
        raw: Bytes,
        (new_image, old_image): (Option<Range<usize>>, Option<Range<usize>>),
    ) -> Self {
        let change = wire.dynamodb;
        DynamoDbRecord {
            raw,
            event_id: wire.event_id,
            event_name: wire.event_name,
            event_source_arn: wire.event_source_arn,
            aws_region: wire.aws_region.unwrap_or_default(),
            keys: change.keys.unwrap_or_default(),
            sequence_number: change.sequence_number,
            size_bytes: change.size_bytes.unwrap_or(0),
            created_millis: change.created.map_or(0, |s| (s * 1000.0).round() as i64),
            ttl_expiry: wire.user_identity.is_some_and(|u| {
                u.kind.as_deref() == Some("Service")
                    && u.principal_id.as_deref() == Some("dynamodb.amazonaws.com")
            }),
            new_image,
            old_image,
        }
    }

    /// The record's id (`eventID`).
    pub fn event_id(&self) -> &str {
        &self.event_id
    }

    /// `INSERT`, `MODIFY` or `REMOVE`.
    pub fn event_name(&self) -> &str {
        &self.event_name
    }

    /// The stream's ARN, which names the table.
    pub fn event_source_arn(&self) -> Option<&str> {
        self.event_source_arn.as_deref()
    }

    /// The region the change was read in (empty when the record does not say).
    pub fn aws_region(&self) -> &str {
        &self.aws_region
    }

    /// The changed item's key attributes.
    pub fn keys(&self) -> &serde_dynamo::Item {
        &self.keys
    }

    /// The stream sequence number, which a partial batch response names.
    pub fn sequence_number(&self) -> Option<&str> {
        self.sequence_number.as_deref()
    }

    /// The change's size as DynamoDB counts it (`SizeBytes`, 0 when absent).
    pub fn size_bytes(&self) -> i64 {
        self.size_bytes
    }

    /// When the change was made (`ApproximateCreationDateTime`), epoch ms; 0 when absent.
    pub fn approximate_creation_millis(&self) -> i64 {
        self.created_millis
    }

    /// Whether DynamoDB's TTL process made the change (a REMOVE by `dynamodb.amazonaws.com`).
    pub fn is_ttl_expiry(&self) -> bool {
        self.ttl_expiry
    }

    /// The record's JSON as it arrived.
    pub fn raw(&self) -> &str {
        // read from this text by serde_json, which accepts only UTF-8
        std::str::from_utf8(&self.raw).unwrap_or_default()
    }

    /// The new and old images, read from the record's JSON: the source puts them into the
    /// event. What is not DynamoDB JSON fails the record, naming the image.
    pub(crate) fn images(&self) -> Result<(Option<Image>, Option<Image>), String> {
        let read = |span: &Option<Range<usize>>, name: &str| -> Result<Option<Image>, String> {
            let Some(text) = span.as_ref().and_then(|s| self.raw().get(s.clone())) else {
                return Ok(None);
            };
            serde_json::from_str::<Option<ImageJson>>(text)
                .map(|image| image.map(|i| i.0))
                .map_err(|e| format!("{name} is not DynamoDB JSON: {e}"))
        };
        Ok((
            read(&self.new_image, "NewImage")?,
            read(&self.old_image, "OldImage")?,
        ))
    }
}

impl Serialize for DynamoDbRecord {
    // verbatim, as it arrived: what a fault event carries, so the record can be resubmitted
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue = serde_json::from_str(self.raw()).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for DynamoDbRecord {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        DynamoDbRecord::from_raw(raw).map_err(|(_, e)| de::Error::custom(e))
    }
}

/// Where `image` (read from `record`) lies in `record`.
fn span(record: &str, image: Option<&RawValue>) -> Option<Range<usize>> {
    let image = image?.get();
    let start = (image.as_ptr() as usize).checked_sub(record.as_ptr() as usize)?;
    let span = start..start + image.len();
    record.get(span.clone()).map(|_| span)
}

/// The fields read, as Lambda delivers them; the images are only found, and read when the
/// record is decoded.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "eventID")]
    event_id: String,
    #[serde(rename = "eventName")]
    event_name: String,
    #[serde(rename = "eventSourceARN", default)]
    event_source_arn: Option<String>,
    // the region only tags the event and tells global-table replicas apart
    #[serde(rename = "awsRegion", default)]
    aws_region: Option<String>,
    #[serde(rename = "userIdentity", default)]
    user_identity: Option<Identity>,
    #[serde(borrow)]
    dynamodb: Change<'a>,
}

#[derive(Deserialize)]
struct Identity {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(rename = "principalId", default)]
    principal_id: Option<String>,
}

#[derive(Deserialize)]
struct Change<'a> {
    #[serde(rename = "ApproximateCreationDateTime", default)]
    created: Option<f64>,
    #[serde(rename = "Keys", default)]
    keys: Option<serde_dynamo::Item>,
    #[serde(rename = "NewImage", default, borrow)]
    new_image: Option<&'a RawValue>,
    #[serde(rename = "OldImage", default, borrow)]
    old_image: Option<&'a RawValue>,
    #[serde(rename = "SequenceNumber", default)]
    sequence_number: Option<String>,
    #[serde(rename = "SizeBytes", default)]
    size_bytes: Option<i64>,
}

/// An image read from DynamoDB JSON as serde_dynamo would turn it into plain JSON: a number as
/// `i64`, else `u64`, else `f64` (not finite: `null`), sets as arrays. What is not DynamoDB JSON
/// fails the record; binary (which JSON has no type for) and a number that does not parse fail
/// only the image, named.
struct ImageJson(Image);

impl<'de> Deserialize<'de> for ImageJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ImageVisitor).map(ImageJson)
    }
}

struct ImageVisitor;

impl<'de> Visitor<'de> for ImageVisitor {
    type Value = Image;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of DynamoDB attribute values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Image, A::Error> {
        let mut image = Image::default();
        while let Some(name) = access.next_key::<String>()? {
            match access.next_value_seed(Attribute { name: &name })? {
                Ok(v) => {
                    image.map.insert(name, v);
                }
                Err(e) => {
                    image.error.get_or_insert(e);
                }
            }
        }
        Ok(image)
    }
}

/// One attribute value (`{"S": ...}`, `{"M": {...}}`, ...) as plain JSON; `name` is the
/// attribute's, for the reason when it cannot be.
struct Attribute<'a> {
    name: &'a str,
}

#[derive(Deserialize)]
#[serde(field_identifier)]
enum Tag {
    S,
    N,
    #[serde(rename = "BOOL")]
    Bool,
    #[serde(rename = "NULL")]
    Null,
    M,
    L,
    #[serde(rename = "SS")]
    Ss,
    #[serde(rename = "NS")]
    Ns,
    B,
    #[serde(rename = "BS")]
    Bs,
}

impl<'de> DeserializeSeed<'de> for Attribute<'_> {
    type Value = Result<Value, String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Attribute<'_> {
    type Value = Result<Value, String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a DynamoDB attribute value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let Some(tag) = access.next_key::<Tag>()? else {
            return Err(de::Error::custom(format!(
                "`{}` has no type",
                truncate(self.name, 100)
            )));
        };
        let name = self.name;
        let value = match tag {
            Tag::S => Ok(Value::String(access.next_value()?)),
            Tag::N => number(name, &access.next_value::<std::borrow::Cow<str>>()?),
            Tag::Bool => Ok(Value::Bool(access.next_value()?)),
            Tag::Null => {
                access.next_value::<IgnoredAny>()?;
                Ok(Value::Null)
            }
            Tag::M => access
                .next_value::<ImageJson>()?
                .0
                .into_result()
                .map(Value::Object),
            Tag::L => access.next_value_seed(List {
                name,
                numbers: false,
            })?,
            Tag::Ss => Ok(Value::Array(
                access
                    .next_value::<Vec<String>>()?
                    .into_iter()
                    .map(Value::String)
                    .collect(),
            )),
            Tag::Ns => access.next_value_seed(List {
                name,
                numbers: true,
            })?,
            Tag::B | Tag::Bs => {
                access.next_value::<IgnoredAny>()?;
                Err(format!(
                    "`{}` is binary, which JSON has no type for",
                    truncate(name, 100)
                ))
            }
        };
        if access.next_key::<IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(format!(
                "`{}` has more than one type",
                truncate(name, 100)
            )));
        }
        Ok(value)
    }
}

/// An `L` (attribute values) or an `NS` (numbers as strings).
struct List<'a> {
    name: &'a str,
    numbers: bool,
}

impl<'de> DeserializeSeed<'de> for List<'_> {
    type Value = Result<Value, String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for List<'_> {
    type Value = Result<Value, String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(if self.numbers {
            "a list of numbers"
        } else {
            "a list of DynamoDB attribute values"
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(access.size_hint().unwrap_or(0));
        let mut failed = None;
        loop {
            let item = if self.numbers {
                match access.next_element::<std::borrow::Cow<str>>()? {
                    Some(n) => number(self.name, &n),
                    None => break,
                }
            } else {
                match access.next_element_seed(Attribute { name: self.name })? {
                    Some(v) => v,
                    None => break,
                }
            };
            match item {
                Ok(v) => items.push(v),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        Ok(failed.map_or(Ok(Value::Array(items)), Err))
    }
}

/// A DynamoDB number as serde_dynamo reads it into JSON: `i64`, else `u64`, else `f64`.
fn number(name: &str, n: &str) -> Result<Value, String> {
    if let Ok(i) = n.parse::<i64>() {
        return Ok(Value::from(i));
    }
    if let Ok(u) = n.parse::<u64>() {
        return Ok(Value::from(u));
    }
    n.parse::<f64>()
        .map(Value::from)
        .map_err(|e| format!("`{}` is not a number: {e}", truncate(name, 100)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn image(v: Value) -> Result<Map<String, Value>, String> {
        serde_json::from_value::<ImageJson>(v)
            .unwrap()
            .0
            .into_result()
    }

    #[test]
    fn an_image_reads_as_serde_dynamo_reads_it() {
        let dynamo = json!({
            "pk": {"S": "thing-1"}, "empty": {"S": ""}, "i": {"N": "-42"}, "u": {"N": "18446744073709551615"},
            "f": {"N": "1.50"}, "e": {"N": "1e3"}, "big": {"N": "1e400"}, "plus": {"N": "+7"},
            "t": {"BOOL": true}, "nothing": {"NULL": true},
            "list": {"L": [{"N": "1"}, {"S": "a"}, {"L": [{"BOOL": false}]}]},
            "m": {"M": {"deeper": {"M": {"name": {"S": "Lamp \"2\""}}}, "o": {"M": {}}}},
            "ss": {"SS": ["a", "b"]}, "ns": {"NS": ["1", "2.5", "-3"]}
        });
        let item: serde_dynamo::Item = serde_json::from_value(dynamo.clone()).unwrap();
        let expected: Value = serde_dynamo::from_item(item).unwrap();
        assert_eq!(Value::Object(image(dynamo.clone()).unwrap()), expected);
        // the same through the text a record arrives as
        let text = serde_json::to_string(&dynamo).unwrap();
        let parsed: ImageJson = serde_json::from_str(&text).unwrap();
        assert_eq!(Value::Object(parsed.0.into_result().unwrap()), expected);
    }

    #[test]
    fn what_json_cannot_hold_fails_the_image_naming_the_attribute() {
        for (name, v) in [
            ("blob", json!({"B": "AAEC"})),
            ("blobs", json!({"BS": ["AAEC"]})),
            ("n", json!({"N": "twelve"})),
            ("ns", json!({"NS": ["1", "twelve"]})),
        ] {
            let err = image(json!({ "ok": {"S": "x"}, name: v.clone() })).unwrap_err();
            assert!(err.contains(&format!("`{name}`")), "{err}");
            let item: serde_dynamo::Item =
                serde_json::from_value(json!({ name: v })).unwrap_or_default();
            assert!(item.is_empty() || serde_dynamo::from_item::<_, Value>(item).is_err());
        }
        // deep in a map, the innermost attribute is named
        let err = image(json!({"m": {"M": {"inner": {"B": "AAEC"}}}})).unwrap_err();
        assert!(err.contains("`inner`"), "{err}");
    }

    #[test]
    fn what_is_not_dynamodb_json_fails_the_record() {
        for bad in [
            json!({"a": {"S": 5}}),
            json!({"a": {}}),
            json!({"a": {"X": "1"}}),
            json!({"a": {"S": "1", "N": "1"}}),
            json!({"a": "plain"}),
        ] {
            assert!(
                serde_json::from_value::<ImageJson>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_record_keeps_its_json_and_reads_its_fields() {
        let text = r#"{"eventID":"e1","eventName":"REMOVE","awsRegion":"eu-west-1",
            "eventSourceARN":"arn:aws:dynamodb:eu-west-1:1:table/t/stream/x",
            "userIdentity":{"type":"Service","principalId":"dynamodb.amazonaws.com"},
            "dynamodb":{"ApproximateCreationDateTime":1700000000.25,"Keys":{"pk":{"S":"a"}},
            "OldImage":{"pk":{"S":"a"},"n":{"N":"2"}},"NewImage":null,"SequenceNumber":"7","SizeBytes":40}}"#;
        let record: DynamoDbRecord = serde_json::from_str(text).unwrap();
        assert_eq!(record.event_id(), "e1");
        assert_eq!(record.aws_region(), "eu-west-1");
        assert_eq!(record.size_bytes(), 40);
        assert_eq!(record.approximate_creation_millis(), 1_700_000_000_250);
        assert!(record.is_ttl_expiry());
        assert_eq!(
            record.keys().get("pk"),
            Some(&serde_dynamo::AttributeValue::S("a".into()))
        );
        assert_eq!(serde_json::to_string(&record).unwrap(), text);
        let (new, old) = record.images().unwrap();
        assert!(new.is_none());
        assert_eq!(
            Value::Object(old.unwrap().into_result().unwrap()),
            json!({"pk": "a", "n": 2})
        );
    }

    #[test]
    fn a_typed_aws_lambda_events_batch_converts_record_by_record() {
        let typed: aws_lambda_events::event::dynamodb::Event = serde_json::from_value(json!({
            "Records": [{"eventID": "e1", "eventName": "MODIFY", "awsRegion": "us-east-1",
                "dynamodb": {"ApproximateCreationDateTime": 1700000000, "Keys": {"pk": {"S": "a"}},
                    "NewImage": {"pk": {"S": "a"}, "n": {"N": "3"}, "m": {"M": {"x": {"BOOL": true}}}},
                    "OldImage": {"pk": {"S": "a"}, "n": {"N": "2"}},
                    "SequenceNumber": "9", "SizeBytes": 60}}]
        }))
        .unwrap();
        let batch = crate::sources::DynamoDbRecords::from(typed);
        let crate::sources::Lenient::Parsed(record) = batch.records.into_iter().next().unwrap()
        else {
            panic!("the typed record did not convert")
        };
        assert_eq!(record.event_name(), "MODIFY");
        assert_eq!(record.sequence_number(), Some("9"));
        assert_eq!(record.approximate_creation_millis(), 1_700_000_000_000);
        let (new, old) = record.images().unwrap();
        assert_eq!(
            Value::Object(new.unwrap().into_result().unwrap()),
            json!({"pk": "a", "n": 3, "m": {"x": true}})
        );
        assert_eq!(
            Value::Object(old.unwrap().into_result().unwrap()),
            json!({"pk": "a", "n": 2})
        );
    }

    #[test]
    fn fields_the_library_does_not_need_may_be_missing() {
        let record: DynamoDbRecord =
            serde_json::from_str(r#"{"eventID":"e","eventName":"INSERT","dynamodb":{}}"#).unwrap();
        assert_eq!(record.aws_region(), "");
        assert_eq!(record.size_bytes(), 0);
        assert_eq!(record.approximate_creation_millis(), 0);
        for missing in [
            r#"{"eventName":"INSERT","dynamodb":{}}"#,
            r#"{"eventID":"e","dynamodb":{}}"#,
            r#"{"eventID":"e","eventName":"INSERT"}"#,
        ] {
            assert!(serde_json::from_str::<DynamoDbRecord>(missing).is_err());
        }
    }
}
