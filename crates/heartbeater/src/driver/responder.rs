//! The ping responder: how a node answers the heartbeat datagrams of the
//! nodes that monitor it.
//!
//! The answer is one pong to the address the ping came from, never larger
//! than the ping (so a spoofed source address buys an attacker no
//! amplification), signed with the cluster key when the node has one.
//! Answering costs no state: a responder keeps nothing per pinger.

use std::net::SocketAddr;

use heartbeater_core::datagram::{Datagram, NoAnswer};
use heartbeater_core::Keyring;
use tokio::net::UdpSocket;

use crate::node::counters::Counters;

/// Answers pings as one node.
pub(crate) struct Responder {
    identity: String,
    epoch: u64,
    out: Vec<u8>,
}

impl Responder {
    pub(crate) fn new(identity: String, epoch: u64) -> Self {
        Self {
            identity,
            epoch,
            out: Vec::with_capacity(heartbeater_core::datagram::MAX_DATAGRAM),
        }
    }

    /// Answers `ping`, which arrived from `from` in `ping_len` bytes.
    pub(crate) fn answer(
        &mut self,
        ping: &Datagram<'_>,
        ping_len: usize,
        from: SocketAddr,
        keyring: Option<&Keyring>,
        socket: &UdpSocket,
        counters: &Counters,
    ) {
        match ping.write_pong(ping_len, &self.identity, self.epoch, keyring, &mut self.out) {
            Ok(()) => {}
            Err(NoAnswer::TooShort { .. }) => {
                Counters::add(&counters.not_answered_too_short);
                return;
            }
            Err(_) => return,
        }
        // Counted before the send, so whoever holds the pong already sees it
        // counted. A full send buffer drops the answer (uncounted again); the
        // pinger counts a miss and tries again.
        Counters::add(&counters.answered);
        if socket.try_send_to(&self.out, from).is_err() {
            counters
                .answered
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
