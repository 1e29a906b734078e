//! `local-stack`: the reference system on this machine, against the local AWS emulator.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use fault_monitor::cli::FaultsArgs;
use local_stack::dry_run::{self, Recorder};
use local_stack::provision::names_only;
use local_stack::stack::{Options, Stack};
use local_stack::template::Template;
use local_stack::{Error, demo, replay};

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
    #[command(subcommand)]
    command: Command,
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
    },
    /// `up`, then send the reference system a stream of commands (some invalid, one duplicate),
    /// print the events, views and faults they produce, stop everything, and exit 0 only if
    /// the views match what the commands imply.
    Demo {
        /// How long to wait for the views, in seconds.
        #[arg(long, default_value_t = 120)]
        wait: u64,
    },
    /// Run a function's handler in-process on a captured event (for example one of `events/`):
    /// its environment comes from the template; with `--dry-run` every write goes to memory and
    /// is printed as a JSON line, then a one-line JSON summary (records, outcomes, elapsed ms).
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
    /// List, show and resubmit the fault events the fault monitor stored (the bucket defaults
    /// to the template's `FaultsBucketName` output for the stack).
    Faults(FaultsArgs),
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

    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
    // replay's function and, for a dry run, its recorder: set up before any thread starts
    let mut replayed = None;
    if let Command::Replay {
        function, dry_run, ..
    } = &cli.command
    {
        let stack = cli.stack.clone().unwrap_or_else(|| "local".into());
        let spec = match replay::find(&cli.template, &stack, &region, function) {
            Ok(s) => s,
            Err(e) => return fail(&e),
        };
        for (k, v) in replay::environment(&spec) {
            // SAFETY: no other thread exists yet; the runtime is built below
            unsafe { std::env::set_var(k, v) };
        }
        let recorder = dry_run.then(Recorder::default);
        if let Some(r) = &recorder {
            lambda_stream::aws::install(dry_run::config(r.clone()));
        }
        replayed = Some((spec, recorder));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&Error::Io(e)),
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Up { port } => {
                up(&cli.template, cli.stack.as_deref().unwrap_or("local"), port).await
            }
            Command::Demo { wait } => {
                let stack = cli.stack.unwrap_or_else(|| {
                    format!("demo-{}", &uuid::Uuid::new_v4().simple().to_string()[..6])
                });
                run_demo(&cli.template, &stack, Duration::from_secs(wait)).await
            }
            Command::Replay { event, .. } => {
                let Some((spec, recorder)) = replayed else {
                    return ExitCode::FAILURE;
                };
                replay_cmd(&spec, &event, recorder.as_ref()).await
            }
            Command::Faults(args) => {
                let stack = cli.stack.as_deref().unwrap_or("local");
                args.run(faults_bucket(&cli.template, stack, &region)).await
            }
        }
    })
}

fn fail(e: &Error) -> ExitCode {
    eprintln!("local-stack: {e}");
    ExitCode::FAILURE
}

fn options(template: &Path, stack: &str, port: u16) -> Options {
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

async fn up(template: &Path, stack: &str, port: u16) -> ExitCode {
    let opts = options(template, stack, port);
    let started = tokio::select! {
        s = Stack::start(&opts, &progress) => s,
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
                last = now;
            }
        }
    };
    tokio::select! {
        _ = watch => {}
        _ = interrupted() => {}
    }
    println!("\nStopping the functions and pollers...");
    stack.stop().await;
    ExitCode::SUCCESS
}

async fn run_demo(template: &Path, stack_name: &str, wait: Duration) -> ExitCode {
    let started = Instant::now();
    let opts = options(template, stack_name, 0);
    println!("local-stack demo: stack `{stack_name}`");
    let stack = tokio::select! {
        s = Stack::start(&opts, &progress) => match s {
            Ok(s) => s,
            Err(e) => return fail(&e),
        },
        _ = interrupted() => return ExitCode::from(130),
    };
    let outcome = tokio::select! {
        r = demo::run(&stack, wait) => Some(r),
        _ = interrupted() => None,
    };
    println!("\n· stopping the functions and pollers");
    stack.stop().await;
    let elapsed = started.elapsed().as_secs_f64();
    match outcome {
        None => {
            println!("interrupted after {elapsed:.1}s");
            ExitCode::from(130)
        }
        Some(Err(e)) => fail(&e),
        Some(Ok(report)) if report.problems.is_empty() => {
            println!(
                "\nRESULT: OK - every view matches what the commands imply ({elapsed:.1}s); function logs in {}",
                opts.log_dir.display()
            );
            ExitCode::SUCCESS
        }
        Some(Ok(report)) => {
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

async fn replay_cmd(
    spec: &local_stack::spec::FunctionSpec,
    event: &Path,
    recorder: Option<&Recorder>,
) -> ExitCode {
    let bytes = match std::fs::read(event) {
        Ok(b) => b,
        Err(e) => {
            return fail(&Error::Other(format!(
                "cannot read {}: {e}",
                event.display()
            )));
        }
    };
    match replay::run(spec, &bytes, recorder).await {
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

fn faults_bucket(template: &Path, stack: &str, region: &str) -> Option<String> {
    let t = Template::load(template).ok()?;
    let names = names_only(&t, stack, region).ok()?;
    names.string(t.outputs.get("FaultsBucketName")?).ok()
}
