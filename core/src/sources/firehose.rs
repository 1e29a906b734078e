use std::sync::Arc;

use aws_lambda_events::event::firehose::{KinesisFirehoseEvent, KinesisFirehoseEventRecord};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::{Decoded, Lenient, Records, Relaxed, SourceRecord, default_field, parse_event};

/// A Kinesis Data Firehose transformation event, parsed record by record (see [`Lenient`]): a
/// malformed record (its data not base64, say) is a fault of its own, answered
/// `ProcessingFailed`, and the others go on.
///
/// ```
/// use lambda_stream::sources::{FirehoseRecords, Lenient};
///
/// let json = r#"{"invocationId":"i1","deliveryStreamArn":"arn:aws:firehose:us-east-1:1:deliverystream/s",
///   "region":"us-east-1","records":[{"recordId":"r1","approximateArrivalTimestamp":1,"data":"%%%"}]}"#;
/// let batch: FirehoseRecords = serde_json::from_str(json).unwrap(); // the event still parses
/// assert!(matches!(batch.records[0], Lenient::Malformed { .. }));
/// assert_eq!(batch.invocation_id.as_deref(), Some("i1"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct FirehoseRecords {
    /// The invocation's id.
    pub invocation_id: Option<String>,
    /// The ARN of the delivery stream.
    pub delivery_stream_arn: Option<String>,
    /// The delivery stream's region.
    pub region: Option<String>,
    /// The records, in delivery order.
    pub records: Vec<Lenient<KinesisFirehoseEventRecord>>,
}

impl<'de> Deserialize<'de> for FirehoseRecords {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire {
            #[serde(default)]
            invocation_id: Option<String>,
            #[serde(default)]
            delivery_stream_arn: Option<String>,
            #[serde(default)]
            region: Option<String>,
            #[serde(default)]
            records: Vec<Lenient<KinesisFirehoseEventRecord>>,
        }
        let w = Wire::deserialize(d)?;
        Ok(FirehoseRecords {
            invocation_id: w.invocation_id,
            delivery_stream_arn: w.delivery_stream_arn,
            region: w.region,
            records: w.records,
        })
    }
}

impl From<KinesisFirehoseEvent> for FirehoseRecords {
    fn from(e: KinesisFirehoseEvent) -> Self {
        FirehoseRecords {
            invocation_id: e.invocation_id,
            delivery_stream_arn: e.delivery_stream_arn,
            region: e.region,
            records: e.records.into_iter().map(Lenient::Parsed).collect(),
        }
    }
}

impl Relaxed for KinesisFirehoseEventRecord {
    fn relax(record: &mut serde_json::Map<String, Value>) {
        // times only fill in an event's missing timestamp (aws-lambda-stream's
        // toFirehoseRecords leaves the arrival time out)
        default_field(record, "approximateArrivalTimestamp", Value::from(0));
        if let Some(Value::Object(m)) = record.get_mut("kinesisRecordMetadata") {
            default_field(m, "approximateArrivalTimestamp", Value::from(0));
            default_field(m, "subsequenceNumber", Value::from(0));
        }
    }
}

