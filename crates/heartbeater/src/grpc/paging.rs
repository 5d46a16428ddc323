//! `ListPeers` pages: their size and the token that continues a listing.
//!
//! A token is the last peer id of the previous page, hex-encoded: opaque to
//! callers (they must not build one), cheap to check, and a cursor that
//! stays valid while peers come and go. It comes from the network, so it
//! is decoded with the same limits as a peer id before it is compared with
//! anything.

use heartbeater_core::config::MAX_PEER_ID_BYTES;
use heartbeater_core::ValidationError;

/// Peers per page when the request asks for 0.
pub const DEFAULT_PAGE_SIZE: usize = 1_000;
/// The most peers one page holds; larger requests are lowered to it.
pub const MAX_PAGE_SIZE: usize = 10_000;

/// The page size to serve for a requested `page_size`.
pub(crate) fn page_size(requested: u32) -> usize {
    match usize::try_from(requested) {
        Ok(0) => DEFAULT_PAGE_SIZE,
        Ok(n) => n.min(MAX_PAGE_SIZE),
        Err(_) => MAX_PAGE_SIZE,
    }
}

/// The token that continues after `last_id`.
pub(crate) fn token_after(last_id: &str) -> String {
    use std::fmt::Write;
    let mut token = String::with_capacity(last_id.len() * 2);
    for byte in last_id.as_bytes() {
        let _ = write!(token, "{byte:02x}");
    }
    token
}

/// The peer id a page continues after; `None` for the first page.
pub(crate) fn after_of_token(token: &str) -> Result<Option<String>, ValidationError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        ValidationError::new(
            "page_token",
            "not a token this node issued; pass the next_page_token of the previous answer unchanged",
        )
    };
    if token.len() % 2 != 0
        || token.len() > MAX_PEER_ID_BYTES * 2
        || !token.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(invalid());
    }
    let bytes = token
        .as_bytes()
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(invalid)?;
    String::from_utf8(bytes).map(Some).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_gives_back_the_id_it_was_made_from() {
        for id in ["a", "peer-1", "ünïcødé", &"x".repeat(MAX_PEER_ID_BYTES)] {
            assert_eq!(
                after_of_token(&token_after(id)).unwrap().as_deref(),
                Some(id)
            );
        }
        assert_eq!(after_of_token("").unwrap(), None);
    }

    #[test]
    fn tokens_not_issued_by_a_node_are_refused_by_field() {
        let too_long = "61".repeat(MAX_PEER_ID_BYTES + 1);
        for bad in ["6", "zz", "+1", "ff", "c3", too_long.as_str()] {
            let e = after_of_token(bad).unwrap_err();
            assert_eq!(e.field, "page_token", "{bad:?}");
        }
    }

    #[test]
    fn page_sizes_default_and_are_capped() {
        assert_eq!(page_size(0), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(1), 1);
        assert_eq!(page_size(u32::MAX), MAX_PAGE_SIZE);
    }
}
