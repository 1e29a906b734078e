//! Load and audit: many commands on a few dozen things from concurrent clients, then a check of
//! the tables and the fault bucket against what the commands imply.
//!
//! The workload comes from a seed: creates, updates, deletes and re-creates, back-to-back
//! update/delete/update of one thing, commands the business rules reject (unknown command,
//! create without a name, update of a thing that does not exist), invalid bodies (400) and
//! repeated request ids. Each client sends its commands one after another and retries a 5xx
//! with the same request id, as a client of an idempotent API does.
//!
//! The expectation is computed from the answers alone: command-intake numbers each entity's
//! commands, so replaying the business rules in that order gives every event (its version,
//! type and state), every rejection, and every view. The audit then reads the tables and the
//! bucket directly: every accepted command is exactly one event (versions without gaps, no
//! command applied twice), every rejected one exactly one stored fault, every view what its
//! entity's events imply, and nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lambda_stream::FaultEvent;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use crate::Error;
use crate::stack::Stack;

/// How much load, from how many clients.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Requests in all (repeats and invalid bodies included).
    pub commands: usize,
    /// Things the commands are about.
    pub things: usize,
    /// Clients sending at once.
    pub clients: usize,
    /// The workload's seed.
    pub seed: u64,
    /// How long to wait for the system to settle.
    pub wait: Duration,
    /// Commands a second offered by all clients together (`None`: each client sends its next
    /// command as soon as the last is answered).
    pub rate: Option<f64>,
}

/// One request a client sends.
#[derive(Debug, Clone)]
pub struct Request {
    /// What it is, for the report.
    pub kind: &'static str,
    /// The body.
    pub body: String,
}

/// What the API answered, in the end.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// 202: stored as `sequence` of `stream` (perhaps earlier, for a repeated request id).
    Accepted {
        /// The command's stream.
        stream: String,
        /// Its position there.
        sequence: u64,
        /// The request id had been seen.
        duplicate: bool,
    },
    /// 400: not stored.
    Invalid,
    /// No final answer (every attempt failed): its fate is unknown.
    Unanswered(String),
}

const COLORS: [&str; 5] = ["red", "green", "blue", "black", "white"];

fn command(command: &str, request_id: &str, data: Value) -> String {
    json!({"type": "thing", "command": command, "requestId": request_id, "data": data}).to_string()
}

/// The requests of each client, from the seed.
pub fn workload(s: &Settings) -> Vec<Vec<Request>> {
    let mut rng = StdRng::seed_from_u64(s.seed);
    let clients = s.clients.max(1);
    let mut out: Vec<Vec<Request>> = vec![Vec::new(); clients];
    let thing = |i: usize| format!("thing-{i:03}");
    let mut n = 0;
    // every thing is created once to begin with, spread over the clients
    for i in 0..s.things.min(s.commands) {
        let id = format!("c{}-r{n}", i % clients);
        out[i % clients].push(Request {
            kind: "create",
            body: command(
                "create-thing",
                &id,
                json!({"id": thing(i), "name": format!("Thing {i}"), "color": COLORS[i % 5]}),
            ),
        });
        n += 1;
    }
    while n < s.commands {
        let c = rng.random_range(0..clients);
        let t = thing(rng.random_range(0..s.things.max(1)));
        let id = format!("c{c}-r{n}");
        let roll: f64 = rng.random();
        let color = COLORS[rng.random_range(0..COLORS.len())];
        let k = n;
        let round: Vec<(&'static str, String)> = if roll < 0.05 {
            let bodies = [
                r#"{"type": "thing", "command": "#.to_owned(),
                json!({"type": "thing", "command": "update-thing", "data": {"id": t}}).to_string(),
                json!({"type": "thing", "command": "update-thing", "requestId": id, "data": [1]})
                    .to_string(),
                "[]".to_owned(),
            ];
            vec![(
                "invalid body",
                bodies[rng.random_range(0..bodies.len())].clone(),
            )]
        } else if roll < 0.10 && !out[c].is_empty() {
            let earlier = out[c][rng.random_range(0..out[c].len())].body.clone();
            vec![("repeated request id", earlier)]
        } else if roll < 0.13 {
            vec![(
                "unknown command",
                command("paint-thing", &id, json!({"id": t, "color": color})),
            )]
        } else if roll < 0.16 {
            vec![(
                "create without name",
                command("create-thing", &id, json!({"id": t})),
            )]
        } else if roll < 0.18 {
            vec![(
                "update without id",
                command("update-thing", &id, json!({"color": color})),
            )]
        } else if roll < 0.28 {
            // back to back: update, delete, update (the last one meets a deleted thing)
            vec![
                (
                    "back-to-back update",
                    command(
                        "update-thing",
                        &format!("{id}a"),
                        json!({"id": t, "color": color}),
                    ),
                ),
                (
                    "back-to-back delete",
                    command("delete-thing", &format!("{id}b"), json!({"id": t})),
                ),
                (
                    "back-to-back update",
                    command(
                        "update-thing",
                        &format!("{id}c"),
                        json!({"id": t, "name": format!("Renamed {k}")}),
                    ),
                ),
            ]
        } else if roll < 0.40 {
            vec![("delete", command("delete-thing", &id, json!({"id": t})))]
        } else if roll < 0.55 {
            vec![(
                "create",
                command(
                    "create-thing",
                    &id,
                    json!({"id": t, "name": format!("Thing {k}"), "color": color}),
                ),
            )]
        } else if roll < 0.75 {
            vec![(
                "update",
                command("update-thing", &id, json!({"id": t, "color": color})),
            )]
        } else if roll < 0.90 {
            vec![(
                "update",
                command(
                    "update-thing",
                    &id,
                    json!({"id": t, "name": format!("Name {k}"), "size": k}),
                ),
            )]
        } else {
            // null removes a field from the thing
            vec![(
                "update",
                command(
                    "update-thing",
                    &id,
                    json!({"id": t, "size": null, "color": color}),
                ),
            )]
        };
        n += round.len();
        out[c].extend(round.into_iter().map(|(kind, body)| Request { kind, body }));
    }
    out
}

