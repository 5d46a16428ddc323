//! Reading the node's datagram socket so that the driver knows when it lost
//! replies itself: a pong the kernel dropped because the node's own socket
//! buffer was full (the node fell behind) is the node's trouble, never
//! evidence against a peer.
//!
//! On Linux the socket reports, with each datagram, how many it has dropped
//! since it was opened (`SO_RXQ_OVFL`); elsewhere no drop is ever seen, and
//! a larger receive buffer is the only defence.

use std::net::SocketAddr;

use tokio::net::UdpSocket;

/// The receive buffer the node asks for: room for the replies of a few
/// thousand heartbeats in flight, however late the driver reads them. The
/// kernel caps it (`net.core.rmem_max`); it costs memory only when full.
const RECEIVE_BUFFER: usize = 8 << 20;

/// Reads datagrams and notices drops.
pub(crate) struct Receiver {
    /// Room for one datagram's control messages (the drop counter).
    #[cfg(target_os = "linux")]
    cmsg: Vec<u8>,
    /// The socket's drop counter as last seen.
    drops: u32,
}

/// Datagrams read per system call: a node under load finds dozens of
/// replies waiting at each wake-up, and one `recvmmsg` takes them all.
pub(crate) const BATCH: usize = 32;

/// Room for one datagram: one byte more than the largest a node accepts, so
/// that a longer one shows as too long instead of fitting once cut.
const SLOT: usize = heartbeater_core::datagram::MAX_DATAGRAM + 1;

/// Where one system call's datagrams land: [`BATCH`] buffers and what was
/// read into each. Allocated once per driver.
pub(crate) struct Batch {
    bufs: Vec<[u8; SLOT]>,
    got: Vec<Received>,
    /// The read that filled it found the socket empty after these.
    drained: bool,
}

/// Datagrams read one `recvmsg` each before a batch (see
/// [`Receiver::try_recv_many`]).
#[cfg(target_os = "linux")]
const SINGLES: usize = 2;

impl Default for Batch {
    fn default() -> Self {
        Self {
            bufs: vec![[0; SLOT]; BATCH],
            got: Vec::with_capacity(BATCH),
            drained: false,
        }
    }
}

impl Batch {
    /// Whether the read that filled it found the socket empty after these.
    pub(crate) fn drained(&self) -> bool {
        self.drained
    }

    /// Datagram `i` of the last read, with its bytes.
    pub(crate) fn get(&self, i: usize) -> Option<(&Received, &[u8])> {
        let r = self.got.get(i)?;
        let buf = self.bufs.get(i)?;
        Some((r, &buf[..r.len.min(SLOT)]))
    }
}

/// One datagram read.
pub(crate) struct Received {
    pub(crate) len: usize,
    pub(crate) from: SocketAddr,
    /// The socket dropped datagrams since the one read before was queued
    /// (the count comes with the first datagram queued after the drops).
    pub(crate) lost_before: bool,
}

