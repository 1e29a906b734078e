//! The library's settings: see [`Settings`].

use std::time::Duration;

use serde_json::{Map, Value};

use crate::metrics::MetricsConfig;

/// What the library takes from the environment, read once, at the edge.
///
/// A function's `main` (or its `from_env`) calls [`Settings::from_env`] once and passes the
/// settings down: to the [handler](crate::HandlerBuilder::settings), which hands pipelines their
/// default parallelism and sinks their standard tags, and to connector constructors. Nothing
/// below reads the environment, and [`Settings::default`] reads nothing either, so a test can
/// build any pipeline without touching process-wide state.
///
/// The variables are aws-lambda-stream's where it has one:
///
/// | variable | field | default |
/// |---|---|---|
/// | `AWS_LAMBDA_FUNCTION_NAME` | `function_name` | none |
/// | `AWS_REGION` | `region` | none |
/// | `SERVICE`, `STAGE`, `ACCOUNT_NAME` | `service`, `stage`, `account_name` | none |
/// | `PARALLEL` | `parallel` | 4 |
/// | `UPDATE_PARALLEL`, `PUT_PARALLEL`, `PUBLISH_PARALLEL`, `INVOKE_PARALLEL` | `*_parallel` | `parallel` |
/// | `BATCH_SIZE` | `batch_size` | the API's maximum |
/// | `WINDOW_RECORDS` | `window` | 500 |
/// | `DEADLINE_MARGIN_MS` | `deadline_margin` | 1000 ms |
/// | `ENABLED_PIPELINES`, `DISABLED_PIPELINES` | `enabled_pipelines`, `disabled_pipelines` | all, none |
/// | `ENTITY_TABLE_NAME` | `entity_table` | empty |
/// | `BUS_NAME` | `bus_name` | `default` |
/// | `STREAM_NAME`, `QUEUE_URL`, `TOPIC_ARN`, `BUCKET_NAME` | same, snake case | empty |
/// | `FAULTS_BUCKET` | `faults_bucket` | none |
/// | `COMPRESSION_THRESHOLD` (`off` for none) | `compression_threshold` | 10240 |
/// | `CLAIMCHECK_BUCKET_NAME` | `claimcheck_bucket` | none |
/// | `MASTER_KEY_ALIAS`, `ENCRYPTED_FIELDS` (comma-separated) | `master_key_alias`, `encrypted_fields` | none |
/// | `DATA_KEY_MAX_AGE` (ms) | `data_key_max_age` | the container's life |
/// | `IDEMPOTENCY_TABLE_NAME`, `IDEMPOTENCY_MAX_ATTEMPTS` | `idempotency_table`, `idempotency_max_attempts` | none |
/// | `METRICS` (`*`, `emf`, or families: `batch`, `pipeline`, `errors`), `NAMESPACE` | `metrics` | off; `lambda-stream/metrics` |
/// | `CIRCUIT_BREAKER_FAILED_BATCHES`, `CIRCUIT_BREAKER_RETRY_RATIO`, `CIRCUIT_BREAKER_MIN_RECORDS`, `CIRCUIT_BREAKER_BATCH_SIZE`, `CIRCUIT_BREAKER_COOL_DOWN_SECONDS` | `breaker` | off; 10 records; switch off; 300 s |
///
/// ```
/// use lambda_stream::Settings;
///
/// let s = Settings::from_vars(|name| match name {
///     "PARALLEL" => Some("8".into()),
///     "BUS_NAME" => Some("orders".into()),
///     _ => None,
/// });
/// assert_eq!((s.parallel, s.bus_name.as_str()), (8, "orders"));
/// assert_eq!(s.publish_parallel(), 8);
/// assert_eq!(Settings::default().parallel, 4);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The function's name (fault events, the `functionname` tag).
    pub function_name: Option<String>,
    /// The function's region (the `region` tag; other regions' global-table writes skipped).
    pub region: Option<String>,
    /// This service's name (the `source` tag).
    pub service: Option<String>,
    /// The stage (the `stage` tag).
    pub stage: Option<String>,
    /// The account's name (the `account` tag).
    pub account_name: Option<String>,
    /// How many keys async steps run at once, unless a pipeline says otherwise.
    pub parallel: usize,
    /// Records decoded and run through the pipelines at a time: a stream or SQS batch larger
    /// than this is taken in windows, one after another. A window after the first is decoded
    /// a few dozen records at a time (whole, for a size with no divisor from 8 to 32) in the
    /// turns the window before it leaves the thread while its calls are out, once three in
    /// four of that window's units are over: little more than one window's events are in
    /// memory at once. Each window ends before the next starts, so a key's
    /// order holds across them, and a key with a record to retry stays blocked. Sources that
    /// Lambda delivers again whole (SNS, S3, EventBridge, Firehose, schedules, alarms), and a
    /// batch with an SQS FIFO group or a record without an id, run in one window.
    pub window: usize,
    /// Concurrent writes of the `update` sink.
    pub update_parallel: Option<usize>,
    /// Concurrent writes of the `put` sinks.
    pub put_parallel: Option<usize>,
    /// Concurrent requests of the publishing sinks.
    pub publish_parallel: Option<usize>,
    /// Concurrent invocations of the `invoke_lambda` sink.
    pub invoke_parallel: Option<usize>,
    /// Entries per batch request, capped at each API's maximum.
    pub batch_size: Option<usize>,
    /// Time kept back before the Lambda deadline.
    pub deadline_margin: Duration,
    /// Run only these pipelines.
    pub enabled_pipelines: Option<Vec<String>>,
    /// Never run these pipelines.
    pub disabled_pipelines: Vec<String>,
    /// The `update` and `put` sinks' table.
    pub entity_table: String,
    /// The bus published to.
    pub bus_name: String,
    /// The Kinesis stream published to.
    pub stream_name: String,
    /// The SQS queue sent to.
    pub queue_url: String,
    /// The SNS topic published to.
    pub topic_arn: String,
    /// The bucket objects go to.
    pub bucket_name: String,
    /// The fault monitor's bucket: where faults too large or rejected are stored whole.
    pub faults_bucket: Option<String>,
    /// Fields of published events over this estimated size are compressed (none when unset).
    pub compression_threshold: Option<usize>,
    /// Where events too big for their target are stored (claim-check), if anywhere.
    pub claimcheck_bucket: Option<String>,
    /// The KMS key (alias or id) published events' sensitive fields are encrypted under.
    pub master_key_alias: Option<String>,
    /// The fields of published events to encrypt (with a master key).
    pub encrypted_fields: Vec<String>,
    /// How long a data key is used (cached) before KMS is asked again; the container's life
    /// when unset.
    pub data_key_max_age: Option<Duration>,
    /// The idempotency store's table (`IDEMPOTENCY_TABLE_NAME`).
    pub idempotency_table: Option<String>,
    /// Failed attempts before a guarded record is faulted (`IDEMPOTENCY_MAX_ATTEMPTS`).
    pub idempotency_max_attempts: Option<u32>,
    /// The circuit breaker's thresholds (`CIRCUIT_BREAKER_*`).
    pub breaker: BreakerSettings,
    /// Which metrics each invocation prints in CloudWatch's embedded metric format
    /// (`METRICS`, `NAMESPACE`; see [`crate::metrics`]).
    pub metrics: MetricsConfig,
}

