//! How many instances each function runs, as Lambda would scale it, and the per-run overrides
//! of the template's scaling settings.
//!
//! Lambda runs a function in as many instances as its event sources drive at once: a stream
//! mapping one batch per shard and parallelization lane (shards × `ParallelizationFactor`), an
//! SQS mapping up to its `MaximumConcurrency` batches, an HTTP route one instance per request
//! in flight; capped by the function's `ReservedConcurrentExecutions` (else by the account's
//! limit, here a local default). The local stack starts that many processes up front, so the
//! races production has (two instances writing one view, one key's records in two concurrent
//! batches of a shard) happen here first.

use crate::spec::{EventSource, FunctionSpec};
use crate::template::Template;

/// Concurrent batches of an SQS mapping without `MaximumConcurrency`: Lambda starts with five
/// and scales up while the queue holds messages; locally it stays at five.
pub const QUEUE_CONCURRENCY: usize = 5;

/// The scaling settings of one run: the template's, unless overridden.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scaling {
    /// The most instances of one function without `ReservedConcurrentExecutions` (the local
    /// stand-in for the account's concurrency limit).
    pub max_instances: usize,
    /// Instances serving a function's HTTP routes (requests in flight at once).
    pub http_instances: usize,
    /// Shards of every Kinesis stream, instead of the template's (`ON_DEMAND` streams start
    /// with one locally).
    pub shards: Option<u32>,
    /// `ParallelizationFactor` of every stream mapping, instead of the template's (1–10).
    pub parallelization: Option<usize>,
    /// `MaximumConcurrency` of every SQS mapping, instead of the template's (2–1000).
    pub queue_concurrency: Option<usize>,
}

impl Default for Scaling {
    fn default() -> Self {
        Self {
            max_instances: 10,
            http_instances: 4,
            shards: None,
            parallelization: None,
            queue_concurrency: None,
        }
    }
}

impl Scaling {
    /// Sets every Kinesis stream's `ShardCount` when the run overrides it.
    pub fn shape_template(&self, template: &mut Template) {
        let Some(shards) = self.shards else { return };
        for (_, r) in &mut template.resources {
            if r.kind != "AWS::Kinesis::Stream" {
                continue;
            }
            if let Some(props) = r.properties.as_object_mut() {
                props.insert("ShardCount".into(), shards.max(1).into());
                props.remove("StreamModeDetails");
            }
        }
    }

    /// Applies the run's parallelization and queue concurrency to `spec`'s mappings.
    pub fn shape_function(&self, spec: &mut FunctionSpec) {
        for event in &mut spec.events {
            match event {
                EventSource::Stream(m) => {
                    if let Some(n) = self.parallelization {
                        m.parallelization = n.clamp(1, 10);
                    }
                }
                EventSource::Queue(m) => {
                    if let Some(n) = self.queue_concurrency {
                        m.max_concurrency = Some(n.clamp(2, 1000));
                    }
                }
                _ => {}
            }
        }
    }

