use aws_lambda_events::event::s3::S3EventRecord;
use serde_json::Value;

use super::{Decoded, S3Records, SourceRecord};
use crate::event::Event;

/// Decodes an S3 notification event. S3 carries no event of ours, so each record becomes one:
/// `type` is the S3 `eventName` (e.g. `ObjectCreated:Put`), `id` is
/// `bucket/key/sequencer`, `partitionKey` is the object key, `timestamp` the event time, and the
/// entity `s3` holds the notification's bucket and object.
///
/// ```
/// use lambda_stream::{sources::from_s3, testing::to_s3_records};
///
/// let decoded = from_s3(to_s3_records(&[("bucket", "faults/1.json")]));
/// let event = decoded.units()[0].event();
/// assert_eq!(event.event_type, "ObjectCreated:Put");
/// assert_eq!(event.entity("s3").unwrap()["object"]["key"], "faults/1.json");
/// ```
pub fn from_s3(batch: impl Into<S3Records>) -> Decoded {
    Decoded::each(
        "from_s3",
        <super::S3 as super::Source>::REDELIVERY,
        super::Payload::Notifications,
        batch.into(),
        |out, record| {
            let event = s3_event(&record);
            let (index, record) = out.push_record(SourceRecord::S3(record));
            out.unit(index, record, event, || None, false);
        },
    )
}

pub(super) fn s3_event(r: &S3EventRecord) -> Event {
    let bucket = r.s3.bucket.name.as_deref().unwrap_or_default();
    let key = r.s3.object.key.as_deref().unwrap_or_default();
    let sequencer = r.s3.object.sequencer.as_deref().unwrap_or_default();
    let mut event = Event::new(
        format!("{bucket}/{key}/{sequencer}"),
        r.event_name.as_deref().unwrap_or("s3"),
        r.event_time.timestamp_millis(),
    )
    .with_partition_key(key);
    event.fields.insert(
        "s3".into(),
        serde_json::to_value(&r.s3).unwrap_or(Value::Null),
    );
    if let Some(region) = &r.aws_region {
        event
            .tags
            .insert("region".into(), Value::from(region.as_str()));
    }
    event
}
