//! Keys: the cluster keyring that authenticates heartbeat datagrams, and the
//! per-run secret that seals probe ids into unforgeable tokens.
//!
//! Both use keyed BLAKE3 (the `blake3` crate, a MAC by design) with keys
//! derived from the configured secret by BLAKE3's own key derivation, one
//! context string per use, so no key ever serves two purposes. Tags are
//! compared in constant time.
//!
//! The keyring works like memberlist's: one primary key signs everything
//! sent; every key in the ring (the primary and the others) is accepted on
//! receipt. Rotating is then three steps with no moment where two nodes
//! disagree: add the new key everywhere, make it primary everywhere, remove
//! the old one everywhere.

use std::fmt;

use crate::probe::ProbeId;

const MAC_CONTEXT: &str = "heartbeater 2026-11 datagram authentication";
const ID_CONTEXT: &str = "heartbeater 2026-11 cluster key id";
const TOKEN_CONTEXT: &str = "heartbeater 2026-11 probe token";

/// Shortest accepted secret, in bytes: 128 bits.
pub const MIN_SECRET_BYTES: usize = 16;
/// Longest accepted secret, in bytes.
pub const MAX_SECRET_BYTES: usize = 64;
/// Most keys in one ring: rotation needs two; a bound keeps a datagram's cost
/// of finding its key small whatever a configuration file says.
pub const MAX_KEYS: usize = 8;
/// Bytes an authenticated datagram carries after its body: key id and tag.
pub const TRAILER_BYTES: usize = 4 + TAG_BYTES;
/// Length of a datagram's tag: 128 bits of keyed BLAKE3.
pub const TAG_BYTES: usize = 16;

/// Names a cluster key on the wire without revealing anything of it: the
/// first four bytes of a BLAKE3 key derivation from the secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 4]);

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Why a keyring cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No key at all.
    #[error("the keyring holds no key (the first key is the primary)")]
    Empty,
    /// A key is not hexadecimal.
    #[error("key {index} is not hexadecimal")]
    NotHex {
        /// Position of the key in the ring, from 1.
        index: usize,
    },
    /// A key is too short or too long.
    #[error("key {index} has {bytes} bytes; keys have {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes ({} to {} hex digits)", MIN_SECRET_BYTES * 2, MAX_SECRET_BYTES * 2)]
    BadLength {
        /// Position of the key in the ring, from 1.
        index: usize,
        /// Its length in bytes.
        bytes: usize,
    },
    /// More keys than [`MAX_KEYS`].
    #[error("{0} keys; a keyring holds at most {MAX_KEYS}")]
    TooMany(usize),
    /// Two keys are the same, or share their key id.
    #[error("key {index} repeats an earlier key")]
    Duplicate {
        /// Position of the key in the ring, from 1.
        index: usize,
    },
}

#[derive(Clone)]
struct ClusterKey {
    id: KeyId,
    mac_key: [u8; 32],
}

impl ClusterKey {
    fn new(secret: &[u8]) -> Self {
        let derived = blake3::derive_key(ID_CONTEXT, secret);
        Self {
            id: KeyId([derived[0], derived[1], derived[2], derived[3]]),
            mac_key: blake3::derive_key(MAC_CONTEXT, secret),
        }
    }

    fn tag(&self, signed: &[u8]) -> [u8; TAG_BYTES] {
        let mut h = blake3::Hasher::new_keyed(&self.mac_key);
        h.update(&self.id.0);
        h.update(signed);
        let full = h.finalize();
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&full.as_bytes()[..TAG_BYTES]);
        tag
    }
}

/// Why an authenticated datagram was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The datagram carries no tag, and this node requires one.
    #[error("datagram is not authenticated, and this node has a cluster key")]
    Missing,
    /// It is signed with a key this node does not hold.
    #[error("datagram is signed with key {0}, which is not in this node's keyring")]
    UnknownKey(KeyId),
    /// The tag does not match: forged, corrupted, or replayed with changes.
    #[error("datagram tag does not verify (key {0})")]
    BadTag(KeyId),
    /// It carries a tag, and this node has no key to check it with.
    #[error("datagram is authenticated, and this node has no cluster key")]
    Unexpected,
}

/// The cluster keys of a node: one primary that signs, all accepted.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<ClusterKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secrets: ids only.
        f.debug_struct("Keyring")
            .field("primary", &self.primary_id())
            .field("accepted", &self.key_ids())
            .finish()
    }
}

