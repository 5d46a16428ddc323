//! TLS for every gRPC connection, with rustls: what a node presents and whom
//! it asks for a client certificate ([`TlsServerConfig`]), and what a client
//! trusts and presents ([`TlsClientConfig`]).
//!
//! Both are loaded and checked in full when built, so a bad certificate, a
//! key that does not match it or an unreadable file fails with a
//! [`TlsError`] naming the file, before anything listens or connects, and a
//! rotation that would break the node is refused while the old
//! configuration stays in use.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS configuration could not be loaded; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        /// What the file was for ("certificate", "private key", "CA").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// The PEM held no certificate, or no private key.
    #[error("{what}: no {expected} found in the PEM")]
    Missing {
        /// What the PEM was for, with its file when there was one.
        what: String,
        /// What was looked for.
        expected: &'static str,
    },
    /// The certificates or key were found but rustls refused them (a key
    /// that does not match the certificate, an unsupported algorithm).
    #[error("{what}: {reason}")]
    Invalid {
        /// What was being configured.
        what: String,
        /// rustls's explanation.
        reason: String,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        what,
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn certificates(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            what: what.to_owned(),
            reason: format!("unreadable PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Missing {
            what: what.to_owned(),
            expected: "certificate",
        });
    }
    Ok(certs)
}

fn private_key(what: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Missing {
            what: what.to_owned(),
            expected: "private key",
        },
        other => TlsError::Invalid {
            what: what.to_owned(),
            reason: format!("unreadable PEM: {other}"),
        },
    })
}

fn roots(what: &str, pem: &[u8]) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(what, pem)? {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn invalid(what: &str) -> impl Fn(rustls::Error) -> TlsError + '_ {
    move |e| TlsError::Invalid {
        what: what.to_owned(),
        reason: e.to_string(),
    }
}

/// What a node presents to the clients that connect to it, and, for mutual
/// TLS, the CA their certificates must chain to.
///
/// Cheap to clone. Give it to [`crate::HeartbeatServerBuilder::tls`]; swap
/// it on a running node with [`crate::HeartbeatServer::set_tls`] (new
/// connections use the new one, open ones keep theirs).
#[derive(Clone)]
pub struct TlsServerConfig {
    config: Arc<rustls::ServerConfig>,
    mutual: bool,
}

impl std::fmt::Debug for TlsServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServerConfig")
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

impl TlsServerConfig {
    /// From PEM text: the node's certificate chain (its own certificate
    /// first), its private key, and for mutual TLS the CA certificates a
    /// client certificate must chain to (clients without one are refused).
    pub fn from_pem(
        cert_chain: &[u8],
        key: &[u8],
        client_ca: Option<&[u8]>,
    ) -> Result<Self, TlsError> {
        Self::build(
            ("certificate", cert_chain),
            ("private key", key),
            client_ca.map(|pem| ("client CA", pem)),
        )
    }

    /// From PEM files (see [`TlsServerConfig::from_pem`]).
    pub fn from_files(
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
        client_ca: Option<&Path>,
    ) -> Result<Self, TlsError> {
        let (cert_path, key_path) = (cert_chain.as_ref(), key.as_ref());
        let cert_pem = read("certificate", cert_path)?;
        let key_pem = read("private key", key_path)?;
        let ca = match client_ca {
            Some(path) => Some((path, read("client CA", path)?)),
            None => None,
        };
        let cert_what = format!("certificate {}", cert_path.display());
        let key_what = format!("private key {}", key_path.display());
        let ca_what = ca
            .as_ref()
            .map(|(p, _)| format!("client CA {}", p.display()));
        Self::build(
            (&cert_what, &cert_pem),
            (&key_what, &key_pem),
            ca_what
                .as_deref()
                .zip(ca.as_ref().map(|(_, pem)| pem.as_slice())),
        )
    }

    fn build(
        (cert_what, cert_pem): (&str, &[u8]),
        (key_what, key_pem): (&str, &[u8]),
        client_ca: Option<(&str, &[u8])>,
    ) -> Result<Self, TlsError> {
        let chain = certificates(cert_what, cert_pem)?;
        let key = private_key(key_what, key_pem)?;
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(invalid("TLS versions"))?;
        let builder = match client_ca {
            Some((what, pem)) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(what, pem)?),
                    provider,
                )
                .build()
                .map_err(|e| TlsError::Invalid {
                    what: what.to_owned(),
                    reason: e.to_string(),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(invalid(cert_what))?;
        // gRPC is HTTP/2 only.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            mutual: client_ca.is_some(),
        })
    }

    /// Whether clients must present a certificate (mutual TLS).
    pub fn requires_client_certificate(&self) -> bool {
        self.mutual
    }

    pub(crate) fn rustls(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }
}

