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
/// The handler reads each invocation's payload from its bytes
/// ([`Handler::handle_payload`]): a batch of records in one pass, where the runtime's own
/// typed deserialization would scan and copy each record before parsing it, and a big Kinesis
/// one a window at a time ([`Source::event_windows`]). A payload that does not parse fails the
/// invocation, as the runtime's would (but a record of a Kinesis batch taken in windows that is
/// not JSON is a fault of its own: see `Source::event_windows`).
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
            let payload = handed(payload)?;
            Ok::<_, lambda_runtime::Error>(
                handler.handle_payload::<S>(payload, &event.context).await?,
            )
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

/// The payload the layer handed over; its absence is a bug of ours, reported as the
/// invocation's error rather than a panic.
fn handed(payload: Option<Bytes>) -> Result<Bytes, lambda_runtime::Error> {
    payload.ok_or_else(|| "the invocation's payload was not handed over".into())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Stands for the runtime's services inside the layer: records the body the runtime's
    /// deserializer would read and, when it calls the handler, what the handler is handed.
    #[derive(Default)]
    struct Runtime {
        calls_handler: bool,
        deserialized: Option<Bytes>,
        handed: Option<Option<Bytes>>,
    }

    impl Service<LambdaInvocation> for Runtime {
        type Response = ();
        type Error = ();
        type Future = std::future::Ready<Result<(), ()>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, invocation: LambdaInvocation) -> Self::Future {
            self.deserialized = Some(invocation.body);
            if self.calls_handler {
                self.handed = Some(PAYLOAD.with(|p| p.borrow_mut().take()));
            }
            std::future::ready(Ok(()))
        }
    }

    fn invocation(body: &'static [u8]) -> LambdaInvocation {
        LambdaInvocation {
            parts: http::Response::new(()).into_parts().0,
            body: Bytes::from_static(body),
            context: lambda_runtime::Context::default(),
        }
    }

    #[test]
    fn the_handler_is_handed_the_payload_and_the_runtime_a_null() {
        let mut service = PayloadLayer.layer(Runtime {
            calls_handler: true,
            ..Runtime::default()
        });
        drop(service.call(invocation(br#"{"Records":[]}"#)));
        assert_eq!(service.inner.deserialized.as_deref(), Some(&b"null"[..]));
        assert_eq!(
            service.inner.handed,
            Some(Some(Bytes::from_static(br#"{"Records":[]}"#)))
        );
        // nothing is left for the next invocation
        assert!(PAYLOAD.with(|p| p.borrow().is_none()));
    }

    #[test]
    fn a_payload_that_does_not_parse_is_named_and_quoted_briefly() {
        let handler = crate::Handler::builder(crate::testing::MemoryFaults::default())
            .pipeline(crate::Pipeline::new("p1"))
            .build()
            .unwrap();
        let ctx = crate::testing::context(std::time::Duration::from_secs(30));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let handle = |payload: Bytes| {
            rt.block_on(handler.handle_payload::<crate::sources::Sqs>(payload, &ctx))
        };
        let long = Bytes::from(format!(r#"{{"Records":"{}"}}"#, "x".repeat(5_000)));
        let e = handle(long).unwrap_err().to_string();
        assert!(
            e.starts_with("the invocation's payload does not parse: "),
            "{e}"
        );
        assert!(e.len() < 400, "{} bytes", e.len());
        let ok = handle(Bytes::from_static(b"{\"Records\":[]}"));
        assert!(ok.unwrap().batch_item_failures.is_empty());
        let e = handed(None).unwrap_err().to_string();
        assert!(e.contains("not handed over"), "{e}");
    }

    #[test]
    fn a_payload_the_handler_was_not_called_for_is_not_left_for_the_next() {
        let mut service = PayloadLayer.layer(Runtime::default());
        drop(service.call(invocation(b"{}")));
        assert!(PAYLOAD.with(|p| p.borrow().is_none()));
        // the next invocation's handler gets its own payload
        service.inner.calls_handler = true;
        drop(service.call(invocation(b"[1]")));
        assert_eq!(service.inner.handed, Some(Some(Bytes::from_static(b"[1]"))));
    }
}
