//! Functions run as Lambda runs them: the built binary in its own process, with the template's
//! environment, talking to a Lambda Runtime API that the local stack serves on loopback.
//!
//! A function runs as one or more instances, each a process taking one invocation at a time (a
//! Lambda instance does the same) from its own Runtime API; an invocation goes to a free
//! instance. An invocation past the function's timeout kills its instance's process, and a
//! process that exits is started again, as Lambda replaces a failed sandbox.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::StatusCode;
use serde_json::json;
use tokio::process::Command;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};

use crate::Error;
use crate::http::{Received, Reply, Server, reply, serve};
use crate::invoke::{FunctionError, Invoke};
use crate::spec::FunctionSpec;

type Answer = Result<Bytes, FunctionError>;

struct Pending {
    id: String,
    payload: Bytes,
    deadline_ms: u128,
    answer: oneshot::Sender<Answer>,
}

struct Api {
    function_arn: String,
    queue: tokio::sync::Mutex<mpsc::Receiver<Pending>>,
    in_flight: Mutex<HashMap<String, oneshot::Sender<Answer>>>,
}

impl Api {
    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Answer>>> {
        // a poisoned lock only means another request panicked; the map is still usable
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn handle(&self, req: Received) -> Reply {
        let path = req.parts.uri.path();
        let Some(rest) = path.strip_prefix("/2018-06-01/runtime/") else {
            return reply(StatusCode::NOT_FOUND, "{}");
        };
        if rest == "invocation/next" {
            let Some(p) = self.queue.lock().await.recv().await else {
                return reply(StatusCode::GONE, "{}");
            };
            self.in_flight().insert(p.id.clone(), p.answer);
            let mut r = reply(StatusCode::OK, p.payload);
            let h = r.headers_mut();
            let mut set = |k: &'static str, v: String| {
                if let Ok(v) = http::HeaderValue::from_str(&v) {
                    h.insert(k, v);
                }
            };
            set("lambda-runtime-aws-request-id", p.id);
            set("lambda-runtime-deadline-ms", p.deadline_ms.to_string());
            set(
                "lambda-runtime-invoked-function-arn",
                self.function_arn.clone(),
            );
            set(
                "lambda-runtime-trace-id",
                "Root=1-00000000-000000000000000000000000;Sampled=0".into(),
            );
            return r;
        }
        if rest == "init/error" {
            tracing::error!(body = %String::from_utf8_lossy(&req.body), "function failed to start");
            return reply(StatusCode::ACCEPTED, "{}");
        }
        let mut segments = rest.split('/');
        match (segments.next(), segments.next(), segments.next()) {
            (Some("invocation"), Some(id), Some(kind @ ("response" | "error"))) => {
                let Some(answer) = self.in_flight().remove(id) else {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        r#"{"errorMessage":"unknown request id"}"#,
                    );
                };
                let result = if kind == "response" {
                    Ok(req.body)
                } else {
                    let v: serde_json::Value =
                        serde_json::from_slice(&req.body).unwrap_or_default();
                    Err(FunctionError::new(
                        v["errorType"].as_str().unwrap_or("Unhandled"),
                        v["errorMessage"].as_str().unwrap_or("function error"),
                    ))
                };
                let _ = answer.send(result);
                reply(StatusCode::ACCEPTED, "{}")
            }
            _ => reply(StatusCode::NOT_FOUND, "{}"),
        }
    }
}

/// One instance: a process behind its own Runtime API.
/// What one instance has done: for the load run's per-function figures.
#[derive(Default)]
struct InstanceUsage {
    invocations: AtomicU64,
    busy_us: AtomicU64,
    /// Its current process (0: none).
    pid: AtomicU32,
    /// CPU of its earlier processes (restarted after a timeout or a crash), in ms.
    earlier_cpu_ms: AtomicU64,
    /// The current process's CPU when last read, in ms: what is kept of it if it exits (once
    /// reaped, `/proc` no longer has it), so that the sum never goes back.
    seen_cpu_ms: AtomicU64,
}

impl InstanceUsage {
    fn cpu(&self) -> Duration {
        let pid = self.pid.load(Relaxed);
        if let Some(now) = crate::cpu::of_process(pid).filter(|_| pid != 0) {
            self.seen_cpu_ms.fetch_max(now.as_millis() as u64, Relaxed);
        }
        Duration::from_millis(self.earlier_cpu_ms.load(Relaxed) + self.seen_cpu_ms.load(Relaxed))
    }

    /// The process is going (killed, or exited): keep what it used, as last read if it is
    /// already gone.
    fn retire(&self) {
        self.cpu();
        self.pid.store(0, Relaxed);
        let seen = self.seen_cpu_ms.swap(0, Relaxed);
        self.earlier_cpu_ms.fetch_add(seen, Relaxed);
    }
}

