//! A relay of the tests' own, for delay and jitter (this kernel has no
//! `netem`): in the current network namespace or in a named one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// A UDP and TCP relay on one port of 127.0.0.1 (in a network namespace,
/// or this one) to `upstream`, each datagram and chunk delayed by `delay`
/// and a random 0..`jitter` more: a slow or jittery link, since this
/// kernel has no `netem`. Stops on drop.
pub struct Relay {
    pub addr: SocketAddr,
    pub relayed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    pub fn start(
        ns: Option<&str>,
        upstream: SocketAddr,
        delay: Duration,
        jitter: Duration,
    ) -> Relay {
        let stop = Arc::new(AtomicBool::new(false));
        let relayed = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready) = mpsc::channel();
        let ns = ns.map(str::to_owned);
        let link = Link { delay, jitter };
        let (stop2, relayed2) = (stop.clone(), relayed.clone());
        // Sockets belong to the namespace of the thread that creates them,
        // and threads inherit it from the thread that spawns them: this
        // thread enters the namespace, and everything it starts is in it.
        std::thread::spawn(move || {
            if let Some(ns) = &ns {
                enter_namespace(ns);
            }
            let (tcp, udp) = bind_pair();
            let addr = tcp.local_addr().expect("relay address");
            ready_tx.send(addr).expect("ready");
            let udp_stop = stop2.clone();
            let udp_relayed = relayed2.clone();
            std::thread::spawn(move || relay_udp(udp, upstream, link, udp_stop, udp_relayed));
            tcp.set_nonblocking(true).expect("nonblocking");
            while !stop2.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((client, _)) => {
                        let Ok(server) = TcpStream::connect(upstream) else {
                            continue;
                        };
                        client.set_nonblocking(false).expect("blocking");
                        for (from, to) in [
                            (
                                client.try_clone().expect("clone"),
                                server.try_clone().expect("clone"),
                            ),
                            (server, client),
                        ] {
                            let (stop, relayed) = (stop2.clone(), relayed2.clone());
                            std::thread::spawn(move || pump(from, to, link, stop, relayed));
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        let addr = ready
            .recv_timeout(Duration::from_secs(5))
            .expect("relay up");
        Relay {
            addr,
            relayed,
            stop,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn enter_namespace(ns: &str) {
    use std::os::fd::AsFd;
    let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("namespace file");
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .expect("setns into the namespace");
}

/// The delay of one link, each way.
#[derive(Debug, Clone, Copy)]
struct Link {
    delay: Duration,
    jitter: Duration,
}

impl Link {
    /// `delay` and a random share of `jitter`, from a small xorshift:
    /// delays need no more than "varied".
    fn next(&self, state: &mut u64) -> Duration {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let max = self.jitter.as_micros().max(1) as u64;
        self.delay + Duration::from_micros(*state % max)
    }
}

/// A TCP listener and a UDP socket on the same free port of 127.0.0.1.
fn bind_pair() -> (TcpListener, UdpSocket) {
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("relay tcp");
        let port = tcp.local_addr().expect("relay port").port();
        if let Ok(udp) = UdpSocket::bind(("127.0.0.1", port)) {
            return (tcp, udp);
        }
    }
    panic!("no port free for both TCP and UDP");
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(1);
    u64::from(nanos) | 1
}

/// Copies one direction of a TCP connection, each chunk delayed, in order:
/// a reader stamps each chunk with its due time (never before the one
/// ahead of it) and a writer sends it then, so that the delay is latency,
/// not a cap on throughput.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    link: Link,
    stop: Arc<AtomicBool>,
    relayed: Arc<AtomicU64>,
) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        for (due, bytes) in rx {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&bytes).is_err() {
                break;
            }
            relayed.fetch_add(1, Ordering::Relaxed);
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
    let mut rng = seed();
    let mut last_due = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    from.set_read_timeout(Some(Duration::from_millis(200))).ok();
    while !stop.load(Ordering::Relaxed) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                last_due = last_due.max(Instant::now() + link.next(&mut rng));
                if tx.send((last_due, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    drop(tx);
    let _ = writer.join();
}

/// Relays datagrams between clients of `listen` and `upstream`, one
/// upstream socket per client, each datagram delayed on its own.
fn relay_udp(
    listen: UdpSocket,
    upstream: SocketAddr,
    link: Link,
    stop: Arc<AtomicBool>,
    relayed: Arc<AtomicU64>,
) {
    let listen = Arc::new(listen);
    let (delay_tx, delay_rx) = mpsc::channel::<(Instant, Arc<UdpSocket>, SocketAddr, Vec<u8>)>();
    let sender_stop = stop.clone();
    std::thread::spawn(move || {
        let mut due: Vec<(Instant, Arc<UdpSocket>, SocketAddr, Vec<u8>)> = Vec::new();
        while !sender_stop.load(Ordering::Relaxed) {
            let wait = due
                .iter()
                .map(|d| d.0)
                .min()
                .map_or(Duration::from_millis(50), |t| {
                    t.saturating_duration_since(Instant::now())
                });
            if let Ok(item) = delay_rx.recv_timeout(wait) {
                due.push(item);
            }
            let now = Instant::now();
            due.retain(|(at, socket, to, bytes)| {
                if *at <= now {
                    let _ = socket.send_to(bytes, to);
                    false
                } else {
                    true
                }
            });
        }
    });
    listen
        .set_read_timeout(Some(Duration::from_millis(50)))
        .ok();
    let mut rng = seed();
    let mut clients: std::collections::HashMap<SocketAddr, Arc<UdpSocket>> = Default::default();
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, client)) = listen.recv_from(&mut buf) {
            let up = clients.entry(client).or_insert_with(|| {
                let up = Arc::new(UdpSocket::bind("0.0.0.0:0").expect("upstream socket"));
                // Answers from upstream go back to this client.
                let (up2, listen2, tx, stop) =
                    (up.clone(), listen.clone(), delay_tx.clone(), stop.clone());
                let mut rng = seed();
                std::thread::spawn(move || {
                    up2.set_read_timeout(Some(Duration::from_millis(50))).ok();
                    let mut buf = vec![0u8; 64 * 1024];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((n, _)) = up2.recv_from(&mut buf) {
                            let at = Instant::now() + link.next(&mut rng);
                            let _ = tx.send((at, listen2.clone(), client, buf[..n].to_vec()));
                        }
                    }
                });
                up
            });
            let at = Instant::now() + link.next(&mut rng);
            let _ = delay_tx.send((at, up.clone(), upstream, buf[..n].to_vec()));
            relayed.fetch_add(1, Ordering::Relaxed);
        }
    }
}
