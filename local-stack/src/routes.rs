//! Rule targets the emulator cannot deliver to: each rule's shadow queue is drained into the
//! real target, a Kinesis stream (`PutRecord`, partition key from `PartitionKeyPath`) or a
//! function (an asynchronous invocation), after applying the target's `InputPath`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::watch;

use crate::Error;
use crate::chaos::{Chaos, Kind};
use crate::mapping::Activity;
use crate::provision::Route;
use crate::runtime::{LocalFunction, invoke_async};

/// `$.a.b` → the value at `/a/b`.
///
/// ```
/// let e = serde_json::json!({"detail": {"partitionKey": "k"}});
/// assert_eq!(local_stack::routes::json_path(&e, "$.detail.partitionKey"), Some(&serde_json::json!("k")));
/// assert_eq!(local_stack::routes::json_path(&e, "$"), Some(&e));
/// ```
pub fn json_path<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    let rest = path.strip_prefix('$')?;
    if rest.is_empty() {
        return Some(value);
    }
    value.pointer(&rest.replace('.', "/"))
}

/// Drains one route's shadow queue until `stop` turns true; with `chaos`, records bound for
/// Kinesis are duplicated and reordered at its rate.
pub async fn drain(
    route: Route,
    kinesis: aws_sdk_kinesis::Client,
    sqs: aws_sdk_sqs::Client,
    functions: Arc<HashMap<String, Arc<LocalFunction>>>,
    activity: Arc<Activity>,
    chaos: Option<Arc<Chaos>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    let key = format!("route {}", route.name);
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let received = tokio::select! {
            r = sqs.receive_message().queue_url(&route.queue_url).max_number_of_messages(10).wait_time_seconds(1).send() => r,
            _ = stop.changed() => return Ok(()),
        };
        let messages = match received {
            Ok(out) => out.messages.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(route = %route.name, error = %Error::aws(e), "shadow queue receive failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // chaos: some records twice, the batch in another order (as a PutEvents retry with
        // several requests in flight, or EventBridge itself, may deliver them)
        let mut order: Vec<usize> = (0..messages.len()).collect();
        if let Some(chaos) = chaos
            .as_ref()
            .filter(|_| route.target_arn.contains(":kinesis:"))
        {
            let op = format!("route {}", route.name);
            let twice: Vec<usize> = order.iter().copied().filter(|_| chaos.roll()).collect();
            chaos.count(&op, Kind::Duplicated, twice.len() as u64);
            order.extend(twice);
            if chaos.roll() {
                let moved = chaos.shuffle(&mut order);
                chaos.count(&op, Kind::Reordered, moved as u64);
            }
        }
        let mut ok = vec![true; messages.len()];
        for i in order {
            let m = &messages[i];
            let event: Value =
                serde_json::from_str(m.body().unwrap_or_default()).unwrap_or(Value::Null);
            let input = route
                .input_path
                .as_deref()
                .and_then(|p| json_path(&event, p))
                .unwrap_or(&event);
            tracing::debug!(route = %route.name, %input, "delivering");
            let delivered = if route.target_arn.contains(":kinesis:") {
                let stream = route
                    .target_arn
                    .rsplit_once("stream/")
                    .map_or("", |(_, s)| s);
                let partition_key = route
                    .partition_key_path
                    .as_deref()
                    .and_then(|p| json_path(&event, p))
                    .and_then(|k| match k {
                        Value::String(s) => Some(s.clone()),
                        Value::Null => None,
                        other => Some(other.to_string()),
                    })
                    .unwrap_or_else(|| event["id"].as_str().unwrap_or("partition").to_owned());
                kinesis
                    .put_record()
                    .stream_name(stream)
                    .partition_key(partition_key)
                    .data(Blob::new(serde_json::to_vec(input)?))
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(Error::aws)
            } else if let Some(function) = functions.get(&route.target_arn) {
                // EventBridge hands the event over and moves on; retries are Lambda's
                let function = Arc::clone(function);
                let sqs = sqs.clone();
                let payload = Bytes::from(serde_json::to_vec(input)?);
                tokio::spawn(async move { invoke_async(&function, payload, &sqs).await });
                Ok(())
            } else {
                Err(Error::Other(format!(
                    "no local target for {}",
                    route.target_arn
                )))
            };
            match delivered {
                Ok(()) => activity.update(&key, |c| {
                    c.delivered += 1;
                    c.finished += 1;
                }),
                Err(e) => {
                    ok[i] = false;
                    activity.update(&key, |c| c.retried += 1);
                    tracing::warn!(route = %route.name, error = %e, "delivery failed; it comes back");
                }
            }
        }
        for (m, ok) in messages.iter().zip(ok) {
            let Some(handle) = m.receipt_handle() else {
                continue;
            };
            if ok {
                let _ = sqs
                    .delete_message()
                    .queue_url(&route.queue_url)
                    .receipt_handle(handle)
                    .send()
                    .await;
            } else {
                let _ = sqs
                    .change_message_visibility()
                    .queue_url(&route.queue_url)
                    .receipt_handle(handle)
                    .visibility_timeout(1)
                    .send()
                    .await;
            }
        }
    }
}
