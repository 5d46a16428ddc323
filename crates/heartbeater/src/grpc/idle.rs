//! Connections that make no calls are closed after a while.
//!
//! A client's HTTP/2 stack answers the server's pings by itself, so the
//! keepalive closes only connections whose host has gone; one that is up
//! but makes no call would hold its place (a file descriptor, a share of
//! its client's connections) for ever. Every call on a connection is
//! counted from its start until its response has been sent in full (a
//! stream of events or topic frames counts for as long as it lasts), and a
//! connection with no call for [`crate::DEFAULT_CONNECTION_IDLE_TIMEOUT`]
//! (or the builder's value) is closed by the listener, at a moment when
//! nothing is waiting to be read from it: bytes that arrived (a new call)
//! are always handed on first.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::grpc::connection::{CallGuard, ConnInfo};

/// Counts the calls of each connection ([`crate::grpc::connection::Activity`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ActivityLayer;

impl<S> tower_layer::Layer<S> for ActivityLayer {
    type Service = CountCalls<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountCalls { inner }
    }
}

/// See [`ActivityLayer`].
#[derive(Debug, Clone)]
pub(crate) struct CountCalls<S> {
    inner: S,
}

impl<S, ReqBody, B> tower_service::Service<http::Request<ReqBody>> for CountCalls<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Counted<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let guard = request
            .extensions()
            .get::<ConnInfo>()
            .map(|info| info.activity.begin());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Counted {
                inner: body,
                _guard: guard,
            }))
        })
    }
}

/// A response body that keeps its call counted until it is dropped.
#[derive(Debug)]
pub(crate) struct Counted<B> {
    inner: B,
    _guard: Option<CallGuard>,
}

impl<B> http_body::Body for Counted<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
