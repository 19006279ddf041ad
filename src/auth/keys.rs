//! Verification keys: the HMAC secret, PEM public keys, JWKS entries.
//!
//! Each key carries its own [`Validation`] whose `algorithms` are those the
//! key can check *and* the allowlist permits: an RSA key only ever checks
//! RS*/PS* signatures, an HMAC secret only HS*. That is what refuses the
//! classic confusion (an HS256 token "signed" with the RSA public key as
//! the HMAC secret): HS256 is checked with the configured secret only, and
//! jsonwebtoken itself refuses an HMAC verifier over a non-HMAC key.

use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, Validation};

use super::config::{AuthConfig, check_hmac_secret};

/// One key and the checks a token verified with it must pass.
#[derive(Debug, Clone)]
pub(super) struct VerifyKey {
    /// The JWKS `kid`; static keys have none and are tried for any token.
    pub(super) kid: Option<String>,
    /// Where it came from, for logs (never the key itself).
    pub(super) origin: String,
    pub(super) key: DecodingKey,
    pub(super) validation: Validation,
}

impl VerifyKey {
    /// Whether this key may check a token signed with `alg`.
    pub(super) fn checks(&self, alg: Algorithm) -> bool {
        self.validation.algorithms.contains(&alg)
    }
}

/// The claim checks shared by every key (`algorithms` left empty).
pub(super) fn base_validation(config: &AuthConfig) -> Validation {
    let mut v = Validation::new(Algorithm::HS256);
    v.algorithms.clear();
    v.leeway = config.leeway_secs;
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut required = vec!["sub"];
    if config.require_exp {
        required.push("exp");
    }
    if let Some(iss) = &config.issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    match &config.audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        // Without a configured audience, `aud` is not herald's to judge.
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

/// The allowlist in effect: `auth.algorithms`, or every algorithm the
/// configured key sources can check (any asymmetric one for a JWKS,
/// whose keys change).
pub(super) fn allowed_algorithms(config: &AuthConfig, static_keys: &[VerifyKey]) -> Vec<Algorithm> {
    if !config.algorithms.is_empty() {
        return config.algorithms.clone();
    }
    let mut allowed: Vec<Algorithm> = Vec::new();
    let mut add = |alg: Algorithm| {
        if !allowed.contains(&alg) {
            allowed.push(alg);
        }
    };
    for key in static_keys {
        key.validation.algorithms.iter().copied().for_each(&mut add);
    }
    if config.jwks_url.is_some() {
        for family in [
            AlgorithmFamily::Rsa,
            AlgorithmFamily::Ec,
            AlgorithmFamily::Ed,
        ] {
            family.algorithms().iter().copied().for_each(&mut add);
        }
    }
    allowed
}

/// A key whose own algorithms are narrowed to `allowed`; `None` when none
/// is left (the key could never check a token).
fn restrict(
    kid: Option<String>,
    origin: String,
    key: DecodingKey,
    own: &[Algorithm],
    allowed: Option<&[Algorithm]>,
    base: &Validation,
) -> Option<VerifyKey> {
    let mut validation = base.clone();
    validation.algorithms = own
        .iter()
        .copied()
        .filter(|a| allowed.is_none_or(|allowed| allowed.contains(a)))
        .collect();
    if validation.algorithms.is_empty() {
        return None;
    }
    Some(VerifyKey {
        kid,
        origin,
        key,
        validation,
    })
}

/// A key-loading problem: the key (`auth.…`) and why.
pub(super) type KeyError = (String, String);

/// The HMAC secret and the PEM files of `config`, each limited to the
/// explicit allowlist when there is one.
pub(super) fn load_static(
    config: &AuthConfig,
    base: &Validation,
) -> Result<Vec<VerifyKey>, KeyError> {
    let explicit = (!config.algorithms.is_empty()).then_some(config.algorithms.as_slice());
    let mut keys = Vec::new();
    let secret = match (&config.hmac_secret, &config.hmac_secret_file) {
        (Some(s), _) => Some(("auth.hmac_secret", s.expose().to_string())),
        (None, Some(path)) => {
            let text =
                read_secret_file(path).map_err(|p| ("auth.hmac_secret_file".to_string(), p))?;
            check_hmac_secret(&text).map_err(|p| {
                (
                    "auth.hmac_secret_file".to_string(),
                    format!("{}: {p}", path.display()),
                )
            })?;
            Some(("auth.hmac_secret_file", text))
        }
        (None, None) => None,
    };
    if let Some((origin, secret)) = secret {
        let key = DecodingKey::from_secret(secret.as_bytes())
            .map_err(|e| (origin.to_string(), e.to_string()))?;
        let own = AlgorithmFamily::Hmac.algorithms();
        keys.extend(restrict(None, origin.into(), key, own, explicit, base));
    }
    for path in &config.public_key_files {
        let (key, own) = load_pem(path).map_err(|p| {
            (
                "auth.public_key_files".to_string(),
                format!("{}: {p}", path.display()),
            )
        })?;
        let origin = path.display().to_string();
        match restrict(None, origin, key, &own, explicit, base) {
            Some(k) => keys.push(k),
            None => {
                return Err((
                    "auth.public_key_files".into(),
                    format!(
                        "{}: checks {own:?}, none of which auth.algorithms allows",
                        path.display()
                    ),
                ));
            }
        }
    }
    Ok(keys)
}

/// A secret from a file, without surrounding whitespace (editors add a
/// final newline).
pub(super) fn read_secret_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(text.to_string())
}