impl Receiver {
    /// Sets `socket` up: a larger receive buffer, and drop counts where the
    /// system gives them. Neither is essential: a failure is logged, not
    /// fatal.
    pub(crate) fn new(socket: &UdpSocket) -> Self {
        let sock = socket2::SockRef::from(socket);
        if let Err(e) = sock.set_recv_buffer_size(RECEIVE_BUFFER) {
            tracing::debug!(error = %e, "cannot enlarge the datagram receive buffer");
        }
        #[cfg(target_os = "linux")]
        if let Err(e) = nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::RxqOvfl, &1)
        {
            tracing::debug!(error = %e, "cannot count datagram drops");
        }
        Self {
            #[cfg(target_os = "linux")]
            cmsg: nix::cmsg_space!(u32),
            drops: 0,
        }
    }

    /// Reads up to [`BATCH`] datagrams into `batch` without waiting, and
    /// says in [`Batch::drained`] whether it found the socket empty after
    /// them (everything queued before the read was read).
    ///
    /// The first two come one `recvmsg` each: a node that is keeping up
    /// finds one reply per wake-up, and a second read that finds nothing
    /// costs less than setting up a batch. Only a socket with two or more
    /// waiting, a busy one, is read with one `recvmmsg` for the rest.
    #[cfg(target_os = "linux")]
    pub(crate) fn try_recv_many(
        &mut self,
        socket: &UdpSocket,
        batch: &mut Batch,
    ) -> std::io::Result<usize> {
        batch.got.clear();
        batch.drained = false;
        for i in 0..SINGLES {
            let Some(buf) = batch.bufs.get_mut(i) else {
                break;
            };
            match self.try_recv_one(socket, buf) {
                Ok(r) => batch.got.push(r),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    batch.drained = true;
                    return if batch.got.is_empty() {
                        Err(e)
                    } else {
                        Ok(batch.got.len())
                    };
                }
                // An error after datagrams were read: they are handled
                // first, and the error comes again with the next read.
                Err(_) if !batch.got.is_empty() => return Ok(batch.got.len()),
                Err(e) => return Err(e),
            }
        }
        match self.try_recv_rest(socket, batch) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => batch.drained = true,
            // As above: reported by the next read.
            Err(_) => {}
        }
        Ok(batch.got.len())
    }

    /// One datagram into `buf`, one `recvmsg`.
    #[cfg(target_os = "linux")]
    fn try_recv_one(&mut self, socket: &UdpSocket, buf: &mut [u8]) -> std::io::Result<Received> {
        use std::os::fd::AsRawFd;

        use nix::sys::socket::{recvmsg, MsgFlags, SockaddrStorage};

        let fd = socket.as_raw_fd();
        let cmsg = &mut self.cmsg;
        let (len, from, counter) = socket.try_io(tokio::io::Interest::READABLE, || {
            let mut iov = [std::io::IoSliceMut::new(buf)];
            let msg = recvmsg::<SockaddrStorage>(
                fd,
                &mut iov,
                Some(cmsg.as_mut_slice()),
                MsgFlags::MSG_DONTWAIT,
            )
            .map_err(std::io::Error::from)?;
            let counter = drop_counter(msg.cmsgs().ok());
            Ok((
                msg.bytes,
                msg.address.as_ref().and_then(socket_addr),
                counter,
            ))
        })?;
        Ok(self.received(len, from, counter))
    }

    /// Fills the rest of `batch` with one `recvmmsg`. `WouldBlock` if the
    /// socket had nothing more; fewer than asked also means it is empty.
    #[cfg(target_os = "linux")]
    fn try_recv_rest(&mut self, socket: &UdpSocket, batch: &mut Batch) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;

        use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};

        let fd = socket.as_raw_fd();
        let start = batch.got.len();
        let want = BATCH.saturating_sub(start);
        let bufs = batch.bufs.get_mut(start..).unwrap_or_default();
        // Made for each call: they hold raw pointers (a driver task keeping
        // them across an await would not be `Send`), and the kernel shrinks
        // their control-message room as it fills it.
        let mut headers =
            MultiHeaders::<SockaddrStorage>::preallocate(want, Some(nix::cmsg_space!(u32)));
        let mut read: Vec<(usize, Option<SocketAddr>, u32)> = Vec::with_capacity(want);
        socket.try_io(tokio::io::Interest::READABLE, || {
            let mut iovs: Vec<[std::io::IoSliceMut<'_>; 1]> = bufs
                .iter_mut()
                .map(|b| [std::io::IoSliceMut::new(&mut b[..])])
                .collect();
            let results = recvmmsg(
                fd,
                &mut headers,
                iovs.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map_err(std::io::Error::from)?;
            for msg in results {
                let counter = drop_counter(msg.cmsgs().ok());
                read.push((
                    msg.bytes,
                    msg.address.as_ref().and_then(socket_addr),
                    counter,
                ));
            }
            Ok(())
        })?;
        let drained = read.len() < want;
        for (len, from, counter) in read {
            let r = self.received(len, from, counter);
            batch.got.push(r);
        }
        batch.drained = drained;
        Ok(())
    }

    /// A datagram read, with the socket's drop counter as it came with it.
    /// One without a sender (UDP always names one) gets port 0, and the
    /// driver drops it.
    #[cfg(target_os = "linux")]
    fn received(&mut self, len: usize, from: Option<SocketAddr>, counter: u32) -> Received {
        let lost_before = counter != self.drops;
        self.drops = counter;
        Received {
            len,
            from: from.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            lost_before,
        }
    }

    /// Reads up to [`BATCH`] datagrams into `batch`, one system call each,
    /// without waiting.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn try_recv_many(
        &mut self,
        socket: &UdpSocket,
        batch: &mut Batch,
    ) -> std::io::Result<usize> {
        batch.got.clear();
        batch.drained = false;
        for buf in batch.bufs.iter_mut() {
            match socket.try_recv_from(&mut buf[..]) {
                Ok((len, from)) => batch.got.push(Received {
                    len,
                    from,
                    lost_before: false,
                }),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && !batch.got.is_empty() => {
                    batch.drained = true;
                    break;
                }
                Err(_) if !batch.got.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        Ok(batch.got.len())
    }

    /// Datagrams the socket has dropped since it was opened, as last seen.
    pub(crate) fn drops(&self) -> u32 {
        self.drops
    }
}

/// The drop counter among a datagram's control messages; none means
/// nothing dropped since the socket opened.
#[cfg(target_os = "linux")]
fn drop_counter<'a>(
    cmsgs: Option<impl Iterator<Item = nix::sys::socket::ControlMessageOwned> + 'a>,
) -> u32 {
    let mut counter = 0;
    for c in cmsgs.into_iter().flatten() {
        if let nix::sys::socket::ControlMessageOwned::RxqOvfl(n) = c {
            counter = n;
        }
    }
    counter
}

