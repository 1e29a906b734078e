//! The Firehose transformation flavor: events in, the destination's records out (as
//! aws-lambda-stream's `firehoseTransform`), for a function that transforms a Kinesis Data
//! Firehose delivery stream's records (`run::<sources::Firehose>`).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::error::StepError;
use crate::outcome::Transformed;
use crate::pipeline::{AssembledPipeline, EventType, IntoPipeline, Pipeline};
use crate::uow::UnitOfWork;

type Transform = Arc<dyn Fn(&UnitOfWork) -> Result<Value, StepError> + Send + Sync>;
type PartitionKeys =
    Arc<dyn Fn(&UnitOfWork) -> Result<HashMap<String, String>, StepError> + Send + Sync>;

/// Transforms the Firehose records whose event it takes: `transform` makes the JSON the
/// destination receives, answered `Ok` (as [`Pipeline::answer`] answers), with partition keys
/// for dynamic partitioning when asked. Records no rule takes are answered `Dropped`; a
/// transform that fails with a poison error faults its record (`ProcessingFailed`, its fault
/// event published), with a transient one fails the invocation so Firehose retries the batch
/// (see [`sources::Firehose`](crate::sources::Firehose)). Give each record one rule: a record
/// two rules answer for is faulted.
///
/// ```
/// use lambda_stream::{Event, Handler, StepError, flavors::FirehoseTransform, sources::Firehose};
/// use lambda_stream::testing::*;
/// use serde_json::json;
/// use std::time::Duration;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let rule = FirehoseTransform::new("things", "thing-created", |uow| {
///     let thing = uow.event().entity("thing").ok_or_else(|| StepError::poison_msg("no thing"))?;
///     Ok(json!({"ID": thing["id"], "NM": thing["name"]}))
/// })
/// .table("T1");
/// let handler = Handler::builder(MemoryFaults::default()).pipeline(rule).build().unwrap();
/// let records = to_firehose_records(&[
///     Event::new("1", "thing-created", 1_734_754_684_001)
///         .with_entity("thing", json!({"id": "1", "name": "Thing One"})),
///     Event::new("2", "thing-deleted", 1_734_754_684_001),
/// ]);
/// let answer = handler.handle::<Firehose>(records, &context(Duration::from_secs(30))).await.unwrap();
/// assert_eq!(answer.records[0].result.as_deref(), Some("Ok"));
/// assert_eq!(answer.records[0].data.0, br#"{"ID":"1","NM":"Thing One"}"#);
/// assert_eq!(answer.records[0].metadata.partition_keys["hour"], "04");
/// assert_eq!(answer.records[1].result.as_deref(), Some("Dropped"));
/// # });
/// ```
pub struct FirehoseTransform {
    pipeline: Pipeline<UnitOfWork>,
    transform: Transform,
    partition_keys: Option<PartitionKeys>,
    newline: bool,
}

impl FirehoseTransform {
    /// A rule `id` that transforms the events of `event_type` (a string, list, regex or
    /// predicate) with `transform`.
    ///
    /// ```
    /// use lambda_stream::flavors::FirehoseTransform;
    ///
    /// let rule = FirehoseTransform::new("audit", ["thing-created", "thing-updated"], |uow| {
    ///     Ok(serde_json::to_value(uow.event())?)
    /// });
    /// # let _ = rule;
    /// ```
    pub fn new(
        id: impl Into<String>,
        event_type: impl Into<EventType>,
        transform: impl Fn(&UnitOfWork) -> Result<Value, StepError> + Send + Sync + 'static,
    ) -> Self {
        FirehoseTransform {
            pipeline: Pipeline::new(id).on_event_type(event_type),
            transform: Arc::new(transform),
            partition_keys: None,
            newline: false,
        }
    }

    /// Takes only the events `filter` passes too (as [`Pipeline::on`]); the others are left to
    /// other rules, or dropped.
    ///
    /// ```
    /// use lambda_stream::flavors::FirehoseTransform;
    ///
    /// let rule = FirehoseTransform::new("big", "order-placed", |uow| Ok(uow.event().fields["order"].clone()))
    ///     .on(|uow| uow.event().fields.get("order").is_some());
    /// # let _ = rule;
    /// ```
    pub fn on(mut self, filter: impl Fn(&UnitOfWork) -> bool + Send + Sync + 'static) -> Self {
        self.pipeline = self.pipeline.on(filter);
        self
    }

