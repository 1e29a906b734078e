//! Chaos: faults injected between the functions and the emulator (by the [`proxy`](crate::proxy)),
//! and disorder on the way from the bus to Kinesis.
//!
//! At the given rate, and from a seed, the functions' writes are answered with the errors AWS
//! really returns for them:
//! - **throttled**: the write is not applied; the service's throttling error comes back;
//! - **lost response**: the write is applied, then a 500 comes back (the ambiguous case: a
//!   retry meets its own first attempt);
//! - **partial**: some entries of a batch write (`PutEvents`, `PutRecords`,
//!   `SendMessageBatch`) fail with the service's per-entry throttling error, the rest are
//!   applied.
//!
//! Reads, stream polling and queue receives pass untouched. The bus-to-Kinesis route, at the
//! same rate, duplicates records and reorders each batch it drains; and the stream mappings, at
//! the same rate, deliver again records that had succeeded, from a point inside the batch (as
//! Lambda does after a partial batch response). Everything injected is counted by operation
//! and kind.
//!
//! Apart from the rate, writes can be throttled for good ([`Chaos::always_throttle`]): a record
//! whose write always fails transiently, to show what attempt counts do with it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use http::StatusCode;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::http::{Reply, reply};

/// What was injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Not applied; a throttling error.
    Throttled,
    /// Applied; a 500 instead of the answer.
    LostResponse,
    /// Some entries of a batch failed, the others applied.
    Partial,
    /// Records put in another order.
    Reordered,
    /// A record delivered twice.
    Duplicated,
    /// Records that had succeeded, delivered again from a point inside their batch.
    Redelivered,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Throttled => "throttled",
            Kind::LostResponse => "lost response",
            Kind::Partial => "partial failure",
            Kind::Reordered => "reordered",
            Kind::Duplicated => "duplicated",
            Kind::Redelivered => "redelivered after success",
        })
    }
}

/// How a write travels: its service's wire protocol decides how errors look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    DynamoDb,
    EventBridge,
    Kinesis,
    Sqs,
    S3,
}

/// The injected faults, by operation and kind.
pub type Injected = BTreeMap<(String, Kind), u64>;

/// The chaos settings and what they did.
pub struct Chaos {
    rate: f64,
    rng: Mutex<StdRng>,
    injected: Mutex<Injected>,
    /// (operation, text): writes of the operation whose request holds the text always fail.
    always: Vec<(String, String)>,
}

impl Chaos {
    /// Faults at `rate` (0 to 1) from `seed`.
    pub fn new(rate: f64, seed: u64) -> Self {
        Chaos {
            rate: rate.clamp(0.0, 1.0),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            injected: Mutex::new(BTreeMap::new()),
            always: Vec::new(),
        }
    }

    /// Also throttles, every time, the writes of `operation` (e.g. `DynamoDB.PutItem`) whose
    /// request holds `text`.
    pub fn always_throttle(
        mut self,
        operation: impl Into<String>,
        text: impl Into<String>,
    ) -> Self {
        self.always.push((operation.into(), text.into()));
        self
    }

    /// True when the write `operation` with `body` is throttled for good.
    pub(crate) fn throttled_for_good(&self, operation: &str, body: &[u8]) -> bool {
        self.always.iter().any(|(op, text)| {
            op == operation
                && !text.is_empty()
                && body.windows(text.len()).any(|w| w == text.as_bytes())
        })
    }

