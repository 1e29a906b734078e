//! Connectors: thin wrappers over the AWS SDK clients that know each API's limits, retry only
//! what failed, and classify errors as poison or transient.

pub mod batching;
mod dynamodb;
mod eventbridge;

pub use batching::{BatchLimits, EntryResult};
pub use dynamodb::{DynamoDb, QueryRequest, UpdateRequest, Written};
pub use eventbridge::{EVENTBRIDGE_LIMITS, EventBridge, EventBridgeFaults, Publishable};
