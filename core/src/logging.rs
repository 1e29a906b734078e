//! Logging set-up for Lambda functions.

/// Installs a JSON `tracing` subscriber (one object a line, as CloudWatch Logs Insights reads
/// them), filtered by `RUST_LOG` (default `info`). Calling it twice is harmless.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .without_time() // Lambda stamps every line already
        .try_init();
}
