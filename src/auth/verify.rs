//! Token verification: which keys may check a token, and what a failure
//! tells the client.
//!
//! 1. The header's `alg` must be in the allowlist. `none` cannot even be
//!    parsed as an algorithm, and is named in the refusal.
//! 2. Static keys (HMAC secret, PEM files) whose algorithms include `alg`
//!    are tried, whatever the `kid`: they are few, and a token minted by
//!    the operator's own backend may carry any `kid`.
//! 3. JWKS keys: the one with the token's `kid` (fetching the set again,
//!    rate-limited, when it is unknown), or every key of the algorithm
//!    when the token names none.
//!
//! Signature first, claims second (jsonwebtoken's order): an expired token
//! with a bad signature is a bad token (4001), not an expired one (4010).

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, TokenData, decode, decode_header};
use serde_json::{Map, Value};

use super::Rejection;
use super::cache::Verified;
use super::jwks::{Jwks, printable};
use super::keys::VerifyKey;

/// Longest token accepted (a JWT with a few dozen claims is ~1 KiB).
pub(super) const MAX_TOKEN_BYTES: usize = 16 * 1024;

pub(super) type Claims = Map<String, Value>;

/// Checks tokens against the configured keys.
#[derive(Debug)]
pub(super) struct Verifier {
    pub(super) allowed: Vec<Algorithm>,
    pub(super) static_keys: Vec<VerifyKey>,
    pub(super) jwks: Option<Arc<Jwks>>,
    /// Tokens that passed, for clients that reconnect with them.
    pub(super) verified: Verified,
}

/// One key's verdict.
enum Outcome {
    Valid(Claims),
    /// Not this key (bad signature, wrong key type): try the next.
    NotThisKey,
    /// The signature is good (or the token is broken for any key): final.
    Refused(Rejection),
}

impl Verifier {
    /// The token's claims when its signature and claims check out (or
    /// did, against the same keys, and it has not expired since).
    pub(super) async fn verify(&self, token: &str) -> Result<Claims, Rejection> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Rejection::invalid("token too long"));
        }
        let generation = self.jwks.as_ref().map_or(0, |j| j.generation());
        if let Some(claims) = self
            .verified
            .get(token, generation, crate::clock::now_ms() / 1000)
        {
            return Ok(claims);
        }
        let claims = self.verify_uncached(token).await?;
        self.verified.insert(token, &claims, generation);
        Ok(claims)
    }

    async fn verify_uncached(&self, token: &str) -> Result<Claims, Rejection> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Rejection::invalid("token too long"));
        }
        let header = decode_header(token).map_err(|_| header_problem(token))?;
        if !self.allowed.contains(&header.alg) {
            return Err(Rejection::Invalid(Cow::Owned(format!(
                "algorithm {:?} is not allowed",
                header.alg
            ))));
        }
        for key in self.static_keys.iter().filter(|k| k.checks(header.alg)) {
            match check(token, key) {
                Outcome::Valid(claims) => return Ok(claims),
                Outcome::Refused(r) => return Err(r),
                Outcome::NotThisKey => {}
            }
        }
        let Some(jwks) = &self.jwks else {
            return Err(Rejection::invalid("bad signature"));
        };
        let verdict = try_jwks(token, header.alg, header.kid.as_deref(), &jwks.keys());
        match (verdict, header.kid.as_deref()) {
            (Some(Ok(claims)), _) => Ok(claims),
            (Some(Err(r)), _) => Err(r),
            (None, Some(kid)) => {
                // A key id the cache does not hold: the provider may have
                // rotated its keys since the last fetch.
                if jwks.refetch_for_unknown_kid(kid).await
                    && let Some(verdict) = try_jwks(token, header.alg, Some(kid), &jwks.keys())
                {
                    return verdict;
                }
                tracing::debug!(kid = %printable(kid), "token names an unknown key id");
                Err(Rejection::invalid("unknown key id"))
            }
            (None, None) => Err(Rejection::invalid("bad signature")),
        }
    }
}

/// The JWKS keys' verdict; `None` when no key with the token's `kid`
/// (or, without a `kid`, no key at all) matched.
fn try_jwks(
    token: &str,
    alg: Algorithm,
    kid: Option<&str>,
    keys: &[VerifyKey],
) -> Option<Result<Claims, Rejection>> {
    let mut tried = false;
    for key in keys.iter().filter(|k| k.checks(alg)) {
        if kid.is_some() && key.kid.as_deref() != kid {
            continue;
        }
        tried = true;
        match check(token, key) {
            Outcome::Valid(claims) => return Some(Ok(claims)),
            Outcome::Refused(r) => return Some(Err(r)),
            Outcome::NotThisKey => {}
        }
    }
    tried.then(|| Err(Rejection::invalid("bad signature")))
}

fn check(token: &str, key: &VerifyKey) -> Outcome {
    match decode::<Claims>(token, &key.key, &key.validation) {
        Ok(TokenData { claims, .. }) => {
            tracing::trace!(key = %key.origin, "token signature verified");
            Outcome::Valid(claims)
        }
        Err(e) => match e.kind() {
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey => Outcome::NotThisKey,
            kind => Outcome::Refused(rejection(kind)),
        },
    }
}

/// What a claim failure tells the client.
fn rejection(kind: &ErrorKind) -> Rejection {
    match kind {
        ErrorKind::ExpiredSignature => Rejection::Expired,
        ErrorKind::ImmatureSignature => Rejection::invalid("token not valid yet (nbf)"),
        ErrorKind::InvalidIssuer => Rejection::invalid("wrong issuer (iss)"),
        ErrorKind::InvalidAudience => Rejection::invalid("wrong audience (aud)"),
        ErrorKind::InvalidSubject => Rejection::invalid("wrong subject (sub)"),
        ErrorKind::MissingRequiredClaim(c) => {
            Rejection::Invalid(Cow::Owned(format!("token has no `{}` claim", printable(c))))
        }
        ErrorKind::InvalidClaimFormat(c) => {
            Rejection::Invalid(Cow::Owned(format!("claim `{}` is malformed", printable(c))))
        }
        _ => Rejection::invalid("malformed token"),
    }
}

/// Why the header could not be read: name an unsupported `alg` (`none`
/// above all), else call the token malformed.
fn header_problem(token: &str) -> Rejection {
    let alg = token
        .split('.')
        .next()
        .and_then(|h| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .and_then(|header| header.get("alg")?.as_str().map(str::to_string));
    match alg.filter(|a| a.parse::<Algorithm>().is_err()) {
        Some(alg) => Rejection::Invalid(Cow::Owned(format!(
            "algorithm `{}` is not allowed",
            printable(&alg)
        ))),
        None => Rejection::invalid("malformed token"),
    }
}
