//! The heartbeat datagram decoder on arbitrary bytes: what anyone on the
//! network can send a node.
//!
//! Every input is tried as it is, with no key and with a ring of two keys,
//! and, because a fuzzer cannot forge a tag, also signed by each key of the
//! ring (and by a key outside it) so that the authenticated path is parsed on
//! arbitrary bodies too. Invariants:
//!
//! - decoding never panics, and nothing allocated depends on more than the
//!   input's length;
//! - a datagram is accepted with a key or without one, never both;
//! - whatever decodes, sealed again (same keyring, pings padded to the
//!   input's length), decodes to the same datagram, and an encoding is
//!   canonical: unsigned or signed by the primary key, it re-seals to the
//!   very same bytes;
//! - signing a body neither makes it acceptable nor unacceptable: it decodes
//!   under the ring exactly when, unsigned, it decodes without a key; a body
//!   signed with a key outside the ring, or with a damaged tag, never does;
//! - `answer` writes nothing unless the input is an acceptable ping; a pong
//!   it writes is never longer than the ping (no amplification), has the size
//!   `Datagram::pong_len` announces, and decodes as a pong with the ping's
//!   token and the responder's identity and epoch; it stays silent exactly
//!   when that pong would be longer than the ping;
//! - a probe token opens only under the sealer that made it, to the id it
//!   sealed.
#![no_main]

use std::sync::OnceLock;

use heartbeater_core::auth::TRAILER_BYTES;
use heartbeater_core::config::MAX_PEER_ID_BYTES;
use heartbeater_core::datagram::{answer, Datagram, Kind, NoAnswer, HEADER, MAX_DATAGRAM};
use heartbeater_core::{Keyring, ProbeId, ProbeSealer};
use libfuzzer_sys::fuzz_target;

/// The cluster secrets; `fuzz/corpus/datagram/` has datagrams signed with
/// the first two (the generator in `docs/FUZZING.md` uses the same bytes).
const PRIMARY: [u8; 32] = [0x11; 32];
const SECONDARY: [u8; 32] = [0x22; 32];
const OUTSIDER: [u8; 32] = [0x33; 32];

struct Fixture {
    /// What the node under test holds: signs with `PRIMARY`, accepts both.
    ring: Keyring,
    /// A node that already signs with the other key (mid-rotation).
    secondary: Keyring,
    /// A node of another cluster.
    outsider: Keyring,
    sealer: ProbeSealer,
    /// Responder identities: empty, ordinary, and the largest (256 bytes
    /// of two-byte characters), whose pong is as long as a datagram gets.
    identities: [String; 3],
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| Fixture {
        ring: Keyring::new(&[PRIMARY, SECONDARY]).expect("valid keys"),
        secondary: Keyring::new(&[SECONDARY]).expect("valid key"),
        outsider: Keyring::new(&[OUTSIDER]).expect("valid key"),
        sealer: ProbeSealer::new([0x5a; 32]),
        identities: [
            String::new(),
            "responder-identity".to_owned(),
            "é".repeat(MAX_PEER_ID_BYTES / 2),
        ],
    })
}

/// Opens `data` with or without `keyring` and checks everything that
/// follows from the answer. Returns whether it decoded.
fn check(data: &[u8], keyring: Option<&Keyring>) -> bool {
    let f = fixture();
    let decoded = Datagram::open(data, keyring);

    if let Ok(d) = decoded {
        assert!(data.len() <= MAX_DATAGRAM);
        assert!(d.identity.len() <= MAX_PEER_ID_BYTES);

        // Sealed again, it opens to the same datagram.
        let pad = if d.kind == Kind::Ping { data.len() } else { 0 };
        let mut again = Vec::new();
        d.seal(pad, keyring, &mut again);
        assert!(again.len() <= MAX_DATAGRAM, "sealed {} bytes", again.len());
        let back = Datagram::open(&again, keyring).expect("a sealed datagram opens");
        assert_eq!(back, d);

        // And, signed by the key that seals (or not signed), to the same
        // bytes: a ping's padding is capped at the identity's room.
        let trailer = if keyring.is_some() { TRAILER_BYTES } else { 0 };
        let by_primary = keyring.is_none_or(|ring| {
            data[data.len() - TRAILER_BYTES..][..4] == ring.primary_id().0
        });
        if by_primary && data.len() <= HEADER + MAX_PEER_ID_BYTES + trailer {
            assert_eq!(again, data, "not canonical");
        }
    }

    for identity in &f.identities {
        let mut out = Vec::new();
        let result = answer(data, identity, 7, keyring, &mut out);
        let pong_len = Datagram::pong_len(identity.len(), keyring.is_some());
        match (decoded, result) {
            (Ok(ping), Ok(())) => {
                assert_eq!(ping.kind, Kind::Ping);
                assert!(out.len() <= data.len(), "amplification");
                assert_eq!(out.len(), pong_len);
                let pong = Datagram::open(&out, keyring).expect("a pong opens");
                assert_eq!(
                    pong,
                    Datagram {
                        kind: Kind::Pong,
                        token: ping.token,
                        epoch: 7,
                        identity,
                    }
                );
            }
            (Ok(ping), Err(NoAnswer::TooShort { ping: n, pong })) => {
                assert_eq!(ping.kind, Kind::Ping);
                assert_eq!((n, pong), (data.len(), pong_len));
                assert!(pong > n);
                assert!(out.is_empty());
            }
            (Ok(pong), Err(NoAnswer::Pong)) => {
                assert_eq!(pong.kind, Kind::Pong);
                assert!(out.is_empty());
            }
            (Err(e), Err(NoAnswer::Rejected(r))) => {
                assert_eq!(e, r);
                assert!(out.is_empty());
            }
            (decoded, result) => panic!("answer {result:?} to {decoded:?}"),
        }
    }
    decoded.is_ok()
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();

    // As received.
    let plain = check(data, None);
    let keyed = check(data, Some(&f.ring));
    assert!(!(plain && keyed), "accepted with a key and without");

    // Signed. Byte 5 (flags) says "authenticated" in the signed body and
    // not in the unsigned one; nothing else differs.
    if data.len() > 5 && data.len() + TRAILER_BYTES <= MAX_DATAGRAM {
        let mut unsigned = data.to_vec();
        unsigned[5] = 0;
        let expected = Datagram::open(&unsigned, None).ok();
        for signer in [&f.ring, &f.secondary] {
            let mut signed = data.to_vec();
            signed[5] = 1;
            signer.sign(&mut signed);
            assert_eq!(Datagram::open(&signed, Some(&f.ring)).ok(), expected);
            assert_eq!(check(&signed, Some(&f.ring)), expected.is_some());
            assert!(!check(&signed, None), "a signed datagram opened without a key");
            let last = signed.len() - 1;
            signed[last] ^= 1;
            assert!(Datagram::open(&signed, Some(&f.ring)).is_err(), "bad tag");
        }
        let mut foreign = data.to_vec();
        foreign[5] = 1;
        f.outsider.sign(&mut foreign);
        assert!(Datagram::open(&foreign, Some(&f.ring)).is_err(), "foreign key");
    }

    // Probe tokens: forged ones never open; sealed ones open to their id.
    if let Some(token) = data.first_chunk::<32>() {
        assert!(f.sealer.open(token).is_none(), "forged token opened");
        let id = ProbeId::from_bytes(*data.first_chunk::<{ ProbeId::LEN }>().expect("16 bytes"));
        assert_eq!(f.sealer.open(&f.sealer.seal(id)), Some(id));
    }
});
