//! Node identities: what a peer id may be, its one spelling, and how an
//! identity that came from the wire is shown.
//!
//! A node answers every heartbeat with its identity, and a reply counts only
//! if that identity is byte for byte the id the peer was registered with. An
//! id no node can ever answer with is therefore refused at registration,
//! rather than accepted and left `UNREACHABLE` for ever. A node's identity
//! is one of two things:
//!
//! - its UUID, chosen at its first start: accepted in any case, with or
//!   without hyphens, braces or a `urn:uuid:` prefix, and stored in the
//!   lower-case hyphenated form a node answers with, so that two spellings
//!   of one UUID are one peer;
//! - a name its operator gave it (`serve --node-id db-2`): 1 to
//!   [`MAX_NODE_NAME_BYTES`] ASCII letters, digits, `.`, `_` and `-`,
//!   starting and ending with a letter or a digit. Names are compared as
//!   written: `db-2` and `DB-2` are two names.

//!
//! A leaf of the crate: [`crate::config`] builds on it.

use std::borrow::Cow;

/// Longest identity on the wire, in bytes (a heartbeat's `client_id`, the
/// identity in a datagram). Peer ids are stricter ([`canonical_identity`]);
/// records stored by releases without that rule are within this bound.
pub const MAX_PEER_ID_BYTES: usize = 256;

/// Longest node name, in bytes: enough for a host name's first label and
/// a suffix, short enough for a table column.
pub const MAX_NODE_NAME_BYTES: usize = 64;

/// Why a string is not an identity a node can have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Nothing was given.
    #[error("must not be empty")]
    Empty,
    /// An identity cut short, as the README and the tools abbreviate one
    /// (`9a0e...`).
    #[error(
        "{0:?} looks shortened: give the whole identity that `heartbeater serve` printed \
         on its `identity` line (a UUID of 36 characters, such as \
         6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f)"
    )]
    Shortened(String),
    /// Control characters, which no identity has.
    #[error("must not contain control characters")]
    ControlCharacters,
    /// Longer than a node name and not a UUID.
    #[error("{0} bytes and not a UUID; a node name has at most {MAX_NODE_NAME_BYTES}")]
    TooLong(usize),
    /// Characters a node name does not have.
    #[error(
        "{0:?} is neither a UUID nor a node name (letters, digits, '.', '_' and '-', \
         starting and ending with a letter or a digit)"
    )]
    NotAnIdentity(String),
}

/// How many characters of an identity that is not one are shown: enough
/// to recognise it, too few to fill a screen.
const SHOWN_CHARS: usize = 64;

/// The canonical spelling of identity `id`: a UUID in lower-case
/// hyphenated form, or a node name as written. Anything else is an error
/// saying what an identity looks like.
pub fn canonical_identity(id: &str) -> Result<String, IdentityError> {
    if id.is_empty() {
        return Err(IdentityError::Empty);
    }
    if let Some(uuid) = canonical_uuid(id) {
        return Ok(uuid);
    }
    if id.contains("...") || id.contains('\u{2026}') {
        return Err(IdentityError::Shortened(shown_identity(id).into_owned()));
    }
    if id.chars().any(char::is_control) {
        return Err(IdentityError::ControlCharacters);
    }
    if id.len() > MAX_NODE_NAME_BYTES {
        return Err(IdentityError::TooLong(id.len()));
    }
    if !is_node_name(id) {
        return Err(IdentityError::NotAnIdentity(id.to_owned()));
    }
    Ok(id.to_owned())
}

/// Whether `id` is within the bounds every stored peer id has met, whichever
/// release stored it: 1 to [`MAX_PEER_ID_BYTES`] bytes, no control
/// characters. Looser than [`canonical_identity`]: it names stored records
/// the current rules refuse, so that they can still be deregistered.
pub fn within_stored_bounds(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_PEER_ID_BYTES && !id.chars().any(char::is_control)
}

/// `id` as a UUID in lower-case hyphenated form, when it is one: 32 hex
/// digits, plain or hyphenated 8-4-4-4-12, optionally in braces or after
/// `urn:uuid:`, in any case.
pub fn canonical_uuid(id: &str) -> Option<String> {
    let id = id
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .or_else(|| {
            id.get(..9)
                .filter(|p| p.eq_ignore_ascii_case("urn:uuid:"))
                .map(|_| &id[9..])
        })
        .unwrap_or(id);
    let digits: Vec<u8> = match id.len() {
        32 => id.bytes().collect(),
        36 => {
            let bytes = id.as_bytes();
            if [8, 13, 18, 23].iter().any(|&i| bytes[i] != b'-') {
                return None;
            }
            bytes.iter().copied().filter(|&b| b != b'-').collect()
        }
        _ => return None,
    };
    if digits.len() != 32 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = String::with_capacity(36);
    for (i, b) in digits.iter().enumerate() {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push('-');
        }
        out.push(char::from(b.to_ascii_lowercase()));
    }
    Some(out)
}

