//! Indirect probes on the wire: a monitor asks a helper to heartbeat a
//! suspect on its behalf, and the helper answers with what it saw.
//!
//! Both messages share the heartbeat datagram's framing (magic `HBT`,
//! version 2, see [`crate::datagram`]) with kinds of their own, and are
//! accepted only when signed with a cluster key: an indirect answer keeps a
//! peer alive, so it must not be forgeable, and a request makes its
//! receiver send, so it must come from a member of the cluster.
//!
//! Request (kind 3), all integers big-endian:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic, version, kind 3, flags (bit 0 set), length `n` of the identity |
//! | 8 | 32 | nonce: chosen by the monitor, echoed in the answer |
//! | 40 | 4 | timeout in milliseconds, 1 to [`MAX_TIMEOUT_MS`] |
//! | 44 | 2 | the suspect's port, not 0 |
//! | 46 | 16 | the suspect's IP address (IPv6, or IPv4-mapped) |
//! | 62 | n | the identity the monitor expects to answer |
//! | end - 20 | 20 | key id and tag, as on every authenticated datagram |
//!
//! Answer (kind 4):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic, version, kind 4, flags (bit 0 set), length `n` of the identity |
//! | 8 | 32 | the request's nonce |
//! | 40 | 8 | the suspect's epoch, from its pong to the helper |
//! | 48 | n | the suspect's identity, from the same pong |
//! | end - 20 | 20 | key id and tag |
//!
//! A helper answers only with what a valid pong of the suspect said, and
//! only when the answer is no longer than the request: a request makes a
//! helper send one ping and at most one answer, never more bytes than it
//! received.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::auth::{AuthError, Keyring, TRAILER_BYTES};
use crate::config::MAX_PEER_ID_BYTES;
use crate::datagram::{DecodeError, HEADER, MAGIC, VERSION};

/// Kind byte of a request.
pub const KIND_REQUEST: u8 = 3;
/// Kind byte of an answer.
pub const KIND_ANSWER: u8 = 4;
/// Bytes of a request before the identity.
pub const REQUEST_HEADER: usize = 62;
/// The longest a helper keeps a request open: longer than any heartbeat
/// timeout a peer is likely to have, short enough that a request cannot
/// hold a helper's room for long.
pub const MAX_TIMEOUT_MS: u32 = 60_000;
const AUTHENTICATED: u8 = 1;

/// "Heartbeat this suspect for me": from a monitor to a helper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeRequest<'a> {
    /// Opaque to the helper; the monitor matches the answer with it.
    pub nonce: [u8; 32],
    /// How long the monitor waits for the answer.
    pub timeout: Duration,
    /// Where the suspect's heartbeat datagrams go.
    pub target: SocketAddr,
    /// The identity the monitor expects there: the helper pads its ping to
    /// the size of the pong that identity sends.
    pub expected: &'a str,
}

/// "It answered me, as this identity at this epoch": from a helper to the
/// monitor that asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeAnswer<'a> {
    /// The request's nonce.
    pub nonce: [u8; 32],
    /// The suspect's epoch, as its pong said.
    pub epoch: u64,
    /// The suspect's identity, as its pong said.
    pub identity: &'a str,
}

