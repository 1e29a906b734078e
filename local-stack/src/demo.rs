//! The demo: the reference system end to end on the local stack.
//!
//! Commands go to `POST /commands` (command-intake) through the local HTTP API, a few of them
//! invalid, one a duplicate, two rejected later by the business rules. They flow through the
//! commands table's stream (event-processor), the events table's stream (trigger), the bus and
//! its rule to Kinesis (listener) into the views table; the rejected ones become fault events
//! that the fault monitor stores in S3. The demo waits for the views, prints what happened and
//! succeeds only if every view is what the commands imply.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lambda_stream::connectors::S3;
use serde_json::{Value, json};

use crate::Error;
use crate::stack::Stack;

/// One request the demo sends.
#[derive(Debug, Clone)]
pub struct Step {
    /// What it is, for the report.
    pub label: &'static str,
    /// The request body.
    pub body: String,
    /// The status the API must answer.
    pub expect_status: u16,
}

/// What a thing's view must be when the commands have flowed through.
#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    /// A live thing with these fields.
    Live(BTreeMap<&'static str, &'static str>),
    /// A deleted thing.
    Deleted,
}

fn command(stream: &str, command: &str, request_id: &str, data: Value) -> String {
    json!({"type": stream, "command": command, "requestId": request_id, "data": data}).to_string()
}

/// The demo's commands, in order.
pub fn steps() -> Vec<Step> {
    let ok = |label, body| Step {
        label,
        body,
        expect_status: 202,
    };
    let bad = |label, body: &str| Step {
        label,
        body: body.to_owned(),
        expect_status: 400,
    };
    vec![
        ok(
            "create thing-1",
            command(
                "thing",
                "create-thing",
                "r-1",
                json!({"id": "thing-1", "name": "Lamp", "color": "red"}),
            ),
        ),
        ok(
            "create thing-2",
            command(
                "thing",
                "create-thing",
                "r-2",
                json!({"id": "thing-2", "name": "Chair"}),
            ),
        ),
        ok(
            "create thing-3",
            command(
                "thing",
                "create-thing",
                "r-3",
                json!({"id": "thing-3", "name": "Table"}),
            ),
        ),
        ok(
            "update thing-1",
            command(
                "thing",
                "update-thing",
                "r-4",
                json!({"id": "thing-1", "color": "blue"}),
            ),
        ),
        ok(
            "duplicate of r-1",
            command(
                "thing",
                "create-thing",
                "r-1",
                json!({"id": "thing-1", "name": "Lamp", "color": "red"}),
            ),
        ),
        bad("malformed JSON", r#"{"type": "thing", "command": "#),
        bad(
            "no requestId",
            r#"{"type": "thing", "command": "create-thing", "data": {"id": "x"}}"#,
        ),
        bad(
            "data not an object",
            r#"{"type": "thing", "command": "create-thing", "requestId": "r-x", "data": [1]}"#,
        ),
        ok(
            "unknown command",
            command(
                "thing",
                "paint-thing",
                "r-5",
                json!({"id": "thing-2", "color": "pink"}),
            ),
        ),
        ok(
            "create without name",
            command("thing", "create-thing", "r-6", json!({"id": "thing-4"})),
        ),
        ok(
            "delete thing-3",
            command("thing", "delete-thing", "r-7", json!({"id": "thing-3"})),
        ),
        ok(
            "update thing-2",
            command(
                "thing",
                "update-thing",
                "r-8",
                json!({"id": "thing-2", "color": "green"}),
            ),
        ),
    ]
}

/// The views the steps imply.
pub fn expected_views() -> BTreeMap<&'static str, Expected> {
    BTreeMap::from([
        (
            "thing-1",
            Expected::Live(BTreeMap::from([("name", "Lamp"), ("color", "blue")])),
        ),
        (
            "thing-2",
            Expected::Live(BTreeMap::from([("name", "Chair"), ("color", "green")])),
        ),
        ("thing-3", Expected::Deleted),
    ])
}

/// Domain events the steps imply (creates, updates, the delete).
pub const EXPECTED_EVENTS: usize = 6;
/// Faults the steps imply (the unknown command, the create without a name).
pub const EXPECTED_FAULTS: usize = 2;

/// What the demo saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Every check that failed, said plainly.
    pub problems: Vec<String>,
}

