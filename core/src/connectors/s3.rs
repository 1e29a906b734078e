//! S3: put, get, delete, list.

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;

use crate::aws::classify;
use crate::error::StepError;

/// A connector over the S3 client, for one bucket.
#[derive(Debug, Clone)]
pub struct S3 {
    client: Client,
    bucket: String,
}

impl S3 {
    /// Over `bucket`.
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        S3 {
            client,
            bucket: bucket.into(),
        }
    }

    /// Over the shared client, for the settings' bucket (`BUCKET_NAME`).
    pub async fn from_settings(settings: &crate::Settings) -> Self {
        S3::new(crate::aws::s3().await.clone(), &settings.bucket_name)
    }

    /// Over the shared client, for the fault monitor's bucket (`FAULTS_BUCKET`), if the
    /// settings name one: a handler's [`fault_store`](crate::HandlerBuilder::fault_store).
    pub async fn faults(settings: &crate::Settings) -> Option<Self> {
        let bucket = settings.faults_bucket.as_deref()?;
        Some(S3::new(crate::aws::s3().await.clone(), bucket))
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Writes an object.
    pub async fn put(&self, key: &str, body: Vec<u8>, content_type: &str) -> Result<(), StepError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Reads an object; `None` when there is none under `key`.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StepError> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => {
                let bytes = out.body.collect().await.map_err(|e| {
                    StepError::transient(format!("reading s3://{}/{key}: {e}", self.bucket))
                })?;
                Ok(Some(bytes.into_bytes().to_vec()))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(classify(e)),
        }
    }

    /// Deletes an object (deleting a missing one succeeds, as in S3).
    pub async fn delete(&self, key: &str) -> Result<(), StepError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Every key under `prefix`, in S3's (lexicographic) order, all pages.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StepError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            keys.extend(
                page.map_err(classify)?
                    .contents
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|o| o.key),
            );
        }
        Ok(keys)
    }
}

/// The fault monitor's bucket as a [`FaultStore`](crate::faults::FaultStore): whole faults land where
/// the monitor stores the faults it receives.
impl crate::faults::FaultStore for S3 {
    fn store<'a>(
        &'a self,
        key: &'a str,
        json: Vec<u8>,
    ) -> futures::future::BoxFuture<'a, Result<(), StepError>> {
        Box::pin(self.put(key, json, "application/json"))
    }
}
