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

/// Sends every client's requests, the clients at once.
pub async fn send(api: &str, workload: Vec<Vec<Request>>) -> Sent {
    let url = Arc::new(format!("http://{api}/commands"));
    let started = Instant::now();
    let clients = workload.into_iter().map(|requests| {
        let url = Arc::clone(&url);
        tokio::spawn(async move {
            let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            let mut answers = Vec::new();
            let mut resent = 0;
            for request in requests {
                let mut last = String::new();
                let mut answer = None;
                for attempt in 0..30 {
                    if attempt > 0 {
                        resent += 1;
                        tokio::time::sleep(Duration::from_millis(50 * attempt.min(10))).await;
                    }
                    match post(&client, &url, &request.body).await {
                        Ok((202, v)) => {
                            answer = Some(Answer::Accepted {
                                stream: v["stream"].as_str().unwrap_or_default().to_owned(),
                                sequence: v["sequence"].as_u64().unwrap_or(0),
                                duplicate: v["duplicate"] == json!(true),
                            });
                            break;
                        }
                        Ok((400, _)) => {
                            answer = Some(Answer::Invalid);
                            break;
                        }
                        Ok((status, v)) => last = format!("HTTP {status} {v}"),
                        Err(e) => last = e,
                    }
                }
                answers.push((request, answer.unwrap_or(Answer::Unanswered(last))));
            }
            (answers, resent)
        })
    });
    let mut sent = Sent::default();
    for (answers, resent) in futures::future::join_all(clients)
        .await
        .into_iter()
        .flatten()
    {
        sent.answers.extend(answers);
        sent.resent += resent;
    }
    sent.elapsed = started.elapsed();
    sent
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
}

/// Sends the workload to a started stack, waits for it to settle and audits it; prints as it
/// goes.
pub async fn run(stack: &Stack, s: &Settings) -> Result<Report, Error> {
    let work = workload(s);
    let requests: usize = work.iter().map(Vec::len).sum();
    println!(
        "\n== Load: {requests} requests from {} clients over {} things (seed {})",
        s.clients, s.things, s.seed
    );
    let sent = send(&stack.api.to_string(), work).await;
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
    println!(
        "  command-intake: {:.1} accepted commands/s",
        accepted as f64 / secs
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
            println!("  {:>5.1}s  {line}", started.elapsed().as_secs_f64());
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
    println!("\n== Event source mappings and routes");
    for (key, c) in stack.activity.snapshot() {
        println!(
            "  {key:<52} invocations {:>4}  delivered {:>4}  retried {:>3}  given up {:>2}",
            c.invocations, c.delivered, c.retried, c.given_up
        );
    }
    Ok(Report {
        audit,
        stored: m.stored,
        intake_per_second: accepted as f64 / secs,
    })
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
    fn the_workload_is_the_seeds() {
        let s = Settings {
            commands: 120,
            things: 10,
            clients: 3,
            seed: 7,
            wait: Duration::ZERO,
        };
        let bodies = |w: Vec<Vec<Request>>| -> Vec<String> {
            w.into_iter().flatten().map(|r| r.body).collect()
        };
        assert_eq!(bodies(workload(&s)), bodies(workload(&s)));
        assert!(workload(&s).iter().map(Vec::len).sum::<usize>() >= 120);
    }
}