    /// Answers each record with the partition keys `keys` makes (Firehose's dynamic
    /// partitioning, `metadata.partitionKeys`); an error ends the record as a transform's
    /// would. Replaces [`table`](Self::table).
    ///
    /// ```
    /// use lambda_stream::flavors::FirehoseTransform;
    /// use std::collections::HashMap;
    ///
    /// let rule = FirehoseTransform::new("by-type", "thing-created", |uow| Ok(uow.event().fields["thing"].clone()))
    ///     .partition_keys(|uow| Ok(HashMap::from([("type".to_owned(), uow.event().event_type.clone())])));
    /// # let _ = rule;
    /// ```
    pub fn partition_keys(
        mut self,
        keys: impl Fn(&UnitOfWork) -> Result<HashMap<String, String>, StepError> + Send + Sync + 'static,
    ) -> Self {
        self.partition_keys = Some(Arc::new(keys));
        self
    }

    /// Answers each record with aws-lambda-stream's default partition keys: `table` and the
    /// event timestamp's `year`, `month`, `day`, `hour` and `minute` (UTC, zero-padded).
    /// Replaces [`partition_keys`](Self::partition_keys).
    ///
    /// ```
    /// use lambda_stream::flavors::FirehoseTransform;
    ///
    /// let rule = FirehoseTransform::new("things", "thing-created", |uow| Ok(uow.event().fields["thing"].clone()))
    ///     .table("things");
    /// # let _ = rule;
    /// ```
    pub fn table(self, table: impl Into<String>) -> Self {
        let table = table.into();
        self.partition_keys(move |uow| Ok(table_and_time(&table, uow.event().timestamp)))
    }

    /// Ends each record's data with a newline (newline-delimited JSON, as Athena and most S3
    /// readers want; aws-lambda-stream writes none).
    ///
    /// ```
    /// use lambda_stream::flavors::FirehoseTransform;
    ///
    /// let rule = FirehoseTransform::new("lines", "thing-created", |uow| Ok(uow.event().fields["thing"].clone()))
    ///     .newline_delimited();
    /// # let _ = rule;
    /// ```
    pub fn newline_delimited(mut self) -> Self {
        self.newline = true;
        self
    }
}

/// `table` and the UTC date and time of `timestamp` (epoch ms), as aws-lambda-stream's
/// `spreadDateTime`.
fn table_and_time(table: &str, timestamp: i64) -> HashMap<String, String> {
    let at = chrono::DateTime::from_timestamp_millis(timestamp).unwrap_or_default();
    HashMap::from([
        ("table".to_owned(), table.to_owned()),
        ("year".to_owned(), at.format("%Y").to_string()),
        ("month".to_owned(), at.format("%m").to_string()),
        ("day".to_owned(), at.format("%d").to_string()),
        ("hour".to_owned(), at.format("%H").to_string()),
        ("minute".to_owned(), at.format("%M").to_string()),
    ])
}

impl IntoPipeline for FirehoseTransform {
    fn into_pipeline(self) -> AssembledPipeline {
        let FirehoseTransform {
            pipeline,
            transform,
            partition_keys,
            newline,
        } = self;
        pipeline
            .map(move |uow: UnitOfWork| {
                let mut data = serde_json::to_vec(&transform(&uow)?)?;
                if newline {
                    data.push(b'\n');
                }
                let partition_keys = match &partition_keys {
                    Some(keys) => Some(keys(&uow)?),
                    None => None,
                };
                Ok(uow.with(Transformed {
                    data,
                    partition_keys,
                }))
            })
            .answer()
            .into_pipeline()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_partition_keys_are_aws_lambda_streams() {
        // aws-lambda-stream's flavors/firehose test: 1734754684001 → 2024-12-21 04:18 UTC
        let keys = table_and_time("T1", 1_734_754_684_001);
        let expected = [
            ("table", "T1"),
            ("year", "2024"),
            ("month", "12"),
            ("day", "21"),
            ("hour", "04"),
            ("minute", "18"),
        ];
        assert_eq!(keys.len(), expected.len());
        for (k, v) in expected {
            assert_eq!(keys[k], v, "{k}");
        }
        assert_eq!(table_and_time("T", 0)["month"], "01");
    }
}
