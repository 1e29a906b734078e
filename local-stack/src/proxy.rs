//! What stands between the functions and the emulator: a loopback proxy that forwards their
//! AWS calls, makes DynamoDB's conditional writes atomic (which moto's threaded server does not
//! guarantee under concurrent requests), and, with [`chaos`], faults the writes.
//!
//! DynamoDB commits a conditional write (or a transaction) at most once per condition; moto
//! checks and writes without a lock, so two concurrent writers can both pass the same
//! condition. With several instances of a function running, as on Lambda, that would let two
//! commands take one sequence number. The proxy sends the functions' DynamoDB writes to the
//! emulator one at a time; reads pass freely.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use serde_json::Value;

use crate::Error;
use crate::chaos::{self, Chaos, Kind, Protocol};
use crate::http::{Received, Reply, Server, reply, serve};

/// A write the proxy may fault: `DynamoDB.PutItem`, `EventBridge.PutEvents`, `S3.PutObject`...
#[derive(Debug, Clone)]
struct Write {
    protocol: Protocol,
    name: String,
}

impl Write {
    fn batch(&self) -> bool {
        matches!(
            self.name.as_str(),
            "EventBridge.PutEvents" | "Kinesis.PutRecords" | "SQS.SendMessageBatch"
        )
    }
}

/// The call a request makes, named `Service.Operation` (`DynamoDB.Query`, `S3.GetObject`...).
fn call_of(req: &Received) -> Option<Write> {
    let target = req
        .parts
        .headers
        .get("x-amz-target")
        .and_then(|t| t.to_str().ok());
    let (protocol, service, op) = match target.and_then(|t| t.split_once('.')) {
        Some(("DynamoDB_20120810", op)) => (Protocol::DynamoDb, "DynamoDB", op),
        Some(("DynamoDBStreams_20120810", op)) => (Protocol::DynamoDb, "DynamoDBStreams", op),
        Some(("AWSEvents", op)) => (Protocol::EventBridge, "EventBridge", op),
        Some(("Kinesis_20131202", op)) => (Protocol::Kinesis, "Kinesis", op),
        Some(("AmazonSQS", op)) => (Protocol::Sqs, "SQS", op),
        // other JSON services (SSM, Secrets Manager): never faulted, named by their target
        Some((service, op)) => (Protocol::EventBridge, service, op),
        None => {
            // S3, path style: /bucket or /bucket/key
            let method = req.parts.method.as_str();
            let object = req.parts.uri.path().trim_start_matches('/').contains('/');
            let op = match (method, object) {
                ("PUT", true) => "PutObject",
                ("DELETE", true) => "DeleteObject",
                ("GET", true) => "GetObject",
                ("HEAD", true) => "HeadObject",
                ("GET", false) => "ListObjects",
                _ => return None,
            };
            return Some(Write {
                protocol: Protocol::S3,
                name: format!("S3.{op}"),
            });
        }
    };
    Some(Write {
        protocol,
        name: format!("{service}.{op}"),
    })
}

/// The write a request makes, if it makes one (reads are never faulted).
fn write_of(req: &Received) -> Option<Write> {
    const WRITES: [&str; 12] = [
        "DynamoDB.PutItem",
        "DynamoDB.UpdateItem",
        "DynamoDB.DeleteItem",
        "DynamoDB.TransactWriteItems",
        "DynamoDB.BatchWriteItem",
        "EventBridge.PutEvents",
        "Kinesis.PutRecord",
        "Kinesis.PutRecords",
        "SQS.SendMessage",
        "SQS.SendMessageBatch",
        "S3.PutObject",
        "S3.DeleteObject",
    ];
    call_of(req).filter(|c| WRITES.contains(&c.name.as_str()))
}

/// The proxy.
pub struct Proxy {
    upstream: String,
    client: Client<HttpConnector, Full<Bytes>>,
    dynamodb_writes: tokio::sync::Mutex<()>,
    chaos: Option<Arc<Chaos>>,
    writes: std::sync::Mutex<BTreeMap<String, u64>>,
    calls: std::sync::Mutex<BTreeMap<(Arc<str>, String), u64>>,
}

