//! Who may call what: bearer tokens on gRPC calls.
//!
//! Calls that change the registry need a token the node accepts; reads need
//! one too when the node says so ([`crate::HeartbeatServerBuilder::auth_reads`]).
//! Tokens are compared as BLAKE3 digests in constant time (`subtle`), so
//! neither a token's bytes nor its length leak through timing, and every
//! accepted token is compared, so neither does which one matched.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::log_limit::SharedLogLimiter;

/// The most tokens a node accepts at once (a rotation needs two).
pub const MAX_TOKENS: usize = 16;
/// The longest token, in bytes.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Why a token list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token in the text (only blank lines and comments).
    #[error("no token found (one token per line; `#` starts a comment)")]
    Empty,
    /// More tokens than [`MAX_TOKENS`].
    #[error("{0} tokens; at most {MAX_TOKENS} are accepted at once")]
    TooMany(usize),
    /// A token with characters that cannot travel in an HTTP header, or too long.
    #[error("token on line {line}: {reason}")]
    Invalid {
        /// 1-based line of the token.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The bearer tokens a node accepts. The first one is also the token the
/// node sends on the calls it makes itself (heartbeats over gRPC, topic
/// subscriptions), so nodes sharing one token file can call each other.
#[derive(Clone)]
pub struct AuthTokens {
    digests: Vec<[u8; 32]>,
    primary: String,
}

impl std::fmt::Debug for AuthTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthTokens")
            .field("tokens", &self.digests.len())
            .finish_non_exhaustive()
    }
}

/// Checks that `token` can travel as `authorization: Bearer <token>`.
pub(crate) fn validate_token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        return Err("empty");
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err("longer than 4096 bytes");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("only printable ASCII without spaces is allowed");
    }
    Ok(())
}

impl AuthTokens {
    /// Tokens from the text of a token file: one per line, surrounding
    /// whitespace ignored, blank lines and lines starting with `#` skipped.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let mut tokens = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let token = line.trim();
            if token.is_empty() || token.starts_with('#') {
                continue;
            }
            validate_token(token).map_err(|reason| TokenError::Invalid {
                line: i + 1,
                reason,
            })?;
            tokens.push(token);
        }
        Self::new(tokens)
    }

    /// These tokens, the first one the node's own.
    pub fn new<I, T>(tokens: I) -> Result<Self, TokenError>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let mut digests = Vec::new();
        let mut primary = None;
        for (i, token) in tokens.into_iter().enumerate() {
            let token = token.as_ref();
            validate_token(token).map_err(|reason| TokenError::Invalid {
                line: i + 1,
                reason,
            })?;
            digests.push(*blake3::hash(token.as_bytes()).as_bytes());
            primary.get_or_insert_with(|| token.to_owned());
        }
        if digests.len() > MAX_TOKENS {
            return Err(TokenError::TooMany(digests.len()));
        }
        let primary = primary.ok_or(TokenError::Empty)?;
        Ok(Self { digests, primary })
    }

    /// How many tokens are accepted.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Always false: a token list holds at least one token.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// The first token: the one a node sends on its own calls, and the one
    /// a client reading a token file sends.
    pub fn primary(&self) -> &str {
        &self.primary
    }

    fn accepts(&self, token: &[u8]) -> bool {
        let digest = blake3::hash(token);
        let mut found = subtle::Choice::from(0);
        for accepted in &self.digests {
            found |= accepted.ct_eq(digest.as_bytes());
        }
        found.into()
    }
}

/// What a call does, for the token rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Changes the registry.
    Write,
    /// Reads or heartbeats.
    Read,
}

/// The node's token check, shared by its services; tokens swap while it runs.
#[derive(Clone)]
pub(crate) struct Gate {
    inner: Arc<GateInner>,
}

struct GateInner {
    tokens: RwLock<Option<AuthTokens>>,
    auth_reads: bool,
    rejected: AtomicU64,
    log: SharedLogLimiter,
}

impl Gate {
    pub(crate) fn new(tokens: Option<AuthTokens>, auth_reads: bool) -> Self {
        Self {
            inner: Arc::new(GateInner {
                tokens: RwLock::new(tokens),
                auth_reads,
                rejected: AtomicU64::new(0),
                log: SharedLogLimiter::default(),
            }),
        }
    }