impl Keyring {
    /// A ring of raw secrets; the first is the primary.
    pub fn new<S: AsRef<[u8]>>(secrets: &[S]) -> Result<Self, KeyError> {
        if secrets.is_empty() {
            return Err(KeyError::Empty);
        }
        if secrets.len() > MAX_KEYS {
            return Err(KeyError::TooMany(secrets.len()));
        }
        let mut keys: Vec<ClusterKey> = Vec::with_capacity(secrets.len());
        for (i, secret) in secrets.iter().enumerate() {
            let secret = secret.as_ref();
            if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&secret.len()) {
                return Err(KeyError::BadLength {
                    index: i + 1,
                    bytes: secret.len(),
                });
            }
            let key = ClusterKey::new(secret);
            if keys.iter().any(|k| k.id == key.id) {
                return Err(KeyError::Duplicate { index: i + 1 });
            }
            keys.push(key);
        }
        Ok(Self { keys })
    }

    /// A ring from text: one hex-encoded secret per line, the first line the
    /// primary; blank lines and lines starting with `#` are skipped, and so
    /// are commas and spaces between keys on one line (for an environment
    /// variable).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let words = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .flat_map(|l| l.split([',', ' ', '\t']))
            .filter(|w| !w.is_empty());
        let mut secrets = Vec::new();
        for (i, word) in words.enumerate() {
            if i >= MAX_KEYS {
                return Err(KeyError::TooMany(i + 1));
            }
            secrets.push(decode_hex(word).ok_or(KeyError::NotHex { index: i + 1 })?);
        }
        Self::new(&secrets)
    }

    /// The key that signs.
    pub fn primary_id(&self) -> KeyId {
        self.keys.first().map_or(KeyId([0; 4]), |k| k.id)
    }

    /// Every key accepted, the primary first.
    pub fn key_ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(|k| k.id).collect()
    }

    /// Appends the trailer (primary key id and tag over everything in `out`).
    pub fn sign(&self, out: &mut Vec<u8>) {
        if let Some(key) = self.keys.first() {
            let tag = key.tag(out);
            out.extend_from_slice(&key.id.0);
            out.extend_from_slice(&tag);
        }
    }

    /// Checks the trailer of `buf` and returns the signed part.
    pub fn verify<'a>(&self, buf: &'a [u8]) -> Result<&'a [u8], AuthError> {
        let Some(body_len) = buf.len().checked_sub(TRAILER_BYTES) else {
            return Err(AuthError::Missing);
        };
        let (body, trailer) = buf.split_at(body_len);
        let id = KeyId([trailer[0], trailer[1], trailer[2], trailer[3]]);
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or(AuthError::UnknownKey(id))?;
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&trailer[4..]);
        if constant_time_eq::constant_time_eq_16(&key.tag(body), &tag) {
            Ok(body)
        } else {
            Err(AuthError::BadTag(id))
        }
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

/// Seals probe ids into the 32-byte tokens that pings carry and pongs echo:
/// the id, then a 128-bit keyed BLAKE3 tag of it under a secret that never
/// leaves the node. Whoever sees one peer's pings learns those tokens only;
/// a token for any other heartbeat, of this peer or another, cannot be made
/// without the secret.
#[derive(Clone)]
pub struct ProbeSealer {
    key: [u8; 32],
}

impl fmt::Debug for ProbeSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProbeSealer(..)")
    }
}

/// Length of a sealed probe token.
pub const TOKEN_BYTES: usize = 32;

impl ProbeSealer {
    /// A sealer keyed by `secret`, which must be random and kept by the node
    /// (a new one per run is enough: tokens live for one timeout).
    pub fn new(secret: [u8; 32]) -> Self {
        Self {
            key: blake3::derive_key(TOKEN_CONTEXT, &secret),
        }
    }