/// What a function's instances have done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Instances it runs.
    pub instances: usize,
    /// Instances that took at least one invocation.
    pub used: usize,
    /// Invocations answered (or timed out).
    pub invocations: u64,
    /// Time the instances spent in invocations, summed.
    pub busy: Duration,
    /// CPU time (user and system) of its processes, summed.
    pub cpu: Duration,
}

struct Instance {
    usage: Arc<InstanceUsage>,
    queue: mpsc::Sender<Pending>,
    api: Arc<Api>,
    restart: Arc<Notify>,
    _server: Server,
}

/// A function running as processes behind local Runtime APIs.
pub struct LocalFunction {
    spec: FunctionSpec,
    instances: Vec<Instance>,
    /// Instances free to take an invocation.
    free: std::sync::Mutex<Vec<usize>>,
    turns: Semaphore,
    shutdown: watch::Sender<bool>,
    supervisors: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl LocalFunction {
    /// Starts `instances` processes of `exe` for `spec` (at least one), their output appended to
    /// `log_dir/<name>.log`.
    pub async fn start(
        spec: FunctionSpec,
        exe: &Path,
        log_dir: &Path,
        instances: usize,
    ) -> Result<Arc<Self>, Error> {
        let (shutdown, stop) = watch::channel(false);
        std::fs::create_dir_all(log_dir)?;
        let log = log_dir.join(format!("{}.log", spec.name));
        let count = instances.max(1);
        let mut started = Vec::with_capacity(count);
        let mut supervisors = Vec::with_capacity(count);
        for i in 0..count {
            let (queue, rx) = mpsc::channel(64);
            let api = Arc::new(Api {
                function_arn: spec.arn.clone(),
                queue: tokio::sync::Mutex::new(rx),
                in_flight: Mutex::new(HashMap::new()),
            });
            let server_api = Arc::clone(&api);
            let server = serve(move |req| {
                let api = Arc::clone(&server_api);
                async move { api.handle(req).await }
            })
            .await?;
            let restart = Arc::new(Notify::new());
            let mut env: Vec<(String, String)> = spec.environment.clone().into_iter().collect();
            env.extend([
                ("AWS_LAMBDA_RUNTIME_API".into(), server.addr.to_string()),
                ("AWS_LAMBDA_FUNCTION_NAME".into(), spec.name.clone()),
                (
                    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(),
                    spec.memory.to_string(),
                ),
                ("AWS_LAMBDA_FUNCTION_VERSION".into(), "$LATEST".into()),
                (
                    "AWS_LAMBDA_LOG_GROUP_NAME".into(),
                    format!("/aws/lambda/{}", spec.name),
                ),
                ("AWS_LAMBDA_LOG_STREAM_NAME".into(), format!("local-{i}")),
                ("_HANDLER".into(), "bootstrap".into()),
            ]);
            let usage = Arc::new(InstanceUsage::default());
            supervisors.push(tokio::spawn(supervise(
                spec.name.clone(),
                exe.to_owned(),
                env,
                log.clone(),
                Arc::clone(&restart),
                Arc::clone(&usage),
                stop.clone(),
            )));
            started.push(Instance {
                usage,
                queue,
                api,
                restart,
                _server: server,
            });
        }
        Ok(Arc::new(Self {
            spec,
            instances: started,
            free: std::sync::Mutex::new((0..count).rev().collect()),
            turns: Semaphore::new(count),
            shutdown,
            supervisors: Mutex::new(supervisors),
        }))
    }

    /// The function's template entry.
    pub fn spec(&self) -> &FunctionSpec {
        &self.spec
    }

    /// How many instances run it.
    pub fn instances(&self) -> usize {
        self.instances.len()
    }

    /// What its instances have done so far.
    pub fn usage(&self) -> Usage {
        self.instances.iter().fold(
            Usage {
                instances: self.instances.len(),
                ..Usage::default()
            },
            |mut u, i| {
                let n = i.usage.invocations.load(Relaxed);
                u.used += usize::from(n > 0);
                u.invocations += n;
                u.busy += Duration::from_micros(i.usage.busy_us.load(Relaxed));
                u.cpu += i.usage.cpu();
                u
            },
        )
    }

    /// Stops the processes and waits until they have exited.
    pub async fn stop(&self) {
        let _ = self.shutdown.send(true);
        let tasks =
            std::mem::take(&mut *self.supervisors.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }

    fn free(&self) -> std::sync::MutexGuard<'_, Vec<usize>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Invoke for LocalFunction {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn arn(&self) -> String {
        self.spec.arn.clone()
    }

    fn invoke(&self, payload: Bytes) -> BoxFuture<'_, Answer> {
        Box::pin(async move {
            let stopping = || FunctionError::new("Runtime.Stopped", "the local stack is stopping");
            let _turn = self.turns.acquire().await.map_err(|_| stopping())?;
            // a turn guarantees a free instance
            let Some(i) = self.free().pop() else {
                return Err(stopping());
            };
            let instance = &self.instances[i];
            let began = std::time::Instant::now();
            let answer = async {
                let id = uuid::Uuid::new_v4().to_string();
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                let (answer, answered) = oneshot::channel();
                let pending = Pending {
                    id: id.clone(),
                    payload,
                    deadline_ms: (now + self.spec.timeout).as_millis(),
                    answer,
                };
                instance.queue.send(pending).await.map_err(|_| stopping())?;
                match tokio::time::timeout(self.spec.timeout, answered).await {
                    Ok(Ok(answer)) => answer,
                    Ok(Err(_)) => Err(FunctionError::new(
                        "Runtime.ExitError",
                        "the function's process exited during the invocation",
                    )),
                    Err(_) => {
                        instance.api.in_flight().remove(&id);
                        instance.restart.notify_one();
                        Err(FunctionError::new(
                            "Sandbox.Timedout",
                            format!(
                                "Task timed out after {} seconds",
                                self.spec.timeout.as_secs()
                            ),
                        ))
                    }
                }
            }
            .await;
            instance.usage.invocations.fetch_add(1, Relaxed);
            instance
                .usage
                .busy_us
                .fetch_add(began.elapsed().as_micros() as u64, Relaxed);
            self.free().push(i);
            answer
        })
    }
}

