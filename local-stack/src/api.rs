//! The local HTTP endpoint: the template's HTTP API routes (payload format 2.0, as API Gateway
//! HTTP APIs send it) and Lambda's Invoke API, so functions and the faults CLI can invoke local
//! functions with the SDK (`AWS_ENDPOINT_URL_LAMBDA`).

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value, json};

use crate::http::{Received, Reply, reply};
use crate::invoke::Invoke;
use crate::mapping::control::Controls;
use crate::runtime::{LocalFunction, invoke_async};
use crate::template::ACCOUNT;

/// One HTTP API route.
#[derive(Clone)]
pub struct HttpRoute {
    /// Upper-case method or `ANY`.
    pub method: String,
    /// Path with `{param}` (and `{proxy+}`) segments.
    pub path: String,
    /// The function behind it.
    pub function: Arc<LocalFunction>,
}

impl HttpRoute {
    /// The path parameters if `method` and `path` match this route.
    pub fn matches(&self, method: &str, path: &str) -> Option<Map<String, Value>> {
        if self.method != "ANY" && self.method != method {
            return None;
        }
        let mut params = Map::new();
        let mut want = self.path.trim_matches('/').split('/');
        let mut have = path.trim_matches('/').split('/');
        loop {
            match (want.next(), have.next()) {
                (None, None) => return Some(params),
                (Some(w), Some(h)) if w.starts_with('{') && w.ends_with("+}") => {
                    let rest: Vec<&str> = std::iter::once(h).chain(have.by_ref()).collect();
                    params.insert(w[1..w.len() - 2].to_owned(), json!(rest.join("/")));
                    return Some(params);
                }
                (Some(w), Some(h)) if w.starts_with('{') && w.ends_with('}') && !h.is_empty() => {
                    params.insert(w[1..w.len() - 1].to_owned(), json!(h));
                }
                (Some(w), Some(h)) if w == h => {}
                _ => return None,
            }
        }
    }
}

/// Everything the endpoint serves.
pub struct Endpoint {
    /// HTTP API routes.
    pub routes: Vec<HttpRoute>,
    /// Functions by name and by ARN.
    pub functions: HashMap<String, Arc<LocalFunction>>,
    /// For asynchronous invocations' failure records.
    pub sqs: aws_sdk_sqs::Client,
    /// The event source mappings, for `ListEventSourceMappings` and `UpdateEventSourceMapping`.
    pub mappings: Arc<Controls>,
}

impl Endpoint {
    /// Answers one request.
    pub async fn handle(&self, req: Received) -> Reply {
        let path = req.parts.uri.path().to_owned();
        if let Some(rest) = path.strip_prefix("/2015-03-31/functions/") {
            return self.invoke(rest, req).await;
        }
        if let Some(rest) = path.strip_prefix("/2015-03-31/event-source-mappings") {
            return self.event_source_mappings(rest.trim_start_matches('/'), &req);
        }
        let method = req.parts.method.as_str().to_ascii_uppercase();
        let Some((route, params)) = self
            .routes
            .iter()
            .find_map(|r| r.matches(&method, &path).map(|p| (r, p)))
        else {
            return reply(StatusCode::NOT_FOUND, r#"{"message":"Not Found"}"#);
        };
        let event = api_event(&req, &route.method, &route.path, params);
        match route.function.invoke(Bytes::from(event.to_string())).await {
            Ok(body) => api_response(&body),
            Err(e) => {
                tracing::warn!(function = %route.function.name(), error = %e, "HTTP API function failed");
                reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    r#"{"message":"Internal Server Error"}"#,
                )
            }
        }
    }

