//! The heartbeat datagram: how nodes heartbeat each other over UDP.
//!
//! A node listens for UDP on the same address and port number as its gRPC
//! service. A monitoring node sends each peer a *ping*; the peer answers
//! with a *pong* that echoes the ping's token and carries the peer's own
//! identity and epoch, exactly what the unary `Heartbeat` RPC returns.
//!
//! Layout (version 2), all integers big-endian:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 3 | magic `HBT` |
//! | 3 | 1 | version, 2 |
//! | 4 | 1 | kind: 1 ping, 2 pong |
//! | 5 | 1 | flags: bit 0 set when authenticated; the others zero |
//! | 6 | 2 | length `n` of the identity, at most 256 |
//! | 8 | 32 | token: chosen by the pinger, echoed verbatim in the pong |
//! | 40 | 8 | epoch of the sender |
//! | 48 | n | identity of the sender, UTF-8 |
//! | 48 + n | p | pings only: zero padding |
//! | end - 20 | 4 | authenticated only: key id |
//! | end - 16 | 16 | authenticated only: keyed BLAKE3 tag of the key id, then of every byte before the key id |
//!
//! A pong is never longer than the ping it answers: a responder that would
//! have to send more than it received stays silent, so spoofing a source
//! address gains an attacker no amplification. A pinger pads its ping to the
//! size of the pong it expects.
//!
//! Anything else (wrong magic or version, unknown kind or flags, short,
//! non-zero padding, bytes after a pong's identity, invalid UTF-8, a tag
//! that does not verify) is not a heartbeat datagram and is dropped without
//! an answer, so a stray packet never provokes traffic.

use crate::auth::{AuthError, Keyring, TRAILER_BYTES};
use crate::config::MAX_PEER_ID_BYTES;

pub(crate) const MAGIC: [u8; 3] = *b"HBT";
/// The datagram version this build speaks.
pub const VERSION: u8 = 2;
/// Bytes before the identity.
pub const HEADER: usize = 48;
const AUTHENTICATED: u8 = 1;

/// The largest datagram this protocol produces or accepts: a padded,
/// authenticated ping whose identity has the full 256 bytes.
pub const MAX_DATAGRAM: usize = HEADER + MAX_PEER_ID_BYTES + TRAILER_BYTES;

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

/// Why bytes are not an acceptable heartbeat datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the fixed header or than the identity it announces.
    #[error("truncated datagram")]
    Truncated,
    /// Longer than any heartbeat datagram.
    #[error("oversized datagram")]
    Oversized,
    /// Not this protocol, or a version this build does not speak.
    #[error("not a heartbeat datagram (magic or version)")]
    Foreign,
    /// A kind other than ping or pong.
    #[error("unknown datagram kind {0}")]
    UnknownKind(u8),
    /// Flags this build does not know.
    #[error("unknown datagram flags {0:#04x}")]
    UnknownFlags(u8),
    /// The identity is longer than 256 bytes or not UTF-8.
    #[error("malformed identity")]
    BadIdentity,
    /// Padding that is not zero, or bytes after a pong's identity.
    #[error("malformed padding")]
    BadPadding,
    /// The authentication does not check out.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A field holds a value its message does not allow (an indirect probe
    /// request's timeout, port or address).
    #[error("{0} out of range")]
    OutOfRange(&'static str),
}

impl<'a> Datagram<'a> {
    /// Checks and parses `buf`, which must hold exactly one datagram. With
    /// a `keyring`, only datagrams signed by one of its keys are accepted;
    /// without, only unsigned ones.
    pub fn open(buf: &'a [u8], keyring: Option<&Keyring>) -> Result<Self, DecodeError> {
        if buf.len() > MAX_DATAGRAM {
            return Err(DecodeError::Oversized);
        }
        if buf.len() < HEADER {
            return Err(DecodeError::Truncated);
        }
        if buf[0..3] != MAGIC || buf[3] != VERSION {
            return Err(DecodeError::Foreign);
        }
        let flags = buf[5];
        if flags & !AUTHENTICATED != 0 {
            return Err(DecodeError::UnknownFlags(flags));
        }
        let body = match (flags & AUTHENTICATED != 0, keyring) {
            (true, Some(ring)) => ring.verify(buf)?,
            (true, None) => return Err(AuthError::Unexpected.into()),
            (false, Some(_)) => return Err(AuthError::Missing.into()),
            (false, None) => buf,
        };
        Self::parse(body)
    }

