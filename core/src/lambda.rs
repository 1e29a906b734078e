//! A handler as a function's whole Lambda runtime.

use std::cell::RefCell;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use lambda_runtime::layers::TracingLayer;
use lambda_runtime::tower::{Layer, Service};
use lambda_runtime::{LambdaEvent, LambdaInvocation, Runtime, service_fn};
use serde::de::IgnoredAny;

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
/// The handler reads each invocation's payload from its bytes ([`Source::event`]): a batch of
/// records in one pass, where the runtime's own typed deserialization would scan and copy each
/// record before parsing it. A payload that does not parse fails the invocation, as the
/// runtime's would.
///
/// With the `otel` feature and trace export configured, each invocation is a span (the
/// runtime's `OpenTelemetryLayer`) and its spans are flushed once the response is posted, before the
/// runtime polls for the next invocation (when Lambda may freeze the process).
pub async fn run<S: Source>(handler: Handler) -> Result<(), lambda_runtime::Error> {
    let handler = Arc::new(handler);
    let service = service_fn(move |event: LambdaEvent<IgnoredAny>| {
        let handler = Arc::clone(&handler);
        let payload = PAYLOAD.with(|p| p.borrow_mut().take());
        async move {
            let payload = payload.ok_or("the invocation's payload was not handed over")?;
            let batch = S::event(&payload)?;
            Ok::<_, lambda_runtime::Error>(handler.handle::<S>(batch, &event.context).await?)
        }
    });
    let runtime = Runtime::new(service)
        .layer(PayloadLayer)
        .layer(TracingLayer::new());
    #[cfg(feature = "otel")]
    if crate::traces::provider().is_some() {
        use lambda_runtime::layers::OpenTelemetryLayer;
        return runtime
            .layer(OpenTelemetryLayer::new(crate::traces::flush))
            .run()
            .await;
    }
    runtime.run().await
}

thread_local! {
    /// The payload of the invocation being handed to the handler: set and taken within one
    /// synchronous call (the runtime calls its services' `call`, down to the handler's, before
    /// any of their futures runs).
    static PAYLOAD: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Hands the invocation's payload to the handler as bytes, and the runtime's deserializer a
/// `null` to skip.
#[derive(Debug, Clone, Copy)]
struct PayloadLayer;

impl<S> Layer<S> for PayloadLayer {
    type Service = PayloadService<S>;

    fn layer(&self, inner: S) -> PayloadService<S> {
        PayloadService { inner }
    }
}

#[derive(Debug, Clone)]
struct PayloadService<S> {
    inner: S,
}

impl<S: Service<LambdaInvocation>> Service<LambdaInvocation> for PayloadService<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut invocation: LambdaInvocation) -> S::Future {
        let payload = std::mem::replace(&mut invocation.body, Bytes::from_static(b"null"));
        PAYLOAD.with(|p| *p.borrow_mut() = Some(payload));
        let future = self.inner.call(invocation);
        // not left for the next invocation when the handler was not called
        PAYLOAD.with(|p| p.borrow_mut().take());
        future
    }
}
