//! What a published event looks like on the wire, as aws-lambda-stream publishes it: sensitive
//! fields encrypted ([`crate::encryption`]), fields over the compression threshold compressed
//! ([`crate::compression`]), and an event still too big for its target claim-checked
//! ([`crate::claimcheck`]).

use serde_json::Value;

use super::batching::Publishable;
use crate::claimcheck::ClaimCheck;
use crate::compression::{self, FAULT_COMPRESSION_IGNORE};
use crate::encryption::{Encryption, Sealer};
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
/// let json = Wire::default().json(&event, None).unwrap();
/// assert!(json.len() < 1_000 && json.contains(r#""thing":"COMPRESSED"#));
/// assert!(Wire::plain().json(&event, None).unwrap().len() > 20_000);
/// ```
#[derive(Debug, Clone)]
pub struct Wire {
    threshold: Option<usize>,
    claim_check: Option<ClaimCheck>,
    encryption: Option<Encryption>,
}

impl Default for Wire {
    fn default() -> Self {
        Wire {
            threshold: Some(compression::DEFAULT_THRESHOLD),
            claim_check: None,
            encryption: None,
        }
    }
}

impl Wire {
    /// Events as serialized: nothing compressed, nothing claim-checked.
    pub fn plain() -> Self {
        Wire {
            threshold: None,
            claim_check: None,
            encryption: None,
        }
    }

    /// The settings' threshold (`COMPRESSION_THRESHOLD`), claim-check bucket
    /// (`CLAIMCHECK_BUCKET_NAME`, over the shared S3 client) and encryption
    /// (`MASTER_KEY_ALIAS`, `ENCRYPTED_FIELDS`, over the shared KMS client).
    pub async fn from_settings(settings: &crate::Settings) -> Self {
        Wire {
            threshold: settings.compression_threshold,
            claim_check: ClaimCheck::from_settings(settings).await,
            encryption: Encryption::from_settings(settings).await,
        }
    }

    /// Encrypts the fields `encryption` names, in every event but faults.
    pub fn encrypt(mut self, encryption: Encryption) -> Self {
        self.encryption = Some(encryption);
        self
    }

    /// The encryption, if any.
    pub fn encryption(&self) -> Option<&Encryption> {
        self.encryption.as_ref()
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

    /// The event's JSON as published: the encryption's fields encrypted with `sealer` (made
    /// by [`Encryption::envelope`] for this batch), then its big fields compressed (a fault is
    /// never encrypted, and its quoted unit of work and record are not compressed whole, as
    /// aws-lambda-stream does).
    pub fn json<P: Publishable>(
        &self,
        event: &P,
        sealer: Option<&Sealer>,
    ) -> Result<String, StepError> {
        let json = serde_json::to_string(event)?;
        let fault = event.event_type() == FAULT_EVENT_TYPE;
        let fields = self
            .encryption
            .as_ref()
            .map_or(&[][..], |e| e.fields.as_slice());
        // a field's name in compact JSON is followed by a colon: no such text, no such field
        let seal = sealer.filter(|_| !fault && fields.iter().any(|f| names_key(&json, f)));
        // the usual event: no field can be over the threshold, so no second pass
        let compress = self
            .threshold
            .filter(|t| !compression::under_threshold(json.len(), *t));
        if seal.is_none() && compress.is_none() {
            return Ok(json);
        }
        let mut value: Value = serde_json::from_str(&json)?;
        let mut changed = seal.is_some_and(|s| s.seal(&mut value, fields));
        if let Some(threshold) = compress {
            let ignore = if fault { FAULT_COMPRESSION_IGNORE } else { &[] };
            changed |= compression::compress_fields(&mut value, threshold, ignore);
        }
        if changed {
            Ok(serde_json::to_string(&value)?)
        } else {
            Ok(json)
        }
    }
}

/// True when `json` (compact) has `key` as an object key: `"key":`, found without building
/// the pattern, since this runs for every published event when encryption is on.
fn names_key(json: &str, key: &str) -> bool {
    json.match_indices(key)
        .any(|(i, _)| json[..i].ends_with('"') && json[i + key.len()..].starts_with("\":"))
}
