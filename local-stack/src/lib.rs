//! The local stack: the reference system (or any template like it) on one machine.
//!
//! - [`template`] reads `template.yaml`; [`spec`] turns its functions into what runs locally;
//! - [`provision`] creates its tables, streams, queues, bucket, bus and rules in the emulator;
//! - [`runtime`] runs each function's binary behind a local Lambda Runtime API, in as many
//!   instances as [`scaling`] says its event sources drive;
//! - [`mapping`] emulates event source mappings (DynamoDB Streams, Kinesis, SQS), [`routes`]
//!   delivers bus rules to the targets the emulator cannot, and [`api`] serves the HTTP API
//!   routes and Lambda's Invoke API;
//! - [`proxy`] stands between the functions and the emulator: DynamoDB writes made atomic, and
//!   [`chaos`] when asked (the faults AWS really returns);
//! - [`stack`] puts it together (`up`), [`demo`] drives the reference system end to end,
//!   [`load`] sends it many commands from concurrent clients and audits the result, and
//!   [`replay`] runs a handler in-process on a captured event, optionally with writes captured
//!   in memory ([`dry_run`]).

pub mod api;
pub mod binaries;
pub mod capacity;
pub mod chaos;
pub mod cpu;
pub mod demo;
pub mod destination;
pub mod dry_run;
pub mod http;
pub mod invoke;
pub mod load;
pub mod mapping;
pub mod pattern;
pub mod provision;
pub mod proxy;
pub mod replay;
pub mod routes;
pub mod runtime;
pub mod scaling;
pub mod spec;
pub mod stack;
pub mod template;
pub mod ttl;

use std::fmt::Debug;

/// What can go wrong in the local stack.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The template cannot be read or resolved.
    #[error("template: {0}")]
    Template(String),
    /// An AWS call to the emulator failed.
    #[error("AWS: {0}")]
    Aws(String),
    /// A file or process operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// JSON could not be written or read.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A resource of the template could not be provisioned.
    #[error("provisioning {resource} ({kind}): {source}")]
    Provision {
        /// Its logical id.
        resource: String,
        /// Its type.
        kind: String,
        /// Why.
        source: Box<Error>,
    },
    /// Anything else, said plainly.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// An SDK error with its full context (code and message).
    pub fn aws<E: std::error::Error + Send + Sync + 'static>(e: E) -> Self {
        Self::Aws(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())
    }
}