/// What a client trusts (the CA a node's certificate must chain to) and,
/// for nodes that require mutual TLS, the certificate it presents.
///
/// Used by [`crate::HeartbeatClient`], and by a node for the connections it
/// opens itself: heartbeats over gRPC and topic subscriptions
/// ([`crate::HeartbeatServerBuilder::peer_tls`]).
#[derive(Clone)]
pub struct TlsClientConfig {
    ca: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    server_name: Option<String>,
}

impl std::fmt::Debug for TlsClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClientConfig")
            .field("client_certificate", &self.identity.is_some())
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsClientConfig {
    /// Trusts the CA certificates in `ca` (PEM) and no others.
    pub fn from_pem(ca: &[u8]) -> Result<Self, TlsError> {
        roots("CA", ca)?;
        Ok(Self {
            ca: ca.to_vec(),
            identity: None,
            server_name: None,
        })
    }

    /// Trusts the CA certificates in the PEM file `ca`.
    pub fn from_file(ca: impl AsRef<Path>) -> Result<Self, TlsError> {
        let path = ca.as_ref();
        let pem = read("CA", path)?;
        roots(&format!("CA {}", path.display()), &pem)?;
        Ok(Self {
            ca: pem,
            identity: None,
            server_name: None,
        })
    }

    /// Whether it presents a client certificate.
    pub(crate) fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// Presents this certificate chain and key (PEM) to nodes that ask for
    /// one (mutual TLS).
    pub fn with_identity_pem(mut self, cert_chain: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        check_identity(("client certificate", cert_chain), ("client key", key))?;
        self.identity = Some((cert_chain.to_vec(), key.to_vec()));
        Ok(self)
    }

    /// Presents the certificate chain and key in these PEM files.
    pub fn with_identity_files(
        self,
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        let (cert_path, key_path) = (cert_chain.as_ref(), key.as_ref());
        let cert = read("client certificate", cert_path)?;
        let key = read("client key", key_path)?;
        check_identity(
            (
                &format!("client certificate {}", cert_path.display()),
                &cert,
            ),
            (&format!("client key {}", key_path.display()), &key),
        )?;
        Ok(Self {
            identity: Some((cert, key)),
            ..self
        })
    }

    /// The name the node's certificate must carry, when it is not the host
    /// connected to (say, connecting by IP address to a certificate issued
    /// for a DNS name).
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// tonic's configuration for a connection to `host`.
    pub(crate) fn tonic(&self, host: &str) -> tonic::transport::ClientTlsConfig {
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca))
            .domain_name(self.server_name.as_deref().unwrap_or(host));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        config
    }
}

fn check_identity(
    (cert_what, cert): (&str, &[u8]),
    (key_what, key): (&str, &[u8]),
) -> Result<(), TlsError> {
    let chain = certificates(cert_what, cert)?;
    let key = private_key(key_what, key)?;
    // Building a client config checks that key and certificate match.
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(invalid("TLS versions"))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_client_auth_cert(chain, key)
        .map_err(invalid(cert_what))?;
    Ok(())
}

/// The node's side of TLS, swappable while it runs: the acceptor reads it at
/// every new connection.
#[derive(Clone, Default)]
pub(crate) struct TlsSlot(Arc<std::sync::RwLock<Option<TlsServerConfig>>>);

impl TlsSlot {
    pub(crate) fn new(config: Option<TlsServerConfig>) -> Self {
        Self(Arc::new(std::sync::RwLock::new(config)))
    }

    pub(crate) fn current(&self) -> Option<TlsServerConfig> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set(&self, config: Option<TlsServerConfig>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = config;
    }
}

/// What a client presents when it connects.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transport {
    /// It speaks TLS.
    pub(crate) tls: bool,
    /// It presents a client certificate.
    pub(crate) client_certificate: bool,
}

impl Transport {
    /// How a client with `tls` (if any) connects.
    pub(crate) fn of(tls: Option<&TlsClientConfig>) -> Self {
        Transport {
            tls: tls.is_some(),
            client_certificate: tls.is_some_and(TlsClientConfig::has_identity),
        }
    }
}
