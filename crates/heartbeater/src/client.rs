//! [`HeartbeatClient`]: talks to any node, its own or another.

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use heartbeater_core::config::{validate_host, validate_port};
use heartbeater_core::ValidationError;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::error::{ClientError, Unreachable};
use crate::grpc::proto;
use crate::grpc::proto::heartbeat_service_client::HeartbeatServiceClient;
use crate::grpc::tls::{TlsClientConfig, Transport};

/// Longest deadline a client accepts.
const MAX_DEADLINE: Duration = Duration::from_secs(3600);

/// An async client of one node. Cheap to clone: clones share one connection.
///
/// The connection is made lazily, at the first call, and re-made after a
/// failure; every call is bounded by the deadline given at construction.
#[derive(Clone)]
pub struct HeartbeatClient {
    inner: HeartbeatServiceClient<Channel>,
    target: String,
    deadline: Duration,
    token: Option<AsciiMetadataValue>,
    /// How the client connects, to tell TLS mistakes apart in errors.
    transport: Transport,
}

impl std::fmt::Debug for HeartbeatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeartbeatClient")
            .field("target", &self.target)
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// Configures a [`HeartbeatClient`]: deadline, TLS, bearer token.
#[derive(Debug, Clone)]
#[must_use]
pub struct HeartbeatClientBuilder {
    host: String,
    port: u16,
    deadline: Duration,
    tls: Option<TlsClientConfig>,
    token: Option<String>,
}

impl HeartbeatClientBuilder {
    /// The deadline of each call (1 ms to 1 hour; default 5 s).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Connect over TLS, trusting the CA in `tls` (and presenting its
    /// client certificate to nodes that require mutual TLS).
    pub fn tls(mut self, tls: TlsClientConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Send `authorization: Bearer <token>` with every call.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The client. Connects lazily; must be called within a tokio runtime.
    pub fn build(self) -> Result<HeartbeatClient, ClientError> {
        let target = target_of(&self.host, self.port, self.deadline)?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ValidationError::new(
                "runtime",
                "the async client must be created within a tokio runtime; use heartbeater::blocking::HeartbeatClient otherwise",
            )
            .into());
        }
        let token = match &self.token {
            Some(token) => {
                crate::grpc::access::validate_token(token)
                    .map_err(|reason| ValidationError::new("token", reason))?;
                crate::grpc::access::bearer(token)
            }
            None => None,
        };
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let endpoint = crate::driver::outbound::endpoint(host, self.port, self.tls.as_ref())
            .map_err(|e| ValidationError::new("server_host", e))?
            .connect_timeout(self.deadline);
        Ok(HeartbeatClient {
            inner: HeartbeatServiceClient::new(endpoint.connect_lazy()),
            target,
            deadline: self.deadline,
            token,
            transport: Transport::of(self.tls.as_ref()),
        })
    }
}

impl HeartbeatClient {
    /// A client of the node at `host:port` whose calls each get `deadline`
    /// (1 ms to 1 hour), in plain text and without a token. Connects
    /// lazily; must be called within a tokio runtime.
    pub fn new(host: &str, port: u16, deadline: Duration) -> Result<Self, ClientError> {
        Self::builder(host, port).deadline(deadline).build()
    }

    /// A builder for a client of the node at `host:port`, for TLS or a token.
    pub fn builder(host: impl Into<String>, port: u16) -> HeartbeatClientBuilder {
        HeartbeatClientBuilder {
            host: host.into(),
            port,
            deadline: Duration::from_secs(5),
            tls: None,
            token: None,
        }
    }

