use std::collections::HashMap;
use std::sync::Arc;

use aws_lambda_events::event::dynamodb::EventRecord;
use serde_dynamo::AttributeValue;
use serde_json::{Map, Value, json};

use super::{Decoded, DynamoDbRecords, SourceRecord};
use crate::event::Event;
use crate::faults::truncate;

/// How [`from_dynamodb`] reads a single-table design.
///
/// ```
/// use lambda_stream::sources::DynamoDbOptions;
///
/// let opts = DynamoDbOptions { pk: "id".into(), ..DynamoDbOptions::default() };
/// assert_eq!(opts.discriminator, "discriminator");
/// ```
#[derive(Debug, Clone)]
pub struct DynamoDbOptions {
    /// The key attribute that becomes the event's `partitionKey` (default `pk`).
    pub pk: String,
    /// The sort key attribute, used to name the event type when there is no discriminator
    /// (default `sk`).
    pub sk: String,
    /// The attribute that names the entity type (default `discriminator`).
    pub discriminator: String,
    /// Skip REMOVEs made by DynamoDB's TTL expiry (default false: the `expired` flavor wants them).
    pub skip_ttl_expired: bool,
    /// This function's region: records written by another region of a global table are skipped.
    /// `None` (the default) keeps every record; the handler's settings set it to the region.
    pub region: Option<String>,
}

impl Default for DynamoDbOptions {
    fn default() -> Self {
        DynamoDbOptions {
            pk: "pk".into(),
            sk: "sk".into(),
            discriminator: "discriminator".into(),
            skip_ttl_expired: false,
            region: None,
        }
    }
}

/// Decodes a DynamoDB stream event into change events.
///
/// - `type`: the lower-cased discriminator (else sort key) plus `-created`, `-updated` or
///   `-deleted`; a MODIFY that sets `deleted: true` is `-deleted` and one that clears it is
///   `-undeleted` (soft delete).
/// - `partitionKey`: the `pk` key; `timestamp`: the new image's `timestamp`, else the stream's
///   approximate creation time in ms; `raw.new` / `raw.old`: the images as plain JSON.
/// - Skipped (done): writes of another region of a global table, and TTL expiries when
///   [`DynamoDbOptions::skip_ttl_expired`] is set.
/// - `latched: true` in the new image marks the unit latched ([`UnitOfWork::is_latched`](crate::UnitOfWork::is_latched)).
///
/// ```
/// use lambda_stream::sources::{DynamoDbOptions, from_dynamodb};
/// use lambda_stream::testing::{Change, to_dynamodb_records};
/// use serde_json::json;
///
/// let change = Change::insert(json!({"pk": "t1", "sk": "thing", "discriminator": "Thing", "name": "x"}));
/// let decoded = from_dynamodb(to_dynamodb_records(&[change]), &DynamoDbOptions::default());
/// let event = decoded.units()[0].event();
/// assert_eq!(event.event_type, "thing-created");
/// assert_eq!(event.raw.as_ref().unwrap()["new"]["name"], "x");
/// ```
pub fn from_dynamodb(batch: impl Into<DynamoDbRecords>, opts: &DynamoDbOptions) -> Decoded {
    Decoded::each(
        "from_dynamodb",
        <super::DynamoDb as super::Source>::REDELIVERY,
        super::Payload::Rows,
        batch.into(),
        |out, record| {
            let decoded = decode(&record, opts);
            let (index, shared) = out.push_record(SourceRecord::DynamoDb(record));
            match decoded {
                Ok(Some((event, latched))) => {
                    out.unit(index, Arc::clone(&shared), event, || None, latched)
                }
                Ok(None) => {}
                Err(reason) => out.fail_record(index, reason),
            }
        },
    )
}

fn decode(record: &EventRecord, opts: &DynamoDbOptions) -> Result<Option<(Event, bool)>, String> {
    let change = &record.change;
    let new = &change.new_image;
    let old = &change.old_image;
    let image = if new.is_empty() { old } else { new };

    if let Some(region) = &opts.region {
        for attr in ["aws:rep:updateregion", "awsregion"] {
            if let Some(AttributeValue::S(written_in)) = image.get(attr)
                && written_in != region
            {
                tracing::debug!(record = %record.event_id, %written_in, "skipping another region's global table write");
                return Ok(None);
            }
        }
    }
    if opts.skip_ttl_expired && record.event_name == "REMOVE" && is_ttl_expiry(record) {
        tracing::debug!(record = %record.event_id, "skipping TTL expiry");
        return Ok(None);
    }

    let pk = change
        .keys
        .get(&opts.pk)
        .and_then(scalar)
        .ok_or_else(|| format!("missing key attribute `{}` (string or number)", opts.pk))?;
    let entity = [&opts.discriminator, &opts.sk]
        .into_iter()
        .find_map(
            |attr| match image.get(attr.as_str()).or(change.keys.get(attr.as_str())) {
                Some(AttributeValue::S(s)) if !s.is_empty() => Some(s),
                _ => None,
            },
        )
        .ok_or_else(|| {
            format!(
                "no `{}` or `{}` attribute to name the event type",
                opts.discriminator, opts.sk
            )
        })?;
    let action = match record.event_name.as_str() {
        "INSERT" => "created",
        "MODIFY" => match (is_deleted(old), is_deleted(new)) {
            (false, true) => "deleted",
            (true, false) => "undeleted",
            _ => "updated",
        },
        "REMOVE" => "deleted",
        other => return Err(format!("unknown eventName `{other}`")),
    };
    let timestamp = match new.get("timestamp") {
        Some(AttributeValue::N(n)) => n
            .parse::<f64>()
            .map(|ms| ms as i64)
            .map_err(|e| format!("`timestamp` is not a number: {e}"))?,
        // a record without it (a hand-made fixture) would be timed at 1970 and lose every
        // timestamp condition to an older write: better a fault that names what is missing
        _ => match change.approximate_creation_date_time.timestamp_millis() {
            0 => {
                return Err(
                    "no `timestamp` attribute and no `dynamodb.ApproximateCreationDateTime` to time the event"
                        .to_owned(),
                );
            }
            ms => ms,
        },
    };

    let mut raw = Map::new();
    for (name, img) in [("new", new), ("old", old)] {
        if !img.is_empty() {
            let value = image_json(img)
                .map_err(|e| format!("{name} image is not convertible to JSON: {e}"))?;
            raw.insert(name.into(), value);
        }
    }
    let latched = matches!(new.get("latched"), Some(AttributeValue::Bool(true)));

    let mut event = Event::new(
        record.event_id.clone(),
        format!("{}-{}", entity.to_lowercase(), action),
        timestamp,
    );
    event.partition_key = Some(pk);
    event.raw = Some(Value::Object(raw));
    event
        .tags
        .insert("region".into(), json!(record.aws_region.as_str()));
    Ok(Some((event, latched)))
}

