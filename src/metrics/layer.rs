//! A tower layer counting every gRPC request by method and status code, and
//! timing it from arrival to the end of its answer (streams included). The
//! code is read from the response headers (a trailers-only error) or from
//! the trailers; an answer dropped before its end counts as CANCELLED. The
//! end of each request is logged in its span (request id, method, subject):
//! at info level when it failed or took [`SLOW`] or longer, else at debug.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::body::Body;

use super::{code_name, global, MethodMetrics};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

#[derive(Clone, Copy, Debug, Default)]
pub struct MetricsLayer;

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> MetricsService<S> {
        MetricsService { inner }
    }
}

#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for MetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = global().method(request.uri().path());
        let start = Instant::now();
        // The clone is ready only if polled; keep the polled one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let mut record = Record {
                method,
                start,
                code: None,
                // The request's span (tonic enters it while polling this).
                span: tracing::Span::current(),
            };
            let response = inner.call(request).await?;
            record.code = code_of(response.headers());
            Ok(response.map(|body| Body::new(MeteredBody { body, record })))
        })
    }
}

/// The status code in `grpc-status`, if there is one.
fn code_of(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(tonic::Code::from(value))
}

/// A request taking this long is logged at info level.
const SLOW: std::time::Duration = std::time::Duration::from_secs(1);

/// One request's figures, counted (and its end logged) when dropped.
struct Record {
    method: &'static MethodMetrics,
    start: Instant,
    code: Option<tonic::Code>,
    span: tracing::Span,
}

impl Drop for Record {
    fn drop(&mut self) {
        global()
            .requests_answered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let elapsed = self.start.elapsed();
        self.method.requests(self.code).inc();
        self.method.duration.observe(elapsed.as_secs_f64());
        let code = self.code.map_or("CANCELLED", code_name);
        let ms = elapsed.as_secs_f64() * 1e3;
        if code != "OK" || elapsed >= SLOW {
            self.span.in_scope(|| tracing::info!(code, ms, "answered"));
        } else if tracing::enabled!(tracing::Level::DEBUG) {
            self.span.in_scope(|| tracing::debug!(code, ms, "answered"));
        }
    }
}

/// A response body that reads the code off the trailers and records the
/// request when it is dropped.
struct MeteredBody {
    body: Body,
    record: Record,
}

impl http_body::Body for MeteredBody {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(code) = frame.trailers_ref().and_then(code_of) {
                self.record.code = Some(code);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
