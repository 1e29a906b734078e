//! Metrics in CloudWatch's embedded metric format (EMF), flushed once per invocation.
//!
//! The handler counts as it goes (records, bytes, outcomes per pipeline, faults and retries by
//! error name, the oldest record's age, each pipeline's time) into an [`InvocationMetrics`],
//! and prints it at the end as EMF documents, one JSON line each, which CloudWatch turns into
//! metrics without any API call. Dimensions are bounded: the function's standard tags
//! (`functionname`, `source`, `stage`, `region`, `account`), the pipeline id and the error
//! name, never a record's id.
//!
//! `METRICS` (as aws-lambda-stream's) turns them on: unset or empty, off; `*` or `emf`, every
//! family; or a comma-separated list of families: `batch` (per invocation), `pipeline` (per
//! pipeline and outcome), `errors` (faults and retries by error name). `NAMESPACE` names the
//! CloudWatch namespace (default `lambda-stream/metrics`, aws-lambda-stream's).
//!
//! Why not the `metrics` facade with an EMF exporter: its recorder is process-global, so two
//! handlers (or two tests) in one process share one document, and each `counter!` call hashes
//! its labels on the hot path; here the handler already holds every count per invocation, and
//! a document is a few lines of JSON.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value, json};

use crate::record::SourceRecord;

/// aws-lambda-stream's default namespace.
pub const DEFAULT_NAMESPACE: &str = "lambda-stream/metrics";

/// Distinct error names reported per invocation; the rest are counted as `Other`, so a
/// misbehaving dependency cannot multiply the metrics' dimensions.
pub const MAX_ERROR_NAMES: usize = 20;

/// Which metric families are on (`METRICS`).
///
/// ```
/// use lambda_stream::metrics::MetricsConfig;
///
/// assert!(!MetricsConfig::parse("").any());
/// assert!(MetricsConfig::parse("*").pipeline);
/// let some = MetricsConfig::parse("batch, errors");
/// assert!(some.batch && some.errors && !some.pipeline);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Per invocation: batch size and bytes, iterator age, outcomes, time, cold start.
    pub batch: bool,
    /// Per pipeline: outcomes and time.
    pub pipeline: bool,
    /// Faults and retries by error name.
    pub errors: bool,
    /// The CloudWatch namespace.
    pub namespace: Option<String>,
}

impl MetricsConfig {
    /// The families `METRICS` names (`*` and `emf`: all).
    pub fn parse(value: &str) -> Self {
        let mut c = MetricsConfig::default();
        for family in value.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            match family {
                "*" | "emf" => {
                    c.batch = true;
                    c.pipeline = true;
                    c.errors = true;
                }
                "batch" => c.batch = true,
                "pipeline" => c.pipeline = true,
                "errors" => c.errors = true,
                other => tracing::warn!(family = other, "unknown METRICS family ignored"),
            }
        }
        c
    }

    /// Whether any family is on.
    pub fn any(&self) -> bool {
        self.batch || self.pipeline || self.errors
    }

    fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }
}

/// One pipeline's part of an invocation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PipelineMetrics {
    /// Units it took.
    pub units: usize,
    /// Units that ended done in it.
    pub done: usize,
    /// Units it faulted.
    pub faulted: usize,
    /// Units it sent back for retry.
    pub retry: usize,
    /// From the start of the invocation's pipelines until it finished, in ms.
    pub time_ms: f64,
}

/// What one invocation did, for its EMF documents.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InvocationMetrics {
    /// The source (`from_kinesis`, ...).
    pub source: &'static str,
    /// Records in the batch.
    pub records: usize,
    /// Bytes of the records' payloads.
    pub bytes: usize,
    /// The oldest record's age when the invocation began (ms), where the source says when
    /// records arrived.
    pub iterator_age_ms: Option<i64>,
    /// Records that ended done, faulted, to retry.
    pub done: usize,
    /// See `done`.
    pub faulted: usize,
    /// See `done`.
    pub retry: usize,
    /// The invocation's time in the handler (ms).
    pub time_ms: f64,
    /// The first invocation of this process.
    pub cold_start: bool,
    /// By pipeline id.
    pub pipelines: BTreeMap<String, PipelineMetrics>,
    /// Faults by error name.
    pub faults_by_error: BTreeMap<String, usize>,
    /// Retries by error name.
    pub retries_by_error: BTreeMap<String, usize>,
}