/// Runs the demo on a started stack; prints as it goes. `Ok(report)` with no problems means the
/// views match the commands.
pub async fn run(stack: &Stack, wait: Duration) -> Result<Report, Error> {
    let mut report = Report::default();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("http://{}/commands", stack.api);
    println!("\n== Commands → POST {url}");
    let mut accepted = 0;
    let mut rejected = 0;
    for step in steps() {
        let req = http::Request::post(&url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(step.body.clone())))
            .map_err(|e| Error::Other(e.to_string()))?;
        let res = client
            .request(req)
            .await
            .map_err(|e| Error::Other(format!("POST /commands: {e}")))?;
        let status = res.status().as_u16();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Other(e.to_string()))?
            .to_bytes();
        let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let said = match status {
            202 if answer["duplicate"] == json!(true) => {
                format!("duplicate, already sequence {}", answer["sequence"])
            }
            202 => {
                accepted += 1;
                format!(
                    "accepted as {} #{}",
                    answer["stream"].as_str().unwrap_or("?"),
                    answer["sequence"]
                )
            }
            400 => {
                rejected += 1;
                format!("rejected: {}", answer["error"].as_str().unwrap_or("?"))
            }
            _ => String::from_utf8_lossy(&body).into_owned(),
        };
        println!("  {:<22} {status}  {said}", step.label);
        if status != step.expect_status {
            report.problems.push(format!(
                "{}: expected HTTP {}, got {status}",
                step.label, step.expect_status
            ));
        }
    }
    println!(
        "  {accepted} accepted, {rejected} rejected with 400, 1 duplicate acknowledged without a second write"
    );

    let names = &stack.provisioned.names;
    let table = |id: &str| names.get_ref(id).unwrap_or_default().to_owned();
    let (events_table, views_table, bucket) = (
        table("EventsTable"),
        table("ViewsTable"),
        table("FaultsBucket"),
    );
    let store = fault_monitor::FaultStore::new(S3::new(stack.clients.s3.clone(), bucket));
    let expected = expected_views();

    println!(
        "\n== Waiting for the flow: command-intake → event-processor → trigger → bus → Kinesis → listener → views"
    );
    let started = Instant::now();
    let mut last_line = String::new();
    let (events, views, faults) = loop {
        let events = scan(stack, &events_table).await?;
        let views = scan(stack, &views_table).await?;
        let faults = store
            .list(None, 100)
            .await
            .map_err(|e| Error::Other(e.to_string()))?;
        let done = events.len() >= EXPECTED_EVENTS
            && faults.len() >= EXPECTED_FAULTS
            && views_match(&expected, &views).is_empty();
        let line = format!(
            "  {:>5.1}s  events {}/{EXPECTED_EVENTS}  views {}/{}  faults {}/{EXPECTED_FAULTS}",
            started.elapsed().as_secs_f64(),
            events.len(),
            views.len(),
            expected.len(),
            faults.len()
        );
        if line[9..] != *last_line.get(9..).unwrap_or_default() || done {
            println!("{line}");
            last_line = line;
        }
        if done || started.elapsed() > wait {
            break (events, views, faults);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    println!("\n== Events appended ({})", events.len());
    for e in &events {
        let event = &e["event"];
        println!(
            "  {:<8} {}  {:<14} {}",
            e["pk"].as_str().unwrap_or("?"),
            e["sk"].as_str().unwrap_or("?"),
            event["type"].as_str().unwrap_or("?"),
            event["thing"]
        );
    }
    println!("\n== Views ({})", views.len());
    for v in &views {
        let mut fields = v.clone();
        if let Some(o) = fields.as_object_mut() {
            for k in [
                "pk",
                "sk",
                "discriminator",
                "timestamp",
                "lastModifiedBy",
                "ttl",
            ] {
                o.remove(k);
            }
        }
        println!("  {:<8} {fields}", v["pk"].as_str().unwrap_or("?"));
    }
    println!(
        "\n== Faults stored in s3://{} ({})",
        names.get_ref("FaultsBucket").unwrap_or_default(),
        faults.len()
    );
    for f in &faults {
        // a fault's message usually starts with its error's name already
        let reason = if f.message.starts_with(&f.error) {
            f.message.clone()
        } else {
            format!("{}: {}", f.error, f.message)
        };
        println!("  {}  {} / {}  {reason}", f.id, f.function, f.pipeline);
    }
    println!("\n== Event source mappings and routes");
    for (key, c) in stack.activity.snapshot() {
        println!(
            "  {key:<52} invocations {:>3}  delivered {:>3}  filtered {:>3}  retried {:>2}  given up {:>2}",
            c.invocations, c.delivered, c.filtered, c.retried, c.given_up
        );
    }

    if events.len() != EXPECTED_EVENTS {
        report.problems.push(format!(
            "{} events appended, expected {EXPECTED_EVENTS}",
            events.len()
        ));
    }
    if faults.len() != EXPECTED_FAULTS {
        report.problems.push(format!(
            "{} faults stored, expected {EXPECTED_FAULTS}",
            faults.len()
        ));
    }
    report.problems.extend(views_match(&expected, &views));
    Ok(report)
}

/// Every difference between the expected views and the rows read.
pub fn views_match(expected: &BTreeMap<&'static str, Expected>, rows: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    for (id, want) in expected {
        let Some(row) = rows
            .iter()
            .find(|r| r["pk"] == json!(id) && r["sk"] == json!("thing"))
        else {
            problems.push(format!("view {id} is missing"));
            continue;
        };
        match want {
            Expected::Deleted => {
                if row["deleted"] != json!(true) {
                    problems.push(format!("view {id} should be deleted: {row}"));
                }
            }
            Expected::Live(fields) => {
                if row["deleted"] == json!(true) {
                    problems.push(format!("view {id} should not be deleted"));
                }
                for (k, v) in fields {
                    if row[*k] != json!(v) {
                        problems.push(format!("view {id}: {k} is {}, expected {v:?}", row[*k]));
                    }
                }
            }
        }
    }
    for row in rows {
        let id = row["pk"].as_str().unwrap_or_default();
        if !expected.contains_key(id) {
            problems.push(format!("unexpected view {id}: {row}"));
        }
    }
    problems
}

async fn scan(stack: &Stack, table: &str) -> Result<Vec<Value>, Error> {
    let out = stack
        .clients
        .dynamodb
        .scan()
        .table_name(table)
        .send()
        .await
        .map_err(Error::aws)?;
    let mut rows: Vec<Value> = out
        .items()
        .iter()
        .map(|item| serde_dynamo::from_item::<_, Value>(item.clone()).unwrap_or(Value::Null))
        .collect();
    rows.sort_by(|a, b| {
        (a["pk"].to_string(), a["sk"].to_string()).cmp(&(b["pk"].to_string(), b["sk"].to_string()))
    });
    Ok(rows)
}
