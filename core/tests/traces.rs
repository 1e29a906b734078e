//! Trace export (feature `otel`): a function run by `lambda_stream::run` against a local
//! Runtime API exports, over OTLP/HTTP, the invocation span, the pipeline's span and one span
//! per AWS call, before it polls for the next invocation. Alone in its test binary: it installs the
//! global subscriber and sets the OpenTelemetry variables.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::operation::get_item::GetItemOutput;
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use lambda_stream::testing::*;
use lambda_stream::{Event, Handler, Pipeline, StepError, UnitOfWork, sources};
use serde_json::Value;

#[derive(Default)]
struct Seen {
    invocations: usize,
    /// (when it arrived, the OTLP request body)
    traces: Vec<(Instant, Value)>,
    responded: Option<Instant>,
    /// When the runtime asked for the invocation after the first.
    polled_again: Option<Instant>,
}

fn read_request(stream: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    let mut line = String::new();
    if stream.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut length = 0;
    loop {
        let mut header = String::new();
        stream.read_line(&mut header).ok()?;
        if header.trim().is_empty() {
            break;
        }
        let lower = header.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).ok()?;
    Some((line, body))
}

/// One local server for both sides: the Lambda Runtime API (one invocation, then the next poll
/// is held) and the OTLP collector.
fn serve(api: TcpListener, payload: Vec<u8>, seen: Arc<Mutex<Seen>>) {
    for stream in api.incoming().flatten() {
        let (payload, seen) = (payload.clone(), Arc::clone(&seen));
        std::thread::spawn(move || {
            let mut writer = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            while let Some((line, body)) = read_request(&mut reader) {
                let reply = if line.contains("/runtime/invocation/next") {
                    let first = {
                        let mut s = seen.lock().unwrap();
                        s.invocations += 1;
                        if s.invocations == 2 {
                            s.polled_again = Some(Instant::now());
                        }
                        s.invocations == 1
                    };
                    if !first {
                        std::thread::sleep(Duration::from_secs(3600));
                    }
                    let deadline = chrono::Utc::now().timestamp_millis() + 30_000;
                    let mut head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                         lambda-runtime-aws-request-id: req-1\r\nlambda-runtime-deadline-ms: {deadline}\r\n\
                         lambda-runtime-invoked-function-arn: arn:aws:lambda:us-east-1:000000000000:function:listener\r\n\
                         lambda-runtime-trace-id: Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1\r\n\r\n",
                        payload.len()
                    )
                    .into_bytes();
                    head.extend_from_slice(&payload);
                    head
                } else if line.contains("/response") {
                    seen.lock().unwrap().responded = Some(Instant::now());
                    b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}".to_vec()
                } else if line.contains("/v1/traces") {
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    seen.lock().unwrap().traces.push((Instant::now(), body));
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
                        .to_vec()
                } else {
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec()
                };
                if writer.write_all(&reply).is_err() {
                    return;
                }
            }
        });
    }
}

fn spans(traces: &[(Instant, Value)]) -> Vec<Value> {
    traces
        .iter()
        .flat_map(|(_, body)| {
            body["resourceSpans"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|rs| rs["scopeSpans"].as_array().cloned().unwrap_or_default())
        .flat_map(|ss| ss["spans"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_exports_its_span_the_pipelines_and_each_aws_call_before_the_next_poll() {
    let api = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = api.local_addr().unwrap().to_string();
    // SAFETY: set before any thread of this test binary reads the environment
    unsafe {
        for (k, v) in [
            ("AWS_LAMBDA_RUNTIME_API", addr.as_str()),
            ("AWS_LAMBDA_FUNCTION_NAME", "listener"),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256"),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "test"),
            ("AWS_LAMBDA_LOG_GROUP_NAME", "test"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{addr}")),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("RUST_LOG", "warn"),
        ] {
            std::env::set_var(k, v);
        }
    }
    let events: Vec<Event> = (0..3)
        .map(|i| {
            Event::new(format!("e{i}"), "thing-updated", 1)
                .with_partition_key("t1")
                .with_entity("thing", serde_json::json!({"id": "t1", "secret": "s3cr3t"}))
        })
        .collect();
    let payload = serde_json::to_vec(&to_kinesis_records(&events)).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    {
        let seen = Arc::clone(&seen);
        std::thread::spawn(move || serve(api, payload, seen));
    }

    lambda_stream::logging::init();
    let get =
        mock!(aws_sdk_dynamodb::Client::get_item).then_output(|| GetItemOutput::builder().build());
    let db = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&get]);
    let handler = Handler::builder(MemoryFaults::default())
        .pipeline(Pipeline::new("views").then(move |uow: UnitOfWork| {
            let db = db.clone();
            async move {
                db.get_item()
                    .table_name("views")
                    .key(
                        "pk",
                        aws_sdk_dynamodb::types::AttributeValue::S("t1".into()),
                    )
                    .send()
                    .await
                    .map_err(StepError::transient)?;
                Ok::<_, StepError>(uow.with(()))
            }
        }))
        .build()
        .unwrap();
    // as a function's main runs it (its future is not provably Send, so a thread of its own)
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(lambda_stream::run::<sources::Kinesis>(handler))
    });

    let started = Instant::now();
    let spans = loop {
        {
            let s = seen.lock().unwrap();
            let spans = spans(&s.traces);
            if let Some(polled_again) = s.polled_again
                && spans.iter().any(|s| s["name"] == "listener")
                && spans
                    .iter()
                    .filter(|s| s["name"] == "DynamoDB.GetItem")
                    .count()
                    == 3
            {
                // flushed after the response, before the next poll (when Lambda may freeze the
                // process)
                assert!(s.responded.unwrap() <= s.traces[0].0);
                assert!(s.traces[0].0 <= polled_again);
                break spans;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no spans exported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let invocation = spans.iter().find(|s| s["name"] == "listener").unwrap();
    assert_eq!(
        attribute(invocation, "faas.invocation_id").unwrap()["stringValue"],
        "req-1"
    );
    assert_eq!(
        attribute(invocation, "faas.coldstart").unwrap()["boolValue"],
        true
    );
    let pipeline = spans.iter().find(|s| s["name"] == "pipeline").unwrap();
    assert_eq!(attribute(pipeline, "id").unwrap()["stringValue"], "views");
    assert_eq!(pipeline["traceId"], invocation["traceId"]);
    for call in spans.iter().filter(|s| s["name"] == "DynamoDB.GetItem") {
        assert_eq!(
            attribute(call, "rpc.method").unwrap()["stringValue"],
            "GetItem"
        );
        assert_eq!(call["traceId"], invocation["traceId"]);
    }
    let exported = serde_json::to_string(&spans).unwrap();
    assert!(
        !exported.contains("s3cr3t"),
        "an event's contents left the process"
    );
    let s = seen.lock().unwrap();
    let resource = &s.traces[0].1["resourceSpans"][0]["resource"];
    assert!(
        resource.to_string().contains("listener"),
        "service.name: {resource}"
    );
}
