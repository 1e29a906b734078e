//! The demo: the reference system end to end on the local stack.
//!
//! Commands go to `POST /commands` (command-intake) through the local HTTP API, a few of them
//! invalid, one a duplicate, three rejected later by the business rules, and four back to back
//! on one thing (update, delete, rename of the deleted thing, create again). They flow through the
//! commands table's stream (event-processor), the events table's stream (trigger), the bus and
//! its rule to Kinesis (listener) into the views table; the rejected ones become fault events
//! that the fault monitor stores in S3. The listener also collects every thing event into its
//! event store, whose stream the trigger evaluates: thing-1, updated three times within a
//! minute, is `thing-hot` once; every thing whose latest event is no deletion goes
//! `thing-stale` once after `StaleAfterSeconds` (20 locally), and both higher-order events come
//! back through the bus to the store. The demo waits for the views and those events, prints
//! what happened and succeeds only if every view and every higher-order event is what the
//! commands imply.
//!
//! One thing, `thing-5`, has a view write that always fails transiently (the local stack
//! throttles it for good, [`ALWAYS_THROTTLED`]): the listener retries it
//! `IDEMPOTENCY_MAX_ATTEMPTS` times, then faults it with its data (`AttemptsExhausted`) and
//! its shard moves on. Each retry delivers again the records behind it, which had completed:
//! the idempotency guard skips them, so every other event's view is written exactly once. After
//! three such batches in a row the listener's circuit breaker lowers its own mapping's batch
//! size through the (local) Lambda API.

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

/// The batch size the listener's circuit breaker lowers its mapping to (`template.yaml`).
pub const BREAKER_BATCH_SIZE: usize = 10;

/// The write the stack throttles for good: the view of `thing-5`.
/// (The view row is the one item keyed by the thing's bare id; the event store's items of
/// thing-5 are written.)
pub const ALWAYS_THROTTLED: (&str, &str) = ("DynamoDB.PutItem", r#""pk":{"S":"thing-5"}"#);

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
            "create thing-5",
            command(
                "thing",
                "create-thing",
                "r-13",
                json!({"id": "thing-5", "name": "Shelf"}),
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
        // back to back on one thing: its events must apply in order, whatever the delivery
        ok(
            "update thing-1",
            command(
                "thing",
                "update-thing",
                "r-9",
                json!({"id": "thing-1", "color": "yellow"}),
            ),
        ),
        // the third update of thing-1 within a minute: thing-hot
        ok(
            "update thing-1 again",
            command(
                "thing",
                "update-thing",
                "r-9b",
                json!({"id": "thing-1", "color": "orange"}),
            ),
        ),
        ok(
            "delete thing-1",
            command("thing", "delete-thing", "r-10", json!({"id": "thing-1"})),
        ),
        ok(
            "rename deleted thing-1",
            command(
                "thing",
                "update-thing",
                "r-11",
                json!({"id": "thing-1", "name": "Lamp 2"}),
            ),
        ),
        ok(
            "create thing-1 again",
            command(
                "thing",
                "create-thing",
                "r-12",
                json!({"id": "thing-1", "name": "Lamp 2", "color": "white"}),
            ),
        ),
    ]
}

/// The views the steps imply.
pub fn expected_views() -> BTreeMap<&'static str, Expected> {
    BTreeMap::from([
        (
            "thing-1",
            Expected::Live(BTreeMap::from([("name", "Lamp 2"), ("color", "white")])),
        ),
        (
            "thing-2",
            Expected::Live(BTreeMap::from([("name", "Chair"), ("color", "green")])),
        ),
        ("thing-3", Expected::Deleted),
    ])
}

/// Domain events the steps imply: thing-1 created, updated three times, deleted and created
/// again; thing-2 created and updated; thing-3 created and deleted; thing-5 created.
pub const EXPECTED_EVENTS: usize = 11;

/// Higher-order events the steps imply, by thing: thing-1 is hot once (three updates within a
/// minute); thing-1 (created again), thing-2 (updated) and thing-5 (created) go stale, thing-3
/// (deleted) does not.
pub fn expected_higher_order() -> BTreeMap<(&'static str, &'static str), usize> {
    BTreeMap::from([
        (("thing-hot", "thing-1"), 1),
        (("thing-stale", "thing-1"), 1),
        (("thing-stale", "thing-2"), 1),
        (("thing-stale", "thing-5"), 1),
    ])
}

