//! Lambda `Invoke`, asynchronous or synchronous.

use aws_sdk_lambda::Client;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use serde_json::Value;

use crate::aws::classify;
use crate::error::StepError;

/// An event source mapping, as the breaker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingState {
    /// Its id.
    pub uuid: String,
    /// `Enabled`, `Disabled`, `Enabling`...
    pub state: String,
    /// Records per batch.
    pub batch_size: Option<i32>,
    /// When it was last changed (epoch ms).
    pub last_modified_ms: Option<i64>,
    /// The source it reads.
    pub event_source_arn: Option<String>,
}

impl MappingState {
    /// True when it delivers (or is about to).
    pub fn enabled(&self) -> bool {
        matches!(
            self.state.as_str(),
            "Enabled" | "Enabling" | "Updating" | "Creating"
        )
    }
}

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

    /// The event source mappings of `function`, those reading `source_arn` when given.
    pub async fn mappings(
        &self,
        function: &str,
        source_arn: Option<&str>,
    ) -> Result<Vec<MappingState>, StepError> {
        let mut pages = self
            .client
            .list_event_source_mappings()
            .function_name(function)
            .set_event_source_arn(source_arn.map(str::to_owned))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(classify)?;
            out.extend(page.event_source_mappings().iter().filter_map(|m| {
                Some(MappingState {
                    uuid: m.uuid()?.to_owned(),
                    state: m.state().unwrap_or_default().to_owned(),
                    batch_size: m.batch_size(),
                    last_modified_ms: m.last_modified().map(|t| t.to_millis().unwrap_or(0)),
                    event_source_arn: m.event_source_arn().map(str::to_owned),
                })
            }));
        }
        Ok(out)
    }

    /// Switches a mapping on or off, or changes its batch size.
    pub async fn update_mapping(
        &self,
        uuid: &str,
        enabled: Option<bool>,
        batch_size: Option<i32>,
    ) -> Result<(), StepError> {
        self.client
            .update_event_source_mapping()
            .uuid(uuid)
            .set_enabled(enabled)
            .set_batch_size(batch_size)
            .send()
            .await
            .map_err(classify)?;
        Ok(())
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
