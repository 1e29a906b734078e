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
        |out, mut record| {
            let decoded = decode(&mut record, opts);
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

/// The record's change event; its images move into the event's `raw`.
fn decode(
    record: &mut DynamoDbRecord,
    opts: &DynamoDbOptions,
) -> Result<Option<(Event, bool)>, String> {
    let (new, old) = record.take_images();
    let image_or = |image: Option<Image>, name: &str| -> Result<Map<String, Value>, String> {
        image
            .transpose()
            .map(Option::unwrap_or_default)
            .map_err(|e| format!("{name} image is not convertible to JSON: {e}"))
    };
    let (new, old) = (image_or(new, "new")?, image_or(old, "old")?);
    let image = if new.is_empty() { &old } else { &new };
    let string = |attr: &str| image.get(attr).and_then(Value::as_str);

    if let Some(region) = &opts.region {
        for attr in ["aws:rep:updateregion", "awsregion"] {
            if let Some(written_in) = string(attr)
                && written_in != region
            {
                tracing::debug!(record = %record.event_id(), %written_in, "skipping another region's global table write");
                return Ok(None);
            }
        }
    }
    if opts.skip_ttl_expired && record.event_name() == "REMOVE" && record.is_ttl_expiry() {
        tracing::debug!(record = %record.event_id(), "skipping TTL expiry");
        return Ok(None);
    }

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