    /// `ListEventSourceMappings` (`GET /`), `GetEventSourceMapping` (`GET /{uuid}`) and
    /// `UpdateEventSourceMapping` (`PUT /{uuid}`, `Enabled` and `BatchSize`).
    fn event_source_mappings(&self, uuid: &str, req: &Received) -> Reply {
        let json_reply = |status, body: Value| {
            let mut r = reply(status, body.to_string());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        };
        if uuid.is_empty() {
            let query: HashMap<String, String> = req
                .parts
                .uri
                .query()
                .unwrap_or_default()
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), percent_decode(v)))
                .collect();
            let list = self.mappings.list(
                query.get("FunctionName").map(String::as_str),
                query.get("EventSourceArn").map(String::as_str),
            );
            let described: Vec<Value> = list.iter().map(|c| c.describe()).collect();
            return json_reply(StatusCode::OK, json!({"EventSourceMappings": described}));
        }
        let Some(control) = self.mappings.get(&percent_decode(uuid)) else {
            let mut r = json_reply(
                StatusCode::NOT_FOUND,
                json!({"Type": "User", "message": format!("The resource you requested does not exist. (Service: Lambda, UUID: {uuid})")}),
            );
            r.headers_mut().insert(
                "x-amzn-errortype",
                http::HeaderValue::from_static("ResourceNotFoundException"),
            );
            return r;
        };
        if req.parts.method == http::Method::PUT {
            let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
            control.update(&body);
            return json_reply(StatusCode::ACCEPTED, control.describe());
        }
        json_reply(StatusCode::OK, control.describe())
    }

    async fn invoke(&self, rest: &str, req: Received) -> Reply {
        let mut parts = rest.split('/');
        let name = parts.next().unwrap_or_default();
        let name = percent_decode(name);
        // a full or partial ARN names the function by its last part
        let short = name.rsplit(':').next().unwrap_or(&name).to_owned();
        let Some(function) = self
            .functions
            .get(&name)
            .or_else(|| self.functions.get(&short))
        else {
            let mut r = reply(
                StatusCode::NOT_FOUND,
                json!({"Type": "User", "message": format!("Function not found: {name}")})
                    .to_string(),
            );
            r.headers_mut().insert(
                "x-amzn-errortype",
                http::HeaderValue::from_static("ResourceNotFoundException"),
            );
            return r;
        };
        let kind = req
            .parts
            .headers
            .get("x-amz-invocation-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("RequestResponse");
        match kind {
            "Event" => {
                let function = Arc::clone(function);
                let sqs = self.sqs.clone();
                tokio::spawn(async move { invoke_async(&function, req.body, &sqs).await });
                reply(StatusCode::ACCEPTED, "")
            }
            "DryRun" => reply(StatusCode::NO_CONTENT, ""),
            _ => match function.invoke(req.body).await {
                Ok(body) => reply(StatusCode::OK, body),
                Err(e) => {
                    let mut r = reply(
                        StatusCode::OK,
                        json!({"errorType": e.error_type, "errorMessage": e.message}).to_string(),
                    );
                    r.headers_mut().insert(
                        "x-amz-function-error",
                        http::HeaderValue::from_static("Unhandled"),
                    );
                    r
                }
            },
        }
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The API Gateway HTTP API (payload 2.0) event for a request.
pub fn api_event(req: &Received, method: &str, path: &str, params: Map<String, Value>) -> Value {
    let mut headers = Map::new();
    for (k, v) in &req.parts.headers {
        if let Ok(v) = v.to_str() {
            headers
                .entry(k.as_str().to_owned())
                .and_modify(|e| {
                    if let Value::String(s) = e {
                        s.push(',');
                        s.push_str(v);
                    }
                })
                .or_insert_with(|| json!(v));
        }
    }
    let query = req.parts.uri.query().unwrap_or_default();
    let query_params: Map<String, Value> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), json!(v))
        })
        .collect();
    let now = chrono::Utc::now();
    let (body, base64) = match std::str::from_utf8(&req.body) {
        Ok(text) => (text.to_owned(), false),
        Err(_) => (STANDARD.encode(&req.body), true),
    };
    let route_key = format!("{method} {path}");
    let mut event = json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": req.parts.uri.path(),
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": "local",
            "domainName": "127.0.0.1",
            "domainPrefix": "local",
            "http": {
                "method": req.parts.method.as_str(),
                "path": req.parts.uri.path(),
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": req.parts.headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or(""),
            },
            "requestId": uuid::Uuid::new_v4().to_string(),
            "routeKey": route_key,
            "stage": "$default",
            "time": now.format("%d/%b/%Y:%H:%M:%S %z").to_string(),
            "timeEpoch": now.timestamp_millis(),
        },
        "isBase64Encoded": base64,
    });
    if !req.body.is_empty() {
        event["body"] = json!(body);
    }
    if !params.is_empty() {
        event["pathParameters"] = Value::Object(params);
    }
    if !query_params.is_empty() {
        event["queryStringParameters"] = Value::Object(query_params);
    }
    event
}

/// An HTTP response from a function's payload-2.0 answer.
pub fn api_response(body: &[u8]) -> Reply {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let Some(status) = v.get("statusCode").and_then(Value::as_u64) else {
        // a bare value is the body of a 200, as API Gateway reads it
        return reply(StatusCode::OK, Bytes::copy_from_slice(body));
    };
    let text = v.get("body").and_then(Value::as_str).unwrap_or_default();
    let bytes = if v["isBase64Encoded"] == json!(true) {
        STANDARD.decode(text).unwrap_or_default()
    } else {
        text.as_bytes().to_vec()
    };
    let mut r = reply(
        StatusCode::from_u16(status as u16).unwrap_or(StatusCode::BAD_GATEWAY),
        bytes,
    );
    if let Some(h) = v.get("headers").and_then(Value::as_object) {
        for (k, val) in h {
            if let (Ok(name), Some(Ok(value))) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                val.as_str().map(http::HeaderValue::from_str),
            ) {
                r.headers_mut().insert(name, value);
            }
        }
    }
    r
}
