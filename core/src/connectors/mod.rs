//! Connectors: thin wrappers over the AWS SDK clients that know each API's limits, retry only
//! what failed, and classify errors as poison or transient.

pub mod batching;
mod dynamodb;
mod eventbridge;
mod kinesis;
mod lambda;
mod s3;
mod sns;
mod sqs;
mod wire;

pub use batching::{BatchApi, BatchLimits, EntryResult, Publishable, publish_all};
pub use dynamodb::{
    DynamoDb, Page, PageRequest, QueryRequest, Transacted, UpdateRequest, Written, attributes_of,
    put_transact_attributes, put_transact_item,
};
pub use eventbridge::{EVENTBRIDGE_LIMITS, EventBridge, EventBridgeFaults};
pub use kinesis::{KINESIS_LIMITS, Kinesis};
pub use lambda::{Lambda, MappingState};
pub use s3::S3;
pub use sns::{SNS_LIMITS, SNS_MAX_BYTES, Sns, SnsEntry};
pub use sqs::{Message, SQS_LIMITS, Sqs};
pub use wire::Wire;
