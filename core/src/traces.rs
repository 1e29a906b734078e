//! Trace export (cargo feature `otel`): spans per invocation, per pipeline and per AWS call,
//! exported over OTLP/HTTP to a collector such as the AWS Distro for OpenTelemetry Lambda layer,
//! which forwards them to X-Ray.
//!
//! The official runtime's [`OpenTelemetryLayer`](lambda_runtime::layers::OpenTelemetryLayer)
//! opens the invocation span (`faas.invocation_id`, `faas.coldstart`) and flushes after each
//! response, before the next poll of the Runtime API (when Lambda may freeze the process); `tracing-opentelemetry` turns the `pipeline`
//! spans and the AWS SDK's per-operation spans (`DynamoDB.UpdateItem`, `rpc.service`,
//! `rpc.method`) into OpenTelemetry spans. Nothing but span names and those attributes leaves
//! the process: events' contents are never span fields.
//!
//! It is on when the feature is compiled in and the standard variables ask for it:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` set (the ADOT layer's
//! collector listens on `http://localhost:4318`), and `OTEL_SDK_DISABLED` not `true`.
//! `OTEL_SERVICE_NAME` names the service (default: the function's name); the protocol is
//! `http/json` unless `OTEL_EXPORTER_OTLP_PROTOCOL` says `http/protobuf`.
//!
//! A function needs nothing more than [`logging::init`](crate::logging::init) and
//! [`run`](crate::run); built with `--features lambda-stream/otel`, the same binary exports
//! when the variables are set and costs nothing when they are not:
//!
//! ```no_run
//! use lambda_stream::{Handler, Pipeline, sources, testing::MemoryFaults};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), lambda_runtime::Error> {
//!     lambda_stream::logging::init(); // adds the OTLP exporter when OTEL_EXPORTER_OTLP_ENDPOINT is set
//!     let handler = Handler::builder(MemoryFaults::default()).pipeline(Pipeline::new("p1")).build()?;
//!     lambda_stream::run::<sources::Kinesis>(handler).await // flushes spans after each response
//! }
//! ```

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether the environment asks for trace export.
pub fn configured() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The spans exported: the runtime's invocation spans, this library's (`pipeline`), and the
/// AWS SDK's one span per operation (at debug level, so not its inner attempt spans).
fn targets() -> Targets {
    Targets::new()
        .with_target("lambda_runtime", LevelFilter::INFO)
        .with_target("lambda_stream", LevelFilter::INFO)
        .with_target("aws_sdk_", LevelFilter::DEBUG)
}

/// Builds the tracer provider from the environment and keeps it for [`flush`]; `None` when
/// [`configured`] is false or the exporter cannot be built (said on stderr, as logging is not
/// up yet).
pub fn provider() -> Option<&'static SdkTracerProvider> {
    if let Some(p) = PROVIDER.get() {
        return Some(p);
    }
    if !configured() {
        return None;
    }
    let exporter = match SpanExporter::builder().with_http().build() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("trace export is off: {e}");
            return None;
        }
    };
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err()
        && let Ok(function) = std::env::var("AWS_LAMBDA_FUNCTION_NAME")
    {
        resource = resource.with_service_name(function);
    }
    let provider = SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build();
    Some(PROVIDER.get_or_init(|| provider))
}

/// The `tracing` layer that turns spans into OpenTelemetry spans for `provider`.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + Send + Sync + 'static
where
    S: tracing::Subscriber
        + for<'span> tracing_subscriber::registry::LookupSpan<'span>
        + Send
        + Sync,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("lambda-stream"))
        .with_filter(targets())
}

/// Sends the spans ended so far; [`run`](crate::run) calls it after each response, before
/// the next poll of the Runtime API, as Lambda may freeze the process then.
pub fn flush() {
    if let Some(p) = PROVIDER.get()
        && let Err(e) = p.force_flush()
    {
        tracing::warn!(error = %e, "trace export failed");
    }
}