/// The higher-order events collected in the event store, counted by (type, thing).
pub fn higher_order(store_rows: &[Value]) -> BTreeMap<(String, String), usize> {
    let mut found = BTreeMap::new();
    for row in store_rows.iter().filter(|r| r["sk"] == "EVENT") {
        let event = &row["event"];
        let kind = event["type"].as_str().unwrap_or_default();
        if kind == "thing-hot" || kind == "thing-stale" {
            let thing = event["partitionKey"].as_str().unwrap_or_default();
            *found
                .entry((kind.to_owned(), thing.to_owned()))
                .or_default() += 1;
        }
    }
    found
}

fn higher_order_match(found: &BTreeMap<(String, String), usize>) -> Vec<String> {
    let expected: BTreeMap<(String, String), usize> = expected_higher_order()
        .into_iter()
        .map(|((k, t), n)| ((k.to_owned(), t.to_owned()), n))
        .collect();
    let mut problems = Vec::new();
    for key in expected
        .keys()
        .chain(found.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let (want, got) = (
            expected.get(key).copied().unwrap_or(0),
            found.get(key).copied().unwrap_or(0),
        );
        if want != got {
            problems.push(format!(
                "{} of {}: {got} collected, expected {want}",
                key.0, key.1
            ));
        }
    }
    problems
}
/// Faults the steps imply: the unknown command, the create without a name, the rename of the
/// deleted thing-1, and thing-5's view, which could never be written.
pub const EXPECTED_FAULTS: usize = 4;

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
    let (events_table, views_table, store_table, bucket) = (
        table("EventsTable"),
        table("ViewsTable"),
        table("EventStoreTable"),
        table("FaultsBucket"),
    );
    let store = S3::new(stack.clients.s3.clone(), bucket);
    let expected = expected_views();

    println!(
        "\n== Waiting for the flow: command-intake → event-processor → trigger → bus → Kinesis → listener → views,\n   and listener → event store → trigger (thing-hot, thing-stale after {}s) → bus → Kinesis → listener",
        crate::stack::LOCAL_PARAMETERS
            .iter()
            .find(|(k, _)| *k == "StaleAfterSeconds")
            .map_or("?", |(_, v)| v)
    );
    let started = Instant::now();
    let mut last_line = String::new();
    let (events, views, faults, signals) = loop {
        // the event log also holds each stream's snapshot and its rejections
        let mut events = scan(stack, &events_table).await?;
        events.retain(|e| e["discriminator"] == "event");
        let views = scan(stack, &views_table).await?;
        let faults = stored_faults(&store).await?;
        let signals = higher_order(&scan(stack, &store_table).await?);
        let done = events.len() >= EXPECTED_EVENTS
            && faults.len() >= EXPECTED_FAULTS
            && views_match(&expected, &views).is_empty()
            && higher_order_match(&signals).is_empty();
        let line = format!(
            "  {:>5.1}s  events {}/{EXPECTED_EVENTS}  views {}/{}  faults {}/{EXPECTED_FAULTS}  higher-order {}/{}",
            started.elapsed().as_secs_f64(),
            events.len(),
            views.len(),
            expected.len(),
            faults.len(),
            signals.values().sum::<usize>(),
            expected_higher_order().values().sum::<usize>()
        );
        if line[9..] != *last_line.get(9..).unwrap_or_default() || done {
            println!("{line}");
            last_line = line;
        }
        if done || started.elapsed() > wait {
            break (events, views, faults, signals);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    println!("\n== Events appended ({})", events.len());
    for e in &events {
        let event = &e["event"];
        println!(
            "  {:<14} v{:<2} {:<14} {}",
            e["pk"].as_str().unwrap_or("?"),
            event["version"],
            event["type"].as_str().unwrap_or("?"),
            event["thing"]
        );
    }
    println!("\n== Higher-order events collected in the event store");
    for ((kind, thing), n) in &signals {
        println!("  {kind:<12} {thing:<8} {n}");
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
                "version",
            ] {
                o.remove(k);
            }
        }
        println!(
            "  {:<8} v{:<2} {fields}",
            v["pk"].as_str().unwrap_or("?"),
            v["version"]
        );
    }
    println!(
        "\n== Faults stored in s3://{} ({})",
        names.get_ref("FaultsBucket").unwrap_or_default(),
        faults.len()
    );
    for (key, f) in &faults {
        // a fault's message usually starts with its error's name already
        let reason = if f.err.message.starts_with(&f.err.name) {
            f.err.message.clone()
        } else {
            format!("{}: {}", f.err.name, f.err.message)
        };
        let id = key
            .rsplit('/')
            .next()
            .unwrap_or(key)
            .trim_end_matches(".json");
        println!(
            "  {id}  {} / {}  {reason}",
            f.tag("functionname").unwrap_or("?"),
            f.tag("pipeline").unwrap_or("?")
        );
    }
    println!("\n== Event source mappings and routes");
    for (key, c) in stack.activity.snapshot() {
        println!(
            "  {key:<52} invocations {:>3}  delivered {:>3}  filtered {:>3}  retried {:>2}  given up {:>2}",
            c.invocations, c.delivered, c.filtered, c.retried, c.given_up
        );
    }

    report
        .problems
        .extend(attempts_and_redeliveries(stack, &views_table, &faults));

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
    report.problems.extend(higher_order_match(&signals));
    Ok(report)
}

