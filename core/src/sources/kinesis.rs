use std::sync::Arc;

use aws_lambda_events::encodings::SecondTimestamp;
use aws_lambda_events::event::kinesis::KinesisEventRecord;

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

/// A Kinesis record parsed the way Kinesis writes it, into `aws_lambda_events`' type.
///
/// The derived parse of that type costs a third of a record's decode besides its data: the
/// arrival time goes through an untagged enum (a buffered value and a formatted type error per
/// record) and the base64 data is copied into a `String` before it is decoded. Here the time is
/// read as a number (or a numeric string) and the data decoded from the JSON text in place.
///
/// The time keeps its milliseconds: `1545084650.98` is 980 ms past the second, where the
/// derived parse reads the digits after the point as a count of milliseconds (98 ms; `.0004`
/// as 4 ms) and fails when they come to 2,000 or more (`.9876`). A missing or null time is 0
/// (the arrival time is read only as a fallback for an event's own `timestamp`). Anything else
/// is as the derived parse has it: the same fields, defaults and errors, unknown fields
/// ignored.
///
/// Every field of `aws_lambda_events` 1.2's record is copied: a field a later release adds
/// must be added here (the type is `non_exhaustive`, so the compiler will not say so).
pub(crate) fn parse_record(json: &str) -> Result<KinesisEventRecord, serde_json::Error> {
    serde_json::from_str(json).map(from_wire)
}

/// The record from its wire shape.
pub(crate) fn from_wire(wire: Wire) -> KinesisEventRecord {
    let mut record = KinesisEventRecord::default();
    record.aws_region = wire.aws_region;
    record.event_id = wire.event_id;
    record.event_name = wire.event_name;
    record.event_source = wire.event_source;
    record.event_source_arn = wire.event_source_arn;
    record.event_version = wire.event_version;
    record.invoke_identity_arn = wire.invoke_identity_arn;
    let k = &mut record.kinesis;
    k.approximate_arrival_timestamp = SecondTimestamp(wire.kinesis.approximate_arrival_timestamp);
    *k.data = wire.kinesis.data;
    k.encryption_type = wire.kinesis.encryption_type;
    k.partition_key = wire.kinesis.partition_key;
    k.sequence_number = wire.kinesis.sequence_number;
    k.kinesis_schema_version = wire.kinesis.kinesis_schema_version;
    record
}

/// A Kinesis record as Lambda delivers it.
pub(crate) type Wire = wire::KinesisEventRecord;

mod wire {
    use std::fmt;

    use aws_lambda_events::event::kinesis::KinesisEncryptionType;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use chrono::{DateTime, Utc};
    use serde::Deserialize;
    use serde::de::{self, Deserializer, Visitor};