/// One expected domain event.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedEvent {
    /// Its type (`thing-created`, ...).
    pub event_type: String,
    /// The thing's whole state after the change.
    pub thing: Value,
    /// The command that made it (its sequence in the entity's stream).
    pub command: u64,
}

/// What the answers imply.
#[derive(Debug, Default)]
pub struct Model {
    /// Per stream (`thing#<id>`): events in version order (version = index + 1).
    pub events: BTreeMap<String, Vec<ExpectedEvent>>,
    /// Commands the business rules reject: (stream, sequence).
    pub rejected: BTreeSet<(String, u64)>,
    /// Per thing id: its state and whether it is deleted.
    pub views: BTreeMap<String, (Value, bool)>,
    /// Commands stored (distinct stream positions).
    pub stored: usize,
}

/// Replays the business rules over the stored commands, in each stream's order. The rules are
/// the reference system's (see event-processor), written again here on purpose: this is the
/// oracle the system is checked against.
pub fn model(answers: &[(Request, Answer)]) -> Model {
    let mut stored: BTreeMap<(String, u64), Value> = BTreeMap::new();
    for (request, answer) in answers {
        if let Answer::Accepted {
            stream, sequence, ..
        } = answer
        {
            let body: Value = serde_json::from_str(&request.body).unwrap_or(Value::Null);
            stored.entry((stream.clone(), *sequence)).or_insert(body);
        }
    }
    let mut m = Model {
        stored: stored.len(),
        ..Model::default()
    };
    // the thing's state and whether it is live, per stream
    let mut state: BTreeMap<String, (Map<String, Value>, bool)> = BTreeMap::new();
    for ((stream, sequence), body) in &stored {
        let data = body["data"].as_object().cloned().unwrap_or_default();
        let id = data
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let current = state.entry(stream.clone()).or_insert((Map::new(), false));
        let decided = match (body["command"].as_str(), id) {
            (_, None) => None,
            (Some("create-thing"), Some(_))
                if current.1 || !data.get("name").is_some_and(Value::is_string) =>
            {
                None
            }
            (Some("create-thing"), Some(_)) => {
                *current = (data.clone(), true);
                Some("thing-created")
            }
            (Some("update-thing"), Some(_)) if current.1 => {
                for (k, v) in &data {
                    if v.is_null() {
                        current.0.remove(k);
                    } else {
                        current.0.insert(k.clone(), v.clone());
                    }
                }
                Some("thing-updated")
            }
            (Some("delete-thing"), Some(_)) if current.1 => {
                current.1 = false;
                Some("thing-deleted")
            }
            _ => None,
        };
        match decided {
            Some(event_type) => {
                let thing = Value::Object(current.0.clone());
                m.events
                    .entry(stream.clone())
                    .or_default()
                    .push(ExpectedEvent {
                        event_type: event_type.to_owned(),
                        thing: thing.clone(),
                        command: *sequence,
                    });
                if let Some(id) = id {
                    m.views.insert(id.to_owned(), (thing, !current.1));
                }
            }
            None => {
                m.rejected.insert((stream.clone(), *sequence));
            }
        }
    }
    m
}

