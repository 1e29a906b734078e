//! `local-stack`: the reference system on this machine, against the local AWS emulator.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use local_stack::provision::names_only;
use local_stack::scaling::Scaling;
use local_stack::stack::{Options, Stack};
use local_stack::template::Template;
use local_stack::{Error, capacity, chaos, demo, load, replay};

#[derive(Parser)]
#[command(
    version,
    about = "Run template.yaml's functions locally: resources in the emulator, event source mappings emulated",
    long_about = "Run template.yaml's functions locally.\n\n\
        `up` and `demo` need the local AWS emulator: run them through `make up` / `make demo` \
        (or `scripts/with-emulator.sh local-stack ...`), which start it on 127.0.0.1 and stop it \
        afterwards. `replay --dry-run` needs nothing running."
)]
struct Cli {
    /// The SAM template.
    #[arg(
        long,
        global = true,
        default_value = "template.yaml",
        env = "LOCAL_STACK_TEMPLATE"
    )]
    template: PathBuf,
    /// The stack's name, which prefixes every resource (default: `local` for `up` and `replay`,
    /// a fresh `demo-<id>` for `demo`).
    #[arg(long, global = true)]
    stack: Option<String>,
    /// A template parameter for this run, `Name=value` (repeatable), as
    /// `sam deploy --parameter-overrides`; local runs set `StaleAfterSeconds=20` unless told.
    #[arg(long = "parameter", global = true, value_parser = parameter)]
    parameters: Vec<(String, String)>,
    #[command(subcommand)]
    command: Command,
}

/// Fault injection and concurrency, for `up`, `demo` and `load`.
#[derive(clap::Args, Clone, Copy)]
struct Run {
    /// Fault the functions' writes at this rate (0 to 1): throttles, lost responses and
    /// partial batch failures, as AWS returns them; and duplicate and reorder records between
    /// the bus and Kinesis. Printed by operation and kind.
    #[arg(long, default_value_t = 0.0)]
    chaos: f64,
    /// The chaos' seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Instances serving a function's HTTP routes, one request each at a time (Lambda runs as
    /// many as there are requests in flight).
    #[arg(long, default_value_t = 4)]
    instances: usize,
    /// The most instances of a function without `ReservedConcurrentExecutions` (the local
    /// stand-in for the account's concurrency limit). Stream functions run shards ×
    /// parallelization instances, queue functions their maximum concurrency (else 5).
    #[arg(long, default_value_t = 10)]
    max_instances: usize,
    /// Shards of every Kinesis stream (default: the template's `ShardCount`, else 1).
    #[arg(long)]
    shards: Option<u32>,
    /// `ParallelizationFactor` of every stream mapping, 1–10 (default: the template's).
    #[arg(long)]
    parallelization: Option<usize>,
    /// `ScalingConfig.MaximumConcurrency` of every SQS mapping, 2–1000 (default: the
    /// template's, else 5).
    #[arg(long)]
    queue_concurrency: Option<usize>,
    /// Build the functions with cargo's release profile, as deployed (slower to build, the
    /// figures a load run reports are then production's).
    #[arg(long)]
    release: bool,
}

