//! Event-driven stream processing on AWS Lambda.
//!
//! A Lambda batch (Kinesis, DynamoDB Streams, SQS, SNS, S3, EventBridge, a schedule, a
//! CloudWatch alarm, a Firehose transformation) is decoded by a [source](sources) into
//! [units of work](UnitOfWork), fanned out to every [`Pipeline`] whose rule accepts them, and
//! answered with a partial batch response (for Firehose, the records out). Every record ends exactly one
//! of: **done**, **faulted** (a [`FaultEvent`] is published and the record is set aside) or
//! **retry** (reported for redelivery). Records of one partition key are processed in order;
//! different keys run concurrently. No new work starts once the Lambda deadline draws near.
//!
//! ```
//! use lambda_stream::{Event, Handler, Pipeline, StepError};
//! use lambda_stream::testing::{MemoryFaults, context, to_kinesis_records};
//! use std::time::Duration;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let handler = Handler::builder(MemoryFaults::default())
//!     .pipeline(Pipeline::new("count-things").on_event_type("thing-created")
//!         .then(|uow| async move { Ok::<_, StepError>(uow) }))
//!     .pipeline(Pipeline::new("reject-bad").on_event_type("thing-deleted")
//!         .map(|_uow| Err::<lambda_stream::UnitOfWork, _>(StepError::poison_msg("cannot delete"))))
//!     .build()
//!     .unwrap();
//! let batch = to_kinesis_records(&[
//!     Event::new("1", "thing-created", 1).with_partition_key("t1"),
//!     Event::new("2", "thing-deleted", 2).with_partition_key("t1"),
//! ]);
//! // the poison record is faulted (fault event published), so nothing needs retrying
//! let response = handler.handle::<lambda_stream::sources::Kinesis>(batch, &context(Duration::from_secs(30))).await.unwrap();
//! assert!(response.batch_item_failures.is_empty());
//! # });
//! ```
//!
//! How the crate is laid out, layer by layer, and the journey of a record through it:
//! `docs/ARCHITECTURE.md` in the repository.

#![warn(missing_docs)]

// The public modules: each holds what it names, and nothing is reachable by two paths.
pub mod aws;
pub mod breaker;
pub mod claimcheck;
pub mod compression;
pub mod connectors;
pub mod deadline;
pub mod encryption;
pub mod expressions;
pub mod faults;
pub mod flavors;
pub mod idempotency;
pub mod logging;
pub mod metrics;
pub mod sinks;
pub mod sources;
pub mod tags;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(feature = "otel")]
pub mod traces;

// The layers below: their items are re-exported here, once.
mod ahead;
mod delivery;
mod error;
mod event;
mod event_ref;
mod handler;
mod lambda;
mod outcome;
mod pipeline;
mod prepare;
mod record;
mod response;
mod retry;
mod settings;
mod uow;

// Compiles the README's examples as doc tests, so the documented usage cannot drift.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub use error::{BatchError, DecodeError, ErrorClass, StepError};
pub use event::{ErrorInfo, Event, FAULT_EVENT_TYPE, FaultEvent, FaultRecord, FaultUow, Trimmed};
pub use event_ref::EventRef;
pub use handler::{ConfigError, Handler, HandlerBuilder, Invocation};
pub use lambda::run;
pub use outcome::{Outcome, Transformed};
pub use pipeline::{AssembledPipeline, EventType, IntoPipeline, Pipeline, Step};
pub use response::{Outcomes, Summary};
pub use retry::Retry;
pub use settings::{BreakerSettings, Settings};
pub use uow::{Batch, Compacted, Group, Origin, UnitOfWork, Work};
