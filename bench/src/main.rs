//! `make bench`: every figure a ratio measured in one run, on this machine.
//!
//! - the production path (the Lambda payload's bytes → batch types → sources → pipelines →
//!   response bytes) of the listener's pipelines, against its floor (deserializing the same
//!   payload and decoding each record's data);
//! - the listener and the trigger as deployed, their real SDK clients answered in process by a
//!   canned HTTP client (no network), per-call SDK overhead included;
//! - the listener with every call taking 2 ms, at `PARALLEL` 4 and 8, against the bound that
//!   latency and parallelism allow;
//! - each scenario's peak RSS (each runs in a process of its own);
//! - a function's cold start: process start to its first poll of the Runtime API;
//! - aws-lambda-stream (`bench/peer`, its latest release, pinned) on the same batches, its
//!   connectors stubbed and with its SDK clients over an in-memory HTTP handler.
//!
//! Prints a markdown table and writes it to `target/bench/results.md`, and the figures to
//! `target/bench/results.json` (what `local-stack capacity --bench` reads).

use std::collections::VecDeque;
use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lambda_events::event::kinesis::KinesisEvent;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::shared::IntoShared;
use aws_smithy_types::body::SdkBody;
use lambda_stream::connectors::{DynamoDb, EventBridge};
use lambda_stream::sinks::EntityPut;
use lambda_stream::sources;
use lambda_stream::testing::{MemoryFaults, context};
use lambda_stream::{Event, Handler, IntoPipeline, Pipeline, Settings, StepError, UnitOfWork};
use serde_json::{Value, json};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's settings as `template.yaml` deploys them (`Globals`): freed pages are kept, not
/// returned to the OS, and arenas are committed as they are used, not whole; so each
/// scenario's process runs as the deployed functions do.
const ALLOCATOR_ENV: [(&str, &str); 2] = [
    ("MIMALLOC_PURGE_DELAY", "-1"),
    ("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
];

/// The simulated latency of a call in the latency scenarios.
const LATENCY: Duration = Duration::from_millis(2);

/// Answers every AWS call as the service would on success, after `latency`, counting calls.
#[derive(Debug, Clone)]
struct Canned {
    latency: Option<Network>,
    calls: Arc<AtomicUsize>,
    /// The latency calls actually had, in µs (a timer wakes a little after what it is asked).
    waited_us: Arc<AtomicUsize>,
}

/// The simulated network: each answer arrives `latency` after its request was sent, woken by a
/// thread of its own at that instant.
///
/// A tokio timer would not do: its wheel turns once a millisecond, so every call in flight
/// would be answered on the same tick (a 2 ms sleep lasts ~3.1 ms), and the handler would
/// take up the eight answers of `parallel` 8 at once, on one thread, where a network answers
/// each about when it was sent.
///
/// Sending a request wakes nobody: it is queued, and the network's thread sleeps until the
/// first queued answer is due (every call has the same latency, so the queue is in due order).
/// A channel that woke that thread for each request cost the handler's thread a futex wake per
/// call, 6 % of its time at `parallel` 8 (`perf`), where a socket's write wakes no one.
#[derive(Debug, Clone)]
struct Network {
    latency: Duration,
    queue: Arc<Mutex<VecDeque<Request>>>,
}

/// When a request's answer is due, and where it goes.
type Request = (Instant, tokio::sync::oneshot::Sender<()>);

/// How long the network's thread sleeps while nothing is in flight: far less than the latency,
/// so a request sent meanwhile is answered on time.
const IDLE: Duration = Duration::from_micros(100);

impl Network {
    fn new(latency: Duration) -> Network {
        let queue: Arc<Mutex<VecDeque<Request>>> = Arc::default();
        let held = Arc::clone(&queue);
        std::thread::spawn(move || {
            let mut due = Vec::new();
            loop {
                let now = Instant::now();
                let (next, gone) = {
                    let mut q = held.lock().unwrap_or_else(|e| e.into_inner());
                    while q.front().is_some_and(|(at, _)| *at <= now) {
                        due.extend(q.pop_front());
                    }
                    // under the lock: no request can be queued between the two looks
                    (q.front().map(|(at, _)| *at), Arc::strong_count(&held) == 1)
                };
                for (_, answer) in due.drain(..) {
                    let _ = answer.send(());
                }
                match next {
                    Some(at) => std::thread::sleep(at.saturating_duration_since(Instant::now())),
                    // the last handle is gone: nothing more can be sent
                    None if gone => return,
                    None => std::thread::sleep(IDLE),
                }
            }
        });
        Network { latency, queue }
    }

    /// Resolves `latency` after it is called.
    fn answer(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((Instant::now() + self.latency, tx));
        async move {
            let _ = rx.await;
        }
    }
}

impl Canned {
    fn answer(request: &HttpRequest) -> Vec<u8> {
        let target = request.headers().get("x-amz-target").unwrap_or_default();
        if target.ends_with("PutEvents") {
            // counted without parsing, as the peer's handler counts them: outside a string,
            // a key is unescaped, and parsing every body was a fifteenth of the trigger's time
            // (a vectorized search, as V8's is: a naive one was 1.4 % of the trigger's instructions)
            let entries = request.body().bytes().map_or(0, |body| {
                memchr::memmem::find_iter(body, b"\"DetailType\":").count()
            });
            let ids: Vec<Value> = (0..entries)
                .map(|i| json!({"EventId": i.to_string()}))
                .collect();
            serde_json::to_vec(&json!({"FailedEntryCount": 0, "Entries": ids})).unwrap_or_default()
        } else {
            b"{}".to_vec()
        }
    }
}

impl HttpConnector for Canned {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let body = Canned::answer(&request);
        let response = http::Response::builder()
            .status(200)
            .header("content-type", "application/x-amz-json-1.0")
            .body(SdkBody::from(body))
            .map_err(|e| e.to_string())
            .and_then(|r| HttpResponse::try_from(r).map_err(|e| e.to_string()));
        let sent = Instant::now();
        let answered = self.latency.as_ref().map(Network::answer);
        let waited = Arc::clone(&self.waited_us);
        HttpConnectorFuture::new(async move {
            if let Some(answered) = answered {
                answered.await;
                waited.fetch_add(sent.elapsed().as_micros() as usize, Ordering::Relaxed);
            }
            response.map_err(|e| {
                aws_smithy_runtime_api::client::result::ConnectorError::other(e.into(), None)
            })
        })
    }
}

