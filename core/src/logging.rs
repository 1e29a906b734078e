//! Logging set-up for Lambda functions.

use tracing_subscriber::Layer as _;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;

/// Installs a JSON `tracing` subscriber (one object a line, as CloudWatch Logs Insights reads
/// them), filtered by `RUST_LOG` (default `info`). Calling it twice is harmless.
///
/// Each line carries its spans: the Lambda runtime's invocation span (`requestId`,
/// `xrayTraceId`) and the pipeline's (`id`), so a line is found by request and by pipeline;
/// a fault or retry line also names the `event` and its `correlation` id
/// ([`Event::correlation_id`](crate::Event::correlation_id)), to follow one record across
/// functions. Events' contents are never logged.
///
/// With the `otel` feature and the OpenTelemetry variables set, spans are exported as well
/// (see the `traces` module); `RUST_LOG` filters the log lines only.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let subscriber = json(std::io::stdout, filter);
    #[cfg(feature = "otel")]
    if let Some(provider) = crate::traces::provider() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let subscriber = subscriber.with(crate::traces::layer(provider));
        let _ = tracing::subscriber::set_global_default(subscriber);
        return;
    }
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// The subscriber [`init`] installs, writing to `writer` with `filter` (for a test, or a
/// function that sends its logs elsewhere).
///
/// ```
/// use tracing_subscriber::EnvFilter;
///
/// let subscriber = lambda_stream::logging::json(std::io::sink, EnvFilter::new("warn"));
/// tracing::subscriber::with_default(subscriber, || tracing::warn!(pipeline = "p1", "fault"));
/// ```
///
/// The filter applies to the log lines alone, so another layer added to the subscriber (trace
/// export) chooses its own spans.
pub fn json<W>(
    writer: W,
    filter: tracing_subscriber::EnvFilter,
) -> impl tracing::Subscriber + for<'s> LookupSpan<'s> + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let lines = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_span_list(true)
        .without_time() // Lambda stamps every line already
        .with_writer(writer)
        .with_filter(filter);
    tracing_subscriber::registry().with(lines)
}
