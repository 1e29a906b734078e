//! `faults`: list, show and resubmit the fault events the fault monitor stored.

use std::process::ExitCode;

use clap::Parser;
use fault_monitor::cli::FaultsArgs;

#[derive(Parser)]
#[command(about = "List, show and resubmit stored fault events", version)]
struct Cli {
    #[command(flatten)]
    faults: FaultsArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    Cli::parse().faults.run(None).await
}