impl HttpClient for Canned {
    fn http_connector(
        &self,
        _: &HttpConnectorSettings,
        _: &RuntimeComponents,
    ) -> SharedHttpConnector {
        self.clone().into_shared()
    }
}

fn sdk_config(client: SharedHttpClient) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
            aws_sdk_dynamodb::config::Credentials::new("bench", "bench", None, None, "bench"),
        ))
        .endpoint_url("http://canned.invalid")
        .http_client(client)
        .build()
}

/// One scenario's result, as its process prints it.
#[derive(Debug, Clone, Default)]
struct Measured {
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    peak_rss_mb: f64,
    calls: usize,
    /// The mean latency a call actually had (latency scenarios), ms.
    call_latency_ms: f64,
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs `f` once to warm up, then `runs` times, each time on a payload of its own read from
/// `input` before the clock starts; the median, min and max in ms.
///
/// Each run owns its payload, as the handler owns the one the runtime hands over: it is
/// freed when the handler is done with it, so the peak RSS is the function's, not that of a
/// copy the benchmark keeps for the next run.
fn time(runs: usize, input: &Path, mut f: impl FnMut(sources::Bytes)) -> (f64, f64, f64) {
    let read = || {
        sources::Bytes::from(
            std::fs::read(input).unwrap_or_else(|e| panic!("{}: {e}", input.display())),
        )
    };
    f(read());
    let mut ms: Vec<f64> = (0..runs)
        .map(|_| {
            let payload = read();
            let t = Instant::now();
            f(payload);
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[0], ms[ms.len() - 1])
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio: {e}"))
}

/// A step that counts the units reaching it: the in-memory sink.
fn count<T: Send + 'static>(
    written: &Arc<AtomicUsize>,
) -> impl Fn(UnitOfWork<T>) -> std::future::Ready<Result<UnitOfWork<()>, StepError>>
+ Send
+ Sync
+ 'static {
    let written = Arc::clone(written);
    move |uow| {
        written.fetch_add(1, Ordering::Relaxed);
        std::future::ready(Ok(uow.with(())))
    }
}