/// An image (or a map in it) as JSON, read where it lies: serde_dynamo's `from_item` gives the
/// same values but needs its own copy of the image, and the copy and its teardown were a third
/// of decoding a change.
fn image_json(map: &HashMap<String, AttributeValue>) -> Result<Value, String> {
    map.iter()
        .map(|(k, v)| Ok((k.clone(), json_of(k, v)?)))
        .collect::<Result<Map<String, Value>, String>>()
        .map(Value::Object)
}

/// One attribute as serde_dynamo turns it into JSON: a number as `i64`, else `u64`, else `f64`
/// (not finite: `null`), sets as arrays, and binary, which JSON has no type for, an error.
fn json_of(name: &str, v: &AttributeValue) -> Result<Value, String> {
    Ok(match v {
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::N(n) => number(name, n)?,
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::M(m) => image_json(m)?,
        AttributeValue::L(l) => Value::Array(
            l.iter()
                .map(|v| json_of(name, v))
                .collect::<Result<_, _>>()?,
        ),
        AttributeValue::Ss(ss) => Value::Array(ss.iter().cloned().map(Value::String).collect()),
        AttributeValue::Ns(ns) => Value::Array(
            ns.iter()
                .map(|n| number(name, n))
                .collect::<Result<_, _>>()?,
        ),
        AttributeValue::B(_) | AttributeValue::Bs(_) => {
            return Err(format!(
                "`{}` is binary, which JSON has no type for",
                truncate(name, 100)
            ));
        }
    })
}

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

fn scalar(v: &AttributeValue) -> Option<String> {
    match v {
        AttributeValue::S(s) | AttributeValue::N(s) => Some(s.clone()),
        _ => None,
    }
}

fn is_deleted(image: &serde_dynamo::Item) -> bool {
    matches!(image.get("deleted"), Some(AttributeValue::Bool(true)))
}

fn is_ttl_expiry(record: &EventRecord) -> bool {
    record
        .user_identity
        .as_ref()
        .is_some_and(|u| u.type_ == "Service" && u.principal_id == "dynamodb.amazonaws.com")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn av(v: serde_json::Value) -> AttributeValue {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn an_image_reads_as_serde_dynamo_reads_it() {
        let image: serde_dynamo::Item = serde_json::from_value(serde_json::json!({
            "pk": {"S": "thing-1"}, "empty": {"S": ""}, "i": {"N": "-42"}, "u": {"N": "18446744073709551615"},
            "f": {"N": "1.50"}, "e": {"N": "1e3"}, "big": {"N": "1e400"}, "plus": {"N": "+7"},
            "t": {"BOOL": true}, "nothing": {"NULL": true},
            "list": {"L": [{"N": "1"}, {"S": "a"}, {"L": [{"BOOL": false}]}]},
            "m": {"M": {"deeper": {"M": {"name": {"S": "Lamp \"2\""}}}, "o": {"M": {}}}},
            "ss": {"SS": ["a", "b"]}, "ns": {"NS": ["1", "2.5", "-3"]}
        }))
        .unwrap();
        let expected: Value = serde_dynamo::from_item(image.clone()).unwrap();
        assert_eq!(image_json(&image).unwrap(), expected);
    }

    #[test]
    fn what_json_cannot_hold_is_an_error_naming_the_attribute() {
        for (name, v) in [
            ("blob", av(serde_json::json!({"B": "AAEC"}))),
            ("blobs", av(serde_json::json!({"BS": ["AAEC"]}))),
            ("n", av(serde_json::json!({"N": "twelve"}))),
        ] {
            let image =
                serde_dynamo::Item::from(std::collections::HashMap::from([(name.to_owned(), v)]));
            let err = image_json(&image).unwrap_err();
            assert!(err.contains(&format!("`{name}`")), "{err}");
            assert!(serde_dynamo::from_item::<_, Value>(image).is_err());
        }
    }
}
