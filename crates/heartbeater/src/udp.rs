//! The heartbeat datagram: how nodes heartbeat each other over UDP.
//!
//! A node listens for UDP on the same address and port number as its gRPC
//! service. A monitoring node sends each peer a *ping*; the peer answers
//! with a *pong* that echoes the ping's token and carries the peer's own
//! identity and epoch, exactly what the unary `Heartbeat` RPC returns. One
//! datagram each way and no connection: per peer, the monitor keeps a few
//! dozen bytes instead of an HTTP/2 connection's buffers (see
//! `docs/PROTOCOL.md` for when the monitor falls back to gRPC).
//!
//! Layout, all integers big-endian:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 3 | magic `HBT` |
//! | 3 | 1 | version, 1 |
//! | 4 | 1 | kind: 1 ping, 2 pong |
//! | 5 | 3 | reserved, zero |
//! | 8 | 32 | token: chosen by the pinger, echoed verbatim in the pong |
//! | 40 | 8 | epoch of the sender |
//! | 48 | 2 | length of the identity, at most 256 |
//! | 50 | n | identity of the sender, UTF-8 |
//!
//! Anything else (wrong magic or version, unknown kind, short, trailing
//! bytes, invalid UTF-8) is not a heartbeat datagram and is dropped without
//! an answer, so a stray packet never provokes traffic.

use heartbeater_core::config::MAX_PEER_ID_BYTES;

const MAGIC: [u8; 3] = *b"HBT";
const VERSION: u8 = 1;
const HEADER: usize = 50;

/// The largest datagram this protocol produces.
pub const MAX_DATAGRAM: usize = HEADER + MAX_PEER_ID_BYTES;

/// Which way a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monitor to peer: "are you there?".
    Ping,
    /// Peer to monitor: "yes, and this is who I am".
    Pong,
}

/// One decoded heartbeat datagram, borrowing its identity from the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// Ping or pong.
    pub kind: Kind,
    /// Opaque to the responder; the pinger uses it to match the pong.
    pub token: [u8; 32],
    /// The sender's epoch.
    pub epoch: u64,
    /// The sender's identity.
    pub identity: &'a str,
}

/// Why bytes are not a heartbeat datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the fixed header or than the identity it announces.
    #[error("truncated datagram")]
    Truncated,
    /// Not this protocol, or a version this build does not speak.
    #[error("not a heartbeat datagram (magic or version)")]
    Foreign,
    /// A kind other than ping or pong.
    #[error("unknown datagram kind {0}")]
    UnknownKind(u8),
    /// The identity is longer than 256 bytes or not UTF-8, or bytes follow it.
    #[error("malformed identity")]
    BadIdentity,
}

impl<'a> Datagram<'a> {
    /// Parses `buf`, which must hold exactly one datagram.
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        if buf.len() < HEADER {
            return Err(DecodeError::Truncated);
        }
        if buf[0..3] != MAGIC || buf[3] != VERSION {
            return Err(DecodeError::Foreign);
        }
        let kind = match buf[4] {
            1 => Kind::Ping,
            2 => Kind::Pong,
            other => return Err(DecodeError::UnknownKind(other)),
        };
        let mut token = [0u8; 32];
        token.copy_from_slice(&buf[8..40]);
        let mut epoch = [0u8; 8];
        epoch.copy_from_slice(&buf[40..48]);
        let len = usize::from(u16::from_be_bytes([buf[48], buf[49]]));
        if len > MAX_PEER_ID_BYTES {
            return Err(DecodeError::BadIdentity);
        }
        let rest = &buf[HEADER..];
        if rest.len() < len {
            return Err(DecodeError::Truncated);
        }
        if rest.len() > len {
            return Err(DecodeError::BadIdentity);
        }
        let identity = std::str::from_utf8(rest).map_err(|_| DecodeError::BadIdentity)?;
        Ok(Self {
            kind,
            token,
            epoch: u64::from_be_bytes(epoch),
            identity,
        })
    }

    /// Replaces the contents of `out` with this datagram. An identity longer
    /// than 256 bytes is cut at a character boundary (a node's identity is
    /// validated to fit when the node is built).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut end = self.identity.len().min(MAX_PEER_ID_BYTES);
        while !self.identity.is_char_boundary(end) {
            end -= 1;
        }
        let identity = &self.identity.as_bytes()[..end];
        out.clear();
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(match self.kind {
            Kind::Ping => 1,
            Kind::Pong => 2,
        });
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&self.token);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        // `end` is at most 256, so it fits.
        out.extend_from_slice(&(end as u16).to_be_bytes());
        out.extend_from_slice(identity);
    }
}

