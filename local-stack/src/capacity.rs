//! The capacity model: what a target event rate needs in shards, concurrency, DynamoDB request
//! units and EventBridge entries, and what it costs a month, for this library and for
//! aws-lambda-stream on Node, from the per-record CPU time and AWS calls `make bench` measures.
//!
//! The path modelled is the reference system's two stream consumers, per event: the listener
//! (a Kinesis record in, one conditional view write out) and the trigger (a DynamoDB stream
//! record in, one EventBridge entry out, ten to a `PutEvents`). Lambda gives a function
//! `memory / 1769 MB` of a vCPU (a whole one at 1,769 MB), so a record's duration is its CPU time
//! stretched by that share, plus its calls' latency divided by the calls in flight (`PARALLEL`).
//! Memory is the smallest Lambda size at least 1.25× the peak RSS the benchmark measured for
//! the 5,000-record batch (Node's heap needs more than 256 MB there).
//!
//! ```
//! use local_stack::capacity::{Measured, Model};
//!
//! let model = Model::default();
//! let plan = model.plan(&Measured::ours(), 100_000.0);
//! assert_eq!(plan.shards, 110); // 100,000 events of 1,100 bytes a second: 110 MB/s written
//! assert!(plan.monthly.total() > 0.0);
//! ```

use serde::Deserialize;

/// AWS list prices ([`PRICES_JSON`], dated inside).
#[derive(Debug, Clone, Deserialize)]
pub struct Prices {
    /// When the prices were read.
    pub as_of: String,
    /// Their region.
    pub region: String,
    /// Lambda, per GB-second of x86_64 duration.
    pub lambda_gb_second_x86_64: f64,
    /// Lambda, per million requests.
    pub lambda_million_requests: f64,
    /// Kinesis Data Streams (provisioned), per shard-hour.
    pub kinesis_shard_hour: f64,
    /// Kinesis, per million PUT payload units (25 KB each).
    pub kinesis_million_put_payload_units: f64,
    /// DynamoDB on demand, per million write request units.
    pub dynamodb_million_write_request_units: f64,
    /// EventBridge, per million custom events (64 KB chunks).
    pub eventbridge_million_custom_events: f64,
}

/// The dated price table kept in the repository.
pub const PRICES_JSON: &str = include_str!("prices.json");

impl Prices {
    /// The repository's table.
    pub fn bundled() -> Prices {
        // the bundled file is ours and checked by a test, so this cannot fail at run time
        serde_json::from_str(PRICES_JSON).unwrap_or_else(|e| panic!("prices.json: {e}"))
    }
}

/// One implementation's figures from `make bench` (5,000 records, release, canned AWS answers).
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// Whose figures.
    pub name: String,
    /// The listener's handler CPU time per record, ms (SDK calls included, network excluded).
    pub listener_cpu_ms: f64,
    /// The trigger's, ms.
    pub trigger_cpu_ms: f64,
    /// The larger of the two functions' peak RSS for the 5,000-record batch, MB.
    pub peak_rss_mb: f64,
}

impl Measured {
    /// This library, `make bench` on the development machine, 2026-12-02.
    pub fn ours() -> Measured {
        Measured {
            name: "lambda-stream (Rust)".into(),
            listener_cpu_ms: 254.8 / 5000.0,
            trigger_cpu_ms: 191.4 / 5000.0,
            peak_rss_mb: 170.0,
        }
    }

    /// aws-lambda-stream 1.0.0 on Node 20 with its SDK clients, the same run.
    pub fn peer() -> Measured {
        Measured {
            name: "aws-lambda-stream (Node 20)".into(),
            listener_cpu_ms: 3614.7 / 5000.0,
            trigger_cpu_ms: 1113.2 / 5000.0,
            peak_rss_mb: 308.0,
        }
    }

