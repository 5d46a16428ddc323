//! What the node knows of a gRPC connection beyond what its client says:
//! who the client is, as far as the connection proves it, and whether the
//! connection is in use. The listener fills it in at accept; handlers and
//! layers read it from each request.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::server::TcpConnectInfo;

/// What a request's handler knows of the connection it came on: the
/// addresses, and who the client is beyond what it claims in a message.
#[derive(Clone, Debug)]
pub(crate) struct ConnInfo {
    /// Local and remote addresses.
    pub(crate) tcp: TcpConnectInfo,
    /// The client as far as the connection proves it.
    pub(crate) client: Claimant,
    /// Its calls in progress, and when it last had one.
    pub(crate) activity: Arc<Activity>,
}

/// Who a client is, as far as its connection proves it: with mutual TLS its
/// certificate (a BLAKE3 digest of the DER bytes), otherwise only the
/// address it connects from. Identities a client merely states (a topic
/// subscriber's instance id) are bound to this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Claimant {
    /// The end-entity certificate the client authenticated with.
    Certificate([u8; 32]),
    /// The IP address of a client without a certificate.
    Address(std::net::IpAddr),
}

impl std::fmt::Display for Claimant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Claimant::Certificate(digest) => {
                write!(f, "certificate ")?;
                digest[..8].iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
            Claimant::Address(ip) => write!(f, "address {ip}"),
        }
    }
}

/// What a connection has been used for lately, shared by the connection
/// and the calls on it.
#[derive(Debug)]
pub(crate) struct Activity {
    base: Instant,
    calls: AtomicUsize,
    /// Milliseconds after `base` when a call last started or ended.
    last_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            calls: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Release);
    }

    /// How much longer the connection may go without a call before it has
    /// been idle for `idle`: `None` once it has, the whole of `idle` while
    /// a call is in progress.
    pub(crate) fn idle_left(&self, idle: Duration) -> Option<Duration> {
        if self.calls.load(Ordering::Acquire) > 0 {
            return Some(idle);
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Acquire));
        let quiet = self.base.elapsed().saturating_sub(last);
        idle.checked_sub(quiet).filter(|left| !left.is_zero())
    }

    pub(crate) fn begin(self: &Arc<Self>) -> CallGuard {
        self.calls.fetch_add(1, Ordering::AcqRel);
        self.touch();
        CallGuard(self.clone())
    }
}

/// One call in progress; the call ends when this is dropped.
#[derive(Debug)]
pub(crate) struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_without_a_call_for_the_whole_timeout() {
        let idle = Duration::from_secs(300);
        let activity = Activity::new();
        assert_eq!(activity.idle_left(idle), Some(idle));
        let call = activity.begin();
        tokio::time::advance(idle * 2).await;
        assert_eq!(activity.idle_left(idle), Some(idle), "a call in progress");
        drop(call);
        tokio::time::advance(idle - Duration::from_secs(1)).await;
        assert_eq!(
            activity.idle_left(idle),
            Some(Duration::from_secs(1)),
            "the call ended a while ago"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(activity.idle_left(idle), None);
    }
}
