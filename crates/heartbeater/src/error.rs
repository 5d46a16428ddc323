//! Typed errors of the node and the client.

use std::net::SocketAddr;
use std::time::Duration;

use heartbeater_core::ValidationError;

use crate::store::StoreError;

/// Why a node could not be built, started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A builder value is out of range; nothing was started.
    #[error("invalid server configuration: {field}: {reason}")]
    InvalidConfig {
        /// The builder setting.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The data directory cannot be used (see [`StoreError`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An explicit epoch lower than the one already stored: peers would take
    /// this incarnation for a stale one.
    #[error("epoch {requested} is lower than the stored epoch {stored}; use {stored} or more, or omit it")]
    EpochRegressed {
        /// The epoch already in the data directory.
        stored: u64,
        /// The epoch asked for.
        requested: u64,
    },
    /// A node id other than the one the data directory holds: a node's
    /// identity never changes, since its monitors know it by it. Nothing
    /// was written.
    #[error("the data directory holds node {stored:?}, not {requested:?}: a node keeps the identity of its first start (its monitors know it by it); drop the node id to start as {stored:?}, or use a new data directory for {requested:?}")]
    IdentityChanged {
        /// The identity in the data directory.
        stored: String,
        /// The node id asked for.
        requested: String,
    },
    /// The listen address could not be bound (in use, not local, no permission).
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// The gRPC port is free but the same port number is taken for UDP, where
    /// the node receives heartbeat datagrams.
    #[error("cannot receive heartbeat datagrams on UDP {addr}: {error}; free the UDP port or turn UDP heartbeats off (gRPC only)")]
    UdpBind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
    /// `start` on a server that is running.
    #[error("server already running on {0}")]
    AlreadyRunning(SocketAddr),
    /// `start` on a server that was stopped: a node is started once; build a
    /// new one on the same data directory to restart it.
    #[error("server was stopped; build a new one to start again")]
    Stopped,
    /// The tokio runtime of the blocking facade could not be created.
    #[error("cannot create the runtime: {0}")]
    Runtime(std::io::Error),
    /// A background task of the node failed.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why a call to a node failed. Every gRPC status maps to one variant, so
/// callers can tell a retryable outage from a mistake of their own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The client's own settings are wrong (host, port, deadline).
    #[error(transparent)]
    InvalidConfig(#[from] ValidationError),
    /// The node could not be reached, or what answered is not a node the
    /// client can talk to; `reason` says which, in the terms of the likely
    /// mistake. Retryable: a node may start, a certificate may be rotated.
    #[error("{}", unreachable_text(target, *reason, message))]
    Unavailable {
        /// `host:port` of the node.
        target: String,
        /// Why, as far as the client can tell.
        reason: Unreachable,
        /// What the transport said.
        message: String,
    },
    /// No answer within the client's deadline. Retryable.
    #[error("{target}: no answer within the deadline of {deadline:?}")]
    DeadlineExceeded {
        /// `host:port` of the node.
        target: String,
        /// The deadline in force.
        deadline: Duration,
    },
    /// The node rejected a field of the request.
    #[error("rejected by the node: {message}")]
    InvalidArgument {
        /// The offending field, as named in the `.proto`, when the node said.
        field: Option<String>,
        /// The node's explanation.
        message: String,
    },
    /// The peer (or other entity) named in the request does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The node requires a bearer token for this call and got none, or
    /// one it does not accept; nothing was changed.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A limit of the node was reached (registry size, request size,
    /// watchers); nothing was changed.
    #[error("limit reached: {0}")]
    ResourceExhausted(String),
    /// The blocking client was used before `start` or after `stop`.
    #[error("client is not running; call start() first")]
    NotRunning,
    /// Any other gRPC failure.
    #[error("{code:?}: {message}")]
    Rpc {
        /// The gRPC status code.
        code: tonic::Code,
        /// The node's message.
        message: String,
    },
}

impl ClientError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Unavailable { .. } | ClientError::DeadlineExceeded { .. }
        )
    }
}

/// Why a call could not reach a node. Told apart from what the transport
/// reports (the OS, the TLS library, the HTTP/2 layer) and from the
/// client's own settings, so that each names the likely mistake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unreachable {
    /// Nothing listens on the port: the node is not running, or the port
    /// is not its gRPC port.
    ConnectionRefused,
    /// The host name does not resolve.
    UnknownHost,
    /// Something answered on the port, but not as a gRPC server: an HTTP
    /// server (such as the node's own HTTP port) or another service.
    NotGrpc,
    /// The client spoke plain text and the connection ended at the first
    /// exchange, the way a node serving TLS ends it.
    TlsRequired,
    /// The client spoke TLS to a server that does not.
    NotTls,
    /// The node's certificate is not trusted by the client's CA, or does
    /// not name the host the client called.
    UntrustedCertificate,
    /// The node requires a client certificate (mutual TLS) and the client
    /// has none.
    ClientCertificateRequired,
    /// The node refused the client's certificate: not issued by a CA the
    /// node trusts, or expired.
    ClientCertificateRejected,
    /// Anything else: a reset, a closed connection, an unreachable network,
    /// a node that is stopping.
    Other,
}

/// What went wrong first, in the caller's terms; the transport's own words
/// after it, for whoever needs the detail.
fn unreachable_text(target: &str, reason: Unreachable, message: &str) -> String {
    match reason {
        Unreachable::ConnectionRefused => {
            format!("nothing listens on {target} (connection refused): is the node running, and is that its gRPC port?")
        }
        Unreachable::UnknownHost => format!("cannot resolve the host of {target} ({message})"),
        Unreachable::NotGrpc => {
            format!("{target} answered but is not a Heartbeater gRPC port ({message})")
        }
        Unreachable::TlsRequired => format!(
            "{target} closed the connection at the first plain-text exchange: it likely serves TLS ({message})"
        ),
        Unreachable::NotTls => format!("{target} does not speak TLS ({message})"),
        Unreachable::UntrustedCertificate => {
            format!("the certificate of {target} is not trusted ({message})")
        }
        Unreachable::ClientCertificateRequired => {
            format!("{target} requires a client certificate for mutual TLS ({message})")
        }
        Unreachable::ClientCertificateRejected => {
            format!("{target} refused the client certificate ({message})")
        }
        Unreachable::Other => format!("{target} unavailable: {message}"),
    }
}
