//! An oversized request is `RESOURCE_EXHAUSTED`, as for every other limit.
//!
//! tonic refuses a request message past the decoding limit with
//! `OUT_OF_RANGE`, which gRPC reserves for values outside a valid range
//! ("read past the end of the file") and which clients do not treat as a
//! limit. This layer rewrites that one answer, in the header of a
//! trailers-only response (how tonic answers a unary request it could not
//! decode), and nothing else.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;

/// The start of tonic's message for a request past the limit.
const TONIC_OVERSIZE: &[u8] = b"Error, decoded message length too large";

/// Wraps a service with [`OversizeAsExhausted`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct OversizeLayer;

impl<S> tower_layer::Layer<S> for OversizeLayer {
    type Service = OversizeAsExhausted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OversizeAsExhausted { inner }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct OversizeAsExhausted<S> {
    inner: S,
}

impl<S, Req, B> tower_service::Service<Req> for OversizeAsExhausted<S>
where
    S: tower_service::Service<Req, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            rewrite(response.headers_mut());
            Ok(response)
        })
    }
}

fn rewrite(headers: &mut http::HeaderMap) {
    let oversize = headers
        .get("grpc-status")
        .is_some_and(|s| s.as_bytes() == b"11")
        && headers
            .get("grpc-message")
            .is_some_and(|m| m.as_bytes().starts_with(&percent_encoded(TONIC_OVERSIZE)));
    if oversize {
        headers.insert("grpc-status", HeaderValue::from_static("8"));
    }
}

/// gRPC percent-encodes `grpc-message`: a space becomes `%20`.
fn percent_encoded(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() * 3);
    for &b in text {
        if (0x20..0x7f).contains(&b) && b != b'%' && b != b' ' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(status: &str, message: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", status.parse().unwrap());
        h.insert("grpc-message", message.parse().unwrap());
        h
    }

    #[test]
    fn only_the_decoding_limit_becomes_resource_exhausted() {
        let tonic = "Error,%20decoded%20message%20length%20too%20large:%20found%205000000%20bytes";
        let mut h = headers("11", tonic);
        rewrite(&mut h);
        assert_eq!(h["grpc-status"], "8");

        for (status, message) in [("11", "offset%20out%20of%20range"), ("3", tonic), ("0", "")] {
            let mut h = headers(status, message);
            rewrite(&mut h);
            assert_eq!(h["grpc-status"], status, "{message}");
        }
    }
}
