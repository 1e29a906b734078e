use serde_json::{Map, Value};

use super::cron::kind;
use super::eventbridge::{envelope, push_eventbridge};
use super::{Decoded, SourceRecord, name_based_id};
use crate::event::Event;
use crate::record::parse_time;

/// The type of the event (`flavors::ALARM_STATE_CHANGE`): what the same change is called on
/// EventBridge.
const ALARM_STATE_CHANGE: &str = "CloudWatch Alarm State Change";

/// Decodes the event of a CloudWatch alarm whose action invokes the function directly
/// (`{"source": "aws.cloudwatch", "alarmArn", "accountId", "time", "region", "alarmData":
/// {...}}`) into one event of type `CloudWatch Alarm State Change` whose fields are those of
/// `alarmData` (`alarmName`, `state`, `previousState`, `configuration`): the fields the same
/// change has in its `detail` on EventBridge, so a pipeline (say
/// [`CircuitBreakerRule`](crate::flavors::CircuitBreakerRule)) works with either delivery. An
/// EventBridge envelope (the change through a bus rule) is decoded as
/// [`from_eventbridge`](super::from_eventbridge) decodes it.
///
/// The `timestamp` is the invocation's `time` (else the new state's); the `id` is derived from
/// the alarm's ARN and its new state's value and timestamp, so the same change delivered twice
/// has the same id.
///
/// A payload without a string `alarmData.alarmName` and `alarmData.state.value` (what a
/// pipeline reads) is a [`DecodeError`](crate::DecodeError) that says which is missing: a fault,
/// never a panic.
///
/// ```
/// use lambda_stream::{sources::from_alarm, testing::to_alarm_action};
///
/// let decoded = from_alarm(to_alarm_action("listener-stuck", "ALARM", "OK"));
/// let event = decoded.units()[0].event();
/// assert_eq!(event.event_type, "CloudWatch Alarm State Change");
/// assert_eq!(event.entity("alarmName").unwrap(), "listener-stuck");
/// assert_eq!(event.entity("state").unwrap()["value"], "ALARM");
/// assert_eq!(event.entity("previousState").unwrap()["value"], "OK");
/// ```
pub fn from_alarm(event: Value) -> Decoded {
    let mut out = Decoded::with_capacity(
        "from_alarm",
        <super::Alarm as super::Source>::REDELIVERY,
        super::Payload::Notifications,
        1,
    );
    let parsed = match envelope(&event) {
        Some(Ok(record)) => {
            push_eventbridge(&mut out, record);
            return out;
        }
        Some(Err(reason)) => Err(reason),
        None => alarm_event(&event),
    };
    let (index, record) = out.push_record(SourceRecord::Direct(event));
    match parsed {
        Ok(event) => out.unit(index, record, event, || None, false),
        Err(reason) => out.fail_record(index, reason),
    }
    out
}

