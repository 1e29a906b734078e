//! `faults`: list, show and resubmit the fault events the fault monitor stored.

use std::num::NonZeroU32;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fault_monitor::FaultStore;
use governor::{Quota, RateLimiter};
use lambda_stream::connectors::{Lambda, S3};

#[derive(Parser)]
#[command(about = "List, show and resubmit stored fault events", version)]
struct Cli {
    /// The fault monitor's bucket.
    #[arg(long, env = "FAULTS_BUCKET")]
    bucket: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the newest faults (id, time, function, pipeline, error), newest first.
    List {
        /// Only faults raised by this function.
        #[arg(long)]
        function: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Print one fault event as JSON.
    Show {
        /// The fault's id, as `list` prints it.
        id: String,
    },
    /// Invoke the function that raised each fault with the fault's original records, waiting for
    /// each answer, at most `--rate` invocations a second.
    Resubmit {
        /// The faults' ids, as `list` prints them.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Print what would be sent (function and event) instead of invoking.
        #[arg(long)]
        dry_run: bool,
        /// Invocations a second.
        #[arg(long, default_value_t = 2)]
        rate: u32,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let store = FaultStore::new(S3::new(lambda_stream::aws::s3().await.clone(), cli.bucket));
    match cli.command {
        Command::List { function, limit } => match store.list(function.as_deref(), limit).await {
            Ok(faults) => {
                for f in faults {
                    let when = chrono::DateTime::from_timestamp_millis(f.timestamp)
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default();
                    println!(
                        "{}\t{when}\t{}\t{}\t{}: {}",
                        f.id, f.function, f.pipeline, f.error, f.message
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        },
        Command::Show { id } => match store.show(&id).await {
            Ok(Some(fault)) => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&fault).unwrap_or_default()
                );
                ExitCode::SUCCESS
            }
            Ok(None) => fail(&format!("no fault {id}")),
            Err(e) => fail(&e.to_string()),
        },
        Command::Resubmit { ids, dry_run, rate } => {
            let lambda = Lambda::shared().await;
            let limiter = RateLimiter::direct(Quota::per_second(
                NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN),
            ));
            let total = ids.len();
            let mut failed = 0;
            for (n, id) in ids.iter().enumerate() {
                limiter.until_ready().await;
                match store.resubmit(&lambda, id, dry_run).await {
                    Ok(answer) => println!("[{}/{total}] {id}: {answer}", n + 1),
                    Err(e) => {
                        failed += 1;
                        eprintln!("[{}/{total}] {id}: failed: {e}", n + 1);
                    }
                }
            }
            if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("faults: {message}");
    ExitCode::FAILURE
}
