//! Sinks: steps that write through the connectors, as values attached with
//! [`Pipeline::pipe`](crate::Pipeline::pipe).
//!
//! | sink | takes | writes |
//! |---|---|---|
//! | [`Update`] | [`UpdateRequest`](crate::connectors::UpdateRequest) | DynamoDB `UpdateItem` |
//! | [`Put`] | [`PutRequest`] | DynamoDB `PutItem` |
//! | [`PutEntity`] | [`EntityPut`] | DynamoDB `PutItem` of a row made from the event's entity |
//! | [`Publish`] | [`Event`](crate::Event) | EventBridge `PutEvents`, Kinesis `PutRecords`, SQS `SendMessageBatch` |
//! | [`PublishInPlace`] | the event a unit's change holds, read where it lies ([`EventRef`](crate::EventRef)) | as [`Publish`] |
//! | [`PublishToSns`] | [`Event`](crate::Event) | SNS `Publish` |
//! | [`PutObject`] | [`S3Object`] | S3 `PutObject` |
//! | [`Invoke`] | [`LambdaCall`] | Lambda `Invoke` |
//!
//! What a sink is not told comes from the handler's [`Settings`](crate::Settings) when the
//! pipeline runs, as aws-lambda-stream takes it from the environment: `ENTITY_TABLE_NAME` for
//! the table, `UPDATE_PARALLEL` / `PUT_PARALLEL` / `PUBLISH_PARALLEL` / `INVOKE_PARALLEL` (else
//! `PARALLEL`) for concurrency, and the standard tags of what is published.
//!
//! ```
//! use lambda_stream::connectors::{DynamoDb, UpdateRequest};
//! use lambda_stream::expressions::update_expression;
//! use lambda_stream::sinks::Update;
//! use lambda_stream::{Pipeline, StepError, UnitOfWork};
//! use serde_json::json;
//!
//! fn to_request(uow: UnitOfWork) -> Result<UnitOfWork<UpdateRequest>, StepError> {
//!     let expression = update_expression(&json!({"name": "x"}))?;
//!     Ok(uow.with(UpdateRequest { table: None, key: json!({"pk": "t1", "sk": "thing"}), expression }))
//! }
//! # async fn example(db: DynamoDb) {
//! let p = Pipeline::new("views").map(to_request).pipe(Update::new(db).table("views").parallel(8));
//! # }
//! ```

mod dynamodb;
mod lambda;
mod publish;
mod s3;

pub use dynamodb::{EntityPut, NotATable, Put, PutEntity, PutRequest, TableWrite, Update, Write};
pub use lambda::{Invoke, LambdaCall};
pub use publish::{BatchPublisher, Locate, Publish, PublishInPlace, PublishToSns, stored_event};
pub use s3::{PutObject, S3Object};

use crate::pipeline::Pipeline;
use crate::uow::Work;

/// Where a DynamoDB sink writes and how many keys at once; unset: the handler's settings.
#[derive(Debug, Clone, Default)]
struct Target {
    table: Option<String>,
    parallel: Option<usize>,
}

impl Target {
    fn table_in(&self, settings: &crate::Settings) -> std::sync::Arc<str> {
        std::sync::Arc::from(self.table.as_deref().unwrap_or(&settings.entity_table))
    }
}

/// The pipeline with `parallel` keys at once, when given.
fn with_parallel<T: Work>(pipeline: Pipeline<T>, parallel: Option<usize>) -> Pipeline<T> {
    match parallel {
        Some(n) => pipeline.parallel(n),
        None => pipeline,
    }
}