async fn supervise(
    name: String,
    exe: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    restart: Arc<Notify>,
    usage: Arc<InstanceUsage>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        let child = spawn(&exe, &env, &log);
        let born = std::time::Instant::now();
        let mut child = match child {
            Ok(c) => {
                usage.pid.store(c.id().unwrap_or(0), Relaxed);
                c
            }
            Err(e) => {
                tracing::error!(function = %name, error = %e, "cannot start the function's process");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        tokio::select! {
            status = child.wait() => {
                // reaped: its CPU since it was last read is lost (a crash is rare)
                usage.retire();
                // a function that cannot start is retried slower and slower, as Lambda does
                if born.elapsed() > Duration::from_secs(10) {
                    failures = 0;
                }
                failures += 1;
                let wait = Duration::from_millis(200 * (1 << failures.min(7)));
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(function = %name, ?status, failures, log = %log.display(), "function process exited; starting it again");
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
            }
            _ = restart.notified() => {
                usage.retire();
                let _ = child.kill().await;
            }
            _ = stop.changed() => {
                let _ = child.kill().await;
                return;
            }
        }
    }
}

fn spawn(
    exe: &Path,
    env: &[(String, String)],
    log: &Path,
) -> std::io::Result<tokio::process::Child> {
    let out = OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(exe);
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    // nothing the local stack started outlives it
    lambda_stream::testing::dies_with_parent(cmd.as_std_mut());
    cmd.spawn()
}

/// The payload of an asynchronous invocation's failure record, as Lambda sends it to an
/// on-failure destination.
pub fn async_failure_record(
    function_arn: &str,
    payload: &serde_json::Value,
    error: &FunctionError,
    attempts: u32,
) -> serde_json::Value {
    json!({
        "version": "1.0",
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "requestContext": {
            "requestId": uuid::Uuid::new_v4().to_string(),
            "functionArn": format!("{function_arn}:$LATEST"),
            "condition": "RetriesExhausted",
            "approximateInvokeCount": attempts,
        },
        "requestPayload": payload,
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "responsePayload": {"errorType": error.error_type, "errorMessage": error.message},
    })
}

/// An asynchronous invocation as Lambda makes it: the invocation and up to
/// `spec.async_retries` retries; when all fail, a failure record goes to the function's
/// dead-letter queue or on-failure destination (an SQS queue).
pub async fn invoke_async(function: &LocalFunction, payload: Bytes, sqs: &aws_sdk_sqs::Client) {
    let spec = function.spec();
    let mut last = None;
    for attempt in 0..=spec.async_retries {
        if attempt > 0 {
            tokio::time::sleep(crate::mapping::policy::retry_delay(attempt)).await;
        }
        match function.invoke(payload.clone()).await {
            Ok(_) => return,
            Err(e) => {
                tracing::info!(function = %spec.name, attempt, error = %e, "asynchronous invocation failed");
                last = Some(e);
            }
        }
    }
    let Some(error) = last else { return };
    let Some(destination) = &spec.async_failure else {
        tracing::warn!(function = %spec.name, error = %error, "asynchronous invocation dropped: no failure destination");
        return;
    };
    let event: serde_json::Value =
        serde_json::from_slice(&payload).unwrap_or(serde_json::Value::Null);
    let record = async_failure_record(&spec.arn, &event, &error, spec.async_retries + 1);
    if let Err(e) =
        crate::destination::send_to_queue_arn(sqs, destination, &record.to_string()).await
    {
        tracing::error!(function = %spec.name, error = %e, "cannot send the failure record");
    }
}