/// The listener's two pipelines into an in-memory sink. With `map_rows`, each unit is mapped to
/// the listener's row and condition first (the production path without the SDK); without, the
/// sink gets the unit as routed (the framework's own path: decode, route, outcomes, response).
fn in_memory_handler(written: &Arc<AtomicUsize>, map_rows: bool) -> Handler {
    let pipeline = |id: &str, types: &[&str]| {
        let routed = Pipeline::new(id).on_event_type(types.to_vec());
        if map_rows {
            routed
                .map(|uow: UnitOfWork| {
                    let request = listener::to_put_request(&uow)?;
                    Ok(uow.with(request))
                })
                .then(count::<EntityPut>(written))
                .into_pipeline()
        } else {
            routed.then(count::<()>(written)).into_pipeline()
        }
    };
    Handler::builder(MemoryFaults::default())
        .in_key_order()
        .pipeline(pipeline("thing-view", &["thing-created", "thing-updated"]))
        .pipeline(pipeline("thing-deleted", &["thing-deleted"]))
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn scenario(name: &str, input: &Path, runs: usize) -> Measured {
    let rt = runtime();
    let ctx = context(Duration::from_secs(900));
    let canned = |latency: Option<Duration>| Canned {
        latency: latency.map(Network::new),
        calls: Arc::new(AtomicUsize::new(0)),
        waited_us: Arc::new(AtomicUsize::new(0)),
    };
    let mut call_latency_ms = 0.0;
    let (median, min, max, calls) = match name {
        "floor" => {
            let (a, b, c) = time(runs, input, |bytes| {
                let event: KinesisEvent = serde_json::from_slice(&bytes).unwrap_or_default();
                drop(bytes);
                let events: Vec<Event> = event
                    .records
                    .iter()
                    .filter_map(|r| serde_json::from_slice(&r.kinesis.data.0).ok())
                    .collect();
                assert!(!events.is_empty());
                std::hint::black_box(events);
            });
            (a, b, c, 0)
        }
        "production" | "routing" => {
            let written = Arc::new(AtomicUsize::new(0));
            let handler = in_memory_handler(&written, name == "production");
            let (a, b, c) = time(runs, input, |bytes| {
                // as `lambda_stream::run` hands the handler the payload the runtime hands over
                let response = rt
                    .block_on(handler.handle_payload::<sources::Kinesis>(bytes, &ctx))
                    .unwrap_or_else(|e| panic!("{e}"));
                std::hint::black_box(serde_json::to_vec(&response).unwrap_or_default());
            });
            let n = written.load(Ordering::Relaxed);
            (a, b, c, n / (runs + 1))
        }
        "listener-sdk" | "listener-sdk-2ms-p4" | "listener-sdk-2ms-p8" => {
            let (latency, parallel) = match name {
                "listener-sdk-2ms-p4" => (Some(LATENCY), 4),
                "listener-sdk-2ms-p8" => (Some(LATENCY), 8),
                _ => (None, 4),
            };
            let client = canned(latency);
            let (calls, waited) = (Arc::clone(&client.calls), Arc::clone(&client.waited_us));
            let config = sdk_config(client.into_shared());
            let db = DynamoDb::new(aws_sdk_dynamodb::Client::new(&config));
            let settings = Settings {
                parallel,
                ..Settings::default()
            };
            let handler = listener::handler(&settings, db, "views", MemoryFaults::default(), None)
                .unwrap_or_else(|e| panic!("{e}"));
            let (a, b, c) = time(runs, input, |bytes| {
                // as `lambda_stream::run` hands the handler the payload the runtime hands over
                let response = rt
                    .block_on(handler.handle_payload::<sources::Kinesis>(bytes, &ctx))
                    .unwrap_or_else(|e| panic!("{e}"));
                assert!(response.batch_item_failures.is_empty());
                std::hint::black_box(serde_json::to_vec(&response).unwrap_or_default());
            });
            let all = calls.load(Ordering::Relaxed);
            if all > 0 {
                call_latency_ms = waited.load(Ordering::Relaxed) as f64 / all as f64 / 1000.0;
            }
            (a, b, c, all / (runs + 1))
        }
        "trigger-sdk" => {
            let client = canned(None);
            let calls = Arc::clone(&client.calls);
            let config = sdk_config(client.into_shared());
            let bus = EventBridge::new(aws_sdk_eventbridge::Client::new(&config), "bench");
            let handler =
                trigger::handler(&Settings::default(), bus, MemoryFaults::default(), None)
                    .unwrap_or_else(|e| panic!("{e}"));
            let (a, b, c) = time(runs, input, |bytes| {
                // as `lambda_stream::run` hands the handler the payload the runtime hands over
                let response = rt
                    .block_on(handler.handle_payload::<sources::DynamoDb>(bytes, &ctx))
                    .unwrap_or_else(|e| panic!("{e}"));
                assert!(response.batch_item_failures.is_empty());
                std::hint::black_box(serde_json::to_vec(&response).unwrap_or_default());
            });
            (a, b, c, calls.load(Ordering::Relaxed) / (runs + 1))
        }
        other => panic!("unknown scenario {other}"),
    };
    Measured {
        median_ms: median,
        min_ms: min,
        max_ms: max,
        peak_rss_mb: peak_rss_mb(),
        calls,
        call_latency_ms,
    }
}

/// Process start to the first `GET .../invocation/next` on a local Runtime API, median of 9.
fn cold_start(binary: &Path) -> Option<f64> {
    let mut ms = Vec::new();
    for _ in 0..9 {
        let api = TcpListener::bind("127.0.0.1:0").ok()?;
        let addr = api.local_addr().ok()?;
        let started = Instant::now();
        let mut child = Command::new(binary)
            .env_clear()
            .envs(ALLOCATOR_ENV)
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", "bench-listener")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "bench")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "bench")
            .env("AWS_SECRET_ACCESS_KEY", "bench")
            .env("VIEWS_TABLE", "views")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let polled = api.accept().ok().and_then(|(mut s, _)| {
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).ok()?;
            let line = String::from_utf8_lossy(&buf[..n]).into_owned();
            line.contains("/runtime/invocation/next")
                .then(|| started.elapsed())
        });
        let _ = child.kill();
        let _ = child.wait();
        ms.push(polled?.as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    Some(ms[ms.len() / 2])
}

fn parse_measured(text: &str) -> Option<Measured> {
    let v: Value = serde_json::from_str(text.lines().last()?).ok()?;
    Some(Measured {
        median_ms: v["median_ms"].as_f64()?,
        min_ms: v["min_ms"].as_f64()?,
        max_ms: v["max_ms"].as_f64()?,
        peak_rss_mb: v["peak_rss_mb"].as_f64()?,
        calls: v["calls"].as_u64().unwrap_or(0) as usize,
        call_latency_ms: v["call_latency_ms"].as_f64().unwrap_or(0.0),
    })
}

fn own(scenario: &str, input: &Path, runs: usize) -> Option<Measured> {
    let me = std::env::current_exe().ok()?;
    let out = Command::new(me)
        .envs(ALLOCATOR_ENV)
        .args(["--scenario", scenario, "--input"])
        .arg(input)
        .args(["--runs", &runs.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("scenario {scenario} failed");
        return None;
    }
    parse_measured(&String::from_utf8_lossy(&out.stdout))
}

fn peer(dir: &Path, function: &str, mode: &str, input: &Path, runs: usize) -> Option<Measured> {
    let out = Command::new("node")
        .current_dir(dir)
        .args(["bench.cjs", function, mode])
        .arg(input)
        .arg(runs.to_string())
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("peer {function} {mode} failed");
        return None;
    }
    parse_measured(&String::from_utf8_lossy(&out.stdout))
}

/// One scenario's rounds as one row: the median of their medians, the extremes of their
/// runs, the highest peak RSS.
fn combined(rounds: &[Option<Measured>]) -> Option<Measured> {
    let rounds: Vec<&Measured> = rounds.iter().flatten().collect();
    let mut medians: Vec<f64> = rounds.iter().map(|m| m.median_ms).collect();
    medians.sort_by(f64::total_cmp);
    let first = rounds.first()?;
    Some(Measured {
        median_ms: medians[medians.len() / 2],
        min_ms: rounds
            .iter()
            .map(|m| m.min_ms)
            .fold(f64::INFINITY, f64::min),
        max_ms: rounds.iter().map(|m| m.max_ms).fold(0.0, f64::max),
        peak_rss_mb: rounds.iter().map(|m| m.peak_rss_mb).fold(0.0, f64::max),
        calls: first.calls,
        call_latency_ms: first.call_latency_ms,
    })
}

/// How many times slower the peer is: the median of each round's ratio (the peer's median
/// over ours, measured back to back), and every round's.
fn rounds_ratio(ours: &[Option<Measured>], theirs: &[Option<Measured>]) -> String {
    let mut ratios: Vec<f64> = ours
        .iter()
        .zip(theirs)
        .filter_map(|(o, t)| o.as_ref().zip(t.as_ref()))
        .filter(|(o, _)| o.median_ms > 0.0)
        .map(|(o, t)| t.median_ms / o.median_ms)
        .collect();
    if ratios.is_empty() {
        return "n/a".into();
    }
    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    ratios.sort_by(f64::total_cmp);
    format!(
        "peer with its SDK {:.2}× slower (median of {} rounds: {})",
        ratios[ratios.len() / 2],
        ratios.len(),
        each.join(", ")
    )
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let runs: usize = arg("--runs").and_then(|r| r.parse().ok()).unwrap_or(7);
    if let Some(name) = arg("--scenario") {
        let input = PathBuf::from(arg("--input").unwrap_or_default());
        let m = scenario(&name, &input, runs);
        println!(
            "{}",
            json!({"scenario": name, "median_ms": m.median_ms, "min_ms": m.min_ms,
                   "max_ms": m.max_ms, "peak_rss_mb": m.peak_rss_mb, "calls": m.calls,
                   "call_latency_ms": m.call_latency_ms})
        );
        return;
    }
    let records: usize = arg("--records")
        .and_then(|r| r.parse().ok())
        .unwrap_or(5000);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let peer_dir = root.join("peer");
    // next to this binary: <target>/release/stream-bench → <target>/bench, <target>/release/listener
    let release = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| root.join("../target/release"));
    let out_dir = release.join("../bench");
    std::fs::create_dir_all(&out_dir).unwrap_or_else(|e| panic!("{e}"));
    let generate = |kind: &str| -> PathBuf {
        let path = out_dir.join(format!("{kind}-{records}.json"));
        let out = Command::new("node")
            .current_dir(&peer_dir)
            .args(["gen.cjs", kind, &records.to_string()])
            .output()
            .unwrap_or_else(|e| panic!("node gen.cjs (Node 20 is needed): {e}"));
        assert!(out.status.success(), "gen.cjs {kind} failed");
        std::fs::write(&path, out.stdout).unwrap_or_else(|e| panic!("{e}"));
        path
    };
    let kinesis = generate("kinesis");
    let dynamodb = generate("dynamodb");
    let size_mb = std::fs::metadata(&kinesis).map_or(0.0, |m| m.len() as f64 / 1e6);
    eprintln!("batches: {records} records; Kinesis payload {size_mb:.1} MB");

    let rounds: usize = arg("--rounds")
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    let mut rows: Vec<(String, Option<Measured>)> = Vec::new();
    for (scenario, input) in [
        ("floor", &kinesis),
        ("routing", &kinesis),
        ("production", &kinesis),
        ("listener-sdk-2ms-p4", &kinesis),
        ("listener-sdk-2ms-p8", &kinesis),
    ] {
        eprintln!("running {scenario} ...");
        let runs = if scenario.contains("2ms") { 3 } else { runs };
        rows.push((scenario.to_owned(), own(scenario, input, runs)));
    }
    let have_peer = peer_dir.join("node_modules").exists();
    if !have_peer {
        eprintln!("bench/peer/node_modules missing: run `npm ci` there for the peer's figures");
    }
    // Ours and the peer's with their SDK clients, back to back in each round: the ratio of a
    // round is measured in one sitting, so a host that slows down between two scenarios (a
    // shared VM does) moves both sides of it.
    #[allow(clippy::type_complexity)]
    let mut sdk: Vec<(&str, Vec<Option<Measured>>, Vec<Option<Measured>>)> = Vec::new();
    for (scenario, function, input) in [
        ("listener-sdk", "listener", &kinesis),
        ("trigger-sdk", "trigger", &dynamodb),
    ] {
        // by round, so a ratio is only ever of two runs back to back (a failed one leaves
        // its round out)
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            eprintln!("running {scenario}, round {round} of {rounds} ...");
            ours.push(own(scenario, input, runs));
            if have_peer {
                eprintln!(
                    "running aws-lambda-stream {function} sdk, round {round} of {rounds} ..."
                );
                theirs.push(peer(&peer_dir, function, "sdk", input, runs));
            }
        }
        sdk.push((scenario, ours, theirs));
    }
    for (scenario, ours, theirs) in &sdk {
        rows.push((scenario.to_string(), combined(ours)));
        if have_peer {
            let function = scenario.trim_end_matches("-sdk");
            rows.push((format!("peer-{function}-sdk"), combined(theirs)));
        }
    }
    if have_peer {
        for (function, input) in [("listener", &kinesis), ("trigger", &dynamodb)] {
            eprintln!("running aws-lambda-stream {function} stubbed ...");
            rows.push((
                format!("peer-{function}-stubbed"),
                peer(&peer_dir, function, "stubbed", input, runs),
            ));
        }
    }
    const ORDER: [&str; 11] = [
        "floor",
        "routing",
        "production",
        "listener-sdk",
        "trigger-sdk",
        "listener-sdk-2ms-p4",
        "listener-sdk-2ms-p8",
        "peer-listener-stubbed",
        "peer-listener-sdk",
        "peer-trigger-stubbed",
        "peer-trigger-sdk",
    ];
    rows.sort_by_key(|(name, _)| ORDER.iter().position(|o| o == name));
    let binary = release.join("listener");
    let cold = if binary.exists() {
        cold_start(&binary)
    } else {
        eprintln!("{} missing: cold start not measured", binary.display());
        None
    };

    let get = |name: &str| {
        rows.iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, m)| m.clone())
    };
    let ratio = |a: &str, b: &str| match (get(a), get(b)) {
        (Some(a), Some(b)) if b.median_ms > 0.0 => format!("{:.2}×", a.median_ms / b.median_ms),
        _ => "n/a".into(),
    };
    let mut table = String::new();
    table.push_str(&format!(
        "{records} records, Kinesis payload {size_mb:.1} MB; medians of {runs} runs (3 with latency; with the SDK, of {rounds} rounds of {runs}, ours and the peer's back to back), release build\n\n"
    ));
    table.push_str("| scenario | median ms | min–max ms | calls | peak RSS MB | figure |\n|---|---|---|---|---|---|\n");
    for (name, m) in &rows {
        let figure = match name.as_str() {
            "routing" | "production" => format!("{} the floor", ratio(name, "floor")),
            "listener-sdk" | "trigger-sdk" => sdk
                .iter()
                .find(|(s, _, _)| s == name)
                .map(|(_, ours, theirs)| rounds_ratio(ours, theirs))
                .unwrap_or_default(),
            n if n.contains("2ms") => match m {
                Some(m) => {
                    let parallel = if n.ends_with("p8") { 8.0 } else { 4.0 };
                    let bound = m.calls as f64 * m.call_latency_ms / parallel;
                    let nominal = m.calls as f64 * LATENCY.as_secs_f64() * 1000.0 / parallel;
                    format!(
                        "{:.0}% of the latency bound ({bound:.0} ms: calls × their mean latency, {:.2} ms, ÷ {parallel}; {nominal:.0} ms at exactly 2 ms)",
                        100.0 * bound / m.median_ms,
                        m.call_latency_ms
                    )
                }
                None => String::new(),
            },
            _ => String::new(),
        };
        match m {
            Some(m) => table.push_str(&format!(
                "| {name} | {:.1} | {:.1}–{:.1} | {} | {:.0} | {figure} |\n",
                m.median_ms, m.min_ms, m.max_ms, m.calls, m.peak_rss_mb
            )),
            None => table.push_str(&format!("| {name} | failed | | | | |\n")),
        }
    }
    if let Some(c) = cold {
        table.push_str(&format!(
            "\nCold start (listener binary, process start to its first poll of a local Runtime API, median of 9): {c:.1} ms\n"
        ));
    }
    println!("{table}");
    let _ = std::fs::write(out_dir.join("results.md"), &table);
    // for `local-stack capacity --bench <target>/bench/results.json`
    let scenarios: serde_json::Map<String, Value> = rows
        .iter()
        .filter_map(|(name, m)| {
            m.as_ref().map(|m| {
                (
                    name.clone(),
                    json!({"median_ms": m.median_ms, "peak_rss_mb": m.peak_rss_mb, "calls": m.calls}),
                )
            })
        })
        .collect();
    let results = json!({"records": records, "cold_start_ms": cold, "scenarios": scenarios});
    let _ = std::fs::write(out_dir.join("results.json"), results.to_string());
}