fn is_node_name(id: &str) -> bool {
    let bytes = id.as_bytes();
    let edge = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    (1..=MAX_NODE_NAME_BYTES).contains(&bytes.len())
        && edge(bytes.first())
        && edge(bytes.last())
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// An identity as it may be shown and kept, whatever a peer answered: a
/// string within the stored bounds without characters that steer a
/// terminal is kept as it is; anything else is cut to its first 64
/// characters, escaped as [`printable`] does with backslashes doubled as
/// well (so that an escape in the result was made here, never sent), and
/// followed by `...` when cut. A reply can then neither rewrite an
/// operator's screen nor fill a log.
pub fn shown_identity(observed: &str) -> Cow<'_, str> {
    if within_stored_bounds(observed) && !observed.chars().any(steers_terminal) {
        return Cow::Borrowed(observed);
    }
    let cut = observed
        .char_indices()
        .nth(SHOWN_CHARS)
        .map_or(observed, |(i, _)| &observed[..i]);
    let mut out = escape(cut, true);
    if cut.len() < observed.len() {
        out.push_str("...");
    }
    Cow::Owned(out)
}

/// `text` with every character that could steer a terminal escaped the way
/// Rust writes it in a string literal (`\u{1b}`, `\n`): control characters
/// (C0, DEL, C1, among them ESC and CSI) and the invisible characters that
/// reorder text (bidirectional overrides and isolates). Borrowed when there
/// is nothing to escape, which is the case of every valid identity.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(steers_terminal) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(escape(text, false))
}

fn escape(text: &str, backslashes: bool) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if backslashes && c == '\\' {
            out.push_str("\\\\");
        } else if matches!(c, '\n' | '\r' | '\t') {
            out.extend(c.escape_debug());
        } else if steers_terminal(c) {
            // Not `escape_debug`, which writes characters it deems
            // printable as they are.
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// Control characters, and the format characters that change the order in
/// which a terminal shows text (Unicode's bidirectional controls).
fn steers_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f";

    #[test]
    fn every_spelling_of_a_uuid_is_its_lower_case_hyphenated_form() {
        for spelling in [
            UUID,
            "6F1C2D3E-4A5B-4C6D-8E7F-0A1B2C3D4E5F",
            "6f1c2d3e4a5b4c6d8e7f0a1b2c3d4e5f",
            "{6F1C2D3E-4a5b-4c6d-8e7f-0a1b2c3d4e5f}",
            "urn:uuid:6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f",
            "URN:UUID:6F1C2D3E4A5B4C6D8E7F0A1B2C3D4E5F",
        ] {
            assert_eq!(canonical_identity(spelling).unwrap(), UUID, "{spelling}");
        }
    }

    #[test]
    fn node_names_are_kept_as_written() {
        for name in [
            "db-2",
            "x",
            "DB-2",
            "peer-000001",
            "api_1.eu-west",
            &"a".repeat(64),
        ] {
            assert_eq!(canonical_identity(name).unwrap(), name);
        }
        // Hyphens misplaced, or a digit short: a name, not a UUID.
        let near = "6f1c2d3e4-a5b-4c6d-8e7f-0a1b2c3d4e5f";
        assert_eq!(canonical_identity(near).unwrap(), near);
    }

    #[test]
    fn an_abbreviated_identity_asks_for_the_whole_one() {
        for shortened in ["9a0e...", "9a0e\u{2026}", "...4e5f"] {
            let err = canonical_identity(shortened).unwrap_err();
            assert!(matches!(err, IdentityError::Shortened(_)), "{err:?}");
            let message = err.to_string();
            assert!(message.contains("whole identity"), "{message}");
            assert!(message.contains("`heartbeater serve`"), "{message}");
        }
    }

    #[test]
    fn ids_that_are_neither_a_uuid_nor_a_name_are_refused() {
        for bad in [
            "",
            "a b",
            "-db",
            "db.",
            "_db",
            "db/2",
            "\u{e9}t\u{e9}",
            "a\nb",
            "a\u{1b}[2Jb",
            &"a".repeat(65),
            &"x".repeat(257),
        ] {
            let err = canonical_identity(bad).unwrap_err();
            assert!(!err.to_string().contains('\u{1b}'), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_terminal_sequence_is_shown_escaped_and_a_long_answer_cut() {
        assert_eq!(shown_identity(UUID), UUID);
        assert_eq!(
            shown_identity("not a name, but harmless"),
            "not a name, but harmless"
        );
        assert_eq!(
            shown_identity("x\u{1b}]0;pwned\u{7}"),
            "x\\u{1b}]0;pwned\\u{7}"
        );
        assert_eq!(shown_identity("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(shown_identity("a\\b\n"), "a\\\\b\\n");
        let long = "y".repeat(300);
        assert_eq!(shown_identity(&long), format!("{}...", "y".repeat(64)));
        assert_eq!(shown_identity(""), "");
    }

    #[test]
    fn printable_text_is_borrowed() {
        assert!(matches!(printable("db-2 \u{e9} a\\b"), Cow::Borrowed(_)));
        assert_eq!(printable("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(printable("\u{1b}[2J\r"), "\\u{1b}[2J\\r");
    }
}
