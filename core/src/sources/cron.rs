use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::eventbridge::{envelope, push_eventbridge};
use super::{Decoded, SourceRecord, name_based_id};
use crate::event::Event;

/// The type of a constant input that has none, as of the envelope a schedule sends
/// (`flavors::SCHEDULED_EVENT`).
const SCHEDULED_EVENT: &str = "Scheduled Event";

/// A minute, in milliseconds: the granularity of a schedule.
const MINUTE_MS: i64 = 60_000;

/// Decodes the event of an EventBridge schedule: one unit of work, in either shape a schedule
/// delivers.
///
/// - The standard envelope (`detail-type: Scheduled Event`, `source: aws.events`,
///   `resources: [rule arn]`, `detail: {}`) is decoded as [`from_eventbridge`](super::from_eventbridge)
///   decodes it: an event of type `Scheduled Event`, its id the envelope's, its timestamp the
///   envelope's `time`.
/// - A rule's constant input (the JSON object itself, e.g. `{"type":"job-run", ...}`) is the
///   event, passed through as aws-lambda-stream's `fromCron` does, compressed fields restored.
///   What it lacks is filled in: `type` with `Scheduled Event`, `timestamp` with the minute
///   the schedule fired (now, to the minute, as the envelope's `time` is), and `id` with one
///   derived from the input and that timestamp: the same for the same input in the same
///   minute (a replay, a test), another for the next run, so an idempotency guard does not
///   take every run for the first.
///
/// Input that is not a JSON object, or an envelope that does not parse, is a
/// [`DecodeError`](crate::DecodeError): a fault, never a panic.
///
/// ```
/// use lambda_stream::sources::from_cron;
/// use serde_json::json;
///
/// // the envelope
/// let decoded = from_cron(lambda_stream::testing::to_scheduled_event("nightly"));
/// assert_eq!(decoded.units()[0].event().event_type, "Scheduled Event");
/// // a constant input
/// let decoded = from_cron(json!({"type": "job-run", "timestamp": 1, "job": {"name": "purge"}}));
/// let event = decoded.units()[0].event();
/// assert_eq!(event.event_type, "job-run");
/// assert_eq!(event.entity("job").unwrap()["name"], "purge");
/// assert!(!event.id.is_empty());
/// ```
pub fn from_cron(event: Value) -> Decoded {
    from_cron_at(event, now_millis())
}

/// [`from_cron`], as if the schedule fired at `now` (epoch ms).
fn from_cron_at(event: Value, now: i64) -> Decoded {
    let mut out = Decoded::with_capacity(
        "from_cron",
        <super::Cron as super::Source>::REDELIVERY,
        super::Payload::Events,
        1,
    );
    match envelope(&event) {
        Some(Ok(record)) => push_eventbridge(&mut out, record),
        Some(Err(reason)) => fail(&mut out, event, reason),
        None => match constant_input(&event, now) {
            Ok(parsed) => {
                let (index, record) = out.push_record(SourceRecord::Direct(event));
                out.unit(index, record, parsed, || None, false);
            }
            Err(reason) => fail(&mut out, event, reason),
        },
    }
    out
}

fn fail(out: &mut Decoded, event: Value, reason: String) {
    let (index, _) = out.push_record(SourceRecord::Direct(event));
    out.fail_record(index, reason);
}

/// A schedule's constant input as the event (see [`from_cron`]).
fn constant_input(input: &Value, now: i64) -> Result<Event, String> {
    let Value::Object(map) = input else {
        return Err(format!(
            "a schedule's constant input must be a JSON object, not {}",
            kind(input)
        ));
    };
    let mut fields = map.clone();
    for v in fields.values_mut() {
        crate::compression::decompress_value(v)?;
    }
    if fields
        .get("type")
        .is_none_or(|t| t.is_null() || t.as_str() == Some(""))
    {
        fields.insert("type".into(), Value::from(SCHEDULED_EVENT));
    }
    let mut event: Event = serde_json::from_value(Value::Object(fields))
        .map_err(|e| format!("constant input is not an event: {e}"))?;
    if event.timestamp == 0 {
        event.timestamp = now - now.rem_euclid(MINUTE_MS);
    }
    if event.id.is_empty() {
        let json = serde_json::to_vec(input).map_err(|e| e.to_string())?;
        event.id = name_based_id(&[b"cron", &json, &event.timestamp.to_be_bytes()]);
    }
    Ok(event)
}

