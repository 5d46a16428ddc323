//! The heartbeat datagram decoder on arbitrary bytes: what anyone on the
//! network can send a node.
//!
//! Invariants checked on every input, with no key and with a two-key ring:
//! decoding never panics; whatever decodes re-encodes to bytes that decode
//! to the same datagram; an answer is never longer than the ping that
//! caused it, and is a pong echoing the ping's token; and a probe token
//! that was not sealed by a sealer never opens under it.
#![no_main]

use heartbeater_core::datagram::{answer, Datagram, Kind};
use heartbeater_core::{Keyring, ProbeSealer};
use libfuzzer_sys::fuzz_target;

fn check(data: &[u8], keyring: Option<&Keyring>) {
    let Ok(d) = Datagram::open(data, keyring) else {
        return;
    };
    let pad = if d.kind == Kind::Ping { data.len() } else { 0 };
    let mut again = Vec::new();
    d.seal(pad, keyring, &mut again);
    let back = Datagram::open(&again, keyring).expect("a sealed datagram opens");
    assert_eq!(back, d);

    let mut pong = Vec::new();
    match answer(data, "responder-identity", 7, keyring, &mut pong) {
        Ok(()) => {
            assert_eq!(d.kind, Kind::Ping);
            assert!(pong.len() <= data.len(), "amplification");
            let p = Datagram::open(&pong, keyring).expect("a pong opens");
            assert_eq!((p.kind, p.token), (Kind::Pong, d.token));
        }
        Err(_) => assert!(pong.is_empty()),
    }
}

fuzz_target!(|data: &[u8]| {
    check(data, None);
    let ring = Keyring::new(&[[0x11u8; 32], [0x22u8; 32]]).expect("valid keys");
    check(data, Some(&ring));

    if let Some(token) = data.get(..32) {
        let token: [u8; 32] = token.try_into().expect("32 bytes");
        // A sealer whose secret the input cannot know: nothing opens.
        let sealer = ProbeSealer::new([0x5a; 32]);
        assert!(sealer.open(&token).is_none(), "forged token opened");
    }
});