/// An indirect-probe message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relayed<'a> {
    /// A monitor asks.
    Request(ProbeRequest<'a>),
    /// A helper answers.
    Answer(ProbeAnswer<'a>),
}

/// Whether `buf` claims to be an indirect-probe message (by its kind byte):
/// what a receiver asks before it opens it with [`open`].
pub fn is_relayed(buf: &[u8]) -> bool {
    buf.len() > 4 && buf[0..3] == MAGIC && matches!(buf[4], KIND_REQUEST | KIND_ANSWER)
}

/// Checks and parses an indirect-probe message. Without a keyring nothing
/// is accepted: indirect probes need a cluster key.
pub fn open<'a>(buf: &'a [u8], keyring: Option<&Keyring>) -> Result<Relayed<'a>, DecodeError> {
    if buf.len() > crate::datagram::MAX_DATAGRAM + (REQUEST_HEADER - HEADER) {
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
    let Some(ring) = keyring else {
        return Err(if flags & AUTHENTICATED != 0 {
            AuthError::Unexpected
        } else {
            AuthError::Missing
        }
        .into());
    };
    if flags & AUTHENTICATED == 0 {
        return Err(AuthError::Missing.into());
    }
    let body = ring.verify(buf)?;
    let len = usize::from(u16::from_be_bytes([body[6], body[7]]));
    if len > MAX_PEER_ID_BYTES {
        return Err(DecodeError::BadIdentity);
    }
    let mut nonce = [0u8; 32];
    nonce.copy_from_slice(&body[8..40]);
    match body[4] {
        KIND_REQUEST => {
            let rest = body.get(REQUEST_HEADER..).ok_or(DecodeError::Truncated)?;
            let expected = identity(rest, len)?;
            let timeout_ms = u32::from_be_bytes([body[40], body[41], body[42], body[43]]);
            if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
                return Err(DecodeError::OutOfRange("timeout"));
            }
            let port = u16::from_be_bytes([body[44], body[45]]);
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&body[46..62]);
            let ip = Ipv6Addr::from(ip);
            let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
            if port == 0 {
                return Err(DecodeError::OutOfRange("port"));
            }
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(DecodeError::OutOfRange("address"));
            }
            Ok(Relayed::Request(ProbeRequest {
                nonce,
                timeout: Duration::from_millis(u64::from(timeout_ms)),
                target: SocketAddr::new(ip, port),
                expected,
            }))
        }
        KIND_ANSWER => {
            let identity = identity(&body[HEADER..], len)?;
            let mut epoch = [0u8; 8];
            epoch.copy_from_slice(&body[40..48]);
            Ok(Relayed::Answer(ProbeAnswer {
                nonce,
                epoch: u64::from_be_bytes(epoch),
                identity,
            }))
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// The identity of `len` bytes that must make up all of `rest`.
fn identity(rest: &[u8], len: usize) -> Result<&str, DecodeError> {
    if rest.len() < len {
        return Err(DecodeError::Truncated);
    }
    if rest.len() > len {
        return Err(DecodeError::BadPadding);
    }
    std::str::from_utf8(rest).map_err(|_| DecodeError::BadIdentity)
}

fn header(kind: u8, identity: &str, nonce: &[u8; 32], out: &mut Vec<u8>) -> usize {
    let mut end = identity.len().min(MAX_PEER_ID_BYTES);
    while !identity.is_char_boundary(end) {
        end -= 1;
    }
    out.clear();
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.push(AUTHENTICATED);
    // `end` is at most 256, so it fits.
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(nonce);
    end
}

impl ProbeRequest<'_> {
    /// Replaces the contents of `out` with this request, signed with the
    /// keyring's primary key. The timeout is clamped to what a helper
    /// accepts.
    pub fn seal(&self, keyring: &Keyring, out: &mut Vec<u8>) {
        let end = header(KIND_REQUEST, self.expected, &self.nonce, out);
        let ms = u32::try_from(self.timeout.as_millis())
            .unwrap_or(MAX_TIMEOUT_MS)
            .clamp(1, MAX_TIMEOUT_MS);
        out.extend_from_slice(&ms.to_be_bytes());
        out.extend_from_slice(&self.target.port().to_be_bytes());
        let ip = match self.target.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        out.extend_from_slice(&ip.octets());
        out.extend_from_slice(&self.expected.as_bytes()[..end]);
        keyring.sign(out);
    }
}

impl ProbeAnswer<'_> {
    /// Replaces the contents of `out` with this answer, signed with the
    /// keyring's primary key, unless it would be longer than `request_len`,
    /// the size of the request it answers: then `out` is left empty and
    /// false returned (no answer amplifies).
    pub fn seal(&self, request_len: usize, keyring: &Keyring, out: &mut Vec<u8>) -> bool {
        let end = header(KIND_ANSWER, self.identity, &self.nonce, out);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.identity.as_bytes()[..end]);
        keyring.sign(out);
        if out.len() > request_len {
            out.clear();
            return false;
        }
        true
    }
}