    fn parse(body: &'a [u8]) -> Result<Self, DecodeError> {
        if body.len() < HEADER {
            return Err(DecodeError::Truncated);
        }
        let kind = match body[4] {
            1 => Kind::Ping,
            2 => Kind::Pong,
            other => return Err(DecodeError::UnknownKind(other)),
        };
        let len = usize::from(u16::from_be_bytes([body[6], body[7]]));
        if len > MAX_PEER_ID_BYTES {
            return Err(DecodeError::BadIdentity);
        }
        let mut token = [0u8; 32];
        token.copy_from_slice(&body[8..40]);
        let mut epoch = [0u8; 8];
        epoch.copy_from_slice(&body[40..48]);
        let rest = &body[HEADER..];
        if rest.len() < len {
            return Err(DecodeError::Truncated);
        }
        let (identity, padding) = rest.split_at(len);
        let padding_ok = match kind {
            Kind::Ping => padding.iter().all(|&b| b == 0),
            Kind::Pong => padding.is_empty(),
        };
        if !padding_ok {
            return Err(DecodeError::BadPadding);
        }
        let identity = std::str::from_utf8(identity).map_err(|_| DecodeError::BadIdentity)?;
        Ok(Self {
            kind,
            token,
            epoch: u64::from_be_bytes(epoch),
            identity,
        })
    }

    /// Replaces the contents of `out` with this datagram, padded with zeros
    /// to at least `pad_to` bytes in all (pings only; the padding counts
    /// toward the 256-byte identity room, so a datagram never exceeds
    /// [`MAX_DATAGRAM`]), and signed with `keyring`'s primary key if given.
    /// An identity longer than 256 bytes is cut at a character boundary (a
    /// node's identity is validated to fit when the node is built).
    pub fn seal(&self, pad_to: usize, keyring: Option<&Keyring>, out: &mut Vec<u8>) {
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
        out.push(if keyring.is_some() { AUTHENTICATED } else { 0 });
        // `end` is at most 256, so it fits.
        out.extend_from_slice(&(end as u16).to_be_bytes());
        out.extend_from_slice(&self.token);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(identity);
        if self.kind == Kind::Ping {
            let trailer = if keyring.is_some() { TRAILER_BYTES } else { 0 };
            let body = pad_to
                .saturating_sub(trailer)
                .min(HEADER + MAX_PEER_ID_BYTES);
            if out.len() < body {
                out.resize(body, 0);
            }
        }
        if let Some(ring) = keyring {
            ring.sign(out);
        }
    }

    /// The size of the pong a node named `identity` sends, with or without a
    /// key: what a ping to it must be padded to.
    pub fn pong_len(identity_len: usize, authenticated: bool) -> usize {
        HEADER + identity_len.min(MAX_PEER_ID_BYTES) + if authenticated { TRAILER_BYTES } else { 0 }
    }
}

/// Why a datagram got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoAnswer {
    /// Not an acceptable datagram.
    #[error(transparent)]
    Rejected(#[from] DecodeError),
    /// A pong: answered by nobody, handled by the pinger.
    #[error("a pong is not answered")]
    Pong,
    /// The ping is shorter than the pong would be: answering would amplify.
    #[error("ping of {ping} bytes is shorter than its pong of {pong}")]
    TooShort {
        /// The ping's size.
        ping: usize,
        /// The pong's size.
        pong: usize,
    },
}

/// What a node does with a datagram it receives: if `buf` is an acceptable
/// ping, writes the pong that answers it (as `identity` at `epoch`, signed
/// with `keyring` if given) into `out`. A pong longer than the ping is not
/// written: nothing is ever answered with more than was received.
pub fn answer(
    buf: &[u8],
    identity: &str,
    epoch: u64,
    keyring: Option<&Keyring>,
    out: &mut Vec<u8>,
) -> Result<(), NoAnswer> {
    let ping = Datagram::open(buf, keyring)?;
    ping.write_pong(buf.len(), identity, epoch, keyring, out)
}

