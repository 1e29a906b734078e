//! `materializeS3`: an object per event, put or deleted.

use std::sync::Arc;

use crate::connectors::S3;
use crate::error::StepError;
use crate::pipeline::{AssembledPipeline, EventType, IntoPipeline, Pipeline};
use crate::settings::Settings;
use crate::sinks::S3Object;
use crate::uow::UnitOfWork;

/// What [`MaterializeS3`] does with an event's object.
#[derive(Debug, Clone, PartialEq)]
pub enum S3Write {
    /// Writes the object.
    Put(S3Object),
    /// Deletes the object with this key.
    Delete(String),
}

type ToWrite = Arc<dyn Fn(&UnitOfWork) -> Result<Option<S3Write>, StepError> + Send + Sync>;

/// Materializes events into S3 objects (aws-lambda-stream's `materializeS3`): filter by type →
/// `to_write` (`None`: nothing to do) → put or delete the object, `PUT_PARALLEL` keys at once,
/// a key's events in order.
///
/// Both writes are idempotent, so a redelivered event writes the same object again. S3 keeps
/// no version to compare against, so which of two events of one object wins is the order
/// they arrive in: key objects by the entity, as aws-lambda-stream does, so that one
/// partition key (one shard, in order) carries all of an object's events.
///
/// ```
/// # async fn example() {
/// use lambda_stream::connectors::S3;
/// use lambda_stream::flavors::{MaterializeS3, S3Write};
/// use lambda_stream::sinks::S3Object;
/// use lambda_stream::Settings;
///
/// let bucket = S3::from_settings(&Settings::default()).await;
/// let rule = MaterializeS3::new("thing-objects", regex::Regex::new("^thing-").unwrap(), bucket, |uow| {
///     let e = uow.event();
///     let key = format!("things/{}.json", e.partition_key.as_deref().unwrap_or("unknown"));
///     Ok(Some(if e.event_type == "thing-deleted" {
///         S3Write::Delete(key)
///     } else {
///         let body = serde_json::to_vec(&e.entity("thing"))?;
///         S3Write::Put(S3Object { key, body, content_type: "application/json".into() })
///     }))
/// });
/// # let _ = rule;
/// # }
/// ```
pub struct MaterializeS3 {
    id: String,
    event_type: EventType,
    bucket: S3,
    to_write: ToWrite,
}

impl MaterializeS3 {
    /// A rule writing `to_write`'s object for each event of `event_type` to `bucket`.
    pub fn new(
        id: impl Into<String>,
        event_type: impl Into<EventType>,
        bucket: S3,
        to_write: impl Fn(&UnitOfWork) -> Result<Option<S3Write>, StepError> + Send + Sync + 'static,
    ) -> Self {
        MaterializeS3 {
            id: id.into(),
            event_type: event_type.into(),
            bucket,
            to_write: Arc::new(to_write),
        }
    }
}

impl IntoPipeline for MaterializeS3 {
    fn into_pipeline(self) -> AssembledPipeline {
        let to_write = self.to_write;
        let bucket = self.bucket;
        Pipeline::new(self.id)
            .on_event_type(self.event_type)
            .map(move |uow: UnitOfWork| {
                let write = to_write(&uow)?;
                Ok(uow.with(write))
            })
            .filter(|uow: &UnitOfWork<Option<S3Write>>| uow.state.is_some())
            .then_with_settings(Settings::put_parallel, move |_| {
                let bucket = bucket.clone();
                move |mut uow: UnitOfWork<Option<S3Write>>| {
                    let bucket = bucket.clone();
                    async move {
                        match uow.state.take() {
                            Some(S3Write::Put(object)) => {
                                bucket
                                    .put(&object.key, object.body, &object.content_type)
                                    .await?
                            }
                            Some(S3Write::Delete(key)) => bucket.delete(&key).await?,
                            None => {}
                        }
                        Ok::<_, StepError>(uow.with(()))
                    }
                }
            })
            .into_pipeline()
    }
}