/// Decodes a Kinesis Data Firehose transformation event: each record's base64 `data` is an
/// [`Event`](crate::Event) in JSON (compressed fields restored, claim checks redeemed and
/// encrypted fields decrypted as for the other sources).
///
/// The event's `id` defaults to the `recordId` and its `timestamp` to the arrival time; values
/// in the data win. With a Kinesis stream as the delivery stream's source, the stream's
/// partition key orders an event that has no `partitionKey`. A record whose data is not base64,
/// not JSON or has no `type` is a [`DecodeError`](crate::DecodeError) naming its `recordId`:
/// it is answered `ProcessingFailed` and its fault event published.
///
/// ```
/// use lambda_stream::{Event, sources::from_firehose, testing::to_firehose_records};
///
/// let decoded = from_firehose(to_firehose_records(&[Event::new("", "thing-created", 0)]));
/// let event = decoded.units()[0].event();
/// assert_eq!((event.id.as_str(), event.event_type.as_str()), ("0", "thing-created"));
/// ```
pub fn from_firehose(batch: impl Into<FirehoseRecords>) -> Decoded {
    let batch = batch.into();
    Decoded::each(
        "from_firehose",
        <super::Firehose as super::Source>::REDELIVERY,
        super::Payload::Events,
        Records {
            records: batch.records,
        },
        |out, record| {
            let arrival = record.approximate_arrival_timestamp.timestamp_millis();
            let id = record.record_id.as_deref().unwrap_or_default();
            let parsed = parse_event(&record.data.0, id, arrival);
            let (index, record) = out.push_record(SourceRecord::Firehose(record));
            match parsed {
                Ok(event) => out.unit(
                    index,
                    Arc::clone(&record),
                    event,
                    || match &*record {
                        SourceRecord::Firehose(r) => r
                            .kinesis_firehose_record_metadata
                            .as_ref()?
                            .partition_key
                            .clone(),
                        _ => None,
                    },
                    false,
                ),
                Err(reason) => out.fail_record(index, format!("data: {reason}")),
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::BatchError;
    use crate::outcome::{Outcome, Transformed};
    use crate::response::Outcomes;
    use crate::testing::to_firehose_records;
    use crate::{Event, sources::Lenient};
    use base64::Engine;
    use serde_json::json;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn records_decode_with_the_record_id_and_arrival_as_defaults() {
        let own = Event::new("own", "thing-updated", 42).with_partition_key("t1");
        let decoded = from_firehose(to_firehose_records(&[
            Event::new("", "thing-created", 0),
            own,
        ]));
        assert!(decoded.failures().is_empty());
        assert_eq!(decoded.source(), "from_firehose");
        let (a, b) = (&decoded.units()[0], &decoded.units()[1]);
        assert_eq!(a.event().id, "0");
        assert_eq!(a.event().timestamp, 1_700_000_000_000);
        assert_eq!(a.partition_key(), None);
        assert_eq!((b.event().id.as_str(), b.event().timestamp), ("own", 42));
        assert_eq!((b.partition_key(), b.position()), (Some("t1"), 1));
        assert_eq!(a.record().item_identifier(), Some("0"));
        assert_eq!(a.record().arrival_millis(), Some(1_700_000_000_000));
    }

    #[test]
    fn a_kinesis_partition_key_orders_an_event_without_one() {
        let event = json!({
            "invocationId": "i", "records": [{
                "recordId": "r0", "approximateArrivalTimestamp": 1,
                "data": b64(br#"{"type":"t"}"#),
                "kinesisRecordMetadata": {"shardId": "s", "partitionKey": "k1",
                    "sequenceNumber": "1", "approximateArrivalTimestamp": 1}
            }]
        });
        let decoded = from_firehose(serde_json::from_value::<FirehoseRecords>(event).unwrap());
        assert_eq!(decoded.units()[0].partition_key(), Some("k1"));
    }

    #[test]
    fn records_from_other_tools_without_arrival_times_decode() {
        // aws-lambda-stream's toFirehoseRecords leaves approximateArrivalTimestamp out
        let event = json!({"invocationId": "invocationIdExample",
            "deliveryStreamArn": "arn:aws:kinesis:TEST", "region": "us-west-2",
            "records": [{"recordId": "0", "data": b64(br#"{"id":"1","type":"t1","partitionKey":"1"}"#)}]});
        let batch: FirehoseRecords = serde_json::from_value(event).unwrap();
        assert!(matches!(batch.records[0], Lenient::Parsed(_)));
        let decoded = from_firehose(batch);
        assert_eq!(
            decoded.units()[0].event().partition_key.as_deref(),
            Some("1")
        );
    }

    #[test]
    fn bad_records_fail_alone_and_are_named_by_record_id() {
        let good = b64(br#"{"type":"t"}"#);
        let event = json!({"records": [
            {"recordId": "r0", "approximateArrivalTimestamp": 1, "data": good},
            {"recordId": "r1", "approximateArrivalTimestamp": 1, "data": "%%%not base64"},
            {"recordId": "r2", "approximateArrivalTimestamp": 1, "data": b64(b"not json")},
            {"recordId": "r3", "approximateArrivalTimestamp": 1, "data": b64(br#"{"id":"x"}"#)},
            {"recordId": "r4", "approximateArrivalTimestamp": 1, "data": b64(br#"{"type":"t","big":"COMPRESSED%%"}"#)},
            {"recordId": "r5", "approximateArrivalTimestamp": 1, "data": good},
        ]});
        let decoded = from_firehose(serde_json::from_value::<FirehoseRecords>(event).unwrap());
        assert_eq!(decoded.units().len(), 2);
        let failures: Vec<(u32, &str, &str)> = decoded
            .failures()
            .iter()
            .map(|(p, e)| (*p, e.record.as_str(), e.reason.as_str()))
            .collect();
        assert_eq!(failures.len(), 4);
        assert_eq!((failures[0].0, failures[0].1), (1, "r1"));
        assert!(
            failures[0].2.starts_with("not a valid record"),
            "{}",
            failures[0].2
        );
        assert!(
            failures[1].2.contains("payload is not JSON"),
            "{}",
            failures[1].2
        );
        assert!(
            failures[2].2.contains("payload is not an event"),
            "{}",
            failures[2].2
        );
        assert!(failures[3].2.contains("not base64"), "{}", failures[3].2);
        assert_eq!(
            failures.iter().map(|f| f.1).collect::<Vec<_>>(),
            ["r1", "r2", "r3", "r4"]
        );
        // a malformed record is still answerable by its id
        assert_eq!(decoded.records()[1].item_identifier(), Some("r1"));
    }

    #[test]
    fn compressed_fields_are_restored() {
        let mut value = json!({"type": "t", "thing": {"notes": "n".repeat(20_000)}});
        assert!(crate::compression::compress_value(&mut value, 1024));
        let data = serde_json::to_vec(&value).unwrap();
        let event = json!({"records": [{"recordId": "r0", "approximateArrivalTimestamp": 1, "data": b64(&data)}]});
        let decoded = from_firehose(serde_json::from_value::<FirehoseRecords>(event).unwrap());
        let thing = decoded.units()[0].event().entity("thing").unwrap();
        assert_eq!(thing["notes"].as_str().unwrap().len(), 20_000);
    }

    fn outcomes(outcomes: Vec<Outcome>, answers: Vec<Option<Transformed>>) -> Outcomes {
        let events: Vec<Event> = (0..outcomes.len())
            .map(|i| Event::new(format!("e{i}"), "t", 1))
            .collect();
        Outcomes {
            outcomes,
            records: from_firehose(to_firehose_records(&events)).records,
            answers,
        }
    }

    #[test]
    fn the_answer_is_ok_dropped_or_processing_failed_per_record() {
        let answer =
            Transformed::new(b"{\"ID\":\"e0\"}".to_vec()).with_partition_key("table", "T1");
        let out = outcomes(
            vec![
                Outcome::Done,
                Outcome::Done,
                Outcome::Faulted,
                Outcome::Faulted,
            ],
            vec![
                Some(answer.clone()),
                None,
                None,
                Some(Transformed::new(b"x".to_vec())),
            ],
        );
        let original = |i: usize| match &*out.records[i] {
            SourceRecord::Firehose(r) => r.data.0.clone(),
            _ => unreachable!(),
        };
        let originals = [original(1), original(2), original(3)];
        let response = out.firehose_response().unwrap();
        let rows: Vec<(&str, &str, &[u8])> = response
            .records
            .iter()
            .map(|r| {
                (
                    r.record_id.as_deref().unwrap(),
                    r.result.as_deref().unwrap(),
                    r.data.0.as_slice(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("0", "Ok", answer.data.as_slice()),
                ("1", "Dropped", originals[0].as_slice()),
                ("2", "ProcessingFailed", originals[1].as_slice()),
                // an answer given before a later step faulted the record does not count
                ("3", "ProcessingFailed", originals[2].as_slice()),
            ]
        );
        assert_eq!(response.records[0].metadata.partition_keys["table"], "T1");
        assert!(response.records[1].metadata.partition_keys.is_empty());
        // the wire format Firehose reads
        let wire = serde_json::to_value(&response).unwrap();
        assert_eq!(
            wire["records"][0],
            json!({"recordId": "0", "result": "Ok", "data": b64(&answer.data),
                "metadata": {"partitionKeys": {"table": "T1"}}})
        );
    }

    #[test]
    fn no_answers_at_all_drops_every_done_record() {
        let response = outcomes(vec![Outcome::Done; 3], Vec::new())
            .firehose_response()
            .unwrap();
        assert!(
            response
                .records
                .iter()
                .all(|r| r.result.as_deref() == Some("Dropped"))
        );
    }

    #[test]
    fn a_record_to_retry_fails_the_invocation() {
        let out = outcomes(
            vec![
                Outcome::Done,
                Outcome::Retry,
                Outcome::Faulted,
                Outcome::Retry,
            ],
            Vec::new(),
        );
        assert_eq!(out.firehose_response().unwrap_err(), BatchError::Retry(2));
    }

    #[test]
    fn a_record_without_an_id_cannot_be_answered() {
        let event = json!({"records": [
            {"recordId": "r0", "approximateArrivalTimestamp": 1, "data": b64(br#"{"type":"t"}"#)},
            {"approximateArrivalTimestamp": 1, "data": b64(br#"{"type":"t"}"#)},
        ]});
        let decoded = from_firehose(serde_json::from_value::<FirehoseRecords>(event).unwrap());
        let out = Outcomes {
            outcomes: vec![Outcome::Done; 2],
            records: decoded.records,
            answers: Vec::new(),
        };
        assert_eq!(
            out.firehose_response().unwrap_err(),
            BatchError::Unidentifiable(1)
        );
    }
}