/// A PEM public key and the algorithms it can check.
pub(super) fn load_pem(path: &Path) -> Result<(DecodingKey, Vec<Algorithm>), String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    parse_pem(&pem)
}

pub(super) fn parse_pem(pem: &[u8]) -> Result<(DecodingKey, Vec<Algorithm>), String> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("PRIVATE KEY") {
        return Err("is a private key; give herald the public key \
                    (`openssl pkey -in key.pem -pubout`)"
            .into());
    }
    if !text.contains("-----BEGIN") {
        return Err("not a PEM file".into());
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok((key, AlgorithmFamily::Rsa.algorithms().to_vec()));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok((key, vec![Algorithm::EdDSA]));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        // The uncompressed point: 0x04, then x and y of the curve's size.
        let alg = match key.kind() {
            DecodingKeyKind::SecretOrDer(point) if point.len() == 65 => Algorithm::ES256,
            DecodingKeyKind::SecretOrDer(point) if point.len() == 97 => Algorithm::ES384,
            _ => return Err("an EC key on a curve other than P-256 or P-384".into()),
        };
        return Ok((key, vec![alg]));
    }
    Err("not a public key herald can use (RSA, EC P-256/P-384 or Ed25519)".into())
}

/// A JWKS entry as a verification key, or why it is skipped. Symmetric
/// (`oct`) keys are never taken from a JWKS: a key set is public.
pub(super) fn from_jwk(
    jwk: &Jwk,
    allowed: &[Algorithm],
    base: &Validation,
) -> Result<VerifyKey, &'static str> {
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Err("an encryption key (use = enc)");
    }
    let own: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms().to_vec(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return Err("an unsupported curve"),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => return Err("an unsupported curve"),
        },
        AlgorithmParameters::OctetKey(_) => return Err("a symmetric key"),
        _ => return Err("an unsupported key type"),
    };
    // A key that names its algorithm checks that one only.
    let own = match jwk.common.key_algorithm {
        None => own,
        Some(named) => match Algorithm::try_from(named) {
            Ok(alg) if own.contains(&alg) => vec![alg],
            _ => return Err("an `alg` that does not fit its key type"),
        },
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "malformed key parameters")?;
    let kid = jwk.common.key_id.clone();
    let origin = format!("jwks kid={}", kid.as_deref().unwrap_or("-"));
    restrict(kid, origin, key, &own, Some(allowed), base).ok_or("an algorithm not allowed")
}