#[cfg(target_os = "linux")]
fn socket_addr(a: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(std::net::SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(std::net::SocketAddrV6::from(*v6)))
}

/// When the socket dropped replies: the spans between the read before a
/// drop was seen and the read that saw it. Kept few and merged: two spans
/// merged only widen the doubt, which spares peers, never convicts them.
#[derive(Debug, Default)]
pub(crate) struct Losses {
    spans: std::collections::VecDeque<(std::time::Instant, std::time::Instant)>,
}

/// Drops seen less than this apart belong to one run.
const BREAK: std::time::Duration = std::time::Duration::from_millis(50);

/// A run of drops this long is no burst.
const SUSTAINED: std::time::Duration = std::time::Duration::from_millis(500);

/// Spans kept before the oldest two are merged.
const MAX_SPANS: usize = 64;

impl Losses {
    /// Replies were dropped at some time between `from` and `to`.
    pub(crate) fn record(&mut self, from: std::time::Instant, to: std::time::Instant) {
        if let Some(last) = self.spans.back_mut() {
            // Drops a moment apart are one run of drops.
            if from <= last.1 + BREAK {
                last.1 = last.1.max(to);
                return;
            }
        }
        self.spans.push_back((from, to));
        if self.spans.len() > MAX_SPANS {
            if let Some((first, _)) = self.spans.pop_front() {
                if let Some(next) = self.spans.front_mut() {
                    next.0 = first;
                }
            }
        }
    }

    /// Whether the silence of a heartbeat sent at `sent`, due by
    /// `deadline`, is excused: its reply may have been among the dropped,
    /// and the drops came in a burst. Drops without end (a flood, or an
    /// overload that never lets up) excuse nothing: the node then judges on
    /// what it did read, rather than never convicting anyone.
    pub(crate) fn excuse(&self, sent: std::time::Instant, deadline: std::time::Instant) -> bool {
        let sustained = self
            .spans
            .back()
            .is_some_and(|&(from, to)| to.saturating_duration_since(from) >= SUSTAINED);
        !sustained && self.overlaps(sent, deadline)
    }

    /// Whether a reply to a heartbeat sent at `sent`, due by `deadline`,
    /// may have been among the dropped.
    pub(crate) fn overlaps(&self, sent: std::time::Instant, deadline: std::time::Instant) -> bool {
        self.spans
            .iter()
            .any(|&(from, to)| from < deadline && to > sent)
    }

