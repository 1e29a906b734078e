//! SNS `Publish`: one message of at most 256 KB.

use aws_sdk_sns::Client;

use super::batching::Publishable;
use super::wire::Wire;
use crate::aws::classify;
use crate::error::StepError;

/// The largest SNS message.
pub const SNS_MAX_BYTES: usize = 256 * 1024;

/// A connector over the SNS client, publishing to one topic.
#[derive(Debug, Clone)]
pub struct Sns {
    client: Client,
    topic_arn: String,
    wire: Wire,
}

impl Sns {
    /// Publishes to `topic_arn`.
    pub fn new(client: Client, topic_arn: impl Into<String>) -> Self {
        Sns {
            client,
            topic_arn: topic_arn.into(),
            wire: Wire::default(),
        }
    }

    /// Over the shared client, to the settings' topic (`TOPIC_ARN`), with their compression
    /// threshold, claim-check bucket and encryption.
    pub async fn from_settings(settings: &crate::Settings) -> Self {
        Sns::new(crate::aws::sns().await.clone(), &settings.topic_arn)
            .with_wire(Wire::from_settings(settings).await)
    }

    /// Writes events as `wire` says (encryption, compression, claim-check).
    pub fn with_wire(mut self, wire: Wire) -> Self {
        self.wire = wire;
        self
    }

    /// Publishes `event` as the message (JSON, written as the [`Wire`] says; over 256 KB, its
    /// claim-check pointer, or poison without a claim-check); FIFO topics get its partition key
    /// as message group and its id as deduplication id.
    pub async fn publish<P: Publishable>(&self, event: &P) -> Result<(), StepError> {
        let sealer = match self.wire.encryption() {
            Some(e) => Some(e.envelope.sealer(&e.master_key).await?),
            None => None,
        };
        let mut message = self.wire.json(event, sealer.as_ref())?;
        if message.len() > SNS_MAX_BYTES {
            let Some(claim_check) = self.wire.claim_checks() else {
                let e = StepError::poison_msg(format!(
                    "message of {} bytes exceeds the limit of {SNS_MAX_BYTES} bytes",
                    message.len()
                ));
                return Err(e.named("OversizeError"));
            };
            message = claim_check
                .store(&message, chrono::Utc::now().timestamp_millis())
                .await?;
        }
        let mut request = self
            .client
            .publish()
            .topic_arn(&self.topic_arn)
            .message(message);
        if self.topic_arn.ends_with(".fifo") {
            request = request
                .message_group_id(event.partition_key().unwrap_or(event.id()))
                .message_deduplication_id(event.id());
        }
        request.send().await.map_err(classify)?;
        Ok(())
    }
}
