use std::sync::Arc;

use serde_dynamo::AttributeValue;
use serde_json::{Map, Value, json};

use super::dynamodb_record::Image;
use super::{Decoded, DynamoDbRecord, DynamoDbRecords, SourceRecord};
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

/// The record's change event; its images, read from its JSON, go into the event's `raw`.
fn decode(
    record: &DynamoDbRecord,
    opts: &DynamoDbOptions,
) -> Result<Option<(Event, bool)>, String> {
    let (new, old) = record.images()?;
    let (new, old) = (new.unwrap_or_default(), old.unwrap_or_default());
    // a record skipped is skipped whatever else its image holds
    if let Some(region) = &opts.region {
        let image = if new.map.is_empty() {
            &old.map
        } else {
            &new.map
        };
        for attr in ["aws:rep:updateregion", "awsregion"] {
            if let Some(written_in) = image.get(attr).and_then(Value::as_str)
                && written_in != region
            {
                let written_in = truncate(written_in, 100);
                tracing::debug!(record = %record.event_id(), %written_in, "skipping another region's global table write");
                return Ok(None);
            }
        }
    }
    if opts.skip_ttl_expired && record.event_name() == "REMOVE" && record.is_ttl_expiry() {
        tracing::debug!(record = %record.event_id(), "skipping TTL expiry");
        return Ok(None);
    }
    let whole = |image: Image, name: &str| {
        image
            .into_result()
            .map_err(|e| format!("{name} image is not convertible to JSON: {e}"))
    };
    let (new, old) = (whole(new, "new")?, whole(old, "old")?);
    let image = if new.is_empty() { &old } else { &new };

    let keys = record.keys();
    let pk = keys
        .get(&opts.pk)
        .and_then(scalar)
        .ok_or_else(|| format!("missing key attribute `{}` (string or number)", opts.pk))?;
    let entity = [&opts.discriminator, &opts.sk]
        .into_iter()
        .find_map(|attr| {
            let named = match (image.get(attr.as_str()), keys.get(attr.as_str())) {
                (Some(v), _) => v.as_str(),
                (None, Some(AttributeValue::S(s))) => Some(s.as_str()),
                (None, _) => None,
            };
            named.filter(|s| !s.is_empty())
        })
        .ok_or_else(|| {
            format!(
                "no `{}` or `{}` attribute to name the event type",
                opts.discriminator, opts.sk
            )
        })?;
    let action = match record.event_name() {
        "INSERT" => "created",
        "MODIFY" => match (is_deleted(&old), is_deleted(&new)) {
            (false, true) => "deleted",
            (true, false) => "undeleted",
            _ => "updated",
        },
        "REMOVE" => "deleted",
        other => return Err(format!("unknown eventName `{}`", truncate(other, 100))),
    };
    let timestamp = match new.get("timestamp") {
        Some(Value::Number(n)) => n.as_f64().map_or(0, |ms| ms as i64),
        // a record without it (a hand-made fixture) would be timed at 1970 and lose every
        // timestamp condition to an older write: better a fault that names what is missing
        _ => match record.approximate_creation_millis() {
            0 => {
                return Err(
                    "no `timestamp` attribute and no `dynamodb.ApproximateCreationDateTime` to time the event"
                        .to_owned(),
                );
            }
            ms => ms,
        },
    };
    let event_type = format!("{}-{}", entity.to_lowercase(), action);
    let latched = matches!(new.get("latched"), Some(Value::Bool(true)));

    let mut raw = Map::new();
    if !new.is_empty() {
        raw.insert("new".into(), Value::Object(new));
    }
    if !old.is_empty() {
        raw.insert("old".into(), Value::Object(old));
    }
    let mut event = Event::new(record.event_id().to_owned(), event_type, timestamp);
    event.partition_key = Some(pk);
    event.raw = Some(Value::Object(raw));
    event
        .tags
        .insert("region".into(), json!(record.aws_region()));
    Ok(Some((event, latched)))
}

fn scalar(v: &AttributeValue) -> Option<String> {
    match v {
        AttributeValue::S(s) | AttributeValue::N(s) => Some(s.clone()),
        _ => None,
    }
}

fn is_deleted(image: &Map<String, Value>) -> bool {
    matches!(image.get("deleted"), Some(Value::Bool(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(new_image: Value, user_identity: Option<Value>) -> DynamoDbRecords {
        let mut record = json!({
            "eventID": "e1", "eventName": "REMOVE", "awsRegion": "eu-west-1",
            "dynamodb": {"ApproximateCreationDateTime": 1700000000, "Keys": {"pk": {"S": "a"}},
                "OldImage": new_image, "SequenceNumber": "1", "SizeBytes": 10}
        });
        if let Some(identity) = user_identity {
            record["userIdentity"] = identity;
        }
        serde_json::from_value(json!({ "Records": [record] })).unwrap()
    }

    #[test]
    fn a_record_skipped_is_skipped_whatever_its_image_holds() {
        let image = json!({"pk": {"S": "a"}, "sk": {"S": "thing"},
            "aws:rep:updateregion": {"S": "us-east-1"}, "blob": {"B": "AAEC"}});
        let opts = DynamoDbOptions {
            region: Some("eu-west-1".into()),
            ..DynamoDbOptions::default()
        };
        let decoded = from_dynamodb(batch(image.clone(), None), &opts);
        assert!(decoded.units().is_empty());
        assert!(decoded.failures().is_empty(), "{:?}", decoded.failures());

        let ttl = json!({"type": "Service", "principalId": "dynamodb.amazonaws.com"});
        let opts = DynamoDbOptions {
            skip_ttl_expired: true,
            ..DynamoDbOptions::default()
        };
        let decoded = from_dynamodb(batch(image.clone(), Some(ttl)), &opts);
        assert!(decoded.units().is_empty());
        assert!(decoded.failures().is_empty());

        // decoded, the same record is a fault naming the attribute
        let decoded = from_dynamodb(batch(image, None), &DynamoDbOptions::default());
        assert!(decoded.units().is_empty());
        let failures = decoded.failures();
        assert_eq!(failures.len(), 1);
        assert!(format!("{:?}", failures[0]).contains("`blob` is binary"));
    }
}
