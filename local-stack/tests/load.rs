//! Load and chaos, end to end (run with `make test`): a few hundred commands over a few dozen
//! things from concurrent clients, with a fifth of the functions' writes faulted, records
//! duplicated and reordered on their way to Kinesis, and records that had succeeded delivered
//! again from inside their batch (which the idempotency guard skips); the audit must find every
//! accepted command exactly one event, every rejected one exactly one stored fault, and every
//! view as implied.

use std::process::Command;

#[test]
fn under_load_and_chaos_nothing_is_lost_or_doubled() {
    let out = Command::new(env!("CARGO_BIN_EXE_local-stack"))
        .envs(lambda_stream::testing::emulator_env())
        .args([
            "--template",
            "../template.yaml",
            "load",
            "--commands",
            "240",
            "--things",
            "24",
            "--clients",
            "4",
            "--chaos",
            "0.2",
            "--seed",
            "11",
            "--wait",
            "150",
            // two shards of four lanes each: one stream's records in concurrent batches
            "--shards",
            "2",
            "--parallelization",
            "4",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the local-stack binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "load failed\n{stdout}\n{stderr}");
    assert!(stdout.contains("RESULT: OK"), "{stdout}");
    // the chaos did happen, of every kind
    for kind in [
        "throttled",
        "lost response",
        "partial failure",
        "reordered",
        "duplicated",
        "redelivered after success",
    ] {
        assert!(stdout.contains(kind), "no `{kind}` injected:\n{stdout}");
    }
    assert!(stdout.contains("doubled 0"), "{stdout}");

    // the figures: every accepted command that made an event was seen in its view
    let latency = stdout
        .lines()
        .find(|l| l.contains("accepted command → its view: p50"))
        .unwrap_or_else(|| panic!("no latency figures:\n{stdout}"));
    assert!(latency.contains(", 0 never shown"), "{latency}");
    let listener = stdout
        .lines()
        .find(|l| l.contains("-listener ") && l.contains(" of 8 "))
        .unwrap_or_else(|| panic!("the listener runs 2 shards × 4 lanes:\n{stdout}"));
    assert!(!listener.contains(" 0 of 8"), "{listener}");
    for figure in [
        "commands/s: sent",
        "DomainEvents",
        "max iterator age",
        "DynamoDB.TransactWriteItems",
        "per stored command",
        "CPU during the run",
    ] {
        assert!(stdout.contains(figure), "no `{figure}`:\n{stdout}");
    }
    // nothing on the hot path reads a whole table (docs/SCALE.md)
    assert!(!stdout.contains("DynamoDB.Scan"), "{stdout}");
}