    /// Forgets spans that ended before `before`: no heartbeat in flight
    /// was sent that long ago.
    pub(crate) fn forget_before(&mut self, before: std::time::Instant) {
        while self.spans.front().is_some_and(|s| s.1 < before) {
            self.spans.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_heartbeat_is_in_doubt_only_if_a_loss_fell_between_its_sending_and_its_deadline() {
        let t0 = Instant::now();
        let mut l = Losses::default();
        l.record(t0 + ms(10), t0 + ms(20));
        assert!(l.overlaps(t0, t0 + ms(15)));
        assert!(l.overlaps(t0 + ms(15), t0 + ms(30)));
        assert!(!l.overlaps(t0 + ms(20), t0 + ms(30)), "sent after the loss");
        assert!(!l.overlaps(t0, t0 + ms(10)), "due before the loss");
        l.forget_before(t0 + ms(21));
        assert!(!l.overlaps(t0, t0 + ms(15)));
    }

    #[tokio::test]
    async fn one_read_takes_many_datagrams_each_with_its_bytes_and_sender() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut receiver = Receiver::new(&socket);
        let to = socket.local_addr().unwrap();
        let senders: Vec<_> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let total = BATCH + 5;
        for i in 0..total {
            senders[i % 3].send_to(&[i as u8; 9], to).unwrap();
        }
        socket.readable().await.unwrap();
        let mut batch = Batch::default();
        let mut seen = Vec::new();
        while seen.len() < total {
            let n = receiver.try_recv_many(&socket, &mut batch).unwrap();
            assert!(n <= BATCH);
            for i in 0..n {
                let (r, bytes) = batch.get(i).unwrap();
                let k = seen.len();
                assert_eq!(bytes, &[k as u8; 9], "datagram {k} in order, whole");
                assert_eq!(r.from, senders[k % 3].local_addr().unwrap());
                seen.push(k);
            }
        }
        let more = receiver.try_recv_many(&socket, &mut batch);
        assert_eq!(more.unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_read_after_the_socket_dropped_datagrams_says_so() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut receiver = Receiver::new(&socket);
        // A buffer too small for what comes: the kernel drops the rest.
        socket2::SockRef::from(&socket)
            .set_recv_buffer_size(2048)
            .unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = socket.local_addr().unwrap();
        sender.send_to(b"first", to).unwrap();
        socket.readable().await.unwrap();
        let mut batch = Batch::default();
        assert_eq!(receiver.try_recv_many(&socket, &mut batch).unwrap(), 1);
        let (first, bytes) = batch.get(0).unwrap();
        assert_eq!(bytes, b"first");
        assert!(!first.lost_before, "nothing dropped yet");
        assert_eq!(first.from, sender.local_addr().unwrap());
        for _ in 0..200 {
            sender.send_to(&[7u8; 60], to).unwrap();
        }
        // The first read found the socket empty after "first": the runtime
        // learns of what came since as a driver would, by waiting.
        socket.readable().await.unwrap();
        let mut lost = false;
        while receiver.try_recv_many(&socket, &mut batch).is_ok() {
            for i in 0..BATCH {
                lost |= batch.get(i).is_some_and(|(r, _)| r.lost_before);
            }
        }
        // What was queued before the drops does not carry them: the next
        // datagram queued after them does.
        assert!(!lost, "seen before any datagram came after the drops");
        sender.send_to(b"after", to).unwrap();
        socket.readable().await.unwrap();
        assert_eq!(receiver.try_recv_many(&socket, &mut batch).unwrap(), 1);
        let (after, _) = batch.get(0).unwrap();
        assert!(after.lost_before, "the drops were seen");
        assert!(receiver.drops() > 0);
    }

    #[test]
    fn drops_without_end_excuse_nothing() {
        let t0 = Instant::now();
        let mut l = Losses::default();
        l.record(t0, t0 + ms(5));
        assert!(l.excuse(t0, t0 + ms(50)), "a burst");
        for i in 1..200u64 {
            l.record(t0 + ms(5 * i), t0 + ms(5 * i + 5));
        }
        assert!(l.overlaps(t0 + ms(900), t0 + ms(950)));
        assert!(!l.excuse(t0 + ms(900), t0 + ms(950)), "a flood");
    }

    #[test]
    fn spans_are_kept_few_and_merged_only_wider() {
        let t0 = Instant::now();
        let mut l = Losses::default();
        for i in 0..1000u64 {
            l.record(t0 + ms(10 * i), t0 + ms(10 * i + 1));
        }
        assert!(l.spans.len() <= MAX_SPANS);
        // Every loss is still covered.
        for i in 0..1000u64 {
            let at = t0 + ms(10 * i);
            assert!(l.overlaps(at, at + ms(1)), "loss {i}");
        }
    }
}
