//! Shared AWS SDK clients and the classification of their errors.
//!
//! One client per service per process: Lambda reuses the process across invocations, so clients
//! (and their connection pools) are built once. The SDK reads its endpoint from the standard
//! environment, so `AWS_ENDPOINT_URL=http://127.0.0.1:PORT` points every client at a local
//! emulator; S3 then uses path-style addressing, which emulators need.

use std::fmt::Debug;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use tokio::sync::OnceCell;

use crate::error::{ErrorClass, StepError};

static CONFIG: OnceCell<SdkConfig> = OnceCell::const_new();

/// The process's AWS configuration, loaded once from the environment.
pub async fn config() -> &'static SdkConfig {
    CONFIG
        .get_or_init(|| aws_config::defaults(BehaviorVersion::latest()).load())
        .await
}

/// Makes `config` the process's AWS configuration, before any client is built; false if one
/// was already in use. Tools use it to run handlers in-process against a chosen endpoint or a
/// recording HTTP client.
pub fn install(config: SdkConfig) -> bool {
    CONFIG.set(config).is_ok()
}

macro_rules! shared_client {
    ($(#[$doc:meta])* $name:ident, $client:ty, $build:expr) => {
        $(#[$doc])*
        pub async fn $name() -> &'static $client {
            static CLIENT: OnceCell<$client> = OnceCell::const_new();
            CLIENT.get_or_init(|| async { $build(config().await) }).await
        }
    };
}

shared_client!(
    /// The shared DynamoDB client.
    dynamodb, aws_sdk_dynamodb::Client, aws_sdk_dynamodb::Client::new);
shared_client!(
    /// The shared EventBridge client.
    eventbridge, aws_sdk_eventbridge::Client, aws_sdk_eventbridge::Client::new);
shared_client!(
    /// The shared Kinesis client.
    kinesis, aws_sdk_kinesis::Client, aws_sdk_kinesis::Client::new);
shared_client!(
    /// The shared SQS client.
    sqs, aws_sdk_sqs::Client, aws_sdk_sqs::Client::new);
shared_client!(
    /// The shared SNS client.
    sns, aws_sdk_sns::Client, aws_sdk_sns::Client::new);
shared_client!(
    /// The shared KMS client.
    kms, aws_sdk_kms::Client, aws_sdk_kms::Client::new);
shared_client!(
    /// The shared Lambda client.
    lambda, aws_sdk_lambda::Client, aws_sdk_lambda::Client::new);
shared_client!(
/// The shared S3 client; path-style when an endpoint is configured (emulators need it).
s3, aws_sdk_s3::Client, |conf: &SdkConfig| {
    let path_style = conf.endpoint_url().is_some();
    let s3 = aws_sdk_s3::config::Builder::from(conf).force_path_style(path_style).build();
    aws_sdk_s3::Client::from_conf(s3)
});

/// Error codes that mean "try again later": throttling, capacity, AWS-side failures, and
/// configuration problems (a missing table, a denied action) that a deployment fixes, not the
/// data; faulting every record for those would flood the fault monitor.
const TRANSIENT_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "BandwidthLimitExceeded",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "InternalException",
    "KMSThrottlingException",
    "LimitExceededException",
    "PriorRequestNotComplete",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "RequestTimeout",
    "RequestTimeoutException",
    "ResourceNotFoundException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "SlowDown",
    "ThrottledException",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "TransactionConflictException",
    "TransactionInProgressException",
];

/// Whether an error code (of a call, or of one entry of a batch call) is worth retrying.
pub fn is_transient_code(code: &str) -> bool {
    TRANSIENT_CODES.contains(&code)
}

/// Classifies an SDK error: timeouts, dispatch failures, throttling, 5xx and 429 are transient;
/// a request that could not be built and any other service error (validation, a failed
/// condition) are poison. The error's code becomes the fault's `err.name`.
///
/// ```
/// use lambda_stream::aws::is_transient_code;
///
/// assert!(is_transient_code("ProvisionedThroughputExceededException"));
/// assert!(!is_transient_code("ValidationException"));
/// ```
///
/// (`tests/connector_mocks.rs` shows `classify` on mocked SDK errors.)
pub fn classify<E>(err: SdkError<E, HttpResponse>) -> StepError
where
    E: ProvideErrorMetadata + std::error::Error + Debug + Send + Sync + 'static,
{
    let (class, name) = match &err {
        SdkError::ConstructionFailure(_) => (ErrorClass::Poison, "ConstructionFailure".to_owned()),
        SdkError::TimeoutError(_) => (ErrorClass::Transient, "TimeoutError".to_owned()),
        SdkError::DispatchFailure(_) => (ErrorClass::Transient, "DispatchFailure".to_owned()),
        SdkError::ResponseError(_) => (ErrorClass::Transient, "ResponseError".to_owned()),
        SdkError::ServiceError(ctx) => {
            let code = ctx.err().code().unwrap_or("ServiceError").to_owned();
            let status = ctx.raw().status().as_u16();
            let class = if is_transient_code(&code) || status >= 500 || status == 429 {
                ErrorClass::Transient
            } else {
                ErrorClass::Poison
            };
            (class, code)
        }
        _ => (ErrorClass::Transient, "SdkError".to_owned()),
    };
    // the full context (code, message, request id) is what an operator needs in a fault
    let message = DisplayErrorContext(&err).to_string();
    StepError::new(class, name, message)
}