impl Default for Run {
    fn default() -> Self {
        Run {
            chaos: 0.0,
            seed: 1,
            instances: 1,
            max_instances: 1,
            shards: None,
            parallelization: None,
            queue_concurrency: None,
            release: false,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Provision the template's tables, streams, queues, bucket, bus and rules in the emulator,
    /// build and run every function behind a local Lambda Runtime API, poll their DynamoDB,
    /// Kinesis and SQS event sources like Lambda's event source mappings, and serve the HTTP
    /// API; until Ctrl-C.
    Up {
        /// The HTTP API's (and Lambda Invoke API's) port on 127.0.0.1.
        #[arg(long, default_value_t = 3000)]
        port: u16,
        #[command(flatten)]
        run: Run,
    },
    /// `up`, then send the reference system a stream of commands (some invalid, one duplicate),
    /// print the events, views and faults they produce, stop everything, and exit 0 only if
    /// the views match what the commands imply.
    Demo {
        /// How long to wait for the views, in seconds.
        #[arg(long, default_value_t = 120)]
        wait: u64,
        #[command(flatten)]
        run: Run,
    },
    /// `up`, then many commands on a few dozen things from concurrent clients (creates,
    /// updates, deletes, back-to-back update/delete/update, rejected and invalid commands,
    /// repeated request ids), optionally at a target rate for a duration, with progress while
    /// sending; wait for the system to settle, audit the event log, the views and the stored
    /// faults against what the commands imply, and print the figures: commands offered,
    /// accepted and rejected a second, the latency from an accepted command to its view (p50,
    /// p95, p99, max), per function its instances used, invocations, busy share and CPU, per
    /// mapping its mean batch and maximum iterator age, the functions' AWS calls per command
    /// and the CPU shares of functions, emulator and local stack. Exits 0 only if every check
    /// holds.
    Load {
        /// Requests in all.
        #[arg(long, default_value_t = 300)]
        commands: usize,
        /// Things they are about.
        #[arg(long, default_value_t = 30)]
        things: usize,
        /// Clients sending at once.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// The workload's seed.
        #[arg(long, default_value_t = 7)]
        workload_seed: u64,
        /// How long to wait for the system to settle, in seconds.
        #[arg(long, default_value_t = 240)]
        wait: u64,
        /// Commands a second the clients send together, at most (each waits for its answer
        /// before its next command, so a slow system gets fewer); default: as fast as answered.
        #[arg(long, value_parser = rate)]
        rate: Option<f64>,
        /// Send for this many seconds: `--commands` becomes rate × duration (needs `--rate`).
        #[arg(long, requires = "rate")]
        duration: Option<f64>,
        #[command(flatten)]
        run: Run,
    },
    /// Run a function of the template on a captured event (for example one of `events/`): its
    /// own binary, built and run behind a local Runtime API with the template's environment;
    /// with `--dry-run` every write goes to a recording endpoint instead of the emulator and is
    /// printed as a JSON line, then a one-line JSON summary (records, outcomes, elapsed ms).
    Replay {
        /// The function: its template logical id, name or binary (e.g. `listener`).
        #[arg(long)]
        function: String,
        /// The event's JSON file.
        #[arg(long)]
        event: PathBuf,
        /// Capture writes in memory instead of sending them.
        #[arg(long)]
        dry_run: bool,
    },
    /// The capacity model: for each target rate, the Kinesis shards, parallelization factor,
    /// Lambda memory, concurrency and GB-seconds, DynamoDB write units, EventBridge entries and
    /// a month's cost (the dated price table in `local-stack/src/prices.json`), for this
    /// library and for aws-lambda-stream on Node, from `make bench`'s per-record figures.
    /// Needs nothing running.
    Capacity {
        /// Target rates, events a second (repeatable).
        #[arg(long = "rate", default_values_t = [1_000.0, 10_000.0, 100_000.0, 1_000_000.0])]
        rates: Vec<f64>,
        /// An event's size in bytes.
        #[arg(long, default_value_t = 1100.0)]
        event_bytes: f64,
        /// Records per invocation (the template's BatchSize).
        #[arg(long, default_value_t = 100.0)]
        batch_size: f64,
        /// One AWS call's round trip, ms (a conditional write in the region).
        #[arg(long, default_value_t = 8.0)]
        call_ms: f64,
        /// Calls in flight per batch (PARALLEL).
        #[arg(long, default_value_t = 4.0)]
        parallel: f64,
        /// A `make bench` run's results.json (default: the figures of the run in the README).
        #[arg(long)]
        bench: Option<PathBuf>,
    },
    /// List, show and resubmit the fault events the fault monitor stored: the fault monitor's
    /// `faults` command (`local-stack faults --help` shows its own), with the bucket defaulting
    /// to the template's `FaultsBucketName` output for the stack.
    #[command(disable_help_flag = true)]
    Faults {
        /// The `faults` command's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // progress and reports go to stdout; the stack's own diagnostics to stderr
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOCAL_STACK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .try_init();

    if let Command::Capacity {
        rates,
        event_bytes,
        batch_size,
        call_ms,
        parallel,
        bench,
    } = &cli.command
    {
        let (ours, peer) = match bench {
            Some(path) => match std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|text| capacity::Measured::from_bench(&text))
            {
                Ok(both) => both,
                Err(e) => {
                    eprintln!("{}: {e}", path.display());
                    return ExitCode::from(2);
                }
            },
            None => (capacity::Measured::ours(), capacity::Measured::peer()),
        };
        let model = capacity::Model {
            event_bytes: *event_bytes,
            batch_size: *batch_size,
            call_ms: *call_ms,
            parallel: *parallel,
            ..capacity::Model::default()
        };
        println!("{}", model.report(&ours, &peer, rates));
        return ExitCode::SUCCESS;
    }
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&Error::Io(e)),
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Up { port, run } => {
                let mut opts = options(
                    &cli.template,
                    cli.stack.as_deref().unwrap_or("local"),
                    port,
                    run,
                );
                opts.parameters = cli.parameters;
                up(&opts).await
            }
            Command::Demo { wait, run } => {
                let stack = cli.stack.unwrap_or_else(|| fresh("demo"));
                let mut opts = options(&cli.template, &stack, 0, run);
                opts.parameters = cli.parameters;
                let (op, text) = demo::ALWAYS_THROTTLED;
                opts.always_throttle.push((op.to_owned(), text.to_owned()));
                run_demo(&opts, Duration::from_secs(wait)).await
            }
            Command::Load {
                commands,
                things,
                clients,
                workload_seed,
                wait,
                rate,
                duration,
                run,
            } => {
                let stack = cli.stack.unwrap_or_else(|| fresh("load"));
                let commands = match (rate, duration) {
                    (Some(r), Some(d)) => (r * d).ceil().max(1.0) as usize,
                    _ => commands,
                };
                let settings = load::Settings {
                    rate,
                    commands,
                    things,
                    clients,
                    seed: workload_seed,
                    wait: Duration::from_secs(wait),
                };
                let mut opts = options(&cli.template, &stack, 0, run);
                opts.parameters = cli.parameters;
                run_load(&opts, &settings).await
            }
            Command::Replay {
                function,
                event,
                dry_run,
            } => {
                let stack = cli.stack.clone().unwrap_or_else(|| "local".into());
                replay_cmd(&cli.template, &stack, &region, &function, &event, dry_run).await
            }
            Command::Faults { args } => {
                let stack = cli.stack.as_deref().unwrap_or("local");
                faults_cmd(
                    &cli.template,
                    faults_bucket(&cli.template, stack, &region),
                    &args,
                )
                .await
            }
            // answered before the runtime started
            Command::Capacity { .. } => ExitCode::SUCCESS,
        }
    })
}

