//! aws-lambda-stream's claim-check: an event too big for its target (EventBridge's 256 KB, an
//! SQS message's 256 KB, a Kinesis record's 1 MB) is stored whole in the claim-check bucket
//! (`CLAIMCHECK_BUCKET_NAME`), and a slim pointer event is published in its place:
//!
//! ```json
//! {"id": "…", "type": "…", "partitionKey": "…", "timestamp": 1, "tags": {…},
//!  "s3": {"bucket": "…", "key": "us-east-1/claimchecks/2026/12/01/07/<id>"}}
//! ```
//!
//! The stored object is the event's JSON as it would have been published (its big fields
//! compressed). Sources that carry events (Kinesis, SQS, SNS, EventBridge) redeem a pointer
//! before any pipeline sees it: a missing object is transient (the record is retried; S3 may
//! not show a fresh object yet, or another region's bucket is catching up), a malformed pointer
//! is a fault.
//!
//! ```
//! use lambda_stream::claimcheck::{Pointer, claim_key};
//! use serde_json::json;
//!
//! let key = claim_key("us-east-1", "e1", 1_764_572_400_000);
//! assert_eq!(key, "us-east-1/claimchecks/2025/12/01/07/e1");
//! let slim = json!({"id": "e1", "type": "t", "s3": {"bucket": "b", "key": key}});
//! let pointer = Pointer::of(slim.get("s3")).unwrap().unwrap();
//! assert_eq!(pointer.bucket, "b");
//! ```

use std::sync::Arc;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use chrono::{DateTime, Datelike, Timelike};
use futures::future::BoxFuture;
use serde_json::{Map, Value};

use crate::aws::classify;
use crate::error::StepError;

/// Where claim-checked events are kept: S3, or memory in tests.
pub trait ClaimCheckStore: Send + Sync + std::fmt::Debug {
    /// Stores an event's JSON under `bucket`/`key`.
    fn put<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        json: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), StepError>>;
    /// The JSON stored under `bucket`/`key`, `None` when there is none.
    fn get<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StepError>>;
}

impl ClaimCheckStore for Client {
    fn put<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        json: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async move {
            self.put_object()
                .bucket(bucket)
                .key(key)
                .content_type("application/json")
                .body(ByteStream::from(json))
                .send()
                .await
                .map_err(classify)?;
            Ok(())
        })
    }

    fn get<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StepError>> {
        Box::pin(async move {
            match self.get_object().bucket(bucket).key(key).send().await {
                Ok(out) => {
                    let bytes = out.body.collect().await.map_err(|e| {
                        StepError::transient(format!(
                            "reading claim check s3://{bucket}/{key}: {e}"
                        ))
                    })?;
                    Ok(Some(bytes.into_bytes().to_vec()))
                }
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
                Err(e) => Err(classify(e)),
            }
        })
    }
}

/// The claim-check a publisher uses: where oversize events go.
#[derive(Debug, Clone)]
pub struct ClaimCheck {
    store: Arc<dyn ClaimCheckStore>,
    bucket: String,
    region: String,
}

impl ClaimCheck {
    /// Stores oversize events in `bucket` through `store`, under keys that begin with `region`
    /// (as aws-lambda-stream's do).
    pub fn new(
        store: Arc<dyn ClaimCheckStore>,
        bucket: impl Into<String>,
        region: impl Into<String>,
    ) -> Self {
        ClaimCheck {
            store,
            bucket: bucket.into(),
            region: region.into(),
        }
    }

    /// Over the shared S3 client, for the settings' claim-check bucket
    /// (`CLAIMCHECK_BUCKET_NAME`), if they name one.
    pub async fn from_settings(settings: &crate::Settings) -> Option<Self> {
        let bucket = settings.claimcheck_bucket.as_deref()?;
        let client: Arc<dyn ClaimCheckStore> = Arc::new(crate::aws::s3().await.clone());
        Some(ClaimCheck::new(
            client,
            bucket,
            settings.region.as_deref().unwrap_or("unknown"),
        ))
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Stores `json` (an event's wire JSON) and returns the pointer event to publish instead.
    pub async fn store(&self, json: &str, now_ms: i64) -> Result<String, StepError> {
        let event: Map<String, Value> = serde_json::from_str(json)?;
        let id = event.get("id").and_then(Value::as_str).unwrap_or_default();
        let key = claim_key(&self.region, id, now_ms);
        self.store
            .put(&self.bucket, &key, json.as_bytes().to_vec())
            .await?;
        let mut slim = Map::with_capacity(6);
        for field in ["id", "type", "partitionKey", "timestamp", "tags"] {
            if let Some(v) = event.get(field) {
                slim.insert(field.to_owned(), v.clone());
            }
        }
        slim.insert(
            "s3".into(),
            serde_json::json!({"bucket": self.bucket, "key": key}),
        );
        Ok(serde_json::to_string(&slim)?)
    }
}

/// The object key of a claim-checked event: `region/claimchecks/YYYY/MM/DD/HH/id`, the time in
/// UTC (aws-lambda-stream's layout, so one lifecycle rule and one prefix scheme serve both).
pub fn claim_key(region: &str, id: &str, now_ms: i64) -> String {
    let t = DateTime::from_timestamp_millis(now_ms).unwrap_or_default();
    format!(
        "{region}/claimchecks/{:04}/{:02}/{:02}/{:02}/{id}",
        t.year(),
        t.month(),
        t.day(),
        t.hour()
    )
}

/// A claim-check pointer: where the whole event is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    /// The bucket.
    pub bucket: String,
    /// The object key.
    pub key: String,
}

impl Pointer {
    /// The pointer in an event's `s3` field: `None` when there is no such field, an error when
    /// it is not an object with string `bucket` and `key`.
    pub fn of(s3: Option<&Value>) -> Option<Result<Pointer, String>> {
        let s3 = s3?;
        let field = |name: &str| {
            s3.get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        Some(match (field("bucket"), field("key")) {
            (Some(bucket), Some(key)) => Ok(Pointer {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            }),
            _ => Err(
                "malformed claim-check pointer: its s3 field needs string bucket and key".into(),
            ),
        })
    }

    /// The JSON stored under this pointer (the sources parse it as they parse a record). A
    /// missing object is a transient error: it is retried.
    pub async fn fetch(&self, store: &dyn ClaimCheckStore) -> Result<Vec<u8>, StepError> {
        store.get(&self.bucket, &self.key).await?.ok_or_else(|| {
            StepError::transient(format!(
                "claim check s3://{}/{} is missing",
                self.bucket, self.key
            ))
            .named("ClaimCheckMissing")
        })
    }
}
