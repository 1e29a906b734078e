use std::sync::Arc;

use super::{Decoded, SnsRecords, SourceRecord, parse_event};

/// Decodes an SNS event: each `Message` is an [`Event`](crate::Event) in JSON; `id` defaults to
/// the `MessageId` and `timestamp` to the publish time.
///
/// ```
/// use lambda_stream::{Event, sources::from_sns, testing::to_sns_records};
///
/// let decoded = from_sns(to_sns_records(&[Event::new("e1", "thing-created", 1)]));
/// assert_eq!(decoded.units()[0].event().id, "e1");
/// ```
pub fn from_sns(batch: impl Into<SnsRecords>) -> Decoded {
    Decoded::each(
        "from_sns",
        <super::Sns as super::Source>::REDELIVERY,
        super::Payload::Events,
        batch.into(),
        |out, record| {
            let parsed = parse_event(
                record.sns.message.as_bytes(),
                &record.sns.message_id,
                record.sns.timestamp.timestamp_millis(),
            );
            let (index, record) = out.push_record(SourceRecord::Sns(record));
            match parsed {
                Ok(event) => out.unit(index, Arc::clone(&record), event, || None, false),
                Err(reason) => out.fail_record(index, format!("message: {reason}")),
            }
        },
    )
}
