//! Dry runs: an endpoint on loopback that answers every AWS call as the services would, in
//! memory, and records the writes, so a function run against it writes nowhere and the writes
//! can be printed ([`serve`]; [`config`] is the same for an SDK client in this process).
//!
//! Requests are recorded exactly as the SDK sends them (the operation and its JSON, form or
//! object body). Writes succeed; reads find nothing (an empty query, a missing item or
//! object), which is what a handler meets on a fresh table.

use std::sync::{Arc, Mutex};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;
use aws_smithy_http_client::test_util::infallible_client_fn;
use aws_smithy_types::body::SdkBody;
use serde::Serialize;
use serde_json::{Map, Value, json};

/// One recorded write.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Write {
    /// `dynamodb`, `eventbridge`, `kinesis`, `sqs`, `sns`, `s3`, `lambda`.
    pub service: String,
    /// The API operation, for example `UpdateItem`.
    pub operation: String,
    /// The request: the JSON body, the form fields, or the object's bucket, key and body.
    pub request: Value,
}

/// The writes recorded so far.
#[derive(Debug, Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<Write>>>);

impl Recorder {
    /// Takes the writes recorded so far.
    pub fn take(&self) -> Vec<Write> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn push(&self, w: Write) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(w);
    }
}

/// Serves the recording endpoint on a fresh loopback port: point a function's
/// `AWS_ENDPOINT_URL` (and `AWS_ENDPOINT_URL_LAMBDA`) at it.
pub async fn serve(recorder: Recorder) -> Result<crate::http::Server, crate::Error> {
    Ok(crate::http::serve(move |req: crate::http::Received| {
        let (status, body, headers) = answer(
            &recorder,
            req.parts.method.as_str(),
            req.parts.uri.path(),
            &req.parts.headers,
            &req.body,
        );
        let mut reply = crate::http::reply(
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK),
            body,
        );
        for (k, v) in headers {
            if let Ok(v) = http::HeaderValue::from_str(&v) {
                reply.headers_mut().insert(k, v);
            }
        }
        std::future::ready(reply)
    })
    .await?)
}

/// An AWS configuration that writes to `recorder` and talks to nothing.
pub fn config(recorder: Recorder) -> SdkConfig {
    let http = infallible_client_fn(move |req: http::Request<SdkBody>| {
        let body = req.body().bytes().unwrap_or_default();
        let (status, body, headers) = answer(
            &recorder,
            req.method().as_str(),
            req.uri().path(),
            req.headers(),
            body,
        );
        let mut response = http::Response::builder().status(status);
        for (k, v) in headers {
            response = response.header(k, v);
        }
        response
            .body(SdkBody::from(body))
            .unwrap_or_else(|_| http::Response::new(SdkBody::empty()))
    });
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
            Credentials::new("dry-run", "dry-run", None, None, "dry-run"),
        ))
        .endpoint_url("http://dry-run.invalid")
        .http_client(http)
        .build()
}

const WRITES: &[&str] = &[
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "BatchWriteItem",
    "TransactWriteItems",
    "PutEvents",
    "PutRecord",
    "PutRecords",
    "SendMessage",
    "SendMessageBatch",
    "Publish",
    "PublishBatch",
    "PutObject",
    "DeleteObject",
    "Invoke",
];

fn answer(
    recorder: &Recorder,
    method: &str,
    path: &str,
    headers: &http::HeaderMap,
    body: &[u8],
) -> (u16, String, Vec<(&'static str, String)>) {
    let json_body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let (service, operation, request) = if let Some((prefix, op)) = target.split_once('.') {
        let service = match prefix {
            p if p.starts_with("DynamoDB") => "dynamodb",
            "AWSEvents" => "eventbridge",
            p if p.starts_with("Kinesis") => "kinesis",
            "AmazonSQS" => "sqs",
            "AmazonSSM" => "ssm",
            other => other,
        };
        (service.to_owned(), op.to_owned(), json_body.clone())
    } else if let Some(rest) = path.strip_prefix("/2015-03-31/functions/") {
        let function = rest.split('/').next().unwrap_or_default();
        let payload = if json_body.is_null() {
            Value::String(String::from_utf8_lossy(body).into_owned())
        } else {
            json_body.clone()
        };
        (
            "lambda".into(),
            "Invoke".into(),
            json!({"FunctionName": function, "Payload": payload}),
        )
    } else if let Some(form) = form(body) {
        let op = form
            .get("Action")
            .and_then(Value::as_str)
            .unwrap_or("Unknown")
            .to_owned();
        ("sns".into(), op, Value::Object(form))
    } else {
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (bucket, key) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let op = match (method, key.is_empty()) {
            ("PUT", false) => "PutObject",
            ("DELETE", false) => "DeleteObject",
            ("GET", false) => "GetObject",
            ("HEAD", false) => "HeadObject",
            _ => "ListObjectsV2",
        };
        let body = if json_body.is_null() {
            Value::String(String::from_utf8_lossy(body).into_owned())
        } else {
            json_body.clone()
        };
        (
            "s3".into(),
            op.into(),
            json!({"Bucket": bucket, "Key": key, "Body": body}),
        )
    };
    let reply = response(&service, &operation, &json_body);
    if WRITES.contains(&operation.as_str()) {
        recorder.push(Write {
            service,
            operation,
            request,
        });
    }
    reply
}

fn form(body: &[u8]) -> Option<Map<String, Value>> {
    let text = std::str::from_utf8(body).ok()?;
    if !text.contains("Action=") {
        return None;
    }
    Some(
        text.split('&')
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                Some((decode(k), Value::String(decode(v))))
            })
            .collect(),
    )
}

