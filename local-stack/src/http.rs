//! A small HTTP/1 server on loopback for the Runtime API and the local API endpoints.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A response with a byte body.
pub type Reply = Response<Full<Bytes>>;

/// A request with its body read.
pub struct Received {
    /// Method, URI, headers.
    pub parts: http::request::Parts,
    /// The whole body.
    pub body: Bytes,
}

/// A reply with `status` and a JSON or text body.
pub fn reply(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Serves `handle` on a fresh port of 127.0.0.1; the server stops when the handle is aborted
/// (or dropped through [`Server`]).
pub async fn serve<F, Fut>(handle: F) -> std::io::Result<Server>
where
    F: Fn(Received) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    serve_on(TcpListener::bind("127.0.0.1:0").await?, handle)
}

/// Serves `handle` on `listener`.
pub fn serve_on<F, Fut>(listener: TcpListener, handle: F) -> std::io::Result<Server>
where
    F: Fn(Received) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let addr = listener.local_addr()?;
    let handle = Arc::new(handle);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handle = Arc::clone(&handle);
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let handle = Arc::clone(&handle);
                    async move {
                        let (parts, body) = req.into_parts();
                        let reply = match body.collect().await {
                            Ok(b) => {
                                handle(Received {
                                    parts,
                                    body: b.to_bytes(),
                                })
                                .await
                            }
                            Err(e) => {
                                reply(StatusCode::BAD_REQUEST, format!("{{\"error\":\"{e}\"}}"))
                            }
                        };
                        Ok::<_, Infallible>(reply)
                    }
                });
                // a runtime's long poll ends when its process is killed; that is not an error
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(Server { addr, task })
}

/// A running server; dropping it stops accepting connections.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}
