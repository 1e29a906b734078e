//! Where what Lambda gives up on goes: SQS queues named by ARN (on-failure destinations,
//! dead-letter queues).

use crate::Error;

/// The URL of the SQS queue with this ARN.
pub async fn queue_url(sqs: &aws_sdk_sqs::Client, arn: &str) -> Result<String, Error> {
    let name = arn.rsplit(':').next().unwrap_or(arn);
    let out = sqs
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .map_err(Error::aws)?;
    Ok(out.queue_url().unwrap_or_default().to_owned())
}

/// Sends `body` to the SQS queue with this ARN.
pub async fn send_to_queue_arn(
    sqs: &aws_sdk_sqs::Client,
    arn: &str,
    body: &str,
) -> Result<(), Error> {
    sqs.send_message()
        .queue_url(queue_url(sqs, arn).await?)
        .message_body(body)
        .send()
        .await
        .map_err(Error::aws)?;
    Ok(())
}
