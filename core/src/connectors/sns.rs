//! SNS `Publish`.

use aws_sdk_sns::Client;

use super::batching::Publishable;
use crate::aws::classify;
use crate::error::StepError;

/// A connector over the SNS client, publishing to one topic.
#[derive(Debug, Clone)]
pub struct Sns {
    client: Client,
    topic_arn: String,
}

impl Sns {
    /// Publishes to `topic_arn`.
    pub fn new(client: Client, topic_arn: impl Into<String>) -> Self {
        Sns {
            client,
            topic_arn: topic_arn.into(),
        }
    }

    /// Over the shared client, to the settings' topic (`TOPIC_ARN`).
    pub async fn from_settings(settings: &crate::Settings) -> Self {
        Sns::new(crate::aws::sns().await.clone(), &settings.topic_arn)
    }

    /// Publishes `event` as the message (JSON); FIFO topics get its partition key as message
    /// group and its id as deduplication id.
    pub async fn publish<P: Publishable>(&self, event: &P) -> Result<(), StepError> {
        let message = serde_json::to_string(event)?;
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
