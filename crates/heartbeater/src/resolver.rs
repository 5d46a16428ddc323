//! Name lookups for peers registered by host name, on threads of their own.
//!
//! The system resolver (`getaddrinfo`) blocks, and a timeout around it does
//! not end it: with `tokio::net::lookup_host` each slow lookup keeps one of
//! the runtime's blocking threads for as long as the resolver takes, so many
//! names under a slow domain would fill the pool that RocksDB commits and
//! topic handlers also run on. Here lookups run on a few threads that do
//! nothing else; a caller waits at most its timeout, a lookup whose caller
//! has given up is skipped, and when the queue is full a lookup fails at
//! once instead of waiting.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::oneshot;

/// Threads doing lookups, per process: at most this many lookups are in the
/// system resolver at once, whatever it does.
pub(crate) const LOOKUP_THREADS: usize = 4;

/// Lookups waiting for a thread, per process.
pub(crate) const LOOKUP_QUEUE: usize = 1024;

/// Why a name gave no address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LookupError {
    /// The resolver answered: no such name, or no address for it.
    #[error("{0}")]
    Failed(String),
    /// No answer within the caller's timeout.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// Too many lookups are waiting already.
    #[error("{LOOKUP_QUEUE} name lookups are waiting already")]
    Busy,
}

type LookupFn = dyn Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + Sync;

struct Job {
    host: String,
    port: u16,
    answer: oneshot::Sender<Result<Vec<SocketAddr>, String>>,
}

/// A pool of lookup threads; [`Resolver::system`] is the process's.
#[derive(Clone)]
pub(crate) struct Resolver {
    jobs: SyncSender<Job>,
}

impl Resolver {
    /// The process-wide resolver over the system's `getaddrinfo`.
    pub(crate) fn system() -> &'static Resolver {
        static SYSTEM: OnceLock<Resolver> = OnceLock::new();
        SYSTEM.get_or_init(|| {
            Resolver::with(
                Arc::new(|host: &str, port: u16| {
                    (host, port).to_socket_addrs().map(|a| a.collect())
                }),
                LOOKUP_THREADS,
                LOOKUP_QUEUE,
            )
        })
    }

    /// A resolver answering with `lookup` on `threads` threads, with
    /// `queue` lookups waiting at most.
    fn with(lookup: Arc<LookupFn>, threads: usize, queue: usize) -> Resolver {
        let (jobs, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..threads {
            let (rx, lookup) = (rx.clone(), lookup.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("heartbeater-dns-{n}"))
                .spawn(move || loop {
                    let job = {
                        let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
                        match rx.recv() {
                            Ok(job) => job,
                            // Every sender is gone: the resolver is.
                            Err(_) => return,
                        }
                    };
                    if job.answer.is_closed() {
                        // Its caller gave up while it waited.
                        continue;
                    }
                    let result = lookup(&job.host, job.port).map_err(|e| e.to_string());
                    let _ = job.answer.send(result);
                });
            if let Err(e) = spawned {
                // Fewer threads is slower, not wrong; none at all means
                // every lookup times out, which the callers report.
                tracing::warn!(error = %e, "cannot start a name lookup thread");
            }
        }
        Resolver { jobs }
    }

    /// The addresses of `host:port`, waiting at most `timeout`. An IP
    /// address is its own answer, without a lookup.
    pub(crate) async fn lookup(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Vec<SocketAddr>, LookupError> {
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let (answer, answered) = oneshot::channel();
        let job = Job {
            host: host.to_owned(),
            port,
            answer,
        };
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(LookupError::Busy),
            Err(TrySendError::Disconnected(_)) => {
                return Err(LookupError::Failed("no name lookup thread".into()))
            }
        }
        match tokio::time::timeout(timeout, answered).await {
            Ok(Ok(Ok(addrs))) if !addrs.is_empty() => Ok(addrs),
            Ok(Ok(Ok(_))) => Err(LookupError::Failed("the name has no address".into())),
            Ok(Ok(Err(e))) => Err(LookupError::Failed(e)),
            Ok(Err(_dropped)) => Err(LookupError::Failed("no name lookup thread".into())),
            Err(_elapsed) => Err(LookupError::TimedOut(timeout)),
        }
    }
}