/// When a [`CircuitBreaker`](crate::breaker::CircuitBreaker) trips and what it does.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    /// Batches in a row with records to retry that trip it.
    pub failed_batches: Option<u32>,
    /// The share of one batch's records retried that trips it.
    pub retry_ratio: Option<f64>,
    /// The fewest records a batch needs for its ratio to count.
    pub min_records: Option<usize>,
    /// Lower the batch size to this instead of switching the mapping off.
    pub batch_size: Option<i32>,
    /// How long before a lowered batch size is restored, or a switched-off mapping is
    /// switched on again by the breaker flavor.
    pub cool_down: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failed_batches: None,
            retry_ratio: None,
            min_records: None,
            batch_size: None,
            cool_down: Duration::from_secs(300),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            function_name: None,
            region: None,
            service: None,
            stage: None,
            account_name: None,
            parallel: 4,
            window: 500,
            update_parallel: None,
            put_parallel: None,
            publish_parallel: None,
            invoke_parallel: None,
            batch_size: None,
            deadline_margin: Duration::from_millis(1000),
            enabled_pipelines: None,
            disabled_pipelines: Vec::new(),
            entity_table: String::new(),
            bus_name: "default".into(),
            stream_name: String::new(),
            queue_url: String::new(),
            topic_arn: String::new(),
            bucket_name: String::new(),
            faults_bucket: None,
            compression_threshold: Some(crate::compression::DEFAULT_THRESHOLD),
            claimcheck_bucket: None,
            master_key_alias: None,
            encrypted_fields: Vec::new(),
            data_key_max_age: None,
            idempotency_table: None,
            idempotency_max_attempts: None,
            breaker: BreakerSettings::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