impl InvocationMetrics {
    /// The batch's part, measured before the pipelines run: its size and bytes, the oldest
    /// record's age, and whether this is the process's first invocation.
    pub fn of_batch(source: &'static str, records: &[std::sync::Arc<SourceRecord>]) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        InvocationMetrics {
            source,
            records: records.len(),
            bytes: records.iter().map(|r| r.payload_len()).sum(),
            iterator_age_ms: records
                .iter()
                .filter_map(|r| r.arrival_millis())
                .min()
                .map(|oldest| now - oldest),
            cold_start: cold_start(),
            ..InvocationMetrics::default()
        }
    }
}

impl InvocationMetrics {
    /// Adds a later window's figures to these: the batch's size and bytes, the pipelines'
    /// and the errors' counts summed, the oldest record's age kept. The outcome counts and
    /// the invocation's time are the whole batch's, set once it is over.
    pub(crate) fn absorb(&mut self, later: InvocationMetrics) {
        self.records += later.records;
        self.bytes += later.bytes;
        self.iterator_age_ms = self.iterator_age_ms.max(later.iterator_age_ms);
        for (id, p) in later.pipelines {
            let mine = self.pipelines.entry(id).or_default();
            mine.units += p.units;
            mine.done += p.done;
            mine.faulted += p.faulted;
            mine.retry += p.retry;
            mine.time_ms += p.time_ms;
        }
        for (mine, theirs) in [
            (&mut self.faults_by_error, later.faults_by_error),
            (&mut self.retries_by_error, later.retries_by_error),
        ] {
            for (name, n) in theirs {
                for _ in 0..n {
                    count_error(mine, &name);
                }
            }
        }
    }
}

static WARM: AtomicBool = AtomicBool::new(false);

/// True the first time it is called in a process: the invocation is a cold start.
pub fn cold_start() -> bool {
    !WARM.swap(true, Ordering::Relaxed)
}

/// Counts `name` in `by_error`, folding names past [`MAX_ERROR_NAMES`] into `Other`.
pub fn count_error(by_error: &mut BTreeMap<String, usize>, name: &str) {
    if let Some(n) = by_error.get_mut(name) {
        *n += 1;
    } else if by_error.len() < MAX_ERROR_NAMES {
        by_error.insert(name.to_owned(), 1);
    } else {
        *by_error.entry("Other".to_owned()).or_default() += 1;
    }
}

fn unit(name: &str) -> &'static str {
    if name.ends_with(".count") || name.ends_with(".size") {
        "Count"
    } else if name.ends_with(".bytes") {
        "Bytes"
    } else if name.ends_with(".time") || name.ends_with(".age") {
        "Milliseconds"
    } else {
        "None"
    }
}

/// One EMF document: the tags and extra dimensions as fields, the metrics' values as fields,
/// and the `_aws` directive naming them.
fn document(
    namespace: &str,
    timestamp: i64,
    tags: &Map<String, Value>,
    extra: &[(&str, &str)],
    metrics: &[(&str, Value)],
) -> Value {
    let mut doc = tags.clone();
    let mut dimensions: Vec<&str> = extra.iter().map(|(k, _)| *k).collect();
    dimensions.extend(tags.keys().map(String::as_str));
    for (k, v) in extra {
        doc.insert((*k).to_owned(), json!(v));
    }
    for (name, value) in metrics {
        doc.insert((*name).to_owned(), value.clone());
    }
    let definitions: Vec<Value> = metrics
        .iter()
        .map(|(name, _)| json!({"Name": name, "Unit": unit(name)}))
        .collect();
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [dimensions],
                "Metrics": definitions,
            }],
        }),
    );
    Value::Object(doc)
}

