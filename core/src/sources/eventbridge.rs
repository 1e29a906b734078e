use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use serde_json::Value;

use super::{Decoded, SourceRecord};
use crate::event::Event;

/// Decodes an EventBridge event: the `detail` is the [`Event`](crate::Event). `id` defaults to
/// the EventBridge id, `timestamp` to its time, and `type` to its `detail-type` when the detail
/// has none (so scheduled events get through as `Scheduled Event`).
///
/// ```
/// use lambda_stream::{Event, sources::from_eventbridge, testing::to_eventbridge_record};
///
/// let decoded = from_eventbridge(to_eventbridge_record(&Event::new("e1", "thing-created", 1)));
/// assert_eq!(decoded.units()[0].event().event_type, "thing-created");
/// ```
pub fn from_eventbridge(record: EventBridgeEvent<Value>) -> Decoded {
    let mut out = Decoded::with_capacity(
        "from_eventbridge",
        <super::EventBridge as super::Source>::REDELIVERY,
        super::Payload::Events,
        1,
    );
    push_eventbridge(&mut out, record);
    out
}

/// Adds an EventBridge event to `out`: its unit of work, or its decode failure. Sources that
/// may be handed an EventBridge envelope (a schedule's) decode it here, as this source does.
pub(super) fn push_eventbridge(out: &mut Decoded, record: EventBridgeEvent<Value>) {
    let parsed = decode(&record);
    let (index, record) = out.push_record(SourceRecord::EventBridge(record));
    match parsed {
        Ok(event) => out.unit(index, record, event, || None, false),
        Err(reason) => out.fail_record(index, reason),
    }
}

/// The JSON a function was invoked with, as an EventBridge event when it is one (it has a
/// `detail-type`); `Err` with the reason when it claims to be one and is malformed.
pub(super) fn envelope(value: &Value) -> Option<Result<EventBridgeEvent<Value>, String>> {
    value.get("detail-type")?;
    Some(
        serde::Deserialize::deserialize(value)
            .map_err(|e: serde_json::Error| format!("not an EventBridge event: {e}")),
    )
}

fn decode(record: &EventBridgeEvent<Value>) -> Result<Event, String> {
    let mut detail = match &record.detail {
        Value::Object(map) => map.clone(),
        other => return Err(format!("detail is not an object: {other}")),
    };
    for v in detail.values_mut() {
        crate::compression::decompress_value(v)?;
    }
    if !detail.contains_key("type") {
        detail.insert("type".into(), Value::from(record.detail_type.as_str()));
    }
    let mut event: Event = serde_json::from_value(Value::Object(detail))
        .map_err(|e| format!("detail is not an event: {e}"))?;
    if event.id.is_empty() {
        event.id = record.id.clone().unwrap_or_default();
    }
    if event.timestamp == 0 {
        event.timestamp = record.time.map(|t| t.timestamp_millis()).unwrap_or(0);
    }
    Ok(event)
}