fn id_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Settings {
    /// From the process's environment (once, at the edge).
    pub fn from_env() -> Self {
        Settings::from_vars(|name| std::env::var(name).ok())
    }

    /// From any source of variables (the environment, a test's map); blank values are unset,
    /// and unparsable numbers keep their defaults.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let count = |name: &str| {
            var(name)
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|n| *n > 0)
        };
        let d = Settings::default();
        Settings {
            function_name: var("AWS_LAMBDA_FUNCTION_NAME"),
            region: var("AWS_REGION"),
            service: var("SERVICE"),
            stage: var("STAGE"),
            account_name: var("ACCOUNT_NAME"),
            parallel: count("PARALLEL").unwrap_or(d.parallel),
            window: count("WINDOW_RECORDS").unwrap_or(d.window),
            update_parallel: count("UPDATE_PARALLEL"),
            put_parallel: count("PUT_PARALLEL"),
            publish_parallel: count("PUBLISH_PARALLEL"),
            invoke_parallel: count("INVOKE_PARALLEL"),
            batch_size: count("BATCH_SIZE"),
            deadline_margin: var("DEADLINE_MARGIN_MS")
                .and_then(|v| v.trim().parse().ok())
                .map_or(d.deadline_margin, Duration::from_millis),
            enabled_pipelines: var("ENABLED_PIPELINES").map(|l| id_list(&l)),
            disabled_pipelines: var("DISABLED_PIPELINES")
                .map(|l| id_list(&l))
                .unwrap_or_default(),
            entity_table: var("ENTITY_TABLE_NAME").unwrap_or_default(),
            bus_name: var("BUS_NAME").unwrap_or(d.bus_name),
            stream_name: var("STREAM_NAME").unwrap_or_default(),
            queue_url: var("QUEUE_URL").unwrap_or_default(),
            topic_arn: var("TOPIC_ARN").unwrap_or_default(),
            bucket_name: var("BUCKET_NAME").unwrap_or_default(),
            faults_bucket: var("FAULTS_BUCKET"),
            compression_threshold: match var("COMPRESSION_THRESHOLD").as_deref().map(str::trim) {
                Some("off") => None,
                _ => count("COMPRESSION_THRESHOLD").or(d.compression_threshold),
            },
            claimcheck_bucket: var("CLAIMCHECK_BUCKET_NAME"),
            master_key_alias: var("MASTER_KEY_ALIAS"),
            encrypted_fields: var("ENCRYPTED_FIELDS")
                .map(|l| id_list(&l))
                .unwrap_or_default(),
            data_key_max_age: count("DATA_KEY_MAX_AGE").map(|ms| Duration::from_millis(ms as u64)),
            idempotency_table: var("IDEMPOTENCY_TABLE_NAME"),
            idempotency_max_attempts: count("IDEMPOTENCY_MAX_ATTEMPTS")
                .and_then(|n| u32::try_from(n).ok()),
            breaker: BreakerSettings {
                failed_batches: count("CIRCUIT_BREAKER_FAILED_BATCHES")
                    .and_then(|n| u32::try_from(n).ok()),
                retry_ratio: var("CIRCUIT_BREAKER_RETRY_RATIO")
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .filter(|r| *r > 0.0 && *r <= 1.0),
                min_records: count("CIRCUIT_BREAKER_MIN_RECORDS"),
                batch_size: count("CIRCUIT_BREAKER_BATCH_SIZE").and_then(|n| i32::try_from(n).ok()),
                cool_down: count("CIRCUIT_BREAKER_COOL_DOWN_SECONDS")
                    .map_or(d.breaker.cool_down, |s| Duration::from_secs(s as u64)),
            },
            metrics: MetricsConfig {
                namespace: var("NAMESPACE"),
                ..MetricsConfig::parse(&var("METRICS").unwrap_or_default())
            },
        }
    }

    /// Concurrent writes of the `update` sink.
    pub fn update_parallel(&self) -> usize {
        self.update_parallel.unwrap_or(self.parallel)
    }

    /// Concurrent writes of the `put` sinks.
    pub fn put_parallel(&self) -> usize {
        self.put_parallel.unwrap_or(self.parallel)
    }

    /// Concurrent requests of the publishing sinks.
    pub fn publish_parallel(&self) -> usize {
        self.publish_parallel.unwrap_or(self.parallel)
    }

    /// Concurrent invocations of the `invoke_lambda` sink.
    pub fn invoke_parallel(&self) -> usize {
        self.invoke_parallel.unwrap_or(self.parallel)
    }

    /// The standard tags of what this function publishes: `account`, `region`, `stage`,
    /// `source` and `functionname`, those that are set.
    pub fn standard_tags(&self) -> Map<String, Value> {
        [
            ("account", &self.account_name),
            ("region", &self.region),
            ("stage", &self.stage),
            ("source", &self.service),
            ("functionname", &self.function_name),
        ]
        .into_iter()
        .filter_map(|(tag, v)| Some((tag.to_owned(), Value::from(v.clone()?))))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_and_unparsable_values_keep_the_defaults() {
        let s = Settings::from_vars(|name| match name {
            "PARALLEL" => Some("zero".into()),
            "SERVICE" => Some("  ".into()),
            "DEADLINE_MARGIN_MS" => Some("250".into()),
            "ENABLED_PIPELINES" => Some("a, b,,".into()),
            _ => None,
        });
        assert_eq!(s.parallel, 4);
        assert_eq!(s.service, None);
        assert_eq!(s.deadline_margin, Duration::from_millis(250));
        assert_eq!(s.enabled_pipelines, Some(vec!["a".into(), "b".into()]));
    }

    #[test]
    fn compression_is_on_by_default_and_can_be_turned_off() {
        let with = |v: &'static str| {
            Settings::from_vars(move |name| (name == "COMPRESSION_THRESHOLD").then(|| v.into()))
        };
        assert_eq!(Settings::default().compression_threshold, Some(10 * 1024));
        assert_eq!(with("512").compression_threshold, Some(512));
        assert_eq!(with("off").compression_threshold, None);
        assert_eq!(with("lots").compression_threshold, Some(10 * 1024));
        let s =
            Settings::from_vars(|name| (name == "CLAIMCHECK_BUCKET_NAME").then(|| "claims".into()));
        assert_eq!(s.claimcheck_bucket.as_deref(), Some("claims"));
    }

    #[test]
    fn encryption_needs_a_master_key_and_fields() {
        let s = Settings::from_vars(|name| match name {
            "MASTER_KEY_ALIAS" => Some("alias/events".into()),
            "ENCRYPTED_FIELDS" => Some("name, email".into()),
            "DATA_KEY_MAX_AGE" => Some("60000".into()),
            _ => None,
        });
        assert_eq!(s.master_key_alias.as_deref(), Some("alias/events"));
        assert_eq!(s.encrypted_fields, ["name", "email"]);
        assert_eq!(s.data_key_max_age, Some(Duration::from_secs(60)));
        assert_eq!(Settings::default().encrypted_fields, Vec::<String>::new());
    }
}