impl InvocationMetrics {
    /// The EMF documents of the families `config` turns on, dimensioned by `tags` (the
    /// function's standard tags), timed `timestamp` (epoch ms).
    ///
    /// ```
    /// use lambda_stream::metrics::{InvocationMetrics, MetricsConfig};
    ///
    /// let m = InvocationMetrics { source: "from_kinesis", records: 3, done: 3, ..Default::default() };
    /// let tags = serde_json::Map::from_iter([("functionname".to_owned(), "listener".into())]);
    /// let docs = m.documents(&MetricsConfig::parse("batch"), &tags, 1_700_000_000_000);
    /// assert_eq!(docs[0]["stream.batch.size"], 3);
    /// let dimensions = &docs[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0];
    /// assert_eq!(dimensions[0], "sourcetype");
    /// assert_eq!(dimensions[1], "functionname");
    /// ```
    pub fn documents(
        &self,
        config: &MetricsConfig,
        tags: &Map<String, Value>,
        timestamp: i64,
    ) -> Vec<Value> {
        let ns = config.namespace();
        let mut docs = Vec::new();
        if config.batch {
            let mut metrics = vec![
                ("stream.batch.size", json!(self.records)),
                ("stream.batch.bytes", json!(self.bytes)),
                ("stream.record.done.count", json!(self.done)),
                ("stream.record.faulted.count", json!(self.faulted)),
                ("stream.record.retry.count", json!(self.retry)),
                ("stream.invocation.time", json!(round(self.time_ms))),
                ("stream.coldstart.count", json!(u8::from(self.cold_start))),
            ];
            if let Some(age) = self.iterator_age_ms {
                metrics.push(("stream.iterator.age", json!(age.max(0))));
            }
            docs.push(document(
                ns,
                timestamp,
                tags,
                &[("sourcetype", self.source)],
                &metrics,
            ));
        }
        if config.pipeline {
            for (id, p) in &self.pipelines {
                docs.push(document(
                    ns,
                    timestamp,
                    tags,
                    &[("pipeline", id)],
                    &[
                        ("stream.pipeline.uow.count", json!(p.units)),
                        ("stream.pipeline.done.count", json!(p.done)),
                        ("stream.pipeline.faulted.count", json!(p.faulted)),
                        ("stream.pipeline.retry.count", json!(p.retry)),
                        ("stream.pipeline.time", json!(round(p.time_ms))),
                    ],
                ));
            }
        }
        if config.errors {
            for (metric, by_error) in [
                ("stream.fault.count", &self.faults_by_error),
                ("stream.retry.count", &self.retries_by_error),
            ] {
                for (name, n) in by_error {
                    docs.push(document(
                        ns,
                        timestamp,
                        tags,
                        &[("error", name)],
                        &[(metric, json!(n))],
                    ));
                }
            }
        }
        docs
    }

    /// Writes the documents to `out`, one JSON line each (stdout in a function: the Lambda
    /// runtime sends it to CloudWatch Logs, which extracts the metrics).
    pub fn write(&self, config: &MetricsConfig, tags: &Map<String, Value>, out: &mut dyn Write) {
        if !config.any() {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut text = Vec::with_capacity(1024);
        for doc in self.documents(config, tags, now) {
            // a document that cannot be serialized is not worth failing the invocation for
            if serde_json::to_writer(&mut text, &doc).is_ok() {
                text.push(b'\n');
            }
        }
        // one write, so the lines of two invocations never interleave
        let _ = out.write_all(&text).and_then(|()| out.flush());
    }
}

fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags() -> Map<String, Value> {
        Map::from_iter([
            ("account".to_owned(), json!("prod")),
            ("region".to_owned(), json!("us-east-1")),
            ("functionname".to_owned(), json!("listener")),
        ])
    }