/// A non-empty string, if `v` is one.
fn text(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// The alarm's state change as an event (see [`from_alarm`]).
fn alarm_event(payload: &Value) -> Result<Event, String> {
    let Value::Object(payload) = payload else {
        return Err(format!(
            "a CloudWatch alarm's event must be a JSON object, not {}",
            kind(payload)
        ));
    };
    match payload.get("source") {
        None => {}
        Some(Value::String(s)) if s == "aws.cloudwatch" => {}
        Some(other) => {
            return Err(format!(
                "not a CloudWatch alarm: `source` is {other}, not \"aws.cloudwatch\""
            ));
        }
    }
    let data = match payload.get("alarmData") {
        Some(Value::Object(data)) => data,
        Some(other) => {
            return Err(format!(
                "not a CloudWatch alarm: `alarmData` is {}, not an object",
                kind(other)
            ));
        }
        None => return Err("not a CloudWatch alarm: it has no `alarmData`".into()),
    };
    let name = text(data.get("alarmName"))
        .ok_or("malformed alarm: `alarmData.alarmName` is missing or not a string")?;
    let state = data.get("state");
    let value = text(state.and_then(|s| s.get("value")))
        .ok_or("malformed alarm: `alarmData.state.value` is missing or not a string")?;
    let changed = text(state.and_then(|s| s.get("timestamp")));
    let arn = text(payload.get("alarmArn")).unwrap_or(name);
    let id = name_based_id(&[
        b"alarm",
        arn.as_bytes(),
        value.as_bytes(),
        changed.unwrap_or_default().as_bytes(),
    ]);
    let timestamp = text(payload.get("time"))
        .and_then(parse_time)
        .or_else(|| changed.and_then(parse_time))
        .unwrap_or(0);
    // as the EventBridge source reads the same change's `detail`
    let mut fields: Map<String, Value> = data.clone();
    fields
        .entry("type")
        .or_insert_with(|| Value::from(ALARM_STATE_CHANGE));
    let mut event: Event = serde_json::from_value(Value::Object(fields))
        .map_err(|e| format!("malformed alarm: `alarmData` is not an event: {e}"))?;
    if event.id.is_empty() {
        event.id = id;
    }
    if event.timestamp == 0 {
        event.timestamp = timestamp;
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::to_alarm_action;
    use serde_json::json;

    /// The example of the CloudWatch documentation ("Lambda alarm actions").
    fn documented() -> Value {
        json!({
            "source": "aws.cloudwatch",
            "alarmArn": "arn:aws:cloudwatch:us-east-1:444455556666:alarm:lambda-demo-metric-alarm",
            "accountId": "444455556666",
            "time": "2023-08-04T12:36:15.490+0000",
            "region": "us-east-1",
            "alarmData": {
                "alarmName": "lambda-demo-metric-alarm",
                "state": {
                    "value": "ALARM",
                    "reason": "test",
                    "timestamp": "2023-08-04T12:36:15.490+0000"
                },
                "previousState": {
                    "value": "INSUFFICIENT_DATA",
                    "reason": "Insufficient Data: 5 datapoints were unknown.",
                    "reasonData": "{\"version\":\"1.0\",\"queryDate\":\"2023-08-04T12:31:29.591+0000\",\"statistic\":\"Average\",\"period\":60,\"recentDatapoints\":[],\"threshold\":0.0,\"evaluatedDatapoints\":[]}",
                    "timestamp": "2023-08-04T12:31:29.595+0000"
                },
                "configuration": {
                    "description": "Metric Alarm to test Lambda actions",
                    "metrics": [{
                        "id": "1234e046-06f0-a3da-9534-EXAMPLEe4c",
                        "metricStat": {
                            "metric": {
                                "namespace": "AWS/Logs",
                                "name": "CallCount",
                                "dimensions": {"InstanceId": "i-12345678"}
                            },
                            "period": 60,
                            "stat": "Average",
                            "unit": "Percent"
                        },
                        "returnData": true
                    }]
                }
            }
        })
    }

    #[test]
    fn a_direct_alarm_is_the_change_eventbridge_would_deliver() {
        let payload = documented();
        let decoded = from_alarm(payload.clone());
        assert!(decoded.failures().is_empty());
        assert_eq!(decoded.source(), "from_alarm");
        let unit = &decoded.units()[0];
        let event = unit.event();
        assert_eq!(event.event_type, ALARM_STATE_CHANGE);
        assert_eq!(event.timestamp, 1_691_152_575_490);
        assert_eq!(event.id.len(), 36);
        assert!(event.partition_key.is_none() && event.tags.is_empty());
        // exactly alarmData's fields, as the EventBridge form has them in its detail
        let expected = payload["alarmData"].as_object().unwrap().clone();
        assert_eq!(event.fields, expected);
        assert_eq!(unit.record().to_json(), payload);
        assert_eq!(
            unit.record().name(),
            Some("arn:aws:cloudwatch:us-east-1:444455556666:alarm:lambda-demo-metric-alarm")
        );

        // the same change through a bus rule, decoded by the EventBridge source
        let bus = json!({
            "version": "0", "id": "c4c1c1c9-6542-e61b-6ef0-8c4d36933a92",
            "detail-type": "CloudWatch Alarm State Change", "source": "aws.cloudwatch",
            "account": "444455556666", "time": "2023-08-04T12:36:15Z", "region": "us-east-1",
            "resources": [payload["alarmArn"]], "detail": payload["alarmData"],
        });
        let eb = super::super::from_eventbridge(serde_json::from_value(bus.clone()).unwrap());
        let via_bus = eb.units()[0].event();
        assert_eq!(via_bus.event_type, event.event_type);
        assert_eq!(via_bus.fields, event.fields);
        // and this source takes that shape too
        let decoded = from_alarm(bus);
        assert_eq!(decoded.units()[0].event(), via_bus);
    }

    #[test]
    fn the_same_change_has_the_same_id_and_another_change_another() {
        let id = |p: Value| from_alarm(p).units()[0].event().id.clone();
        let a = id(to_alarm_action("a", "ALARM", "OK"));
        assert_eq!(a, id(to_alarm_action("a", "ALARM", "OK")));
        assert_ne!(a, id(to_alarm_action("a", "OK", "ALARM")));
        assert_ne!(a, id(to_alarm_action("b", "ALARM", "OK")));
    }

    #[test]
    fn time_falls_back_to_the_state_change_then_zero() {
        let mut p = documented();
        p["time"] = json!("not a time");
        assert_eq!(
            from_alarm(p.clone()).units()[0].event().timestamp,
            1_691_152_575_490
        );
        p["alarmData"]["state"]["timestamp"] = json!("2023-08-04T12:36:15Z");
        assert_eq!(
            from_alarm(p.clone()).units()[0].event().timestamp,
            1_691_152_575_000
        );
        p["alarmData"]["state"]
            .as_object_mut()
            .unwrap()
            .remove("timestamp");
        assert_eq!(from_alarm(p).units()[0].event().timestamp, 0);
    }

    #[test]
    fn malformed_alarms_are_faults_that_say_why() {
        let mut no_name = documented();
        no_name["alarmData"]
            .as_object_mut()
            .unwrap()
            .remove("alarmName");
        let mut no_state = documented();
        no_state["alarmData"]["state"] = json!("ALARM");
        let mut numeric = documented();
        numeric["alarmData"]["state"]["value"] = json!(1);
        let mut other = documented();
        other["source"] = json!("aws.ec2");
        let cases = [
            (json!(null), "must be a JSON object, not null"),
            (json!({"source": "aws.cloudwatch"}), "it has no `alarmData`"),
            (
                json!({"alarmData": [1]}),
                "`alarmData` is an array, not an object",
            ),
            (no_name, "`alarmData.alarmName` is missing or not a string"),
            (
                no_state,
                "`alarmData.state.value` is missing or not a string",
            ),
            (
                numeric,
                "`alarmData.state.value` is missing or not a string",
            ),
            (other, "`source` is \"aws.ec2\", not \"aws.cloudwatch\""),
            (
                json!({"alarmData": {"alarmName": "a", "state": {"value": "OK"}, "timestamp": "x"}}),
                "`alarmData` is not an event",
            ),
            (
                json!({"detail-type": "CloudWatch Alarm State Change", "detail": {}}),
                "not an EventBridge event: missing field `source`",
            ),
        ];
        for (payload, reason) in cases {
            let decoded = from_alarm(payload.clone());
            assert!(decoded.units().is_empty(), "{payload}");
            let err = &decoded.failures()[0].1;
            assert!(err.reason.contains(reason), "{payload}: {}", err.reason);
            assert_eq!(decoded.records()[0].to_json(), payload);
        }
    }

    #[test]
    fn a_huge_bad_source_is_quoted_briefly() {
        let mut p = documented();
        p["source"] = json!("x".repeat(10_000));
        let decoded = from_alarm(p);
        assert!(decoded.failures()[0].1.reason.len() <= 300);
    }
}
