//! A handler as a function's whole Lambda runtime.

use std::sync::Arc;

use lambda_runtime::{LambdaEvent, service_fn};

use crate::handler::Handler;
use crate::sources::Source;

/// Runs `handler` as the function's Lambda runtime, for events of source `S`, until the
/// runtime stops: a function's `main` is this and the handler's construction.
///
/// ```no_run
/// use lambda_stream::{Handler, Pipeline, sources, testing::MemoryFaults};
///
/// #[tokio::main]
/// async fn main() -> Result<(), lambda_runtime::Error> {
///     let handler = Handler::builder(MemoryFaults::default())
///         .pipeline(Pipeline::new("p1"))
///         .build()?;
///     lambda_stream::run::<sources::Sqs>(handler).await
/// }
/// ```
///
/// With the `otel` feature and trace export configured, each invocation is a span (the
/// runtime's `OpenTelemetryLayer`) and its spans are flushed once the response is posted, before the
/// runtime polls for the next invocation (when Lambda may freeze the process).
pub async fn run<S: Source>(handler: Handler) -> Result<(), lambda_runtime::Error> {
    let handler = Arc::new(handler);
    let service = service_fn(move |event: LambdaEvent<S::Event>| {
        let handler = Arc::clone(&handler);
        async move {
            Ok::<_, lambda_runtime::Error>(
                handler.handle::<S>(event.payload, &event.context).await?,
            )
        }
    });
    #[cfg(feature = "otel")]
    if crate::traces::provider().is_some() {
        use lambda_runtime::layers::{OpenTelemetryLayer, TracingLayer};
        return lambda_runtime::Runtime::new(service)
            .layer(TracingLayer::new())
            .layer(OpenTelemetryLayer::new(crate::traces::flush))
            .run()
            .await;
    }
    lambda_runtime::run(service).await
}
