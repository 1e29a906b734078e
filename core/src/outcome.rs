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