    /// The rate.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// What was injected so far.
    pub fn injected(&self) -> Injected {
        self.injected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Counts an injection.
    pub fn count(&self, operation: &str, kind: Kind, n: u64) {
        if n == 0 {
            return;
        }
        *self
            .injected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((operation.to_owned(), kind))
            .or_default() += n;
    }

    /// Uses the seeded generator.
    pub(crate) fn with_rng<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        f(&mut self.rng.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// True at the rate.
    pub fn roll(&self) -> bool {
        self.rate > 0.0 && self.with_rng(|r| r.random_bool(self.rate))
    }

    /// Shuffles `items`, returning how many moved.
    pub fn shuffle<T: Clone + PartialEq>(&self, items: &mut [T]) -> usize {
        let before = items.to_vec();
        self.with_rng(|r| items.shuffle(r));
        items.iter().zip(&before).filter(|(a, b)| a != b).count()
    }
}

/// The batch API's answer with the failed entries put back in, failed as AWS fails them.
pub(crate) fn merge_partial(
    name: &str,
    answered: &Value,
    entries: &[Value],
    failed: &[bool],
) -> Option<Value> {
    let failures = failed.iter().filter(|f| **f).count();
    match name {
        "EventBridge.PutEvents" => {
            let mut ok = answered["Entries"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter();
            let mut errors = answered["FailedEntryCount"].as_u64().unwrap_or(0) as usize;
            let merged: Vec<Value> = failed
                .iter()
                .map(|f| {
                    if *f {
                        json!({"ErrorCode": "ThrottlingException", "ErrorMessage": "Rate exceeded"})
                    } else {
                        ok.next().unwrap_or_else(|| {
                            errors += 1;
                            json!({"ErrorCode": "InternalFailure", "ErrorMessage": "no answer"})
                        })
                    }
                })
                .collect();
            Some(json!({"FailedEntryCount": errors + failures, "Entries": merged}))
        }
        "Kinesis.PutRecords" => {
            let mut ok = answered["Records"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter();
            let mut errors = answered["FailedRecordCount"].as_u64().unwrap_or(0) as usize;
            let merged: Vec<Value> = failed
                .iter()
                .map(|f| {
                    if *f {
                        json!({"ErrorCode": "ProvisionedThroughputExceededException",
                               "ErrorMessage": "Rate exceeded for shard shardId-000000000000"})
                    } else {
                        ok.next().unwrap_or_else(|| {
                            errors += 1;
                            json!({"ErrorCode": "InternalFailure", "ErrorMessage": "no answer"})
                        })
                    }
                })
                .collect();
            Some(json!({"FailedRecordCount": errors + failures, "Records": merged}))
        }
        "SQS.SendMessageBatch" => {
            let successful = answered["Successful"].clone();
            let mut failed_list = answered["Failed"].as_array().cloned().unwrap_or_default();
            for (e, f) in entries.iter().zip(failed) {
                if *f {
                    failed_list.push(json!({"Id": e["Id"], "SenderFault": false,
                        "Code": "RequestThrottled", "Message": "Rate exceeded"}));
                }
            }
            Some(
                json!({"Successful": if successful.is_null() { json!([]) } else { successful }, "Failed": failed_list}),
            )
        }
        _ => None,
    }
}

/// A reply in the protocol's JSON media type.
pub(crate) fn json_reply(protocol: Protocol, status: StatusCode, body: String) -> Reply {
    let mut r = reply(status, body);
    let media = match protocol {
        Protocol::DynamoDb | Protocol::Sqs => "application/x-amz-json-1.0",
        _ => "application/x-amz-json-1.1",
    };
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(media),
    );
    r
}

fn aws_json_error(status: StatusCode, protocol: Protocol, code: &str, message: &str) -> Reply {
    let type_name = match protocol {
        Protocol::DynamoDb => format!("com.amazonaws.dynamodb.v20120810#{code}"),
        Protocol::Sqs => format!("com.amazonaws.sqs#{code}"),
        _ => code.to_owned(),
    };
    let mut r = json_reply(
        protocol,
        status,
        json!({"__type": type_name, "message": message}).to_string(),
    );
    if let Ok(v) = http::HeaderValue::from_str(code) {
        r.headers_mut().insert("x-amzn-errortype", v);
    }
    if protocol == Protocol::Sqs
        && let Ok(v) =
            http::HeaderValue::from_str(&format!("AWS.SimpleQueueService.{code};Receiver"))
    {
        r.headers_mut().insert("x-amzn-query-error", v);
    }
    r
}

fn s3_error(status: StatusCode, code: &str, message: &str) -> Reply {
    let mut r = reply(
        status,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message><RequestId>chaos</RequestId></Error>"
        ),
    );
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/xml"),
    );
    r
}

/// The service's throttling error.
pub(crate) fn throttled(protocol: Protocol) -> Reply {
    match protocol {
        Protocol::DynamoDb => aws_json_error(
            StatusCode::BAD_REQUEST,
            protocol,
            "ProvisionedThroughputExceededException",
            "The level of configured provisioned throughput for the table was exceeded.",
        ),
        Protocol::EventBridge => aws_json_error(
            StatusCode::BAD_REQUEST,
            protocol,
            "ThrottlingException",
            "Rate exceeded",
        ),
        Protocol::Kinesis => aws_json_error(
            StatusCode::BAD_REQUEST,
            protocol,
            "ProvisionedThroughputExceededException",
            "Rate exceeded for shard shardId-000000000000",
        ),
        Protocol::Sqs => aws_json_error(
            StatusCode::BAD_REQUEST,
            protocol,
            "RequestThrottled",
            "Rate exceeded",
        ),
        Protocol::S3 => s3_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "SlowDown",
            "Please reduce your request rate.",
        ),
    }
}

/// The service's internal error.
pub(crate) fn internal_error(protocol: Protocol) -> Reply {
    let status = StatusCode::INTERNAL_SERVER_ERROR;
    match protocol {
        Protocol::DynamoDb => aws_json_error(
            status,
            protocol,
            "InternalServerError",
            "Internal server error",
        ),
        Protocol::EventBridge => {
            aws_json_error(status, protocol, "InternalException", "Internal error")
        }
        Protocol::Kinesis => aws_json_error(
            status,
            protocol,
            "InternalFailure",
            "Internal service failure",
        ),
        Protocol::Sqs => aws_json_error(status, protocol, "InternalError", "Internal error"),
        Protocol::S3 => s3_error(
            status,
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
    }
}

/// The injections, one line per operation, for reports.
pub fn summary(injected: &Injected) -> Vec<String> {
    let mut by_op: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ((op, kind), n) in injected {
        by_op
            .entry(op.as_str())
            .or_default()
            .push(format!("{kind} {n}"));
    }
    by_op
        .into_iter()
        .map(|(op, kinds)| format!("{op:<30} {}", kinds.join(", ")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_put_events_answer_fails_exactly_the_dropped_entries() {
        let answered =
            json!({"FailedEntryCount": 0, "Entries": [{"EventId": "1"}, {"EventId": "3"}]});
        let entries = vec![json!({}), json!({}), json!({})];
        let merged = merge_partial(
            "EventBridge.PutEvents",
            &answered,
            &entries,
            &[false, true, false],
        )
        .unwrap();
        assert_eq!(merged["FailedEntryCount"], 1);
        assert_eq!(merged["Entries"][0]["EventId"], "1");
        assert_eq!(merged["Entries"][1]["ErrorCode"], "ThrottlingException");
        assert_eq!(merged["Entries"][2]["EventId"], "3");
    }

    #[test]
    fn the_same_seed_makes_the_same_choices() {
        let a = Chaos::new(0.2, 7);
        let b = Chaos::new(0.2, 7);
        let rolls = |c: &Chaos| (0..100).map(|_| c.roll()).collect::<Vec<_>>();
        let (ra, rb) = (rolls(&a), rolls(&b));
        assert_eq!(ra, rb);
        let hits = ra.iter().filter(|r| **r).count();
        assert!((8..=35).contains(&hits), "{hits} of 100 at 20%");
    }
}
