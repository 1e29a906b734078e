//! What can be invoked: a local function, or in tests a closure; and how an invocation fails.

use bytes::Bytes;
use futures::future::BoxFuture;

/// Why an invocation failed, as Lambda reports it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{error_type}: {message}")]
pub struct FunctionError {
    /// `errorType` (for example `Sandbox.Timedout`).
    pub error_type: String,
    /// `errorMessage`.
    pub message: String,
}

impl FunctionError {
    /// An error of `error_type` with `message`.
    pub fn new(error_type: &str, message: impl Into<String>) -> Self {
        Self {
            error_type: error_type.to_owned(),
            message: message.into(),
        }
    }
}

/// Something that can be invoked with a JSON payload: a local function, or in tests a closure.
pub trait Invoke: Send + Sync {
    /// The function's name (for logs and failure records).
    fn name(&self) -> &str;
    /// The function's ARN.
    fn arn(&self) -> String;
    /// One synchronous invocation.
    fn invoke(&self, payload: Bytes) -> BoxFuture<'_, Result<Bytes, FunctionError>>;
}