    /// `host:port` of the node.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The deadline of each call.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.deadline);
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        request
    }

    async fn call<F, R>(&self, f: F) -> Result<R, ClientError>
    where
        F: std::future::Future<Output = Result<tonic::Response<R>, Status>>,
    {
        match tokio::time::timeout(self.deadline, f).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.map_status(&status)),
            Err(_) => Err(ClientError::DeadlineExceeded {
                target: self.target.clone(),
                deadline: self.deadline,
            }),
        }
    }

    /// Registers (or updates) a peer on the node; returns once it is durable there.
    pub async fn register_peer(
        &self,
        request: proto::RegisterPeerRequest,
    ) -> Result<proto::RegisterPeerResponse, ClientError> {
        let mut c = self.inner.clone();
        self.call(c.register_peer(self.request(request))).await
    }

    /// Deregisters a peer; [`ClientError::NotFound`] if the node does not know it.
    pub async fn deregister_peer(
        &self,
        request: proto::DeregisterPeerRequest,
    ) -> Result<proto::DeregisterPeerResponse, ClientError> {
        let mut c = self.inner.clone();
        self.call(c.deregister_peer(self.request(request))).await
    }

    /// Sends one heartbeat; the answer carries the node's identity and epoch.
    pub async fn heartbeat(
        &self,
        message: proto::HeartbeatMessage,
    ) -> Result<proto::HeartbeatResponse, ClientError> {
        let mut c = self.inner.clone();
        self.call(c.heartbeat(self.request(message))).await
    }

    /// The status of every peer registered on the node, in id order: every
    /// page, one call each (see [`HeartbeatClient::list_peers_page`]).
    pub async fn list_peers(&self) -> Result<proto::ListPeersResponse, ClientError> {
        let mut all = self.list_peers_page(0, String::new()).await?;
        let mut token = std::mem::take(&mut all.next_page_token);
        while !token.is_empty() {
            let mut page = self.list_peers_page(0, token.clone()).await?;
            if page.peers.is_empty() || page.next_page_token == token {
                // A node that sends a next page without progress would keep
                // this loop going for ever.
                return Err(ClientError::Rpc {
                    code: Code::Internal,
                    message: "the node answered a page without progress".into(),
                });
            }
            all.peers.append(&mut page.peers);
            token = page.next_page_token;
        }
        Ok(all)
    }

    /// One page of the node's peers: up to `page_size` (0: the node's
    /// default), after the page whose `next_page_token` is `page_token`
    /// (empty for the first page).
    pub async fn list_peers_page(
        &self,
        page_size: u32,
        page_token: String,
    ) -> Result<proto::ListPeersResponse, ClientError> {
        let mut c = self.inner.clone();
        self.call(c.list_peers(self.request(proto::ListPeersRequest {
            page_size,
            page_token,
        })))
        .await
    }

    /// The node's peer events from now on (after a snapshot of every peer if
    /// `include_snapshot`). The deadline bounds the opening of the stream only.
    pub async fn watch_peers(
        &self,
        include_snapshot: bool,
    ) -> Result<
        impl Stream<Item = Result<proto::PeerEvent, ClientError>> + Send + 'static,
        ClientError,
    > {
        let mut c = self.inner.clone();
        let mut request = self.request(proto::WatchPeersRequest { include_snapshot });
        // The deadline bounds opening the stream only, not its life.
        request.metadata_mut().remove("grpc-timeout");
        let stream = self.call(c.watch_peers(request)).await?;
        let (target, deadline) = (self.target.clone(), self.deadline);
        // The stream is open: its end is the node's or the network's doing,
        // not a matter of TLS settings.
        Ok(stream.map(move |item| item.map_err(|s| status_error(&s, &target, deadline, None))))
    }

    fn map_status(&self, status: &Status) -> ClientError {
        status_error(status, &self.target, self.deadline, Some(self.transport))
    }
}

/// The [`ClientError`] of a failed call to `target` made with `deadline`
/// over `transport`, or over a connection already established (`None`):
/// then a closed connection says nothing about TLS settings.
pub(crate) fn status_error(
    status: &Status,
    target: &str,
    deadline: Duration,
    transport: Option<Transport>,
) -> ClientError {
    let message = status.message().to_owned();
    if message.contains("grpc-status header missing") {
        // An HTTP answer without gRPC's trailers, whatever code tonic
        // made of its HTTP status: not a gRPC server at all.
        return ClientError::Unavailable {
            target: target.to_owned(),
            reason: Unreachable::NotGrpc,
            message: message.replace(", mapped from HTTP status code", ": HTTP status"),
        };
    }
    let source = std::error::Error::source(status);
    match status.code() {
        // Internal with a transport cause: the connection broke under
        // HTTP/2 (plain text sent to a TLS node, say), not the node.
        Code::Unavailable | Code::Unknown | Code::Internal if source.is_some() => {
            unreachable(target, source, &message, transport)
        }
        Code::Unavailable => ClientError::Unavailable {
            target: target.to_owned(),
            reason: Unreachable::Other,
            message,
        },
        Code::DeadlineExceeded => ClientError::DeadlineExceeded {
            target: target.to_owned(),
            deadline,
        },
        Code::Cancelled if message.contains("Timeout expired") => ClientError::DeadlineExceeded {
            target: target.to_owned(),
            deadline,
        },
        // A connection closed before the call could start (a node that
        // refused it over its per-address limit, or is going away).
        Code::Cancelled if source.is_some() => unreachable(target, source, &message, transport),
        Code::InvalidArgument => {
            let field = status
                .get_error_details()
                .bad_request()
                .and_then(|br| br.field_violations.first().map(|v| v.field.clone()));
            ClientError::InvalidArgument { field, message }
        }
        Code::NotFound => ClientError::NotFound(message),
        Code::Unauthenticated => ClientError::Unauthenticated(message),
        Code::ResourceExhausted => ClientError::ResourceExhausted(message),
        code => ClientError::Rpc { code, message },
    }
}

