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
pub async fn run<S: Source>(handler: Handler) -> Result<(), lambda_runtime::Error> {
    let handler = Arc::new(handler);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<S::Event>| {
        let handler = Arc::clone(&handler);
        async move {
            Ok::<_, lambda_runtime::Error>(
                handler.handle::<S>(event.payload, &event.context).await?,
            )
        }
    }))
    .await
}