    /// Both from a `make bench` run's `results.json` (`<target>/bench/results.json`).
    pub fn from_bench(json: &str) -> Result<(Measured, Measured), String> {
        let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let records = v["records"].as_f64().ok_or("results.json: no `records`")?;
        let scenario = |name: &str, field: &str| {
            v["scenarios"][name][field]
                .as_f64()
                .ok_or_else(|| format!("results.json: no {field} for `{name}`"))
        };
        let one = |name: &str, listener: &str, trigger: &str| -> Result<Measured, String> {
            Ok(Measured {
                name: name.into(),
                listener_cpu_ms: scenario(listener, "median_ms")? / records,
                trigger_cpu_ms: scenario(trigger, "median_ms")? / records,
                peak_rss_mb: scenario(listener, "peak_rss_mb")?
                    .max(scenario(trigger, "peak_rss_mb")?),
            })
        };
        Ok((
            one("lambda-stream (Rust)", "listener-sdk", "trigger-sdk")?,
            one(
                "aws-lambda-stream (Node 20)",
                "peer-listener-sdk",
                "peer-trigger-sdk",
            )?,
        ))
    }
}

/// The workload and deployment assumptions.
#[derive(Debug, Clone)]
pub struct Model {
    /// An event's size, bytes.
    pub event_bytes: f64,
    /// Records per invocation (the template's `BatchSize`).
    pub batch_size: f64,
    /// One AWS call's round trip in the region, ms.
    pub call_ms: f64,
    /// Calls in flight per batch (`PARALLEL`).
    pub parallel: f64,
    /// The prices.
    pub prices: Prices,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            event_bytes: 1100.0,
            batch_size: 100.0,
            call_ms: 8.0,
            parallel: 4.0,
            prices: Prices::bundled(),
        }
    }
}

/// A month's cost by service, USD.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Monthly {
    /// Lambda duration and requests.
    pub lambda: f64,
    /// Kinesis shard-hours and PUT payload units.
    pub kinesis: f64,
    /// DynamoDB writes.
    pub dynamodb: f64,
    /// EventBridge events.
    pub eventbridge: f64,
}

impl Monthly {
    /// All of it.
    pub fn total(&self) -> f64 {
        self.lambda + self.kinesis + self.dynamodb + self.eventbridge
    }
}

/// What one implementation needs at one rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Events a second.
    pub rate: f64,
    /// Kinesis shards.
    pub shards: u64,
    /// The listener mapping's `ParallelizationFactor` (1–10).
    pub parallelization: u64,
    /// The functions' memory, MB.
    pub memory_mb: u64,
    /// Concurrent executions, listener and trigger together.
    pub concurrency: u64,
    /// Lambda GB-seconds a month.
    pub gb_seconds: f64,
    /// DynamoDB write request units a second.
    pub wru_per_second: f64,
    /// EventBridge entries a second.
    pub eventbridge_per_second: f64,
    /// The month's cost.
    pub monthly: Monthly,
}

const SECONDS_A_MONTH: f64 = 30.0 * 24.0 * 3600.0;
const LAMBDA_SIZES: [u64; 8] = [128, 256, 512, 1024, 1769, 2048, 3008, 4096];

impl Model {
    /// The Lambda memory size for a function whose batch peaks at `peak_rss_mb`.
    pub fn memory_mb(peak_rss_mb: f64) -> u64 {
        LAMBDA_SIZES
            .into_iter()
            .find(|m| *m as f64 >= 1.25 * peak_rss_mb)
            .unwrap_or(10240)
    }

    /// A record's duration in a function of `memory_mb`, ms: its CPU stretched by the vCPU share
    /// the memory buys, plus `calls` round trips shared by the calls in flight.
    pub fn record_ms(&self, cpu_ms: f64, calls: f64, memory_mb: u64) -> f64 {
        let vcpu = (memory_mb as f64 / 1769.0).min(1.0);
        cpu_ms / vcpu + calls * self.call_ms / self.parallel
    }

