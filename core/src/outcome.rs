//! How a record ends.

use serde::Serialize;

/// How a record ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Processed (or skipped on purpose, or filtered out by every pipeline).
    Done,
    /// Set aside: its fault event was published.
    Faulted,
    /// To be delivered again.
    Retry,
}

/// What a pipeline answers for a record, for a source whose answer carries data: a Kinesis Data
/// Firehose transformation, where a record answered so ends `Ok` with this data (other sources
/// ignore answers). A pipeline answers with [`Pipeline::answer`](crate::Pipeline::answer), or
/// through the [`FirehoseTransform`](crate::flavors::FirehoseTransform) flavor.
///
/// ```
/// use lambda_stream::Transformed;
///
/// let t = Transformed::new(br#"{"ID":"1"}"#.to_vec()).with_partition_key("table", "T1");
/// assert_eq!(t.partition_keys.unwrap()["table"], "T1");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transformed {
    /// The record's data as the destination is to receive it (raw bytes; base64 on the wire).
    pub data: Vec<u8>,
    /// Firehose dynamic partitioning keys (`metadata.partitionKeys`), if any.
    pub partition_keys: Option<std::collections::HashMap<String, String>>,
}

impl Transformed {
    /// An answer of `data`, without partition keys.
    ///
    /// ```
    /// let t = lambda_stream::Transformed::new(b"a,b,c\n".to_vec());
    /// assert!(t.partition_keys.is_none());
    /// ```
    pub fn new(data: Vec<u8>) -> Self {
        Transformed {
            data,
            partition_keys: None,
        }
    }

    /// Adds the partition key `name` with `value`, builder style.
    ///
    /// ```
    /// let t = lambda_stream::Transformed::new(Vec::new()).with_partition_key("year", "2024");
    /// assert_eq!(t.partition_keys.unwrap().len(), 1);
    /// ```
    pub fn with_partition_key(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.partition_keys
            .get_or_insert_with(Default::default)
            .insert(name.into(), value.into());
        self
    }
}