/// Size of a request naming `expected_len` bytes of identity.
pub fn request_len(expected_len: usize) -> usize {
    REQUEST_HEADER + expected_len.min(MAX_PEER_ID_BYTES) + TRAILER_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(byte: u8) -> Keyring {
        Keyring::new(&[[byte; 16]]).unwrap()
    }

    fn request() -> ProbeRequest<'static> {
        ProbeRequest {
            nonce: [9; 32],
            timeout: Duration::from_millis(750),
            target: "10.1.2.3:8181".parse().unwrap(),
            expected: "node-b",
        }
    }

    #[test]
    fn a_request_and_its_answer_round_trip_under_the_cluster_key() {
        let k = ring(1);
        let mut buf = Vec::new();
        request().seal(&k, &mut buf);
        assert_eq!(buf.len(), request_len("node-b".len()));
        assert!(is_relayed(&buf));
        assert_eq!(open(&buf, Some(&k)), Ok(Relayed::Request(request())));
        let answer = ProbeAnswer {
            nonce: [9; 32],
            epoch: 42,
            identity: "node-b",
        };
        let mut out = Vec::new();
        assert!(answer.seal(buf.len(), &k, &mut out));
        assert_eq!(open(&out, Some(&k)), Ok(Relayed::Answer(answer)));
    }

    #[test]
    fn v6_targets_survive_and_v4_ones_come_back_as_v4() {
        let k = ring(1);
        let mut buf = Vec::new();
        for target in ["[2001:db8::7]:9", "127.0.0.9:9"] {
            let req = ProbeRequest {
                target: target.parse().unwrap(),
                ..request()
            };
            req.seal(&k, &mut buf);
            assert_eq!(open(&buf, Some(&k)), Ok(Relayed::Request(req)));
        }
    }

    #[test]
    fn nothing_is_accepted_without_the_key_or_with_another() {
        let mut buf = Vec::new();
        request().seal(&ring(1), &mut buf);
        assert_eq!(open(&buf, None), Err(AuthError::Unexpected.into()));
        assert!(matches!(
            open(&buf, Some(&ring(2))),
            Err(DecodeError::Auth(AuthError::UnknownKey(_)))
        ));
        // An unsigned copy: flags cleared, trailer cut.
        let mut bare = buf[..buf.len() - TRAILER_BYTES].to_vec();
        bare[5] = 0;
        assert_eq!(open(&bare, Some(&ring(1))), Err(AuthError::Missing.into()));
        // A tampered target.
        let mut forged = buf.clone();
        forged[47] ^= 1;
        assert!(matches!(
            open(&forged, Some(&ring(1))),
            Err(DecodeError::Auth(AuthError::BadTag(_)))
        ));
    }

    #[test]
    fn an_answer_longer_than_its_request_is_not_written() {
        let k = ring(1);
        let long = "x".repeat(200);
        let answer = ProbeAnswer {
            nonce: [0; 32],
            epoch: 1,
            identity: &long,
        };
        let mut out = Vec::new();
        assert!(!answer.seal(request_len(6), &k, &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn nonsense_fields_are_refused_even_when_signed() {
        let k = ring(1);
        let mut buf = Vec::new();
        for bad in [
            ProbeRequest {
                target: "0.0.0.0:1".parse().unwrap(),
                ..request()
            },
            ProbeRequest {
                target: "10.0.0.1:0".parse().unwrap(),
                ..request()
            },
        ] {
            bad.seal(&k, &mut buf);
            assert!(open(&buf, Some(&k)).is_err(), "{bad:?}");
        }
        // A timeout of 0 ms, written by hand and signed.
        request().seal(&k, &mut buf);
        buf.truncate(buf.len() - TRAILER_BYTES);
        buf[40..44].copy_from_slice(&0u32.to_be_bytes());
        k.sign(&mut buf);
        assert!(open(&buf, Some(&k)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_refused_or_parsed_never_a_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let k = ring(1);
            let _ = open(&bytes, Some(&k));
            let _ = open(&bytes, None);
        }
    }
}
