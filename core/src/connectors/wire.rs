//! What a published event looks like on the wire, as aws-lambda-stream publishes it: fields over
//! the compression threshold compressed ([`crate::compression`]), and an event still too big
//! for its target claim-checked ([`crate::claimcheck`]).

use serde_json::Value;

use super::batching::Publishable;
use crate::claimcheck::ClaimCheck;
use crate::compression::{self, FAULT_COMPRESSION_IGNORE};
use crate::error::StepError;
use crate::event::FAULT_EVENT_TYPE;

/// How a publishing connector writes events: by default as aws-lambda-stream does, fields over
/// 10 KB (its size estimate) compressed and no claim-check.
///
/// ```
/// use lambda_stream::{Event, connectors::Wire};
/// use serde_json::json;
///
/// let mut event = Event::new("1", "thing-updated", 1);
/// event.fields.insert("thing".into(), json!({"notes": "n".repeat(20_000)}));
/// let json = Wire::default().json(&event).unwrap();
/// assert!(json.len() < 1_000 && json.contains(r#""thing":"COMPRESSED"#));
/// assert!(Wire::plain().json(&event).unwrap().len() > 20_000);
/// ```
#[derive(Debug, Clone)]
pub struct Wire {
    threshold: Option<usize>,
    claim_check: Option<ClaimCheck>,
}

impl Default for Wire {
    fn default() -> Self {
        Wire {
            threshold: Some(compression::DEFAULT_THRESHOLD),
            claim_check: None,
        }
    }
}

impl Wire {
    /// Events as serialized: nothing compressed, nothing claim-checked.
    pub fn plain() -> Self {
        Wire {
            threshold: None,
            claim_check: None,
        }
    }

    /// The settings' threshold (`COMPRESSION_THRESHOLD`) and claim-check bucket
    /// (`CLAIMCHECK_BUCKET_NAME`, over the shared S3 client).
    pub async fn from_settings(settings: &crate::Settings) -> Self {
        Wire {
            threshold: settings.compression_threshold,
            claim_check: ClaimCheck::from_settings(settings).await,
        }
    }

    /// Compresses fields over `threshold` (in aws-lambda-stream's estimate), or nothing.
    pub fn compress_over(mut self, threshold: Option<usize>) -> Self {
        self.threshold = threshold;
        self
    }

    /// Stores events too big for the target in `claim_check` and publishes pointers.
    pub fn claim_check(mut self, claim_check: ClaimCheck) -> Self {
        self.claim_check = Some(claim_check);
        self
    }

    /// The claim-check, if any.
    pub fn claim_checks(&self) -> Option<&ClaimCheck> {
        self.claim_check.as_ref()
    }

    /// The event's JSON as published: its big fields compressed (a fault's quoted unit of work
    /// and record are not compressed whole, as aws-lambda-stream does).
    pub fn json<P: Publishable>(&self, event: &P) -> Result<String, StepError> {
        let json = serde_json::to_string(event)?;
        let Some(threshold) = self.threshold else {
            return Ok(json);
        };
        // the usual event: no field can be over the threshold, so no second pass
        if compression::under_threshold(json.len(), threshold) {
            return Ok(json);
        }
        let mut value: Value = serde_json::from_str(&json)?;
        let ignore = if event.event_type() == FAULT_EVENT_TYPE {
            FAULT_COMPRESSION_IGNORE
        } else {
            &[]
        };
        if compression::compress_fields(&mut value, threshold, ignore) {
            Ok(serde_json::to_string(&value)?)
        } else {
            Ok(json)
        }
    }
}
