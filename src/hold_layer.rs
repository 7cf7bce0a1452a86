//! A tower layer that takes a hold when a request arrives and keeps it until
//! the response, streams included, is done. Two holds use it: justbuild's gc
//! locks (gc_layer.rs) and a connection's count of requests in flight
//! (connections.rs).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::body::Body;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What to hold for a request.
pub trait Holder: Clone + Send + Sync + 'static {
    type Hold: Send + Unpin + 'static;

    /// Looks at the request on arrival; the returned future gives the hold
    /// (or nothing to hold) before the request is handled.
    fn hold<B>(&self, request: &http::Request<B>) -> BoxFuture<Option<Self::Hold>>;
}

#[derive(Clone)]
pub struct HoldLayer<H>(pub H);

impl<S, H: Clone> tower::Layer<S> for HoldLayer<H> {
    type Service = HoldService<S, H>;
    fn layer(&self, inner: S) -> HoldService<S, H> {
        HoldService {
            inner,
            holder: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct HoldService<S, H> {
    inner: S,
    holder: H,
}

impl<S, H, B> tower::Service<http::Request<B>> for HoldService<S, H>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    H: Holder,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let hold = self.holder.hold(&request);
        // The clone is ready only if polled; keep the polled one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let hold = hold.await;
            let response = inner.call(request).await?;
            Ok(match hold {
                Some(hold) => response.map(|body| Body::new(HoldingBody { body, _hold: hold })),
                None => response,
            })
        })
    }
}

/// A response body that keeps a hold until it is dropped.
struct HoldingBody<H> {
    body: Body,
    _hold: H,
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