impl Proxy {
    /// In front of the emulator at `upstream`, faulting writes with `chaos` if given.
    pub fn new(upstream: impl Into<String>, chaos: Option<Arc<Chaos>>) -> Self {
        Proxy {
            upstream: upstream.into().trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            dynamodb_writes: tokio::sync::Mutex::new(()),
            chaos,
            writes: std::sync::Mutex::new(BTreeMap::new()),
            calls: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// Serves the proxy on a fresh loopback port for one caller (a function), whose calls it
    /// counts under `caller`.
    pub async fn serve(self: &Arc<Self>, caller: &str) -> Result<Server, Error> {
        let proxy = Arc::clone(self);
        let caller: Arc<str> = caller.into();
        Ok(serve(move |req| {
            let proxy = Arc::clone(&proxy);
            let caller = Arc::clone(&caller);
            async move { proxy.handle(caller, req).await }
        })
        .await?)
    }

    async fn handle(&self, caller: Arc<str>, req: Received) -> Reply {
        let name = call_of(&req).map_or_else(|| "other".to_owned(), |c| c.name);
        *self
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((caller, name))
            .or_default() += 1;
        let Some(write) = write_of(&req) else {
            return self.forward(&req, req.body.clone()).await;
        };
        // one DynamoDB write at a time: each conditional check and its write are atomic
        let _turn = match write.protocol {
            Protocol::DynamoDb => Some(self.dynamodb_writes.lock().await),
            _ => None,
        };
        if let Some(chaos) = &self.chaos
            && chaos.throttled_for_good(&write.name, &req.body)
        {
            chaos.count(&write.name, Kind::Throttled, 1);
            return chaos::throttled(write.protocol);
        }
        let Some(chaos) = self.chaos.as_ref().filter(|c| c.roll()) else {
            return self.counted(&req, &write).await;
        };
        let kinds: &[Kind] = if write.batch() {
            &[Kind::Throttled, Kind::LostResponse, Kind::Partial]
        } else {
            &[Kind::Throttled, Kind::LostResponse]
        };
        let kind = chaos.with_rng(|r| kinds[r.random_range(0..kinds.len())]);
        match kind {
            Kind::Throttled => {
                chaos.count(&write.name, kind, 1);
                chaos::throttled(write.protocol)
            }
            Kind::LostResponse => {
                let answer = self.counted(&req, &write).await;
                if answer.status().is_success() {
                    chaos.count(&write.name, kind, 1);
                    chaos::internal_error(write.protocol)
                } else {
                    answer
                }
            }
            _ => self.partial(chaos, &req, &write).await,
        }
    }

    /// The writes that reached the emulator (applied, or refused by their condition), by
    /// operation and, for DynamoDB single-item writes, table (`DynamoDB.PutItem <table>`).
    pub fn writes(&self) -> BTreeMap<String, u64> {
        self.writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Every call the functions made (faulted ones included), by caller and
    /// `Service.Operation`.
    pub fn calls(&self) -> BTreeMap<(Arc<str>, String), u64> {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Forwards a write and counts it.
    async fn counted(&self, req: &Received, write: &Write) -> Reply {
        let answer = self.forward(req, req.body.clone()).await;
        {
            let table = serde_json::from_slice::<serde_json::Value>(&req.body)
                .ok()
                .and_then(|b| b["TableName"].as_str().map(str::to_owned));
            let key = match table {
                Some(t) => format!("{} {t}", write.name),
                None => write.name.clone(),
            };
            *self
                .writes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(key)
                .or_default() += 1;
        }
        answer
    }

    /// Sends the request to the emulator as it is, with `body`.
    async fn forward(&self, req: &Received, body: Bytes) -> Reply {
        let path = req
            .parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let mut builder = http::Request::builder()
            .method(req.parts.method.clone())
            .uri(format!("{}{path}", self.upstream));
        for (k, v) in &req.parts.headers {
            if k != http::header::HOST && k != http::header::CONTENT_LENGTH {
                builder = builder.header(k, v);
            }
        }
        let request = match builder.body(Full::new(body)) {
            Ok(r) => r,
            Err(e) => {
                return reply(StatusCode::BAD_GATEWAY, format!("{{\"message\":\"{e}\"}}"));
            }
        };
        match self.client.request(request).await {
            Ok(res) => {
                let (parts, body) = res.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let mut r = http::Response::from_parts(parts, Full::new(body));
                r.headers_mut().remove(http::header::TRANSFER_ENCODING);
                r
            }
            Err(e) => reply(
                StatusCode::BAD_GATEWAY,
                format!("{{\"message\":\"emulator: {e}\"}}"),
            ),
        }
    }

    /// Some entries of a batch write fail, the others go through.
    async fn partial(&self, chaos: &Chaos, req: &Received, write: &Write) -> Reply {
        let parsed = entries_field(&write.name)
            .and_then(|list| Some((list, serde_json::from_slice::<Value>(&req.body).ok()?)));
        let Some((list, mut body)) = parsed else {
            return self.forward(req, req.body.clone()).await;
        };
        let entries = body[list].as_array().cloned().unwrap_or_default();
        if entries.is_empty() {
            return self.forward(req, req.body.clone()).await;
        }
        // each entry fails at even odds, at least one
        let mut failed: Vec<bool> =
            chaos.with_rng(|r| entries.iter().map(|_| r.random_bool(0.5)).collect());
        if !failed.contains(&true) {
            let i = chaos.with_rng(|r| r.random_range(0..failed.len()));
            failed[i] = true;
        }
        let sent: Vec<Value> = entries
            .iter()
            .zip(&failed)
            .filter(|(_, f)| !**f)
            .map(|(e, _)| e.clone())
            .collect();
        let answered = if sent.is_empty() {
            Value::Null
        } else {
            body[list] = Value::Array(sent);
            let Ok(bytes) = serde_json::to_vec(&body) else {
                return self.forward(req, req.body.clone()).await;
            };
            let answer = self.forward(req, Bytes::from(bytes)).await;
            if !answer.status().is_success() {
                return answer;
            }
            let bytes = answer
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        match chaos::merge_partial(&write.name, &answered, &entries, &failed) {
            Some(v) => {
                chaos.count(&write.name, Kind::Partial, 1);
                chaos::json_reply(write.protocol, StatusCode::OK, v.to_string())
            }
            None => chaos::throttled(write.protocol),
        }
    }
}

/// The request's list of entries, per batch API.
fn entries_field(name: &str) -> Option<&'static str> {
    match name {
        "EventBridge.PutEvents" | "SQS.SendMessageBatch" => Some("Entries"),
        "Kinesis.PutRecords" => Some("Records"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: Option<&str>, method: &str, path: &str) -> Received {
        let mut b = http::Request::builder().method(method).uri(path);
        if let Some(t) = target {
            b = b.header("x-amz-target", t);
        }
        let (parts, ()) = b.body(()).unwrap().into_parts();
        Received {
            parts,
            body: Bytes::new(),
        }
    }

    #[test]
    fn only_writes_are_faulted() {
        let name = |t, m, p| write_of(&request(t, m, p)).map(|w| w.name);
        assert_eq!(
            name(Some("DynamoDB_20120810.TransactWriteItems"), "POST", "/"),
            Some("DynamoDB.TransactWriteItems".into())
        );
        assert_eq!(name(Some("DynamoDB_20120810.GetItem"), "POST", "/"), None);
        assert_eq!(name(Some("DynamoDB_20120810.Query"), "POST", "/"), None);
        assert_eq!(
            name(Some("AWSEvents.PutEvents"), "POST", "/"),
            Some("EventBridge.PutEvents".into())
        );
        assert_eq!(name(Some("Kinesis_20131202.GetRecords"), "POST", "/"), None);
        assert_eq!(name(Some("AmazonSQS.ReceiveMessage"), "POST", "/"), None);
        assert_eq!(
            name(None, "PUT", "/bucket/faults/a.json"),
            Some("S3.PutObject".into())
        );
        assert_eq!(name(None, "GET", "/bucket/faults/a.json"), None);
        assert_eq!(name(None, "PUT", "/bucket"), None);
    }

    #[test]
    fn every_call_is_named_by_service_and_operation() {
        let name = |t, m, p| call_of(&request(t, m, p)).map(|w| w.name);
        assert_eq!(
            name(Some("DynamoDB_20120810.Query"), "POST", "/"),
            Some("DynamoDB.Query".into())
        );
        assert_eq!(
            name(Some("AmazonSQS.ReceiveMessage"), "POST", "/"),
            Some("SQS.ReceiveMessage".into())
        );
        assert_eq!(
            name(None, "GET", "/bucket/faults/a.json"),
            Some("S3.GetObject".into())
        );
        assert_eq!(name(None, "GET", "/bucket"), Some("S3.ListObjects".into()));
    }
}