    /// The instances `spec` runs: what its event sources drive at once (`shards` tells a
    /// stream mapping's shard count by its ARN), capped by its reserved concurrency or
    /// [`Scaling::max_instances`]; at least one.
    ///
    /// ```
    /// use local_stack::scaling::Scaling;
    /// use local_stack::spec::FunctionSpec;
    /// # let spec = FunctionSpec {
    /// #     logical_id: "F".into(), name: "f".into(), arn: "arn".into(), binary: "f".into(),
    /// #     timeout: std::time::Duration::from_secs(3), memory: 128, environment: Default::default(),
    /// #     events: Vec::new(), async_retries: 2, async_failure: None, reserved_concurrency: None,
    /// # };
    /// // no event source drives it (invoked directly or by a rule): one instance
    /// assert_eq!(Scaling::default().instances(&spec, |_| 1), 1);
    /// ```
    pub fn instances(&self, spec: &FunctionSpec, shards: impl Fn(&str) -> usize) -> usize {
        let driven: usize = spec
            .events
            .iter()
            .map(|e| match e {
                EventSource::Stream(m) => shards(&m.arn).max(1) * m.parallelization.max(1),
                EventSource::Queue(m) => m.max_concurrency.unwrap_or(QUEUE_CONCURRENCY),
                EventSource::Http { .. } | EventSource::Rule { .. } => 0,
            })
            .sum();
        let http = spec
            .events
            .iter()
            .any(|e| matches!(e, EventSource::Http { .. }));
        let driven = driven + if http { self.http_instances } else { 0 };
        let cap = spec.reserved_concurrency.unwrap_or(self.max_instances);
        driven.min(cap).max(1)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::spec::{QueueMapping, StreamKind, StreamMapping};

    fn stream(arn: &str, parallelization: usize) -> EventSource {
        EventSource::Stream(StreamMapping {
            id: "s".into(),
            kind: StreamKind::Kinesis,
            arn: arn.into(),
            trim_horizon: true,
            batch_size: 100,
            window: Duration::ZERO,
            report_failures: true,
            max_retries: None,
            max_age: None,
            bisect: false,
            on_failure: None,
            filters: Vec::new(),
            parallelization,
        })
    }

    fn queue(max_concurrency: Option<usize>) -> EventSource {
        EventSource::Queue(QueueMapping {
            id: "q".into(),
            arn: "q".into(),
            batch_size: 10,
            report_failures: true,
            filters: Vec::new(),
            max_concurrency,
            window: Duration::ZERO,
        })
    }

    fn function(events: Vec<EventSource>, reserved: Option<usize>) -> FunctionSpec {
        FunctionSpec {
            logical_id: "F".into(),
            name: "f".into(),
            arn: "arn:f".into(),
            binary: "f".into(),
            timeout: Duration::from_secs(3),
            memory: 128,
            environment: Default::default(),
            events,
            async_retries: 2,
            async_failure: None,
            reserved_concurrency: reserved,
        }
    }

    #[test]
    fn instances_are_shards_times_parallelization_plus_queue_and_http_concurrency_capped() {
        let shards = |arn: &str| if arn == "four" { 4 } else { 1 };
        let s = Scaling::default();
        // 4 shards × 2 lanes + 1 shard × 1 lane
        let f = function(vec![stream("four", 2), stream("one", 1)], None);
        assert_eq!(s.instances(&f, shards), 9);
        // capped by the local default, then by reserved concurrency
        let f = function(vec![stream("four", 10)], None);
        assert_eq!(s.instances(&f, shards), 10);
        let f = function(vec![stream("four", 10)], Some(3));
        assert_eq!(s.instances(&f, shards), 3);
        // SQS: its maximum concurrency, else Lambda's five pollers
        assert_eq!(
            s.instances(&function(vec![queue(Some(2))], None), shards),
            2
        );
        assert_eq!(s.instances(&function(vec![queue(None)], None), shards), 5);
        // HTTP: the run's instances; nothing driving it: one
        let http = EventSource::Http {
            method: "POST".into(),
            path: "/".into(),
        };
        assert_eq!(s.instances(&function(vec![http], None), shards), 4);
        assert_eq!(s.instances(&function(Vec::new(), Some(0)), shards), 1);
    }

    #[test]
    fn a_run_overrides_parallelization_and_queue_concurrency_within_lambdas_bounds() {
        let s = Scaling {
            parallelization: Some(40),
            queue_concurrency: Some(1),
            ..Scaling::default()
        };
        let mut f = function(vec![stream("one", 1), queue(None)], None);
        s.shape_function(&mut f);
        match (&f.events[0], &f.events[1]) {
            (EventSource::Stream(m), EventSource::Queue(q)) => {
                assert_eq!((m.parallelization, q.max_concurrency), (10, Some(2)));
            }
            other => panic!("{other:?}"),
        }
    }
}
