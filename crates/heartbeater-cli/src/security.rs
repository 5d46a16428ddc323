//! The TLS and token options shared by the commands, and the files they name.

use std::path::{Path, PathBuf};

use anyhow::Context;
use heartbeater::{AuthTokens, TlsClientConfig, TlsServerConfig};

/// How a command that calls a node authenticates it and itself.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientSecurityArgs {
    /// Connect over TLS, trusting the CA certificates in FILE (PEM).
    #[arg(long, value_name = "FILE", env = "HEARTBEATER_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// The client certificate (PEM) for nodes that require mutual TLS.
    #[arg(
        long,
        value_name = "FILE",
        env = "HEARTBEATER_CLIENT_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        value_name = "FILE",
        env = "HEARTBEATER_CLIENT_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// The name the node's certificate must carry, when it differs from the
    /// host connected to.
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Send the bearer token in FILE (its first token line) with every call.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// The bearer token itself; prefer --token-file, which `ps` does not show.
    #[arg(
        long,
        env = "HEARTBEATER_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
}

impl ClientSecurityArgs {
    /// The TLS configuration, when `--tls-ca` asks for TLS.
    pub fn tls(&self) -> anyhow::Result<Option<TlsClientConfig>> {
        let Some(ca) = &self.tls_ca else {
            if self.tls_cert.is_some() {
                anyhow::bail!(
                    "--tls-cert needs --tls-ca: the CA that the node's certificate chains to"
                );
            }
            return Ok(None);
        };
        let mut tls = TlsClientConfig::from_file(ca)?;
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            tls = tls.with_identity_files(cert, key)?;
        }
        if let Some(name) = &self.tls_server_name {
            tls = tls.with_server_name(name.clone());
        }
        Ok(Some(tls))
    }

    /// The token to send, if any.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        match (&self.token_file, &self.token) {
            (Some(path), _) => Ok(Some(read_tokens(path)?.primary().to_owned())),
            (None, Some(token)) => Ok(Some(token.trim().to_owned())),
            (None, None) => Ok(None),
        }
    }
}

/// Warns when a secret file may be read by others than its owner.
pub fn warn_if_shared(path: &Path, what: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(file = %path.display(), "the {what} is readable by group or others; chmod 600 it");
        }
    }
}

/// A token file, checked: every token it holds, the first one to send.
pub fn read_tokens(path: &Path) -> anyhow::Result<AuthTokens> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read token file {}", path.display()))?;
    warn_if_shared(path, "token file");
    AuthTokens::parse(&text).with_context(|| format!("token file {}", path.display()))
}

/// The node's own TLS files, as `serve` and `publish` take them.
#[derive(Debug, Clone, Default)]
pub struct ServerTlsFiles {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub ca: Option<PathBuf>,
}

impl ServerTlsFiles {
    /// What the node presents, if it serves TLS.
    pub fn server(&self) -> anyhow::Result<Option<TlsServerConfig>> {
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                warn_if_shared(key, "TLS private key");
                Ok(Some(TlsServerConfig::from_files(
                    cert,
                    key,
                    self.client_ca.as_deref(),
                )?))
            }
            (None, None) if self.client_ca.is_some() => {
                anyhow::bail!(
                    "--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS first"
                )
            }
            (None, None) => Ok(None),
            (Some(_), None) => anyhow::bail!("--tls-cert needs --tls-key"),
            (None, Some(_)) => anyhow::bail!("--tls-key needs --tls-cert"),
        }
    }

    /// What the node trusts on the connections it opens (gRPC heartbeats,
    /// subscriptions): `--tls-ca`, else the client CA; it presents its own
    /// certificate there, for peers that require mutual TLS.
    pub fn peer(&self) -> anyhow::Result<Option<TlsClientConfig>> {
        let Some(ca) = self.ca.as_ref().or(self.client_ca.as_ref()) else {
            return Ok(None);
        };
        let mut tls = TlsClientConfig::from_file(ca)?;
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            tls = tls.with_identity_files(cert, key)?;
        }
        Ok(Some(tls))
    }
}