/// What a peer does with a datagram it receives: if `buf` is a ping, writes
/// the pong that answers it (as `identity` at `epoch`) into `out` and
/// returns true. Anything else gets no answer.
pub fn answer(buf: &[u8], identity: &str, epoch: u64, out: &mut Vec<u8>) -> bool {
    match Datagram::decode(buf) {
        Ok(
            ping @ Datagram {
                kind: Kind::Ping, ..
            },
        ) => {
            Datagram {
                kind: Kind::Pong,
                token: ping.token,
                epoch,
                identity,
            }
            .encode(out);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping() -> Vec<u8> {
        let mut buf = Vec::new();
        Datagram {
            kind: Kind::Ping,
            token: [7; 32],
            epoch: 3,
            identity: "monitor",
        }
        .encode(&mut buf);
        buf
    }

    #[test]
    fn a_ping_is_answered_with_its_token_and_the_responders_identity() {
        let mut out = Vec::new();
        assert!(answer(&ping(), "peer-b", 9, &mut out));
        let pong = Datagram::decode(&out).unwrap();
        assert_eq!(
            pong,
            Datagram {
                kind: Kind::Pong,
                token: [7; 32],
                epoch: 9,
                identity: "peer-b"
            }
        );
    }

    #[test]
    fn a_pong_and_garbage_get_no_answer() {
        let mut out = Vec::new();
        let mut pong = Vec::new();
        assert!(answer(&ping(), "b", 1, &mut pong));
        assert!(!answer(&pong, "c", 1, &mut out));
        assert!(!answer(b"GET / HTTP/1.1\r\n", "c", 1, &mut out));
        assert!(!answer(&[], "c", 1, &mut out));
    }

    #[test]
    fn malformed_datagrams_are_typed_errors() {
        let good = ping();
        assert_eq!(Datagram::decode(&good[..20]), Err(DecodeError::Truncated));
        assert_eq!(
            Datagram::decode(&good[..good.len() - 1]),
            Err(DecodeError::Truncated)
        );
        let mut long = good.clone();
        long.push(b'x');
        assert_eq!(Datagram::decode(&long), Err(DecodeError::BadIdentity));
        let mut foreign = good.clone();
        foreign[3] = 2;
        assert_eq!(Datagram::decode(&foreign), Err(DecodeError::Foreign));
        let mut kind = good.clone();
        kind[4] = 9;
        assert_eq!(Datagram::decode(&kind), Err(DecodeError::UnknownKind(9)));
        let mut utf8 = good.clone();
        let last = utf8.len() - 1;
        utf8[last] = 0xff;
        assert_eq!(Datagram::decode(&utf8), Err(DecodeError::BadIdentity));
        let mut huge = good;
        huge[48..50].copy_from_slice(&300u16.to_be_bytes());
        assert_eq!(Datagram::decode(&huge), Err(DecodeError::BadIdentity));
    }

    #[test]
    fn an_overlong_identity_is_cut_at_a_character_boundary() {
        let identity = "é".repeat(200);
        let mut buf = Vec::new();
        Datagram {
            kind: Kind::Pong,
            token: [0; 32],
            epoch: 1,
            identity: &identity,
        }
        .encode(&mut buf);
        let back = Datagram::decode(&buf).unwrap();
        assert_eq!(back.identity.len(), 256);
        assert!(buf.len() <= MAX_DATAGRAM);
    }
}
