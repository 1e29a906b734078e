//! The `faults` command line: list, show and resubmit stored fault events. Shared by the
//! `faults` binary and the local stack's `faults` subcommand.

use std::num::NonZeroU32;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use governor::{Quota, RateLimiter};
use lambda_stream::connectors::{Lambda, S3};

use crate::FaultStore;

/// Where the faults are and what to do with them.
#[derive(Debug, Args)]
pub struct FaultsArgs {
    /// The fault monitor's bucket.
    #[arg(long, env = "FAULTS_BUCKET")]
    pub bucket: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A `faults` subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
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
        /// Also open its records, with your own rights: the events they carry, claim checks
        /// redeemed and encrypted fields decrypted (printed here only, never logged).
        #[arg(long)]
        open: bool,
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

impl FaultsArgs {
    /// Runs the command against `bucket` (else `--bucket` / `FAULTS_BUCKET`).
    pub async fn run(self, bucket: Option<String>) -> ExitCode {
        let Some(bucket) = self.bucket.or(bucket) else {
            return fail("which bucket? pass --bucket or set FAULTS_BUCKET");
        };
        let store = FaultStore::new(S3::new(lambda_stream::aws::s3().await.clone(), bucket));
        match self.command {
            Command::List { function, limit } => match store.list(function.as_deref(), limit).await
            {
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
            Command::Show { id, open } => match store.show(&id).await {
                Ok(Some(fault)) if open => {
                    let settings = lambda_stream::Settings::from_env();
                    match crate::open(&fault, &settings).await {
                        Ok(opened) => {
                            let shown = serde_json::json!({
                                "fault": fault,
                                "events": opened.events,
                                "unopened": opened.unopened,
                            });
                            println!(
                                "{}",
                                serde_json::to_string_pretty(&shown).unwrap_or_default()
                            );
                            ExitCode::SUCCESS
                        }
                        Err(e) => fail(&e),
                    }
                }
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
}

fn fail(message: &str) -> ExitCode {
    eprintln!("faults: {message}");
    ExitCode::FAILURE
}
