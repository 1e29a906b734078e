//! Lambda `Invoke`, asynchronous or synchronous.

use aws_sdk_lambda::Client;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use serde_json::Value;

use crate::aws::classify;
use crate::error::StepError;

/// A connector over the Lambda client.
#[derive(Debug, Clone)]
pub struct Lambda {
    client: Client,
}

impl Lambda {
    /// Over `client`.
    pub fn new(client: Client) -> Self {
        Lambda { client }
    }

    /// Over the shared client.
    pub async fn shared() -> Self {
        Lambda::new(crate::aws::lambda().await.clone())
    }

    /// Queues an invocation (`Event`): Lambda retries it itself; nothing comes back.
    pub async fn invoke_async(&self, function: &str, payload: &Value) -> Result<(), StepError> {
        self.client
            .invoke()
            .function_name(function)
            .invocation_type(InvocationType::Event)
            .payload(Blob::new(serde_json::to_vec(payload)?))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Invokes and waits (`RequestResponse`); returns the function's JSON response. An error the
    /// function itself raised is poison (`FunctionError`), with the function's error payload.
    pub async fn invoke(&self, function: &str, payload: &Value) -> Result<Value, StepError> {
        let out = self
            .client
            .invoke()
            .function_name(function)
            .invocation_type(InvocationType::RequestResponse)
            .payload(Blob::new(serde_json::to_vec(payload)?))
            .send()
            .await
            .map_err(classify)?;
        let body = out.payload.map(Blob::into_inner).unwrap_or_default();
        if let Some(kind) = out.function_error {
            let detail = String::from_utf8_lossy(&body);
            return Err(
                StepError::poison(format!("{function} failed ({kind}): {detail}"))
                    .named("FunctionError"),
            );
        }
        if body.is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_slice(&body)?)
    }
}
