//! The metrics listener: `GET /metrics` over plain HTTP/1.1, answered from
//! a [`Scrape`]. Its clients are scrapers, but it is still a network port:
//! connections are limited in number and time, requests are never read
//! beyond their headers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::Scrape;

/// Connections served at once; more are closed on arrival.
const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection may stay open.
const CONNECTION_TIME: Duration = Duration::from_secs(60);

/// The OpenMetrics text format, which Prometheus scrapes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {interface}:{port}: {source}")]
pub struct ListenError {
    pub interface: String,
    pub port: u16,
    pub source: std::io::Error,
}

/// Binds `interface:port` (0: any free port) and serves the metrics in the
/// background; the address bound and the task (abort it to stop).
pub async fn serve(
    interface: &str,
    port: u16,
    scrape: Scrape,
) -> Result<(SocketAddr, JoinHandle<()>), ListenError> {
    let error = |source| ListenError {
        interface: interface.to_string(),
        port,
        source,
    };
    let listener = TcpListener::bind((interface, port)).await.map_err(error)?;
    let addr = listener.local_addr().map_err(error)?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let scrape = Arc::new(scrape);
    let measured = scrape.clone();
    let measuring = async move {
        loop {
            measured.measure().await;
            tokio::time::sleep(super::MEASURE_EVERY).await;
        }
    };
    let serving = async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors and the like: try again shortly.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let scrape = scrape.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let scrape = scrape.clone();
                    async move { Ok::<_, Infallible>(answer(scrape, &request).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_TIME, connection).await;
                drop(slot);
            });
        }
    };
    // One task: aborting it ends both loops.
    let task = tokio::spawn(async move {
        tokio::join!(measuring, serving);
    });
    Ok((addr, task))
}

async fn answer<B>(scrape: Arc<Scrape>, request: &Request<B>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "jserve serves its metrics at /metrics\n".into(),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    // Reading /proc (and the directory of open descriptors) is file work.
    match tokio::task::spawn_blocking(move || scrape.encode()).await {
        Ok(text) => reply(StatusCode::OK, CONTENT_TYPE, text),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("encoding the metrics failed: {e}\n"),
        ),
    }
}