    // named as `aws_lambda_events` names its types: serde's errors quote the struct's name
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct KinesisEventRecord {
        #[serde(default)]
        pub aws_region: Option<String>,
        #[serde(default, rename = "eventID")]
        pub event_id: Option<String>,
        #[serde(default)]
        pub event_name: Option<String>,
        #[serde(default)]
        pub event_source: Option<String>,
        #[serde(default, rename = "eventSourceARN")]
        pub event_source_arn: Option<String>,
        #[serde(default)]
        pub event_version: Option<String>,
        #[serde(default)]
        pub invoke_identity_arn: Option<String>,
        pub kinesis: KinesisRecord,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct KinesisRecord {
        #[serde(default, deserialize_with = "seconds")]
        pub approximate_arrival_timestamp: DateTime<Utc>,
        #[serde(deserialize_with = "base64")]
        pub data: Vec<u8>,
        #[serde(default)]
        pub encryption_type: KinesisEncryptionType,
        #[serde(default)]
        pub partition_key: String,
        #[serde(default)]
        pub sequence_number: String,
        #[serde(default)]
        pub kinesis_schema_version: Option<String>,
    }

    /// Base64 decoded from the JSON text as the parser hands it over, never copied to a `String`.
    fn base64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Base64;
        impl Visitor<'_> for Base64 {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
                STANDARD.decode(v).map_err(E::custom)
            }
        }
        d.deserialize_str(Base64)
    }

    /// Epoch seconds, a number or a numeric string, to the millisecond.
    fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        struct Seconds;
        impl<'de> Visitor<'de> for Seconds {
            type Value = f64;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("epoch seconds")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
                Ok(v)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
                Ok(v as f64)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
                Ok(v as f64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
                v.parse().map_err(E::custom)
            }
            // null is no time, as a missing one is
            fn visit_unit<E: de::Error>(self) -> Result<f64, E> {
                Ok(0.0)
            }
        }
        let seconds = d.deserialize_any(Seconds)?;
        let millis = (seconds * 1000.0).round();
        // negative, non-finite or past chrono's range: no time, as the derived parse has it
        (millis >= 0.0 && millis < i64::MAX as f64)
            .then(|| DateTime::from_timestamp_millis(millis as i64))
            .flatten()
            .ok_or_else(|| de::Error::custom("invalid timestamp"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn derived(json: &str) -> Result<KinesisEventRecord, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn a_record_parses_as_the_derived_parse_has_it() {
        let records = [
            // as Kinesis writes it
            r#"{"kinesis":{"kinesisSchemaVersion":"1.0","partitionKey":"k1",
                "sequenceNumber":"4959","data":"eyJ0eXBlIjoidCJ9",
                "approximateArrivalTimestamp":1545084650.987},
                "eventSource":"aws:kinesis","eventVersion":"1.0",
                "eventID":"shardId-000000000006:4959","eventName":"aws:kinesis:record",
                "invokeIdentityArn":"arn:aws:iam::1:role/r","awsRegion":"us-east-2",
                "eventSourceARN":"arn:aws:kinesis:us-east-2:1:stream/s"}"#,
            // encrypted, a whole-second time, unknown fields, an escaped slash in the data
            r#"{"kinesis":{"partitionKey":"k","sequenceNumber":"1","data":"YWJj\/w==",
                "approximateArrivalTimestamp":1545084650,"encryptionType":"KMS","x":[1]},
                "eventID":"e","other":{"a":null}}"#,
            // a numeric string time, nulls for the optional fields, no sequence number
            r#"{"kinesis":{"data":"","approximateArrivalTimestamp":"1545084650.123",
                "kinesisSchemaVersion":null},"awsRegion":null}"#,
        ];
        for json in records {
            assert_eq!(
                parse_record(json).unwrap(),
                derived(json).unwrap(),
                "{json}"
            );
        }
    }

    #[test]
    fn the_time_keeps_its_milliseconds_and_defaults_to_zero() {
        let time = |t: &str| {
            let json = format!(r#"{{"kinesis":{{"data":""{t}}}}}"#);
            parse_record(&json).map(|r| r.kinesis.approximate_arrival_timestamp.timestamp_millis())
        };
        // JSON drops the trailing zero of .980; the derived parse reads 98 ms
        assert_eq!(
            time(r#","approximateArrivalTimestamp":1545084650.98"#).unwrap(),
            1545084650980
        );
        assert_eq!(time(r#","approximateArrivalTimestamp":1.5"#).unwrap(), 1500);
        // more than three digits: the derived parse fails the record
        assert_eq!(
            time(r#","approximateArrivalTimestamp":1.0004"#).unwrap(),
            1000
        );
        assert_eq!(time("").unwrap(), 0);
        for bad in [
            r#","approximateArrivalTimestamp":-1"#,
            r#","approximateArrivalTimestamp":"x""#,
            r#","approximateArrivalTimestamp":1e300"#,
            r#","approximateArrivalTimestamp":true"#,
        ] {
            assert!(time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn what_the_derived_parse_rejects_is_rejected_with_its_reason() {
        for json in [
            r#"{"kinesis":{"data":"%%%","approximateArrivalTimestamp":1}}"#,
            r#"{"kinesis":{"approximateArrivalTimestamp":1}}"#,
            r#"{"eventID":"e"}"#,
            r#"{"kinesis":{"data":"","approximateArrivalTimestamp":1,"encryptionType":"AES"}}"#,
            r#"{"kinesis":{"data":7,"approximateArrivalTimestamp":1}}"#,
            r#"{"kinesis":{"data":"","partitionKey":null,"approximateArrivalTimestamp":1}}"#,
            r#"[1]"#,
            r#"{"kinesis":5}"#,
            r#""x""#,
        ] {
            let ours = parse_record(json).unwrap_err().to_string();
            let theirs = derived(json).unwrap_err().to_string();
            // the same message; the column may differ where the derived parse buffered
            let message = |s: &str| s.split(" at line").next().unwrap_or_default().to_owned();
            assert_eq!(message(&ours), message(&theirs), "{json}");
        }
    }
}