    pub(crate) fn set_tokens(&self, tokens: Option<AuthTokens>) {
        *self.inner.tokens.write().unwrap_or_else(|e| e.into_inner()) = tokens;
    }

    pub(crate) fn tokens(&self) -> Option<AuthTokens> {
        self.inner
            .tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Calls refused for a missing or wrong token since the node was built.
    pub(crate) fn rejected(&self) -> u64 {
        self.inner.rejected.load(Ordering::Relaxed)
    }

    /// `Ok` if a call of this kind may go ahead with this metadata.
    pub(crate) fn check(&self, metadata: &MetadataMap, access: Access) -> Result<(), Status> {
        if access == Access::Read && !self.inner.auth_reads {
            return Ok(());
        }
        let guard = self.inner.tokens.read().unwrap_or_else(|e| e.into_inner());
        let Some(tokens) = guard.as_ref() else {
            return Ok(());
        };
        let presented = metadata
            .get("authorization")
            .map(|v| v.as_bytes())
            .and_then(|v| v.strip_prefix(b"Bearer "));
        let reason = match presented {
            Some(token) if tokens.accepts(token) => return Ok(()),
            Some(_) => "wrong token",
            None => "no bearer token",
        };
        drop(guard);
        self.inner.rejected.fetch_add(1, Ordering::Relaxed);
        self.log(reason);
        Err(Status::unauthenticated(format!(
            "{reason}: this call needs `authorization: Bearer <token>` with a token the node accepts"
        )))
    }

    fn log(&self, reason: &str) {
        if let Some(suppressed) = self.inner.log.due() {
            tracing::warn!(
                reason,
                suppressed,
                rejected_total = self.rejected(),
                "refused a gRPC call without a valid token"
            );
        }
    }
}

/// The `authorization` header value for `token`.
pub(crate) fn bearer(token: &str) -> Option<tonic::metadata::AsciiMetadataValue> {
    format!("Bearer {token}").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(value: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(v) = value {
            m.insert("authorization", v.parse().unwrap());
        }
        m
    }

    #[test]
    fn a_token_file_takes_one_token_per_line_and_skips_comments() {
        let tokens = AuthTokens::parse("# rotation\n  new-token \n\nold-token\n").unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens.primary(), "new-token");
        assert_eq!(
            AuthTokens::parse("# none\n\n").unwrap_err(),
            TokenError::Empty
        );
        assert_eq!(
            AuthTokens::parse("ok\nwith space\n").unwrap_err(),
            TokenError::Invalid {
                line: 2,
                reason: "only printable ASCII without spaces is allowed"
            }
        );
        let many: String = (0..=MAX_TOKENS).map(|i| format!("t{i}\n")).collect();
        assert_eq!(
            AuthTokens::parse(&many).unwrap_err(),
            TokenError::TooMany(MAX_TOKENS + 1)
        );
    }

    #[test]
    fn writes_need_an_accepted_token_reads_only_when_asked() {
        let gate = Gate::new(
            Some(AuthTokens::new(["current", "previous"]).unwrap()),
            false,
        );
        for ok in ["Bearer current", "Bearer previous"] {
            assert!(
                gate.check(&metadata(Some(ok)), Access::Write).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            None,
            Some("Bearer wrong"),
            Some("current"),
            Some("Bearer current2"),
            Some("Bearer "),
        ] {
            let e = gate.check(&metadata(bad), Access::Write).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        assert_eq!(gate.rejected(), 5);
        assert!(gate.check(&metadata(None), Access::Read).is_ok());

        let strict = Gate::new(Some(AuthTokens::new(["t"]).unwrap()), true);
        assert!(strict.check(&metadata(None), Access::Read).is_err());
        assert!(strict
            .check(&metadata(Some("Bearer t")), Access::Read)
            .is_ok());
    }

    #[test]
    fn without_tokens_every_call_goes_ahead() {
        let gate = Gate::new(None, true);
        assert!(gate.check(&metadata(None), Access::Write).is_ok());
    }

    #[test]
    fn swapped_tokens_apply_to_the_next_call() {
        let gate = Gate::new(Some(AuthTokens::new(["old"]).unwrap()), false);
        gate.set_tokens(Some(AuthTokens::new(["new"]).unwrap()));
        assert!(gate
            .check(&metadata(Some("Bearer old")), Access::Write)
            .is_err());
        assert!(gate
            .check(&metadata(Some("Bearer new")), Access::Write)
            .is_ok());
    }
}
