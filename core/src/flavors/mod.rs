//! Flavors: pipelines assembled from a rule's fields. Add them to a handler with
//! [`HandlerBuilder::pipelines`](crate::HandlerBuilder::pipelines).

mod cdc;
mod circuit_breaker;
mod collect;
mod correlate;
mod evaluate;
mod expired;
mod firehose;
mod job;
mod materialize;
mod materialize_s3;
mod send_messages;
mod store;
mod update;

pub use cdc::{Cdc, CdcStored, Target};
pub use circuit_breaker::{ALARM_STATE_CHANGE, CircuitBreakerRule, SCHEDULED_EVENT};
pub use collect::Collect;
pub use correlate::{Correlate, LATEST};
pub use evaluate::{Evaluate, Match, PublishEmitted, count_within};
pub use expired::Expired;
pub use firehose::FirehoseTransform;
pub use job::{CURSOR, Job, STATUS};
pub use materialize::Materialize;
pub use materialize_s3::{MaterializeS3, S3Write};
pub use send_messages::{Destination, Message, SendMessages};
pub use store::{
    COLLECTED, CORRELATION, Correlation, DATA_INDEX, DEFAULT_TTL, EMITTED, EventStore, Expire,
    Kind, Stored, is_store_item,
};
pub use update::UpdateRelated;