/// What the idempotency guard did in the listener: thing-5 faulted with its data after its
/// attempts, and no completed event applied twice although records came again.
fn attempts_and_redeliveries(
    stack: &Stack,
    views_table: &str,
    faults: &[(String, lambda_stream::FaultEvent)],
) -> Vec<String> {
    let mut problems = Vec::new();
    let listener = stack
        .activity
        .snapshot()
        .into_iter()
        .filter(|(k, _)| k.split('/').next().is_some_and(|f| f.ends_with("listener")))
        .fold((0, 0), |(d, r), (_, c)| (d + c.delivered, r + c.retried));
    let view_writes = stack
        .proxy
        .writes()
        .get(&format!("DynamoDB.PutItem {views_table}"))
        .copied()
        .unwrap_or(0);
    // every event but thing-5's reaches its view once
    let applied = EXPECTED_EVENTS as u64 - 1;
    println!("\n== Redelivery and attempts (listener, idempotency guard, circuit breaker)");
    println!(
        "  {} records delivered in {} retried invocations for {EXPECTED_EVENTS} events; view writes sent {view_writes} (one per event whose view can be written: {applied})",
        listener.0, listener.1
    );
    if view_writes != applied {
        problems.push(format!(
            "{view_writes} view writes sent for {applied} events: completed work was done again"
        ));
    }
    // three batches in a row with thing-5 to retry trip the listener's breaker, which lowers
    // its own mapping's batch size through the Lambda API
    for m in stack.mappings.list(None, None) {
        let d = m.describe();
        if m.function.ends_with("listener") {
            println!(
                "  circuit breaker: {} mapping {}, batch size {}",
                m.function,
                d["State"].as_str().unwrap_or("?"),
                m.batch_size()
            );
            if m.batch_size() != BREAKER_BATCH_SIZE {
                problems.push(format!(
                    "the listener's mapping has batch size {}, expected {BREAKER_BATCH_SIZE} once its breaker tripped",
                    m.batch_size()
                ));
            }
        }
    }
    let exhausted: Vec<&lambda_stream::FaultEvent> = faults
        .iter()
        .map(|(_, f)| f)
        .filter(|f| f.err.name == "AttemptsExhausted")
        .collect();
    match exhausted.as_slice() {
        [f] => {
            let data = f
                .uow
                .records()
                .first()
                .and_then(|r| r["kinesis"]["data"].as_str());
            let event: Option<lambda_stream::Event> = data
                .and_then(|d| {
                    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, d).ok()
                })
                .and_then(|b| serde_json::from_slice(&b).ok());
            let thing = event
                .as_ref()
                .and_then(|e| e.entity("thing"))
                .and_then(|t| t["id"].as_str())
                .unwrap_or("?");
            println!(
                "  {thing}: faulted after its attempts with its record, to resubmit: {}",
                f.err.message
            );
            if thing != "thing-5" {
                problems.push(format!(
                    "the AttemptsExhausted fault carries {thing}, not thing-5"
                ));
            }
        }
        other => problems.push(format!(
            "{} AttemptsExhausted faults stored, expected one for thing-5",
            other.len()
        )),
    }
    problems
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

/// Every fault the fault monitor stored in `bucket`, with its key.
pub async fn stored_faults(bucket: &S3) -> Result<Vec<(String, lambda_stream::FaultEvent)>, Error> {
    let keys = bucket
        .list(lambda_stream::faults::FAULTS_PREFIX)
        .await
        .map_err(|e| Error::Other(e.to_string()))?;
    let mut faults = Vec::with_capacity(keys.len());
    for key in keys {
        let Some(body) = bucket
            .get(&key)
            .await
            .map_err(|e| Error::Other(e.to_string()))?
        else {
            continue;
        };
        faults.push((key, serde_json::from_slice(&body)?));
    }
    Ok(faults)
}

/// Every item of `table`, as JSON, sorted by key.
pub async fn scan(stack: &Stack, table: &str) -> Result<Vec<Value>, Error> {
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