    /// What `measured` needs at `rate` events a second.
    pub fn plan(&self, measured: &Measured, rate: f64) -> Plan {
        let p = &self.prices;
        let memory_mb = Self::memory_mb(measured.peak_rss_mb);
        // per shard: 1 MB/s and 1,000 records/s written (2 MB/s read: one consumer reads half)
        let mut shards = (rate * self.event_bytes / 1e6)
            .ceil()
            .max((rate / 1000.0).ceil())
            .max(1.0) as u64;
        let listener_ms = self.record_ms(measured.listener_cpu_ms, 1.0, memory_mb);
        let trigger_ms = self.record_ms(measured.trigger_cpu_ms, 0.1, memory_mb);
        let listener_concurrency = (rate * listener_ms / 1000.0).ceil().max(1.0) as u64;
        // a shard takes at most 10 concurrent batches: beyond that, more shards
        shards = shards.max(listener_concurrency.div_ceil(10));
        let parallelization = listener_concurrency.div_ceil(shards).clamp(1, 10);
        let trigger_concurrency = (rate * trigger_ms / 1000.0).ceil().max(1.0) as u64;
        let busy_seconds = rate * (listener_ms + trigger_ms) / 1000.0 * SECONDS_A_MONTH;
        let gb_seconds = busy_seconds * memory_mb as f64 / 1024.0;
        let invocations = 2.0 * rate / self.batch_size * SECONDS_A_MONTH;
        let wru_per_second = rate * (self.event_bytes / 1024.0).ceil();
        let eventbridge_per_second = rate * (self.event_bytes / 65536.0).ceil();
        let events_a_month = rate * SECONDS_A_MONTH;
        let monthly = Monthly {
            lambda: gb_seconds * p.lambda_gb_second_x86_64
                + invocations / 1e6 * p.lambda_million_requests,
            kinesis: shards as f64 * 720.0 * p.kinesis_shard_hour
                + events_a_month * (self.event_bytes / 25_600.0).ceil() / 1e6
                    * p.kinesis_million_put_payload_units,
            dynamodb: wru_per_second * SECONDS_A_MONTH / 1e6
                * p.dynamodb_million_write_request_units,
            eventbridge: eventbridge_per_second * SECONDS_A_MONTH / 1e6
                * p.eventbridge_million_custom_events,
        };
        Plan {
            rate,
            shards,
            parallelization,
            memory_mb,
            concurrency: listener_concurrency + trigger_concurrency,
            gb_seconds,
            wru_per_second,
            eventbridge_per_second,
            monthly,
        }
    }

    /// The most commands a second one entity can take under per-entity order: each waits for
    /// the previous one's conditional write.
    pub fn hot_key_limit(&self) -> f64 {
        1000.0 / self.call_ms
    }

