//! The S3 sink: an object per unit.

use crate::connectors::S3;
use crate::pipeline::{Pipeline, Step};
use crate::settings::Settings;
use crate::uow::UnitOfWork;

/// An object to write (for [`PutObject`]).
#[derive(Debug, Clone, PartialEq)]
pub struct S3Object {
    /// The key.
    pub key: String,
    /// The content.
    pub body: Vec<u8>,
    /// Its media type, e.g. `application/json`.
    pub content_type: String,
}

/// Writes each unit's [`S3Object`] to a bucket, `PUT_PARALLEL` at once.
#[derive(Debug, Clone)]
pub struct PutObject(pub S3);

impl Step<UnitOfWork<S3Object>> for PutObject {
    type Output = UnitOfWork<()>;

    fn attach(self, pipeline: Pipeline<UnitOfWork<S3Object>>) -> Pipeline<UnitOfWork<()>> {
        let bucket = self.0;
        pipeline.then_with_settings(Settings::put_parallel, move |_| {
            let bucket = bucket.clone();
            move |mut uow: UnitOfWork<S3Object>| {
                let bucket = bucket.clone();
                async move {
                    let body = std::mem::take(&mut uow.state.body);
                    bucket
                        .put(&uow.state.key, body, &uow.state.content_type)
                        .await?;
                    Ok(uow.with(()))
                }
            }
        })
    }
}
