//! Tokens verified recently, so a client that reconnects with the token it
//! already presented is not verified again: after a network blip every
//! client reconnects at once (the reconnect storm), and an RSA or ECDSA
//! signature check is most of a handshake's CPU.
//!
//! Invariants:
//! - only tokens that passed every check are held, keyed by the SHA-256
//!   of the whole token: the same bytes get the same verdict as long as
//!   the keys are the same and the token's time window holds;
//! - an entry is used only while the key set it was verified against is
//!   the one in use (the JWKS generation; static keys never change), so
//!   a key removed from the JWKS stops its tokens at the next fetch, as
//!   without the cache;
//! - an entry is used only before `exp` + leeway; after that the token
//!   goes through the full check again, which refuses it as expired;
//! - bounded: at [`CAPACITY`] entries the cache is emptied (a rare full
//!   verification round, never unbounded memory).

use std::collections::HashMap;
use std::sync::Mutex;

use aws_lc_rs::digest;

use super::verify::Claims;

/// Entries held at most: a storm of this many clients is served from the
/// cache. About 0.5 KiB each with typical claims.
pub(super) const CAPACITY: usize = 32 * 1024;

#[derive(Debug)]
struct Entry {
    claims: Claims,
    /// `exp`, when the token has one.
    exp: Option<u64>,
    generation: u64,
}

#[derive(Debug)]
pub(super) struct Verified {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
    leeway: u64,
}

fn key(token: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Verified {
    pub(super) fn new(leeway: u64) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            leeway,
        }
    }

    /// The claims of `token` if it was verified against key set
    /// `generation` and is still within `exp` + leeway at `now` (Unix
    /// seconds).
    pub(super) fn get(&self, token: &str, generation: u64, now: u64) -> Option<Claims> {
        let k = key(token);
        let mut entries = crate::sync::lock(&self.entries);
        let e = entries.get(&k)?;
        let fresh = e.generation == generation
            && e.exp
                .is_none_or(|exp| now < exp.saturating_add(self.leeway));
        if fresh {
            Some(e.claims.clone())
        } else {
            entries.remove(&k);
            None
        }
    }

    /// Remember that `token` passed every check against key set
    /// `generation`.
    pub(super) fn insert(&self, token: &str, claims: &Claims, generation: u64) {
        let exp = claims.get("exp").and_then(serde_json::Value::as_u64);
        let mut entries = crate::sync::lock(&self.entries);
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(
            key(token),
            Entry {
                claims: claims.clone(),
                exp,
                generation,
            },
        );
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        crate::sync::lock(&self.entries).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(exp: u64) -> Claims {
        json!({ "sub": "a", "exp": exp })
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn a_verified_token_is_served_until_exp_plus_leeway() {
        let cache = Verified::new(30);
        cache.insert("t", &claims(1000), 7);
        assert_eq!(cache.get("t", 7, 999), Some(claims(1000)));
        assert_eq!(cache.get("t", 7, 1029), Some(claims(1000)));
        // Past exp + leeway: the full check must see it (and refuse it).
        assert_eq!(cache.get("t", 7, 1030), None);
        assert_eq!(cache.len(), 0, "an expired entry is dropped");
    }

    #[test]
    fn another_key_set_or_another_token_misses() {
        let cache = Verified::new(0);
        cache.insert("t", &claims(1000), 7);
        assert_eq!(cache.get("t", 8, 10), None, "the JWKS was fetched again");
        cache.insert("t", &claims(1000), 8);
        assert_eq!(cache.get("t2", 8, 10), None);
        assert_eq!(cache.get("t", 8, 10), Some(claims(1000)));
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = Verified::new(0);
        for i in 0..CAPACITY + 10 {
            cache.insert(&format!("t{i}"), &claims(1000), 1);
        }
        assert!(cache.len() <= CAPACITY);
        assert_eq!(
            cache.get(&format!("t{}", CAPACITY + 9), 1, 10),
            Some(claims(1000))
        );
    }
}
