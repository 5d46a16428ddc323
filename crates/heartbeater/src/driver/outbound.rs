//! How this node's own gRPC calls reach other nodes: heartbeats over the
//! gRPC path and topic subscriptions. Both take the TLS configuration and
//! the token from here at the moment they connect, so a rotation reaches
//! the next connection without a restart.

use std::sync::{Arc, RwLock};

use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Endpoint;

use crate::grpc::tls::TlsClientConfig;

/// An endpoint for `host:port`: `https` with `tls`, `http` without.
pub(crate) fn endpoint(
    host: &str,
    port: u16,
    tls: Option<&TlsClientConfig>,
) -> Result<Endpoint, String> {
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{authority}"))
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true);
    match tls {
        Some(tls) => endpoint
            .tls_config(tls.tonic(host))
            .map_err(|e| format!("TLS: {e}")),
        None => Ok(endpoint),
    }
}

#[derive(Default)]
struct State {
    tls: Option<TlsClientConfig>,
    token: Option<AsciiMetadataValue>,
    /// Grows at every change, so that pooled connections made before it
    /// are dropped.
    generation: u64,
}

/// The node's outbound TLS and token, shared by its driver and its
/// subscriptions.
#[derive(Clone, Default)]
pub(crate) struct Outbound(Arc<RwLock<State>>);

impl Outbound {
    pub(crate) fn new(tls: Option<TlsClientConfig>, token: Option<&str>) -> Self {
        Self(Arc::new(RwLock::new(State {
            tls,
            token: token.and_then(crate::grpc::access::bearer),
            generation: 0,
        })))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_tls(&self, tls: Option<TlsClientConfig>) {
        let mut state = self.write();
        state.tls = tls;
        state.generation += 1;
    }

    pub(crate) fn set_token(&self, token: Option<&str>) {
        let mut state = self.write();
        state.token = token.and_then(crate::grpc::access::bearer);
        state.generation += 1;
    }

    pub(crate) fn generation(&self) -> u64 {
        self.read().generation
    }

    /// An endpoint to `host:port` with the current TLS configuration.
    pub(crate) fn endpoint(&self, host: &str, port: u16) -> Result<Endpoint, String> {
        endpoint(host, port, self.read().tls.as_ref())
    }

    /// What a connection made now presents: TLS, a client certificate.
    pub(crate) fn transport(&self) -> crate::grpc::tls::Transport {
        crate::grpc::tls::Transport::of(self.read().tls.as_ref())
    }

    /// The `authorization` value to send, if any.
    pub(crate) fn token(&self) -> Option<AsciiMetadataValue> {
        self.read().token.clone()
    }
}
