//! What a function logs: JSON lines with the request, the pipeline, the event and its
//! correlation id, and never an event's contents. Alone in its test binary: `tracing` caches
//! per call site whether anyone listens, and tests logging on other threads without a
//! subscriber would race with this one's.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lambda_stream::testing::*;
use lambda_stream::{Event, Handler, Pipeline, StepError, UnitOfWork, sources};
use serde_json::Value;

/// A writer the test reads back.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_fault_line_names_the_request_the_pipeline_the_event_and_its_correlation() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = lambda_stream::logging::json(
        move || writer.clone(),
        // as deployed (RUST_LOG=info): at warn, the info spans would be filtered out too
        tracing_subscriber::EnvFilter::new("info"),
    );
    let faults = Arc::new(MemoryFaults::default());
    let handler = Handler::builder(faults.clone())
        .pipeline(
            Pipeline::new("views").map(|uow: UnitOfWork| -> Result<UnitOfWork, StepError> {
                // a message quoting the event's own (here huge) id, as many do
                Err(
                    StepError::poison_msg(format!("no thing in {}", uow.event().id))
                        .named("NoThing"),
                )
            }),
        )
        .build()
        .unwrap();
    let mut event = Event::new("e1", "thing-updated", 1).with_partition_key("t1");
    event
        .tags
        .insert("correlationId".into(), "request-42".into());
    event
        .fields
        .insert("thing".into(), serde_json::json!({"secret": "s3cr3t"}));
    // ids are the sender's: a 5 KB one, and a 5 KB correlation id, are quoted in part
    let huge = format!("x{}", "y".repeat(5_000));
    let mut long = Event::new(huge.clone(), "thing-updated", 1).with_partition_key("t2");
    long.tags
        .insert("correlationId".into(), Value::String(huge.clone()));
    // a batch in windows of one record, the second not JSON: its warning says which window
    let windowed = Handler::builder(MemoryFaults::default())
        .settings(&lambda_stream::Settings::from_vars(|v| {
            (v == "WINDOW_RECORDS").then(|| "1".to_owned())
        }))
        .pipeline(Pipeline::new("views"))
        .build()
        .unwrap();
    let mut in_windows = to_kinesis_records(&[
        Event::new("w1", "thing-updated", 1),
        Event::new("w2", "thing-updated", 1),
    ]);
    in_windows.records[1].kinesis.data.0 = b"not json".to_vec();
    tracing::subscriber::with_default(subscriber, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                // the span the Lambda runtime opens around each invocation
                let span = tracing::info_span!("Lambda runtime invoke", requestId = "req-1");
                let _entered = span.enter();
                handler
                    .handle::<sources::Kinesis>(
                        to_kinesis_records(&[event, long]),
                        &context(Duration::from_secs(30)),
                    )
                    .await
                    .unwrap();
                windowed
                    .handle::<sources::Kinesis>(in_windows, &context(Duration::from_secs(30)))
                    .await
                    .unwrap();
            })
    });
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let fault: Value = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l["fields"]["message"] == "fault")
        .unwrap_or_else(|| panic!("no fault line in {text}"));
    let long = text
        .lines()
        .find(|l| l.contains("\"message\":\"fault\"") && l.contains("xyyy"))
        .unwrap_or_else(|| panic!("no fault line for the long id in {text}"));
    assert!(long.len() < 1_500, "{} bytes: {long}", long.len());
    let long: Value = serde_json::from_str(long).unwrap();
    assert_eq!(long["fields"]["event"], huge[..200]);
    assert_eq!(long["fields"]["correlation"], huge[..200]);
    let error = long["fields"]["error"].as_str().unwrap();
    assert!(error.starts_with("NoThing: no thing in xyyy"), "{error}");
    assert!(error.ends_with("… (5013 bytes)"), "{error}");
    assert_eq!(fault["fields"]["pipeline"], "views");
    assert_eq!(fault["fields"]["event"], "e1");
    assert_eq!(fault["fields"]["correlation"], "request-42");
    let spans = fault["spans"]
        .as_array()
        .unwrap_or_else(|| panic!("{fault}"));
    assert_eq!(spans[0]["requestId"], "req-1");
    assert!(
        spans
            .iter()
            .any(|s| s["name"] == "pipeline" && s["id"] == "views"),
        "{fault}"
    );
    assert!(
        !text.contains("s3cr3t"),
        "an event's contents are never logged: {text}"
    );
    let undecoded: Value = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l["fields"]["message"] == "record did not decode")
        .unwrap_or_else(|| panic!("no decode warning in {text}"));
    // the position counts from the first record decoded with it, which the decode span gives
    assert_eq!(undecoded["fields"]["position"], 0, "{undecoded}");
    let window = undecoded["spans"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "decode"))
        .unwrap_or_else(|| panic!("no decode span: {undecoded}"));
    assert_eq!(window["first"], 1, "{undecoded}");
    // the fault event quotes as much of the message, in its message and its stack
    let published = faults.published();
    let err = &published
        .iter()
        .find(|f| f.err.message.contains("xyyy"))
        .unwrap_or_else(|| panic!("no fault for the long id"))
        .err;
    assert!(err.message.ends_with("… (5013 bytes)"), "{}", err.message);
    assert!(err.stack.len() < 600, "{} bytes", err.stack.len());
    assert!(err.stack.ends_with("… (5013 bytes)"), "{}", err.stack);
}