    fn tag(&self, id: &[u8; ProbeId::LEN]) -> [u8; 16] {
        let full = blake3::keyed_hash(&self.key, id);
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&full.as_bytes()[..16]);
        tag
    }

    /// The token for `id`.
    pub fn seal(&self, id: ProbeId) -> [u8; TOKEN_BYTES] {
        let bytes = id.to_bytes();
        let mut token = [0u8; TOKEN_BYTES];
        token[..ProbeId::LEN].copy_from_slice(&bytes);
        token[ProbeId::LEN..].copy_from_slice(&self.tag(&bytes));
        token
    }

    /// The id sealed in `token`, if this sealer made it.
    pub fn open(&self, token: &[u8; TOKEN_BYTES]) -> Option<ProbeId> {
        let mut bytes = [0u8; ProbeId::LEN];
        bytes.copy_from_slice(&token[..ProbeId::LEN]);
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&token[ProbeId::LEN..]);
        constant_time_eq::constant_time_eq_16(&self.tag(&bytes), &tag)
            .then(|| ProbeId::from_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::PeerKey;

    const K1: &str = "000102030405060708090a0b0c0d0e0f";
    const K2: &str = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff00112233";

    #[test]
    fn a_signed_datagram_verifies_under_any_ring_holding_its_key() {
        let old = Keyring::parse(K1).unwrap();
        let both = Keyring::parse(&format!("{K2}\n# rotating\n{K1}\n")).unwrap();
        let mut msg = b"hello".to_vec();
        old.sign(&mut msg);
        assert_eq!(msg.len(), 5 + TRAILER_BYTES);
        assert_eq!(old.verify(&msg), Ok(&b"hello"[..]));
        assert_eq!(both.verify(&msg), Ok(&b"hello"[..]));
        let mut new = b"hello".to_vec();
        both.sign(&mut new);
        assert_eq!(both.primary_id(), Keyring::parse(K2).unwrap().primary_id());
        assert_eq!(
            old.verify(&new),
            Err(AuthError::UnknownKey(both.primary_id()))
        );
    }

    #[test]
    fn signing_matches_the_documented_test_vector() {
        // docs/PROTOCOL.md, computed there with Python's `blake3` package.
        let ring = Keyring::new(&[[0x5a_u8; 32]]).unwrap();
        let mut out = b"heartbeater test vector".to_vec();
        ring.sign(&mut out);
        let trailer: String = out[out.len() - TRAILER_BYTES..]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(trailer, "8d5a3a0d3772c5d47cc2a1b4651b4a1cd78fd405");
        assert_eq!(ring.verify(&out), Ok(&b"heartbeater test vector"[..]));
    }

    #[test]
    fn any_change_to_a_signed_datagram_fails() {
        let ring = Keyring::parse(K1).unwrap();
        let mut msg = b"heartbeat".to_vec();
        ring.sign(&mut msg);
        for i in 0..msg.len() {
            let mut bad = msg.clone();
            bad[i] ^= 1;
            assert!(ring.verify(&bad).is_err(), "byte {i}");
        }
        assert_eq!(ring.verify(&msg[..10]), Err(AuthError::Missing));
    }

    #[test]
    fn bad_keys_are_typed_errors() {
        assert!(matches!(
            Keyring::parse("# nothing\n"),
            Err(KeyError::Empty)
        ));
        assert!(matches!(
            Keyring::parse("zz"),
            Err(KeyError::NotHex { index: 1 })
        ));
        assert!(matches!(
            Keyring::parse("abc"),
            Err(KeyError::NotHex { index: 1 })
        ));
        assert!(matches!(
            Keyring::parse("0011"),
            Err(KeyError::BadLength { index: 1, bytes: 2 })
        ));
        assert!(matches!(
            Keyring::parse(&format!("{K1},{K1}")),
            Err(KeyError::Duplicate { index: 2 })
        ));
        let many = [K1; 9].join(" ");
        assert!(matches!(Keyring::parse(&many), Err(KeyError::TooMany(_))));
        assert!(!format!("{:?}", Keyring::parse(K1).unwrap()).contains(K1));
    }

    #[test]
    fn a_token_opens_only_with_its_sealer_and_unchanged() {
        let sealer = ProbeSealer::new([7; 32]);
        let id = ProbeId {
            key: PeerKey::from_bits(42),
            seq: 9,
        };
        let token = sealer.seal(id);
        assert_eq!(sealer.open(&token), Some(id));
        assert_eq!(ProbeSealer::new([8; 32]).open(&token), None);
        for i in 0..TOKEN_BYTES {
            let mut bad = token;
            bad[i] ^= 0x80;
            assert_eq!(sealer.open(&bad), None, "byte {i}");
        }
    }
}
