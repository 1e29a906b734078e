//! Builds the functions' binaries with cargo, as `sam build` would, but for this machine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::Error;

/// Builds `binaries` of the workspace at `root`, with cargo's release profile if `release`
/// (cargo's progress goes to stderr), and returns each binary's path.
pub async fn build(
    root: &Path,
    binaries: &[&str],
    release: bool,
) -> Result<HashMap<String, PathBuf>, Error> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--message-format=json-render-diagnostics"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if release {
        cmd.arg("--release");
    }
    for b in binaries {
        cmd.args(["--bin", b]);
    }
    let mut child = cmd.spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::Other("cargo's output is not readable".into()))?;
    let mut lines = BufReader::new(stdout).lines();
    let mut found = HashMap::new();
    while let Some(line) = lines.next_line().await? {
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(name), Some(exe)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str())
            && binaries.contains(&name)
        {
            found.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    let status = child.wait().await?;
    if !status.success() {
        return Err(Error::Other(format!("cargo build failed ({status})")));
    }
    for b in binaries {
        if !found.contains_key(*b) {
            return Err(Error::Other(format!("cargo built no binary named `{b}`")));
        }
    }
    Ok(found)
}