/// What a client run produced.
#[derive(Debug, Default)]
pub struct Sent {
    /// Every request with its final answer.
    pub answers: Vec<(Request, Answer)>,
    /// When each answer came, from the start of sending (in the order of `answers`).
    pub answered: Vec<Duration>,
    /// Requests sent again after a 5xx or a failed connection.
    pub resent: usize,
    /// How long sending took.
    pub elapsed: Duration,
}

async fn post(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    body: &str,
) -> Result<(u16, Value), String> {
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .map_err(|e| e.to_string())?;
    let res = client.request(req).await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let bytes = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// Requests sent and answers received so far, for progress while sending.
#[derive(Debug, Default)]
pub struct Progress {
    /// Requests sent (first attempts).
    pub sent: AtomicUsize,
    /// Final answers 202.
    pub accepted: AtomicUsize,
    /// Final answers 400.
    pub invalid: AtomicUsize,
    /// Requests with no final answer.
    pub unanswered: AtomicUsize,
}

/// Sends every client's requests, the clients at once; with `rate`, the clients together
/// offer at most that many requests a second (each its share, on a fixed schedule).
pub async fn send(
    api: &str,
    workload: Vec<Vec<Request>>,
    rate: Option<f64>,
    progress: Arc<Progress>,
) -> Sent {
    let url = Arc::new(format!("http://{api}/commands"));
    let started = Instant::now();
    let interval = rate
        .filter(|r| *r > 0.0)
        .and_then(|r| Duration::try_from_secs_f64(workload.len().max(1) as f64 / r).ok());
    let clients = workload.len().max(1);
    let senders = workload.into_iter().enumerate().map(|(c, requests)| {
        let url = Arc::clone(&url);
        let progress = Arc::clone(&progress);
        tokio::spawn(async move {
            let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            let mut answers = Vec::new();
            let mut answered = Vec::new();
            let mut resent = 0;
            // clients start spread over one interval, not all at once
            let offset = interval.map(|i| i.mul_f64(c as f64 / clients as f64));
            for (k, request) in requests.into_iter().enumerate() {
                if let (Some(i), Some(offset)) = (interval, offset) {
                    let due = i
                        .checked_mul(u32::try_from(k).unwrap_or(u32::MAX))
                        .and_then(|d| d.checked_add(offset))
                        .and_then(|d| started.checked_add(d));
                    if let Some(due) = due {
                        tokio::time::sleep_until(due.into()).await;
                    }
                }
                progress.sent.fetch_add(1, Relaxed);
                let mut last = String::new();
                let mut answer = None;
                for attempt in 0..30 {
                    if attempt > 0 {
                        resent += 1;
                        tokio::time::sleep(Duration::from_millis(50 * attempt.min(10))).await;
                    }
                    match post(&client, &url, &request.body).await {
                        Ok((202, v)) => {
                            progress.accepted.fetch_add(1, Relaxed);
                            answer = Some(Answer::Accepted {
                                stream: v["stream"].as_str().unwrap_or_default().to_owned(),
                                sequence: v["sequence"].as_u64().unwrap_or(0),
                                duplicate: v["duplicate"] == json!(true),
                            });
                            break;
                        }
                        Ok((400, _)) => {
                            progress.invalid.fetch_add(1, Relaxed);
                            answer = Some(Answer::Invalid);
                            break;
                        }
                        Ok((status, v)) => last = format!("HTTP {status} {v}"),
                        Err(e) => last = e,
                    }
                }
                if answer.is_none() {
                    progress.unanswered.fetch_add(1, Relaxed);
                }
                answered.push(started.elapsed());
                answers.push((request, answer.unwrap_or(Answer::Unanswered(last))));
            }
            (answers, answered, resent)
        })
    });
    let mut sent = Sent::default();
    for (answers, answered, resent) in futures::future::join_all(senders)
        .await
        .into_iter()
        .flatten()
    {
        sent.answers.extend(answers);
        sent.answered.extend(answered);
        sent.resent += resent;
    }
    sent.elapsed = started.elapsed();
    sent
}

/// When each view first showed each version, from the start of sending: (version, seen),
/// ascending, per thing id.
pub type Sightings = BTreeMap<String, Vec<(u64, Duration)>>;

/// Reads the views table every `every` until `stop` turns true, noting when each view first
/// shows a higher version.
async fn watch_views(
    stack: &Stack,
    started: Instant,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Sightings {
    let table = stack
        .provisioned
        .names
        .get_ref("ViewsTable")
        .unwrap_or_default()
        .to_owned();
    let mut seen = Sightings::new();
    loop {
        let scanning = started.elapsed();
        if let Ok(rows) = crate::demo::scan(stack, &table).await {
            // an item is read somewhere within the scan: its middle errs least either way
            let at = (scanning + started.elapsed()) / 2;
            for row in rows {
                let (Some(id), Some(version)) = (row["pk"].as_str(), row["version"].as_u64())
                else {
                    continue;
                };
                let versions = seen.entry(id.to_owned()).or_default();
                if versions.last().is_none_or(|(v, _)| *v < version) {
                    versions.push((version, at));
                }
            }
        }
        if *stop.borrow() {
            return seen;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
    }
}

/// From an accepted command to its view: one latency per accepted command that made an event,
/// sorted; and how many of those never showed.
pub fn view_latencies(sent: &Sent, m: &Model, seen: &Sightings) -> (Vec<Duration>, usize) {
    let mut version_of: BTreeMap<(&str, u64), u64> = BTreeMap::new();
    for (stream, events) in &m.events {
        for (i, e) in events.iter().enumerate() {
            version_of.insert((stream.as_str(), e.command), i as u64 + 1);
        }
    }
    let mut out = Vec::new();
    let mut missing = 0;
    for ((_, answer), at) in sent.answers.iter().zip(&sent.answered) {
        let Answer::Accepted {
            stream,
            sequence,
            duplicate: false,
        } = answer
        else {
            continue;
        };
        let Some(version) = version_of.get(&(stream.as_str(), *sequence)) else {
            continue;
        };
        let id = stream.split_once('#').map_or(stream.as_str(), |(_, id)| id);
        let shown = seen
            .get(id)
            .and_then(|vs| vs.iter().find(|(v, _)| v >= version));
        match shown {
            Some((_, when)) => out.push(when.saturating_sub(*at)),
            None => missing += 1,
        }
    }
    out.sort();
    (out, missing)
}

/// The `p`th percentile (0–100) of sorted values (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What the audit found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Audit {
    /// Events the model expects.
    pub events_expected: usize,
    /// Events found in the event log.
    pub events_found: usize,
    /// Commands with more than one event.
    pub events_doubled: usize,
    /// Views the model expects.
    pub views_expected: usize,
    /// Views equal to the model's.
    pub views_right: usize,
    /// Faults the model expects (rejected commands).
    pub faults_expected: usize,
    /// Faults stored.
    pub faults_stored: usize,
    /// Every difference, said plainly.
    pub problems: Vec<String>,
}

const VIEW_META: [&str; 9] = [
    "pk",
    "sk",
    "discriminator",
    "version",
    "timestamp",
    "lastModifiedBy",
    "deleted",
    "ttl",
    "latched",
];

/// The stream and sequence of the command a fault's record carries.
fn faulted_command(fault: &FaultEvent) -> Option<(String, u64)> {
    let image = &fault.uow.records().first()?.get("dynamodb")?["NewImage"];
    let stream = image["pk"]["S"].as_str()?.to_owned();
    let sequence = image["sequence"]["N"].as_str()?.parse().ok()?;
    Some((stream, sequence))
}

/// Reads the tables and the bucket and compares them with `m`.
pub async fn audit(stack: &Stack, m: &Model) -> Result<Audit, Error> {
    let names = &stack.provisioned.names;
    let name = |id: &str| names.get_ref(id).unwrap_or_default().to_owned();
    let mut a = Audit {
        events_expected: m.events.values().map(Vec::len).sum(),
        views_expected: m.views.len(),
        faults_expected: m.rejected.len(),
        ..Audit::default()
    };

    let rows = crate::demo::scan(stack, &name("EventsTable")).await?;
    let mut logged: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for row in rows.iter().filter(|r| r["discriminator"] == "event") {
        if let Some(pk) = row["pk"].as_str() {
            logged.entry(pk.to_owned()).or_default().push(row);
        }
    }
    a.events_found = logged.values().map(Vec::len).sum();
    for (stream, rows) in &logged {
        let want = m.events.get(stream).map(Vec::as_slice).unwrap_or_default();
        let mut commands = BTreeSet::new();
        for (i, row) in rows.iter().enumerate() {
            let event = &row["event"];
            let version = event["version"].as_u64().unwrap_or(0);
            if version != i as u64 + 1 {
                a.problems.push(format!(
                    "{stream}: event {} has version {version} (gap or double)",
                    i + 1
                ));
            }
            let command = event["tags"]["command"].as_u64().unwrap_or(0);
            if !commands.insert(command) {
                a.events_doubled += 1;
                a.problems
                    .push(format!("{stream}: command {command} appended twice"));
            }
            match want.get(i) {
                None => a
                    .problems
                    .push(format!("{stream}: unexpected event v{version}: {event}")),
                Some(w)
                    if w.event_type != event["type"]
                        || w.thing != event["thing"]
                        || w.command != command =>
                {
                    a.problems.push(format!(
                        "{stream} v{version}: {} {} from command {command}, expected {} {} from command {}",
                        event["type"], event["thing"], w.event_type, w.thing, w.command
                    ));
                }
                Some(_) => {}
            }
        }
        if rows.len() < want.len() {
            a.problems
                .push(format!("{stream}: {} of {} events", rows.len(), want.len()));
        }
    }
    for (stream, want) in &m.events {
        if !logged.contains_key(stream) {
            a.problems
                .push(format!("{stream}: none of its {} events", want.len()));
        }
    }

    let views = crate::demo::scan(stack, &name("ViewsTable")).await?;
    let mut seen = BTreeSet::new();
    for row in &views {
        let id = row["pk"].as_str().unwrap_or_default().to_owned();
        let Some((thing, deleted)) = m.views.get(&id) else {
            a.problems.push(format!("unexpected view {id}: {row}"));
            continue;
        };
        seen.insert(id.clone());
        let mut fields = row.as_object().cloned().unwrap_or_default();
        for k in VIEW_META {
            fields.remove(k);
        }
        let mut want = thing.as_object().cloned().unwrap_or_default();
        want.remove("id");
        let is_deleted = row["deleted"] == json!(true);
        if fields == want && is_deleted == *deleted {
            a.views_right += 1;
        } else {
            a.problems.push(format!(
                "view {id}: {} (deleted {is_deleted}), expected {} (deleted {deleted})",
                Value::Object(fields),
                Value::Object(want)
            ));
        }
    }
    for id in m.views.keys().filter(|id| !seen.contains(*id)) {
        a.problems.push(format!("view {id} is missing"));
    }

    let s3 = lambda_stream::connectors::S3::new(stack.clients.s3.clone(), name("FaultsBucket"));
    let stored = crate::demo::stored_faults(&s3).await?;
    a.faults_stored = stored.len();
    let mut faulted: BTreeMap<(String, u64), Vec<String>> = BTreeMap::new();
    for (key, fault) in &stored {
        match faulted_command(fault) {
            Some(c) => faulted.entry(c).or_default().push(format!(
                "{key} ({}, records {})",
                fault.id,
                fault.uow.records().len()
            )),
            None => a.problems.push(format!(
                "fault {key} is not a command's: {}",
                fault.err.message
            )),
        }
    }
    for (command, stored) in &faulted {
        if !m.rejected.contains(command) {
            a.problems.push(format!(
                "{} #{}: faulted, but the rules accept it",
                command.0, command.1
            ));
        } else if stored.len() > 1 {
            a.problems.push(format!(
                "{} #{}: {} faults stored: {}",
                command.0,
                command.1,
                stored.len(),
                stored.join("; ")
            ));
        }
    }
    for command in m.rejected.iter().filter(|c| !faulted.contains_key(*c)) {
        a.problems.push(format!(
            "{} #{}: rejected, but no fault stored",
            command.0, command.1
        ));
    }
    Ok(a)
}

/// The run's figures.
#[derive(Debug, Default)]
pub struct Report {
    /// The audit, once settled (or when time ran out).
    pub audit: Audit,
    /// Commands stored.
    pub stored: usize,
    /// Accepted answers per second while sending.
    pub intake_per_second: f64,
    /// From an accepted command to its visible view, sorted.
    pub latencies: Vec<Duration>,
    /// The functions' AWS calls by `Service.Operation`, all functions together.
    pub calls: BTreeMap<String, u64>,
}

/// CPU time used so far by the functions, the emulator (its process id in `EMULATOR_PID`, as
/// `scripts/with-emulator.sh` exports it) and this process (mappings, proxy, HTTP API, and
/// the load run's own clients).
fn cpu_now(stack: &Stack) -> [Duration; 3] {
    let functions = stack.functions.iter().map(|f| f.usage().cpu).sum();
    let emulator = std::env::var("EMULATOR_PID")
        .ok()
        .and_then(|p| p.parse().ok())
        .and_then(crate::cpu::of_process)
        .unwrap_or_default();
    let me = crate::cpu::of_process(std::process::id()).unwrap_or_default();
    [functions, emulator, me]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Sends the workload to a started stack, shows progress, waits for it to settle, audits it
/// and prints the figures.
pub async fn run(stack: &Stack, s: &Settings) -> Result<Report, Error> {
    let work = workload(s);
    let requests: usize = work.iter().map(Vec::len).sum();
    let pace = s.rate.map_or("as fast as answered".to_owned(), |r| {
        format!("{r:.0}/s offered")
    });
    println!(
        "\n== Load: {requests} requests from {} clients over {} things ({pace}, seed {})",
        s.clients, s.things, s.seed
    );
    let cpu_before = cpu_now(stack);
    let started = Instant::now();
    let (stop_watching, watching) = tokio::sync::watch::channel(false);
    let watcher = watch_views(stack, started, Duration::from_millis(250), watching);
    let progress = Arc::new(Progress::default());
    let sending = async {
        let api = stack.api.to_string();
        let sends = send(&api, work, s.rate, Arc::clone(&progress));
        tokio::pin!(sends);
        let every = Duration::from_secs(2);
        let mut ticks = tokio::time::interval_at((started + every).into(), every);
        let mut last = 0;
        let sent = loop {
            tokio::select! {
                sent = &mut sends => break sent,
                _ = ticks.tick() => {
                    let accepted = progress.accepted.load(Relaxed);
                    println!(
                        "  {:>5.1}s  sent {}/{requests}  accepted {accepted} ({:.1}/s now)  invalid {}  unanswered {}",
                        started.elapsed().as_secs_f64(),
                        progress.sent.load(Relaxed),
                        (accepted - last) as f64 / every.as_secs_f64(),
                        progress.invalid.load(Relaxed),
                        progress.unanswered.load(Relaxed),
                    );
                    last = accepted;
                }
            }
        };
        let settled = settle(stack, s, &sent, started).await;
        let _ = stop_watching.send(true);
        settled.map(|(m, audit)| (sent, m, audit))
    };
    let (settled, seen) = tokio::join!(sending, watcher);
    let (sent, m, audit) = settled?;
    let elapsed = started.elapsed();
    let cpu_after = cpu_now(stack);

    let secs = sent.elapsed.as_secs_f64().max(0.001);
    let accepted = progress.accepted.load(Relaxed);
    let (latencies, not_shown) = view_latencies(&sent, &m, &seen);
    println!(
        "\n== Figures ({:.1}s sending, {:.1}s in all)",
        secs,
        elapsed.as_secs_f64()
    );
    println!(
        "  commands/s: sent {:.1}, accepted {:.1}, rejected by the rules {:.1}, invalid {:.1}",
        requests as f64 / secs,
        accepted as f64 / secs,
        m.rejected.len() as f64 / secs,
        progress.invalid.load(Relaxed) as f64 / secs,
    );
    println!(
        "  accepted command → its view: p50 {}  p95 {}  p99 {}  max {}  ({} commands, {not_shown} never shown; views read every 250 ms)",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 95.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default()),
        latencies.len(),
    );
    println!(
        "\n  {:<44} {:>9} {:>11} {:>6} {:>7}",
        "function", "instances", "invocations", "busy", "CPU s"
    );
    for f in &stack.functions {
        let u = f.usage();
        let busy = u.busy.as_secs_f64() / (u.instances as f64 * elapsed.as_secs_f64()).max(0.001);
        println!(
            "  {:<44} {:>4} of {:<2} {:>11} {:>5.1}% {:>7.2}",
            f.spec().name,
            u.used,
            u.instances,
            u.invocations,
            busy * 100.0,
            u.cpu.as_secs_f64()
        );
    }
    println!(
        "\n  {:<52} {:>11} {:>10} {:>7} {:>8} {:>15}",
        "event source mapping / route",
        "invocations",
        "mean batch",
        "retried",
        "given up",
        "max iterator age"
    );
    for (key, c) in stack.activity.snapshot() {
        println!(
            "  {key:<52} {:>11} {:>10.1} {:>7} {:>8} {:>13} ms",
            c.invocations,
            c.delivered as f64 / c.invocations.max(1) as f64,
            c.retried,
            c.given_up,
            c.max_iterator_age_ms
        );
    }
    let by_caller = stack.proxy.calls();
    let mut calls: BTreeMap<String, u64> = BTreeMap::new();
    for ((_, op), n) in &by_caller {
        *calls.entry(op.clone()).or_default() += n;
    }
    let total: u64 = calls.values().sum();
    let per = m.stored.max(1) as f64;
    println!(
        "\n  AWS calls by the functions: {total}, {:.1} per stored command",
        total as f64 / per
    );
    for ((caller, op), n) in &by_caller {
        println!(
            "    {caller:<28} {op:<34} {n:>7}  {:>6.2} per command",
            *n as f64 / per
        );
    }
    let used: Vec<Duration> = cpu_after
        .iter()
        .zip(cpu_before)
        .map(|(a, b)| a.saturating_sub(b))
        .collect();
    let all: f64 = used
        .iter()
        .map(Duration::as_secs_f64)
        .sum::<f64>()
        .max(0.001);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!(
        "\n  CPU during the run: {:.1} s of {:.1} s on {cores} cores; functions {:.0}%, emulator {:.0}%, local stack and clients {:.0}%",
        all,
        elapsed.as_secs_f64() * cores,
        used[0].as_secs_f64() / all * 100.0,
        used[1].as_secs_f64() / all * 100.0,
        used[2].as_secs_f64() / all * 100.0,
    );
    Ok(Report {
        audit,
        stored: m.stored,
        intake_per_second: accepted as f64 / secs,
        latencies,
        calls,
    })
}

/// Prints the answers, then audits until the system has settled (or `s.wait` has passed).
async fn settle(
    stack: &Stack,
    s: &Settings,
    sent: &Sent,
    began: Instant,
) -> Result<(Model, Audit), Error> {
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut accepted, mut duplicates, mut invalid, mut unanswered) = (0, 0, 0, 0);
    for (request, answer) in &sent.answers {
        *kinds.entry(request.kind).or_default() += 1;
        match answer {
            Answer::Accepted { duplicate, .. } => {
                accepted += 1;
                if *duplicate {
                    duplicates += 1;
                }
            }
            Answer::Invalid => invalid += 1,
            Answer::Unanswered(why) => {
                unanswered += 1;
                println!("  no answer: {} ({why})", request.body);
            }
        }
    }
    let secs = sent.elapsed.as_secs_f64().max(0.001);
    println!(
        "  sent in {secs:.1}s: {accepted} accepted ({duplicates} acknowledged as repeats), {invalid} invalid (400), {unanswered} unanswered; {} sent again after a 5xx",
        sent.resent
    );
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("  by kind: {}", kinds.join(", "));
    let m = model(&sent.answers);
    println!(
        "  the rules imply {} events over {} streams, {} rejected commands, {} views",
        m.events.values().map(Vec::len).sum::<usize>(),
        m.events.len(),
        m.rejected.len(),
        m.views.len()
    );

    println!("\n== Waiting for the system to settle");
    let started = Instant::now();
    let mut last = String::new();
    let mut quiet_since: Option<(Instant, String)> = None;
    let audit = loop {
        let a = audit(stack, &m).await?;
        let line = format!(
            "events {}/{}  views {}/{}  faults {}/{}",
            a.events_found,
            a.events_expected,
            a.views_right,
            a.views_expected,
            a.faults_stored,
            a.faults_expected
        );
        if line != last {
            println!("  {:>5.1}s  {line}", began.elapsed().as_secs_f64());
            last = line.clone();
        }
        // settled: the audit is clean and nothing has moved for a few seconds (a late double
        // would still show)
        let activity = serde_json::to_string(&stack.activity.snapshot()).unwrap_or_default();
        let state = format!("{line}|{activity}");
        quiet_since = match quiet_since {
            Some((since, ref s)) if *s == state => Some((since, state)),
            _ => Some((Instant::now(), state)),
        };
        let quiet = quiet_since
            .as_ref()
            .is_some_and(|(since, _)| since.elapsed() >= Duration::from_secs(3));
        if (a.problems.is_empty() && quiet) || started.elapsed() > s.wait {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    };
    if unanswered > 0 {
        println!("  ({unanswered} commands had no final answer: the audit cannot know their fate)");
    }
    Ok((m, audit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(body: Value, stream: &str, sequence: u64) -> (Request, Answer) {
        (
            Request {
                kind: "test",
                body: body.to_string(),
            },
            Answer::Accepted {
                stream: stream.into(),
                sequence,
                duplicate: false,
            },
        )
    }

    #[test]
    fn the_model_replays_each_stream_in_its_own_order() {
        let c = |cmd: &str, data: Value| json!({"type": "thing", "command": cmd, "requestId": "r", "data": data});
        let answers = vec![
            // sent in another order than the stream's: the sequence decides
            accepted(
                c("update-thing", json!({"id": "t1", "color": "blue"})),
                "thing#t1",
                2,
            ),
            accepted(
                c(
                    "create-thing",
                    json!({"id": "t1", "name": "A", "color": "red"}),
                ),
                "thing#t1",
                1,
            ),
            accepted(c("delete-thing", json!({"id": "t1"})), "thing#t1", 3),
            accepted(
                c("update-thing", json!({"id": "t1", "name": "B"})),
                "thing#t1",
                4,
            ),
            accepted(c("paint-thing", json!({"id": "t2"})), "thing#t2", 1),
            accepted(c("update-thing", json!({"color": "x"})), "thing", 1),
        ];
        let m = model(&answers);
        let events = &m.events["thing#t1"];
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, ["thing-created", "thing-updated", "thing-deleted"]);
        assert_eq!(
            events[1].thing,
            json!({"id": "t1", "name": "A", "color": "blue"})
        );
        assert_eq!(
            m.rejected,
            BTreeSet::from([
                ("thing#t1".into(), 4),
                ("thing#t2".into(), 1),
                ("thing".into(), 1)
            ])
        );
        assert_eq!(
            m.views["t1"],
            (json!({"id": "t1", "name": "A", "color": "blue"}), true)
        );
    }

    #[test]
    fn a_commands_latency_runs_from_its_answer_to_the_first_view_at_or_past_its_version() {
        let c = |cmd: &str, data: Value| json!({"type": "thing", "command": cmd, "requestId": "r", "data": data});
        let answers = vec![
            accepted(
                c("create-thing", json!({"id": "t1", "name": "A"})),
                "thing#t1",
                1,
            ),
            // rejected by the rules: no event, no latency
            accepted(c("delete-thing", json!({"id": "t2"})), "thing#t2", 1),
            accepted(
                c("update-thing", json!({"id": "t1", "color": "x"})),
                "thing#t1",
                2,
            ),
            accepted(c("delete-thing", json!({"id": "t1"})), "thing#t1", 3),
        ];
        let ms = Duration::from_millis;
        let sent = Sent {
            answered: vec![ms(100), ms(150), ms(200), ms(300)],
            answers,
            ..Sent::default()
        };
        let m = model(&sent.answers);
        // the view went 1 → 3: version 2 was never shown on its own, 3 covers it
        let seen = Sightings::from([("t1".to_owned(), vec![(1, ms(400)), (3, ms(900))])]);
        let (latencies, missing) = view_latencies(&sent, &m, &seen);
        assert_eq!(latencies, [ms(300), ms(600), ms(700)]);
        assert_eq!(missing, 0);
        assert_eq!(percentile(&latencies, 50.0), ms(600));
        assert_eq!(percentile(&latencies, 99.0), ms(700));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
        let (_, missing) = view_latencies(&sent, &m, &Sightings::new());
        assert_eq!(missing, 3);
    }

    #[test]
    fn the_workload_is_the_seeds() {
        let s = Settings {
            commands: 120,
            things: 10,
            clients: 3,
            seed: 7,
            wait: Duration::ZERO,
            rate: None,
        };
        let bodies = |w: Vec<Vec<Request>>| -> Vec<String> {
            w.into_iter().flatten().map(|r| r.body).collect()
        };
        assert_eq!(bodies(workload(&s)), bodies(workload(&s)));
        assert!(workload(&s).iter().map(Vec::len).sum::<usize>() >= 120);
    }
}