/// What JSON `value` is, for a reason (never the value itself: it is untrusted input).
pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::to_scheduled_event;
    use serde_json::json;

    const NOW: i64 = 1_722_816_045_123; // 2024-08-05T00:00:45.123Z

    #[test]
    fn the_envelope_is_decoded_as_eventbridge_decodes_it() {
        let decoded = from_cron_at(to_scheduled_event("nightly"), NOW);
        assert!(decoded.failures().is_empty());
        assert_eq!(decoded.source(), "from_cron");
        let unit = &decoded.units()[0];
        let event = unit.event();
        assert_eq!(event.event_type, SCHEDULED_EVENT);
        assert_eq!(event.id, "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa");
        assert_eq!(event.timestamp, 1_722_816_000_000); // the envelope's time, not now
        assert!(matches!(unit.record(), SourceRecord::EventBridge(_)));
        // the same as the EventBridge source makes of it
        let eb: aws_lambda_events::event::eventbridge::EventBridgeEvent<Value> =
            serde_json::from_value(to_scheduled_event("nightly")).unwrap();
        let same = super::super::from_eventbridge(eb);
        assert_eq!(same.units()[0].event(), event);
    }

    #[test]
    fn a_constant_input_is_the_event_with_defaults_filled_in() {
        let input = json!({"type": "job-run", "job": {"name": "purge"}, "partitionKey": "jobs"});
        let decoded = from_cron_at(input.clone(), NOW);
        assert!(decoded.failures().is_empty());
        let unit = &decoded.units()[0];
        let event = unit.event();
        assert_eq!(event.event_type, "job-run");
        assert_eq!(event.entity("job").unwrap(), &json!({"name": "purge"}));
        assert_eq!(unit.partition_key(), Some("jobs"));
        // the minute the schedule fired
        assert_eq!(event.timestamp, 1_722_816_000_000);
        // kept as it arrived, for a fault
        assert_eq!(unit.record().to_json(), input);
        // deterministic: the same input in the same minute, the same id; the next run another
        let again = from_cron_at(input.clone(), NOW + 10_000);
        assert_eq!(again.units()[0].event().id, event.id);
        let next = from_cron_at(input, NOW + MINUTE_MS);
        assert_ne!(next.units()[0].event().id, event.id);
        assert_eq!(event.id.len(), 36, "{}", event.id);
    }

    #[test]
    fn what_the_input_says_wins() {
        let input = json!({"id": "run-1", "type": "job-run", "timestamp": 42});
        let decoded = from_cron_at(input, NOW);
        let event = decoded.units()[0].event();
        assert_eq!((event.id.as_str(), event.timestamp), ("run-1", 42));
    }

    #[test]
    fn an_input_without_a_type_is_a_scheduled_event() {
        for input in [
            json!({}),
            json!({"type": ""}),
            json!({"type": null, "n": 1}),
        ] {
            let decoded = from_cron_at(input, NOW);
            assert_eq!(decoded.units()[0].event().event_type, SCHEDULED_EVENT);
        }
    }

    #[test]
    fn compressed_fields_are_restored() {
        let mut input = json!({"type": "job-run", "big": {"notes": "n".repeat(20_000)}});
        assert!(crate::compression::compress_value(&mut input, 1024));
        assert!(input["big"].as_str().unwrap().starts_with("COMPRESSED"));
        let decoded = from_cron_at(input, NOW);
        let event = decoded.units()[0].event();
        assert_eq!(
            event.entity("big").unwrap()["notes"]
                .as_str()
                .unwrap()
                .len(),
            20_000
        );
    }

    #[test]
    fn malformed_input_is_a_fault_with_a_reason() {
        let cases = [
            (json!("hello"), "must be a JSON object, not a string"),
            (json!([1, 2]), "must be a JSON object, not an array"),
            (json!({"type": 7}), "constant input is not an event"),
            (
                json!({"type": "t", "timestamp": "soon"}),
                "constant input is not an event",
            ),
            (json!({"type": "t", "big": "COMPRESSED%%%"}), "not base64"),
            (
                json!({"detail-type": "Scheduled Event", "source": "aws.events"}),
                "not an EventBridge event: missing field `detail`",
            ),
        ];
        for (input, reason) in cases {
            let decoded = from_cron_at(input.clone(), NOW);
            assert!(decoded.units().is_empty(), "{input}");
            let (position, err) = &decoded.failures()[0];
            assert_eq!(*position, 0);
            assert!(err.reason.contains(reason), "{input}: {}", err.reason);
            assert_eq!(decoded.records()[0].to_json(), input);
        }
    }

    #[test]
    fn a_long_input_is_quoted_briefly() {
        let input = json!({"type": 1, "pad": "x".repeat(5_000)});
        let decoded = from_cron_at(input, NOW);
        assert!(decoded.failures()[0].1.reason.len() <= 300);
    }
}