/// Percent- and plus-decoding of a form field.
fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn count(v: &Value, field: &str) -> usize {
    v.get(field).and_then(Value::as_array).map_or(0, Vec::len)
}

fn response(
    service: &str,
    operation: &str,
    req: &Value,
) -> (u16, String, Vec<(&'static str, String)>) {
    let json_type = vec![("content-type", "application/x-amz-json-1.0".to_owned())];
    let ok = |v: Value| (200, v.to_string(), json_type.clone());
    match (service, operation) {
        ("dynamodb", "Query" | "Scan") => ok(json!({"Items": [], "Count": 0, "ScannedCount": 0})),
        ("dynamodb", "BatchGetItem") => ok(json!({"Responses": {}, "UnprocessedKeys": {}})),
        ("dynamodb", "BatchWriteItem") => ok(json!({"UnprocessedItems": {}})),
        ("dynamodb", _) => ok(json!({})),
        ("eventbridge", "PutEvents") => ok(json!({
            "FailedEntryCount": 0,
            "Entries": (0..count(req, "Entries")).map(|i| json!({"EventId": format!("dry-run-{i}")})).collect::<Vec<_>>(),
        })),
        ("kinesis", "PutRecords") => ok(json!({
            "FailedRecordCount": 0,
            "Records": (0..count(req, "Records")).map(|i| json!({"SequenceNumber": (i + 1).to_string(), "ShardId": "shardId-000000000000"})).collect::<Vec<_>>(),
        })),
        ("kinesis", "PutRecord") => ok(json!({"SequenceNumber": "1", "ShardId": "shardId-000000000000"})),
        ("sqs", "SendMessageBatch") => ok(json!({
            "Successful": req["Entries"].as_array().into_iter().flatten().map(|e| json!({
                "Id": e["Id"], "MessageId": uuid::Uuid::new_v4().to_string(), "MD5OfMessageBody": "",
            })).collect::<Vec<_>>(),
            "Failed": [],
        })),
        ("sqs", "SendMessage") => ok(json!({"MessageId": uuid::Uuid::new_v4().to_string(), "MD5OfMessageBody": ""})),
        ("ssm", "GetParameter") => ok(json!({"Parameter": {"Name": req["Name"], "Type": "SecureString", "Value": "dry-run", "Version": 1}})),
        ("lambda", _) => (202, String::new(), Vec::new()),
        ("sns", "Publish") => (
            200,
            "<PublishResponse><PublishResult><MessageId>dry-run</MessageId></PublishResult></PublishResponse>".into(),
            vec![("content-type", "text/xml".to_owned())],
        ),
        ("s3", "PutObject") => (200, String::new(), vec![("etag", "\"dry-run\"".to_owned())]),
        ("s3", "DeleteObject") => (204, String::new(), Vec::new()),
        ("s3", "ListObjectsV2") => (
            200,
            "<ListBucketResult><IsTruncated>false</IsTruncated><KeyCount>0</KeyCount></ListBucketResult>".into(),
            vec![("content-type", "application/xml".to_owned())],
        ),
        ("s3", _) => (
            404,
            "<Error><Code>NoSuchKey</Code><Message>dry run</Message></Error>".into(),
            vec![("content-type", "application/xml".to_owned())],
        ),
        _ => ok(json!({})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_decode() {
        let f = form(b"Action=Publish&Message=%7B%22a%22%3A1%7D+x").unwrap();
        assert_eq!(f["Action"], "Publish");
        assert_eq!(f["Message"], "{\"a\":1} x");
    }

    #[tokio::test]
    async fn writes_are_recorded_and_succeed() {
        let recorder = Recorder::default();
        let conf = config(recorder.clone());
        let ddb = aws_sdk_dynamodb::Client::new(&conf);
        ddb.put_item()
            .table_name("t")
            .item("pk", aws_sdk_dynamodb::types::AttributeValue::S("1".into()))
            .send()
            .await
            .unwrap();
        let got = ddb
            .get_item()
            .table_name("t")
            .key("pk", aws_sdk_dynamodb::types::AttributeValue::S("1".into()))
            .send()
            .await
            .unwrap();
        assert!(got.item().is_none());
        let eb = aws_sdk_eventbridge::Client::new(&conf);
        let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
            .detail("{}")
            .detail_type("t")
            .source("s")
            .build();
        let out = eb
            .put_events()
            .entries(entry.clone())
            .entries(entry)
            .send()
            .await
            .unwrap();
        assert_eq!(out.entries().len(), 2);
        let writes = recorder.take();
        assert_eq!(writes.len(), 2, "{writes:?}");
        assert_eq!(
            (writes[0].service.as_str(), writes[0].operation.as_str()),
            ("dynamodb", "PutItem")
        );
        assert_eq!(writes[0].request["Item"]["pk"]["S"], "1");
        assert_eq!(writes[1].operation, "PutEvents");
    }
}
