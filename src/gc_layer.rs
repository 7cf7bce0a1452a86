//! Every RPC that reads or writes the build root holds justbuild's gc locks
//! shared (see `storage::gc`) until its response, streams included, is done.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;

use crate::storage::gc::GcLocks;

/// Services that touch no stored object: they never wait for a collection.
const EXEMPT: [&str; 5] = [
    "/grpc.health.",
    "/grpc.reflection.",
    "/build.bazel.remote.execution.v2.Capabilities/",
    "/google.longrunning.Operations/",
    "/justbuild.just_serve.Configuration/",
];

#[derive(Clone)]
pub struct GcLayer(pub Arc<GcLocks>);

impl<S> tower::Layer<S> for GcLayer {
    type Service = GcService<S>;
    fn layer(&self, inner: S) -> GcService<S> {
        GcService {
            inner,
            locks: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GcService<S> {
    inner: S,
    locks: Arc<GcLocks>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for GcService<S>
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
        // The clone is ready only if polled; keep the polled one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let locks = self.locks.clone();
        Box::pin(async move {
            let path = request.uri().path();
            let hold = if EXEMPT.iter().any(|p| path.starts_with(p)) {
                None
            } else {
                match locks.hold().await {
                    Ok(hold) => Some(hold),
                    Err(e) => {
                        tracing::warn!("cannot take the gc lock: {e}");
                        None
                    }
                }
            };
            let response = inner.call(request).await?;
            Ok(match hold {
                Some(hold) => response.map(|body| Body::new(HoldingBody::new(body, hold))),
                None => response,
            })
        })
    }
}

/// A response body that keeps something (a gc hold, a connection's request
/// count) until it is dropped.
pub struct HoldingBody<H> {
    body: Body,
    _hold: H,
}

impl<H> HoldingBody<H> {
    pub fn new(body: Body, hold: H) -> Self {
        HoldingBody { body, _hold: hold }
    }
}

impl<H: Unpin> http_body::Body for HoldingBody<H> {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