/// A transport failure (`source`, under an outer `message`) on the way to
/// `target`, with why in the caller's terms; `transport` as for
/// [`status_error`].
pub(crate) fn unreachable(
    target: &str,
    source: Option<&(dyn std::error::Error + 'static)>,
    message: &str,
    transport: Option<Transport>,
) -> ClientError {
    let message = innermost_message(source, message);
    ClientError::Unavailable {
        target: target.to_owned(),
        reason: unreachable_reason(source, &message, transport),
        message,
    }
}

/// Tells a transport failure's likely cause from the errors under it (the
/// OS's, rustls's) and, where they are ambiguous, from how the client
/// connected: a connection closed at once means "TLS expected" to a plain
/// client, "certificate required" to a TLS client without one.
fn unreachable_reason(
    source: Option<&(dyn std::error::Error + 'static)>,
    message: &str,
    transport: Option<Transport>,
) -> Unreachable {
    let client_certificate = transport.is_some_and(|t| t.client_certificate);
    use tokio_rustls::rustls::{AlertDescription as Alert, Error as RustlsError};
    let mut cause = source;
    while let Some(e) = cause {
        // rustls's errors reach here inside an io::Error, whose `source`
        // skips them: look inside.
        let io = e.downcast_ref::<std::io::Error>();
        if io.is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused) {
            return Unreachable::ConnectionRefused;
        }
        let tls = e.downcast_ref::<RustlsError>().or_else(|| {
            io.and_then(std::io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<RustlsError>())
        });
        match tls {
            Some(RustlsError::AlertReceived(Alert::CertificateRequired)) => {
                return Unreachable::ClientCertificateRequired;
            }
            Some(RustlsError::AlertReceived(
                Alert::BadCertificate
                | Alert::UnknownCA
                | Alert::CertificateUnknown
                | Alert::CertificateExpired
                | Alert::CertificateRevoked
                | Alert::UnsupportedCertificate
                | Alert::DecryptError
                | Alert::AccessDenied,
            )) if client_certificate => return Unreachable::ClientCertificateRejected,
            Some(RustlsError::InvalidCertificate(_)) => return Unreachable::UntrustedCertificate,
            Some(RustlsError::InvalidMessage(_)) => return Unreachable::NotTls,
            _ => {}
        }
        cause = e.source();
    }
    // The OS's resolver failure has no kind of its own, and TLS errors
    // mostly arrive as text: the TLS layer turns them into `io::Error`s
    // made from their message.
    if message.contains("failed to lookup address") {
        return Unreachable::UnknownHost;
    }
    if message.contains("received fatal alert: CertificateRequired") {
        return Unreachable::ClientCertificateRequired;
    }
    if message.contains("received fatal alert") && client_certificate {
        return Unreachable::ClientCertificateRejected;
    }
    if message.contains("invalid peer certificate") {
        return Unreachable::UntrustedCertificate;
    }
    if message.contains("received corrupt message") {
        return Unreachable::NotTls;
    }
    // A TLS node answers an HTTP/2 preface with a TLS record, which HTTP/2
    // reads as a frame of an impossible size. A node that refuses a TLS
    // client's certificate may close the connection before its alert
    // arrives: then the client sees a broken pipe, a reset or a closed
    // connection, whichever comes first (hyper says "connection was not
    // ready" when the close comes while the request is being readied).
    let closed = [
        "broken pipe",
        "reset by peer",
        "connection closed",
        "connection was not ready",
    ]
    .iter()
    .any(|m| message.contains(m));
    match transport {
        Some(Transport { tls: false, .. }) if message.contains("frame with invalid size") => {
            Unreachable::TlsRequired
        }
        Some(Transport {
            tls: true,
            client_certificate: false,
        }) if closed => Unreachable::ClientCertificateRequired,
        Some(Transport {
            tls: true,
            client_certificate: true,
        }) if closed => Unreachable::ClientCertificateRejected,
        _ => Unreachable::Other,
    }
}

/// Validates a client's settings; returns the `host:port` it will call.
pub(crate) fn target_of(host: &str, port: u16, deadline: Duration) -> Result<String, ClientError> {
    let host = validate_host("server_host", host)?;
    let port = validate_port("server_port", u32::from(port))?;
    if deadline.is_zero() || deadline > MAX_DEADLINE {
        return Err(ValidationError::new(
            "deadline",
            format!("{deadline:?}; must be 1 ms to 1 hour"),
        )
        .into());
    }
    Ok(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// The innermost cause of a transport failure ("Connection refused") is what
/// an operator needs; tonic's outer message is "transport error".
fn innermost_message(source: Option<&(dyn std::error::Error + 'static)>, outer: &str) -> String {
    let mut cause = source;
    let mut last = outer.to_owned();
    while let Some(e) = cause {
        last = e.to_string();
        cause = e.source();
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_client_without_a_certificate_cut_off_is_told_it_needs_one() {
        let no_certificate = Some(Transport {
            tls: true,
            client_certificate: false,
        });
        // However hyper words the close, depending on when it came.
        for message in [
            "transport error: broken pipe",
            "connection reset by peer",
            "connection closed before message completed",
            "connection was not ready",
        ] {
            assert_eq!(
                unreachable_reason(None, message, no_certificate),
                Unreachable::ClientCertificateRequired,
                "{message}"
            );
        }
        assert_eq!(
            unreachable_reason(None, "connection was not ready", None),
            Unreachable::Other
        );
    }
}