impl Datagram<'_> {
    /// Writes into `out` the pong that answers this datagram, a ping that
    /// arrived in `ping_len` bytes, unless that pong would be longer than the
    /// ping: the one place the no-amplification rule lives, for [`answer`]
    /// and for a node that has already opened the ping.
    pub fn write_pong(
        &self,
        ping_len: usize,
        identity: &str,
        epoch: u64,
        keyring: Option<&Keyring>,
        out: &mut Vec<u8>,
    ) -> Result<(), NoAnswer> {
        if self.kind != Kind::Ping {
            return Err(NoAnswer::Pong);
        }
        Datagram {
            kind: Kind::Pong,
            token: self.token,
            epoch,
            identity,
        }
        .seal(0, keyring, out);
        if out.len() > ping_len {
            let pong = out.len();
            out.clear();
            return Err(NoAnswer::TooShort {
                ping: ping_len,
                pong,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping_for(expected: &str, keyring: Option<&Keyring>) -> Vec<u8> {
        let mut buf = Vec::new();
        Datagram {
            kind: Kind::Ping,
            token: [7; 32],
            epoch: 3,
            identity: "monitor",
        }
        .seal(
            Datagram::pong_len(expected.len(), keyring.is_some()),
            keyring,
            &mut buf,
        );
        buf
    }

    #[test]
    fn a_ping_is_answered_with_its_token_and_the_responders_identity() {
        let mut out = Vec::new();
        let ping = ping_for("peer-b", None);
        answer(&ping, "peer-b", 9, None, &mut out).unwrap();
        let pong = Datagram::open(&out, None).unwrap();
        assert_eq!(
            pong,
            Datagram {
                kind: Kind::Pong,
                token: [7; 32],
                epoch: 9,
                identity: "peer-b"
            }
        );
        assert!(out.len() <= ping.len());
    }

    #[test]
    fn a_ping_too_short_for_its_pong_gets_no_answer() {
        let mut out = Vec::new();
        let ping = ping_for("", None);
        let long_name = "x".repeat(100);
        assert!(matches!(
            answer(&ping, &long_name, 1, None, &mut out),
            Err(NoAnswer::TooShort { .. })
        ));
        assert!(out.is_empty());
        let padded = ping_for(&long_name, None);
        answer(&padded, &long_name, 1, None, &mut out).unwrap();
        assert_eq!(out.len(), padded.len());
    }

    #[test]
    fn a_pong_and_garbage_get_no_answer() {
        let mut out = Vec::new();
        let mut pong = Vec::new();
        answer(&ping_for("b", None), "b", 1, None, &mut pong).unwrap();
        assert_eq!(answer(&pong, "c", 1, None, &mut out), Err(NoAnswer::Pong));
        assert!(answer(b"GET / HTTP/1.1\r\n", "c", 1, None, &mut out).is_err());
        assert!(answer(&[], "c", 1, None, &mut out).is_err());
    }

    #[test]
    fn keyed_and_unkeyed_nodes_do_not_answer_each_other() {
        let ring = Keyring::parse("000102030405060708090a0b0c0d0e0f").unwrap();
        let other = Keyring::parse("ff0102030405060708090a0b0c0d0e0f").unwrap();
        let mut out = Vec::new();
        let signed = ping_for("b", Some(&ring));
        answer(&signed, "b", 1, Some(&ring), &mut out).unwrap();
        assert_eq!(Datagram::open(&out, Some(&ring)).unwrap().kind, Kind::Pong);
        assert_eq!(
            answer(&signed, "b", 1, None, &mut out),
            Err(NoAnswer::Rejected(DecodeError::Auth(AuthError::Unexpected)))
        );
        assert_eq!(
            answer(&ping_for("b", None), "b", 1, Some(&ring), &mut out),
            Err(NoAnswer::Rejected(DecodeError::Auth(AuthError::Missing)))
        );
        assert!(matches!(
            answer(&signed, "b", 1, Some(&other), &mut out),
            Err(NoAnswer::Rejected(DecodeError::Auth(
                AuthError::UnknownKey(_)
            )))
        ));
        // Stripping the tag and the flag does not make it acceptable to a
        // keyed node either.
        let mut stripped = signed[..signed.len() - TRAILER_BYTES].to_vec();
        stripped[5] = 0;
        assert!(answer(&stripped, "b", 1, Some(&ring), &mut out).is_err());
    }

    #[test]
    fn malformed_datagrams_are_typed_errors() {
        let good = ping_for("", None);
        fn open(b: &[u8]) -> Result<Datagram<'_>, DecodeError> {
            Datagram::open(b, None)
        }
        assert_eq!(open(&good[..20]), Err(DecodeError::Truncated));
        let mut foreign = good.clone();
        foreign[3] = 1;
        assert_eq!(open(&foreign), Err(DecodeError::Foreign));
        let mut kind = good.clone();
        kind[4] = 9;
        assert_eq!(open(&kind), Err(DecodeError::UnknownKind(9)));
        let mut flags = good.clone();
        flags[5] = 0x80;
        assert_eq!(open(&flags), Err(DecodeError::UnknownFlags(0x80)));
        let mut long = good.clone();
        long.extend_from_slice(b"xyz");
        assert_eq!(open(&long), Err(DecodeError::BadPadding));
        let mut utf8 = good.clone();
        utf8[HEADER + 6] = 0xff;
        assert_eq!(open(&utf8), Err(DecodeError::BadIdentity));
        let mut huge = good.clone();
        huge[6..8].copy_from_slice(&300u16.to_be_bytes());
        assert_eq!(open(&huge), Err(DecodeError::BadIdentity));
        let mut short_id = good;
        short_id[6..8].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(open(&short_id), Err(DecodeError::Truncated));
        assert_eq!(open(&[0; MAX_DATAGRAM + 1]), Err(DecodeError::Oversized));
    }

    #[test]
    fn an_overlong_identity_is_cut_and_no_datagram_exceeds_the_maximum() {
        let identity = "é".repeat(200);
        let ring = Keyring::parse("000102030405060708090a0b0c0d0e0f").unwrap();
        for kind in [Kind::Ping, Kind::Pong] {
            let mut buf = Vec::new();
            Datagram {
                kind,
                token: [0; 32],
                epoch: 1,
                identity: &identity,
            }
            .seal(usize::MAX, Some(&ring), &mut buf);
            assert!(buf.len() <= MAX_DATAGRAM, "{kind:?}");
            let back = Datagram::open(&buf, Some(&ring)).unwrap();
            assert_eq!(back.identity.len(), 256);
        }
    }
}
