//! The demo, end to end, as `make demo` runs it (run with `make test`): builds and runs the six
//! functions against the emulator and exits 0 only if the views and higher-order events match
//! the commands.

use std::process::Command;

#[test]
fn the_demo_materializes_exactly_the_views_the_commands_imply() {
    let out = Command::new(env!("CARGO_BIN_EXE_local-stack"))
        .envs(lambda_stream::testing::emulator_env())
        .args(["--template", "../template.yaml", "demo", "--wait", "120"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the local-stack binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed\n{stdout}\n{stderr}");
    assert!(stdout.contains("RESULT: OK"), "{stdout}");
    assert!(
        stdout.contains("14 accepted, 3 rejected with 400, 1 duplicate"),
        "{stdout}"
    );
    // thing-5's view write always fails: faulted with its data after its attempts, while the
    // records behind it, delivered again with each retry, are not applied twice
    assert!(
        stdout.contains("thing-5: faulted after its attempts with its record"),
        "{stdout}"
    );
    assert!(stdout.contains("view writes sent 10 "), "{stdout}");
    // and the listener's circuit breaker lowered its own mapping's batch size on the way
    assert!(
        stdout.contains("mapping Enabled, batch size 10"),
        "{stdout}"
    );
    assert!(
        stdout.contains("== Faults stored in") && stdout.contains("InvalidCommand"),
        "{stdout}"
    );
    // complex event processing: thing-1 hot once, thing-1, -2 and -5 stale once each
    for line in [
        "thing-hot    thing-1  1",
        "thing-stale  thing-1  1",
        "thing-stale  thing-2  1",
        "thing-stale  thing-5  1",
    ] {
        assert!(stdout.contains(line), "{line}\n{stdout}");
    }
    assert!(!stdout.contains("thing-stale  thing-3"), "{stdout}");
}

#[test]
fn replay_dry_run_prints_writes_and_a_summary() {
    let out = Command::new(env!("CARGO_BIN_EXE_local-stack"))
        .args([
            "--template",
            "../template.yaml",
            "replay",
            "--function",
            "listener",
            "--event",
            "../events/listener.json",
            "--dry-run",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .expect("the local-stack binary runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines only"))
        .collect();
    let (summary, writes) = lines.split_last().unwrap();
    assert_eq!(summary["function"], "local-listener");
    assert_eq!(summary["records"], 4);
    assert_eq!(
        summary["outcomes"],
        serde_json::json!({"done": 3, "faulted": 1, "retry": 0})
    );
    assert!(summary["elapsedMs"].is_u64());
    assert_eq!(summary["writes"].as_u64().unwrap() as usize, writes.len());
    assert!(
        writes
            .iter()
            .any(|w| w["operation"] == "PutItem"
                && w["request"]["TableName"] == "local-ViewsTable")
    );
    assert!(
        writes.iter().any(|w| w["operation"] == "PutEvents"),
        "the fault is a write too"
    );
}

#[test]
fn replay_of_an_unknown_function_says_which_exist() {
    let out = Command::new(env!("CARGO_BIN_EXE_local-stack"))
        .args([
            "--template",
            "../template.yaml",
            "replay",
            "--function",
            "nope",
            "--event",
            "../events/listener.json",
            "--dry-run",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the local-stack binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no function `nope`") && stderr.contains("listener"),
        "{stderr}"
    );
}