    /// The model as a markdown report: per rate, both implementations side by side.
    pub fn report(&self, ours: &Measured, peer: &Measured, rates: &[f64]) -> String {
        let mut out = format!(
            "Capacity for events of {} bytes, batches of {}, {} ms a call, {} calls in flight; \
             prices {} {} (list, no free tier)\n\n",
            self.event_bytes,
            self.batch_size,
            self.call_ms,
            self.parallel,
            self.prices.region,
            self.prices.as_of
        );
        out.push_str(
            "| events/s | implementation | shards | PF | memory MB | concurrency | GB-s/month | \
             DynamoDB WRU/s | EventBridge entries/s | Lambda $/month | Kinesis $/month | \
             DynamoDB $/month | EventBridge $/month | total $/month |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for &rate in rates {
            let plans = [self.plan(ours, rate), self.plan(peer, rate)];
            for (m, p) in [ours, peer].iter().zip(&plans) {
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {:.3e} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
                    rate,
                    m.name,
                    p.shards,
                    p.parallelization,
                    p.memory_mb,
                    p.concurrency,
                    p.gb_seconds,
                    p.wru_per_second,
                    p.eventbridge_per_second,
                    p.monthly.lambda,
                    p.monthly.kinesis,
                    p.monthly.dynamodb,
                    p.monthly.eventbridge,
                    p.monthly.total()
                ));
            }
            let saved = plans[1].monthly.lambda - plans[0].monthly.lambda;
            out.push_str(&format!(
                "| {rate} | saving | | | | {} fewer | | | | {saved:.0} | | | | {:.0} |\n",
                plans[1].concurrency.saturating_sub(plans[0].concurrency),
                plans[1].monthly.total() - plans[0].monthly.total()
            ));
        }
        out.push_str(&format!(
            "\nHot key: under per-entity order one entity takes at most {:.0} commands a second \
             (one conditional write's round trip, {} ms, each); DynamoDB's own ceiling is 1,000 \
             write units a second per partition.\n",
            self.hot_key_limit(),
            self.call_ms
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_prices_parse_and_are_dated() {
        let p = Prices::bundled();
        assert_eq!(p.as_of.len(), 10);
        assert!(p.lambda_gb_second_x86_64 > 0.0 && p.kinesis_shard_hour > 0.0);
    }

    #[test]
    fn shards_follow_bytes_and_records_written() {
        let model = Model::default();
        let ours = Measured::ours();
        assert_eq!(model.plan(&ours, 1000.0).shards, 2); // 1.1 MB/s
        let small = Model {
            event_bytes: 100.0,
            ..Model::default()
        };
        assert_eq!(small.plan(&ours, 5000.0).shards, 5); // 1,000 records/s a shard
    }

    #[test]
    fn a_slow_consumer_needs_parallelization_then_more_shards() {
        let model = Model::default();
        let slow = Measured {
            listener_cpu_ms: 50.0,
            ..Measured::ours()
        };
        let plan = model.plan(&slow, 1000.0);
        // 1000/s × (50 ms ÷ (256/1769) + 2 ms) ≈ 347 concurrent batches: 35 shards at PF 10
        assert_eq!(plan.parallelization, 10);
        assert_eq!(plan.shards, 35);
    }

    #[test]
    fn the_cost_scales_with_the_rate_and_the_peer_costs_more_lambda() {
        let model = Model::default();
        let (ours, peer) = (Measured::ours(), Measured::peer());
        let a = model.plan(&ours, 1000.0);
        let b = model.plan(&ours, 100_000.0);
        assert!((b.monthly.dynamodb / a.monthly.dynamodb - 100.0).abs() < 1e-6);
        let p = model.plan(&peer, 100_000.0);
        assert!(p.monthly.lambda > b.monthly.lambda);
        assert_eq!(p.monthly.dynamodb, b.monthly.dynamodb);
        assert_eq!(Model::memory_mb(168.0), 256);
        assert_eq!(Model::memory_mb(311.0), 512);
    }

    #[test]
    fn bench_results_are_read() {
        let json = r#"{"records": 5000, "scenarios": {
            "listener-sdk": {"median_ms": 350, "peak_rss_mb": 80},
            "trigger-sdk": {"median_ms": 250, "peak_rss_mb": 170},
            "peer-listener-sdk": {"median_ms": 3500, "peak_rss_mb": 300},
            "peer-trigger-sdk": {"median_ms": 1000, "peak_rss_mb": 310}}}"#;
        let (ours, peer) = Measured::from_bench(json).unwrap();
        assert_eq!(ours.listener_cpu_ms, 0.07);
        assert_eq!(ours.peak_rss_mb, 170.0);
        assert_eq!(peer.trigger_cpu_ms, 0.2);
        assert!(Measured::from_bench("{}").is_err());
    }

    #[test]
    fn the_report_has_a_row_per_rate_and_implementation() {
        let model = Model::default();
        let text = model.report(&Measured::ours(), &Measured::peer(), &[1000.0, 1e6]);
        assert_eq!(text.matches("| lambda-stream (Rust) |").count(), 2);
        assert_eq!(text.matches("| saving |").count(), 2);
        assert!(text.contains("Hot key: under per-entity order one entity takes at most 125"));
    }
}