fn fail(e: &Error) -> ExitCode {
    eprintln!("local-stack: {e}");
    ExitCode::FAILURE
}

/// A fresh stack name, so runs never share resources.
fn fresh(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
}

fn rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.01..=1e6).contains(&r) => Ok(r),
        _ => Err(format!(
            "`{text}`: expected commands a second, 0.01 to 1000000"
        )),
    }
}

fn parameter(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{text}`: expected Name=value"))
}

fn options(template: &Path, stack: &str, port: u16, run: Run) -> Options {
    let root = template
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    Options {
        log_dir: root.join("target/local-stack").join(stack),
        root,
        template: template.to_path_buf(),
        stack: stack.to_owned(),
        api_port: port,
        scaling: Scaling {
            max_instances: run.max_instances.max(1),
            http_instances: run.instances.max(1),
            shards: run.shards,
            parallelization: run.parallelization,
            queue_concurrency: run.queue_concurrency,
        },
        release: run.release,
        chaos: (run.chaos > 0.0).then_some((run.chaos, run.seed)),
        always_throttle: Vec::new(),
        parameters: Vec::new(),
    }
}

/// What the chaos injected, if it was on.
fn print_chaos(stack: &Stack) {
    let Some(c) = &stack.chaos else { return };
    let injected = c.injected();
    let total: u64 = injected.values().sum();
    if c.rate() > 0.0 {
        println!(
            "\n== Chaos at {:.0}%: {total} faults injected",
            c.rate() * 100.0
        );
    } else {
        println!("\n== Writes throttled for good: {total}");
    }
    for line in chaos::summary(&injected) {
        println!("  {line}");
    }
}

fn progress(message: &str) {
    println!("· {message}");
}

/// Ctrl-C or SIGTERM.
async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

async fn up(opts: &Options) -> ExitCode {
    let started = tokio::select! {
        s = Stack::start(opts, &progress) => s,
        _ = interrupted() => return ExitCode::from(130),
    };
    let stack = match started {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let names = &stack.provisioned.names;
    println!("\nResources:");
    for c in &stack.provisioned.created {
        println!("  {:<24} {:<24} {}", c.logical_id, c.kind, c.name);
    }
    println!("\nIn another shell, with the same emulator:");
    println!(
        "  export AWS_ENDPOINT_URL={}",
        std::env::var("AWS_ENDPOINT_URL").unwrap_or_default()
    );
    println!("  export AWS_ENDPOINT_URL_LAMBDA=http://{}", stack.api);
    println!(
        "  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION={}",
        names.region()
    );
    println!(
        "  curl -s -XPOST http://{}/commands -d '{{\"type\":\"thing\",\"command\":\"create-thing\",\"requestId\":\"r1\",\"data\":{{\"id\":\"t1\",\"name\":\"Lamp\"}}}}'",
        stack.api
    );
    println!(
        "  cargo run -p local-stack -- --stack {} faults list",
        names.stack()
    );
    println!("\nRunning; Ctrl-C stops everything.");
    let mut last = String::new();
    let watch = async {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let now = serde_json::to_string(&stack.activity.snapshot()).unwrap_or_default();
            if now != last {
                for (key, c) in stack.activity.snapshot() {
                    println!(
                        "  {key:<52} invocations {:>4}  delivered {:>4}  retried {:>3}  given up {:>3}",
                        c.invocations, c.delivered, c.retried, c.given_up
                    );
                }
                print_chaos(&stack);
                last = now;
            }
        }
    };
    tokio::select! {
        _ = watch => {}
        _ = interrupted() => {}
    }
    print_chaos(&stack);
    println!("\nStopping the functions and pollers...");
    stack.stop().await;
    ExitCode::SUCCESS
}

/// Starts a fresh stack, runs `scenario` on it, then prints what the chaos did and stops
/// everything (on Ctrl-C too). `Err` is the exit code when it could not run to the end.
async fn on_a_fresh_stack<T>(
    opts: &Options,
    what: &str,
    scenario: impl for<'a> FnOnce(&'a Stack) -> futures::future::BoxFuture<'a, Result<T, Error>>,
) -> Result<T, ExitCode> {
    println!("local-stack {what}: stack `{}`", opts.stack);
    let stack = tokio::select! {
        s = Stack::start(opts, &progress) => s.map_err(|e| fail(&e))?,
        _ = interrupted() => return Err(ExitCode::from(130)),
    };
    let outcome = tokio::select! {
        r = scenario(&stack) => Some(r),
        _ = interrupted() => None,
    };
    print_chaos(&stack);
    println!("\n· stopping the functions and pollers");
    stack.stop().await;
    match outcome {
        None => {
            println!("interrupted");
            Err(ExitCode::from(130))
        }
        Some(Err(e)) => Err(fail(&e)),
        Some(Ok(t)) => Ok(t),
    }
}

async fn run_demo(opts: &Options, wait: Duration) -> ExitCode {
    let started = Instant::now();
    let report =
        match on_a_fresh_stack(opts, "demo", |stack| Box::pin(demo::run(stack, wait))).await {
            Ok(r) => r,
            Err(code) => return code,
        };
    let elapsed = started.elapsed().as_secs_f64();
    match report {
        report if report.problems.is_empty() => {
            println!(
                "\nRESULT: OK - every view and higher-order event matches what the commands imply ({elapsed:.1}s); function logs in {}",
                opts.log_dir.display()
            );
            ExitCode::SUCCESS
        }
        report => {
            println!(
                "\nRESULT: FAILED ({elapsed:.1}s); function logs in {}",
                opts.log_dir.display()
            );
            for p in report.problems {
                println!("  - {p}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run_load(opts: &Options, settings: &load::Settings) -> ExitCode {
    let started = Instant::now();
    let settings = *settings;
    let report = match on_a_fresh_stack(opts, "load", move |stack| {
        Box::pin(async move { load::run(stack, &settings).await })
    })
    .await
    {
        Ok(r) => r,
        Err(code) => return code,
    };
    let elapsed = started.elapsed().as_secs_f64();
    let a = &report.audit;
    println!("\n== Audit");
    println!("  commands stored       {}", report.stored);
    println!(
        "  events                expected {}, found {}, doubled {}",
        a.events_expected, a.events_found, a.events_doubled
    );
    println!(
        "  views                 expected {}, right {}, wrong or missing {}",
        a.views_expected,
        a.views_right,
        a.views_expected - a.views_right.min(a.views_expected)
    );
    println!(
        "  faults                expected {}, stored {}",
        a.faults_expected, a.faults_stored
    );
    println!(
        "  intake                {:.1} accepted commands/s",
        report.intake_per_second
    );
    if a.problems.is_empty() {
        println!(
            "\nRESULT: OK - every accepted command is one event, every rejected one one stored fault, every view as implied ({elapsed:.1}s)"
        );
        ExitCode::SUCCESS
    } else {
        println!(
            "\nRESULT: FAILED ({elapsed:.1}s); function logs in {}",
            opts.log_dir.display()
        );
        for p in a.problems.iter().take(40) {
            println!("  - {p}");
        }
        if a.problems.len() > 40 {
            println!("  ... and {} more", a.problems.len() - 40);
        }
        ExitCode::FAILURE
    }
}

async fn replay_cmd(
    template: &Path,
    stack: &str,
    region: &str,
    function: &str,
    event: &Path,
    dry_run: bool,
) -> ExitCode {
    let spec = match replay::find(template, stack, region, function) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let bytes = match std::fs::read(event) {
        Ok(b) => b,
        Err(e) => {
            return fail(&Error::Other(format!(
                "cannot read {}: {e}",
                event.display()
            )));
        }
    };
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        return fail(&Error::Other(format!("the event is not JSON: {e}")));
    }
    let opts = options(template, &fresh("replay"), 0, Run::default());
    match replay::run(&opts.root, &spec, &bytes, dry_run, &opts.log_dir).await {
        Ok((writes, summary)) => {
            for w in writes {
                println!("{}", serde_json::to_string(&w).unwrap_or_default());
            }
            println!("{}", serde_json::to_string(&summary).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Runs the fault monitor's `faults` command (built from the workspace) with `args`, its
/// bucket defaulting to the stack's.
async fn faults_cmd(template: &Path, bucket: Option<String>, args: &[String]) -> ExitCode {
    let root = options(template, "faults", 0, Run::default()).root;
    let exes = match local_stack::binaries::build(&root, &["faults"], false).await {
        Ok(e) => e,
        Err(e) => return fail(&e),
    };
    let Some(exe) = exes.get("faults") else {
        return ExitCode::FAILURE;
    };
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(args);
    if std::env::var_os("FAULTS_BUCKET").is_none()
        && let Some(bucket) = bucket
    {
        cmd.env("FAULTS_BUCKET", bucket);
    }
    match cmd.status().await {
        Ok(status) => ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8),
        Err(e) => fail(&Error::Io(e)),
    }
}

fn faults_bucket(template: &Path, stack: &str, region: &str) -> Option<String> {
    let t = Template::load(template).ok()?;
    let names = names_only(&t, stack, region).ok()?;
    names.string(t.outputs.get("FaultsBucketName")?).ok()
}
