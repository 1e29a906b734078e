use std::sync::Arc;

use super::{Decoded, KinesisRecords, SourceRecord, parse_event};

/// Decodes a Kinesis event: each record's base64 data is an [`Event`](crate::Event) in JSON.
///
/// The event's `id` defaults to the record's `eventID` and its `timestamp` to the arrival time;
/// values in the payload win, as in aws-lambda-stream. A record whose data is not base64, not
/// JSON or has no `type` is a [`DecodeError`](crate::DecodeError) naming its `eventID`.
///
/// ```
/// use lambda_stream::{Event, sources::from_kinesis, testing::to_kinesis_records};
///
/// let event = Event::new("e1", "thing-created", 1).with_partition_key("t1");
/// let decoded = from_kinesis(to_kinesis_records(&[event]));
/// assert_eq!(decoded.units()[0].event().event_type, "thing-created");
/// ```
pub fn from_kinesis(batch: impl Into<KinesisRecords>) -> Decoded {
    Decoded::each(
        "from_kinesis",
        <super::Kinesis as super::Source>::REDELIVERY,
        super::Payload::Events,
        batch.into(),
        |out, record| {
            let arrival = record
                .kinesis
                .approximate_arrival_timestamp
                .0
                .timestamp_millis();
            let id = record
                .event_id
                .as_deref()
                .unwrap_or(&record.kinesis.sequence_number);
            let parsed = parse_event(&record.kinesis.data.0, id, arrival);
            let (index, record) = out.push_record(SourceRecord::Kinesis(record));
            match parsed {
                Ok(event) => out.unit(
                    index,
                    Arc::clone(&record),
                    event,
                    || match &*record {
                        SourceRecord::Kinesis(r) => Some(r.kinesis.partition_key.clone()),
                        _ => None,
                    },
                    false,
                ),
                Err(reason) => out.fail_record(index, reason),
            }
        },
    )
}