    fn sample() -> InvocationMetrics {
        let mut m = InvocationMetrics {
            source: "from_kinesis",
            records: 5,
            bytes: 1_234,
            iterator_age_ms: Some(2_500),
            done: 3,
            faulted: 1,
            retry: 1,
            time_ms: 12.345_678,
            cold_start: true,
            ..Default::default()
        };
        m.pipelines.insert(
            "thing-view".into(),
            PipelineMetrics {
                units: 5,
                done: 3,
                faulted: 1,
                retry: 1,
                time_ms: 10.0,
            },
        );
        count_error(&mut m.faults_by_error, "InvalidCommand");
        count_error(&mut m.retries_by_error, "ThrottlingException");
        m
    }

    #[test]
    fn the_batch_document_field_by_field() {
        let docs = sample().documents(&MetricsConfig::parse("batch"), &tags(), 42);
        assert_eq!(docs.len(), 1);
        let d = &docs[0];
        assert_eq!(d["functionname"], "listener");
        assert_eq!(d["sourcetype"], "from_kinesis");
        assert_eq!(d["stream.batch.size"], 5);
        assert_eq!(d["stream.batch.bytes"], 1_234);
        assert_eq!(d["stream.record.done.count"], 3);
        assert_eq!(d["stream.record.faulted.count"], 1);
        assert_eq!(d["stream.record.retry.count"], 1);
        assert_eq!(d["stream.invocation.time"], 12.346);
        assert_eq!(d["stream.coldstart.count"], 1);
        assert_eq!(d["stream.iterator.age"], 2_500);
        let aws = &d["_aws"];
        assert_eq!(aws["Timestamp"], 42);
        let directive = &aws["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], DEFAULT_NAMESPACE);
        let mut dimensions: Vec<&str> = directive["Dimensions"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap())
            .collect();
        assert_eq!(dimensions[0], "sourcetype");
        dimensions.sort();
        assert_eq!(
            dimensions,
            ["account", "functionname", "region", "sourcetype"]
        );
        let units: BTreeMap<&str, &str> = directive["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["Name"].as_str().unwrap(), m["Unit"].as_str().unwrap()))
            .collect();
        assert_eq!(units["stream.batch.bytes"], "Bytes");
        assert_eq!(units["stream.iterator.age"], "Milliseconds");
        assert_eq!(units["stream.record.done.count"], "Count");
        assert_eq!(units.len(), 8);
    }

    #[test]
    fn pipeline_and_error_documents_carry_their_dimension() {
        let config = MetricsConfig {
            namespace: Some("orders".into()),
            ..MetricsConfig::parse("pipeline,errors")
        };
        let docs = sample().documents(&config, &tags(), 42);
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0]["pipeline"], "thing-view");
        assert_eq!(docs[0]["stream.pipeline.retry.count"], 1);
        assert_eq!(
            docs[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "orders"
        );
        assert_eq!(
            docs[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0][0],
            "pipeline"
        );
        assert_eq!(docs[1]["error"], "InvalidCommand");
        assert_eq!(docs[1]["stream.fault.count"], 1);
        assert_eq!(docs[2]["error"], "ThrottlingException");
        assert_eq!(docs[2]["stream.retry.count"], 1);
    }

    #[test]
    fn error_names_are_bounded() {
        let mut by_error = BTreeMap::new();
        for i in 0..(MAX_ERROR_NAMES + 5) {
            count_error(&mut by_error, &format!("E{i}"));
        }
        count_error(&mut by_error, "E0");
        assert_eq!(by_error.len(), MAX_ERROR_NAMES + 1);
        assert_eq!(by_error["Other"], 5);
        assert_eq!(by_error["E0"], 2);
    }

    #[test]
    fn off_unless_asked() {
        assert!(!MetricsConfig::parse(" , ").any());
        assert!(
            sample()
                .documents(&MetricsConfig::default(), &tags(), 1)
                .is_empty()
        );
    }
}
