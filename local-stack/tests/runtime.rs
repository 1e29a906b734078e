//! The local Runtime API with a stand-in runtime (a shell script speaking the API with curl):
//! a slow invocation times out and kills the process, and the next invocation is answered by
//! the restarted one.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use local_stack::invoke::Invoke;
use local_stack::runtime::LocalFunction;
use local_stack::spec::FunctionSpec;

const RUNTIME: &str = r#"#!/bin/sh
api="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime"
while true; do
  id=$(curl -sS -D "$TMP/headers" -o "$TMP/event" "$api/invocation/next" && grep -i '^lambda-runtime-aws-request-id' "$TMP/headers" | cut -d' ' -f2 | tr -d '\r')
  [ -n "$id" ] || exit 1
  if grep -q slow "$TMP/event"; then sleep 30; fi
  if grep -q fail "$TMP/event"; then
    curl -sS -X POST "$api/invocation/$id/error" -d '{"errorType":"Boom","errorMessage":"asked to fail"}' >/dev/null
  else
    curl -sS -X POST "$api/invocation/$id/response" --data-binary @"$TMP/event" >/dev/null
  fi
done
"#;

#[tokio::test]
async fn timeouts_kill_the_process_and_the_next_invocation_is_answered() {
    let dir = std::env::temp_dir().join(format!("runtime-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("bootstrap");
    std::fs::write(&exe, RUNTIME).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = FunctionSpec {
        logical_id: "Echo".into(),
        name: "echo".into(),
        arn: "arn:aws:lambda:us-east-1:123456789012:function:echo".into(),
        binary: "bootstrap".into(),
        timeout: Duration::from_secs(2),
        memory: 128,
        environment: BTreeMap::from([("TMP".to_owned(), dir.display().to_string())]),
        events: Vec::new(),
        async_retries: 0,
        async_failure: None,
        reserved_concurrency: None,
    };
    let f = LocalFunction::start(spec, &exe, &dir, 1).await.unwrap();

    let echo = f.invoke(Bytes::from_static(br#"{"n":1}"#)).await.unwrap();
    assert_eq!(&echo[..], br#"{"n":1}"#);

    let err = f
        .invoke(Bytes::from_static(br#"{"fail":true}"#))
        .await
        .unwrap_err();
    assert_eq!(
        (err.error_type.as_str(), err.message.as_str()),
        ("Boom", "asked to fail")
    );

    let started = Instant::now();
    let err = f
        .invoke(Bytes::from_static(br#"{"slow":true}"#))
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "Sandbox.Timedout");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // the killed process's long poll must not swallow this one
    let echo = tokio::time::timeout(
        Duration::from_secs(10),
        f.invoke(Bytes::from_static(br#"{"n":2}"#)),
    )
    .await
    .expect("answered by the restarted process")
    .unwrap();
    assert_eq!(&echo[..], br#"{"n":2}"#);
    f.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