/// The resolver as the HTTP connector of gRPC channels asks for it, so
/// that a channel to a peer registered by name looks it up here too.
#[derive(Clone, Copy)]
pub(crate) struct ConnectorDns {
    /// How long one lookup may take.
    pub(crate) timeout: Duration,
}

impl tower_service::Service<hyper_util::client::legacy::connect::dns::Name> for ConnectorDns {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = LookupError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, LookupError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), LookupError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        let timeout = self.timeout;
        Box::pin(async move {
            // The connector puts the URI's port on each address.
            Resolver::system()
                .lookup(name.as_str(), 0, timeout)
                .await
                .map(Vec::into_iter)
        })
    }
}

/// An HTTP connector for gRPC channels whose names are looked up by
/// [`Resolver::system`], with the settings tonic gives its own.
pub(crate) fn http_connector(
    connect_timeout: Duration,
) -> hyper_util::client::legacy::connect::HttpConnector<ConnectorDns> {
    let mut http =
        hyper_util::client::legacy::connect::HttpConnector::new_with_resolver(ConnectorDns {
            timeout: connect_timeout,
        });
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A resolver for which every name under `slow.example` takes `stall`
    /// to answer, like a domain whose servers do not respond.
    fn slow_domain(stall: Duration, in_lookup: Arc<AtomicUsize>) -> Resolver {
        Resolver::with(
            Arc::new(move |host: &str, port: u16| {
                if host.ends_with("slow.example") {
                    in_lookup.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(stall);
                    in_lookup.fetch_sub(1, Ordering::SeqCst);
                    return Err(std::io::Error::other("timed out"));
                }
                Ok(vec![SocketAddr::from(([192, 0, 2, 1], port))])
            }),
            2,
            8,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_domain_takes_its_threads_and_no_others() {
        let in_lookup = Arc::new(AtomicUsize::new(0));
        let resolver = slow_domain(Duration::from_secs(2), in_lookup.clone());
        let timeout = Duration::from_millis(300);
        // Forty names under the slow domain at once.
        let lookups: Vec<_> = (0..40)
            .map(|n| {
                let resolver = resolver.clone();
                tokio::spawn(async move {
                    resolver
                        .lookup(&format!("n{n}.slow.example"), 80, timeout)
                        .await
                })
            })
            .collect();
        // The runtime's blocking pool is free meanwhile (RocksDB commits
        // run there).
        tokio::time::sleep(Duration::from_millis(50)).await;
        let blocking = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::task::spawn_blocking(|| "committed"),
        )
        .await;
        assert!(matches!(blocking, Ok(Ok("committed"))), "{blocking:?}");
        assert!(in_lookup.load(Ordering::SeqCst) <= 2, "only its threads");
        let mut timed_out = 0;
        let mut busy = 0;
        for lookup in lookups {
            match lookup.await.unwrap() {
                Err(LookupError::TimedOut(t)) => {
                    assert_eq!(t, timeout);
                    timed_out += 1;
                }
                Err(LookupError::Busy) => busy += 1,
                other => panic!("{other:?}"),
            }
        }
        // Two in the resolver and eight queued (give or take the two the
        // threads take while the queue fills): the rest refused at once.
        assert!((8..=10).contains(&timed_out), "{timed_out} timed out");
        assert_eq!(busy, 40 - timed_out);
    }

    #[tokio::test]
    async fn addresses_need_no_lookup_and_names_get_their_answer() {
        let in_lookup = Arc::new(AtomicUsize::new(0));
        let resolver = slow_domain(Duration::from_secs(60), in_lookup);
        let t = Duration::from_secs(5);
        assert_eq!(
            resolver.lookup("10.0.0.1", 7, t).await,
            Ok(vec![SocketAddr::from(([10, 0, 0, 1], 7))])
        );
        assert_eq!(
            resolver.lookup("[::1]", 7, t).await,
            Ok(vec!["[::1]:7".parse().unwrap()])
        );
        assert_eq!(
            resolver.lookup("db-2.internal", 7, t).await,
            Ok(vec![SocketAddr::from(([192, 0, 2, 1], 7))])
        );
    }
}
