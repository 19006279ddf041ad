//! `herald token`: mint a test token with the configured HMAC secret, so
//! the README's tour works with authentication on. Tokens for RSA, EC and
//! EdDSA keys come from the identity provider that holds the private key.

use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header, encode};
use serde_json::{Map, Value, json};

use super::config::AuthConfig;
use super::keys::read_secret_file;

/// What to put in the token.
#[derive(Debug, Clone)]
pub struct MintRequest {
    pub sub: String,
    /// Patterns for the `auth.channels_claim` claim.
    pub channels: Vec<String>,
    /// Extra claims: `name=value`, the value read as JSON when it parses
    /// (`teams=[1,2]`), else as a string.
    pub claims: Vec<String>,
    pub ttl_secs: u64,
    pub alg: Algorithm,
}

/// A signed token for `request`, or why not.
pub fn mint(config: &AuthConfig, request: &MintRequest) -> Result<String, String> {
    let secret = match (&config.hmac_secret, &config.hmac_secret_file) {
        (Some(s), _) => s.expose().to_string(),
        (None, Some(path)) => read_secret_file(path)?,
        (None, None) => {
            return Err(
                "herald token signs with auth.hmac_secret (or auth.hmac_secret_file), \
                        which this configuration does not set; tokens for public keys come \
                        from whoever holds the private key"
                    .into(),
            );
        }
    };
    if request.alg.family() != AlgorithmFamily::Hmac {
        return Err(format!(
            "--alg {:?}: herald token signs with the HMAC secret (HS256, HS384, HS512)",
            request.alg
        ));
    }
    if !config.algorithms.is_empty() && !config.algorithms.contains(&request.alg) {
        return Err(format!(
            "--alg {:?} is not in auth.algorithms {:?}",
            request.alg, config.algorithms
        ));
    }
    if request.sub.is_empty() {
        return Err("--sub must not be empty".into());
    }
    if request.ttl_secs == 0 {
        return Err("--ttl must be greater than 0".into());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let mut claims = Map::new();
    claims.insert("sub".into(), json!(request.sub));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + request.ttl_secs));
    if let Some(iss) = &config.issuer {
        claims.insert("iss".into(), json!(iss));
    }
    if let Some(aud) = &config.audience {
        claims.insert("aud".into(), json!(aud));
    }
    if !request.channels.is_empty() {
        let Some(name) = &config.channels_claim else {
            return Err(
                "--channel needs auth.channels_claim (the claim that grants extra \
                        channels), which this configuration does not set"
                    .into(),
            );
        };
        claims.insert(name.clone(), json!(request.channels));
    }
    for claim in &request.claims {
        let (name, value) = claim
            .split_once('=')
            .ok_or_else(|| format!("--claim {claim}: write name=value"))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.into()));
        claims.insert(name.to_string(), value);
    }
    let key = EncodingKey::from_secret(secret.as_bytes()).map_err(|e| e.to_string())?;
    encode(&Header::new(request.alg), &claims, &key).map_err(|e| e.to_string())
}

/// Kinds of key pair [`SigningKey::generate`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa2048,
    P256,
    P384,
    Ed25519,
}

/// A freshly generated key pair, as PEM, and its default algorithm: for
/// tests and the load generator, which mint real tokens for real keys.
#[derive(Clone)]
pub struct SigningKey {
    pub alg: Algorithm,
    private_pem: String,
    public_pem: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub fn generate(kind: KeyKind) -> Result<Self, String> {
        use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
        use aws_lc_rs::signature::{self as sig, KeyPair};
        let fail = |_| format!("cannot generate a {kind:?} key");
        let (alg, private, public): (Algorithm, Vec<u8>, Vec<u8>) = match kind {
            KeyKind::Rsa2048 => {
                let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .map_err(fail)?;
                let private =
                    AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&pair).map_err(fail)?;
                let public: PublicKeyX509Der<'_> = pair.public_key().as_der().map_err(fail)?;
                (
                    Algorithm::RS256,
                    private.as_ref().to_vec(),
                    public.as_ref().to_vec(),
                )
            }
            KeyKind::P256 | KeyKind::P384 => {
                let (signing, alg) = if kind == KeyKind::P256 {
                    (&sig::ECDSA_P256_SHA256_FIXED_SIGNING, Algorithm::ES256)
                } else {
                    (&sig::ECDSA_P384_SHA384_FIXED_SIGNING, Algorithm::ES384)
                };
                let pair = sig::EcdsaKeyPair::generate(signing).map_err(fail)?;
                let private = pair.to_pkcs8v1().map_err(fail)?;
                let public: PublicKeyX509Der<'_> = pair.public_key().as_der().map_err(fail)?;
                (alg, private.as_ref().to_vec(), public.as_ref().to_vec())
            }
            KeyKind::Ed25519 => {
                let pair = sig::Ed25519KeyPair::generate().map_err(fail)?;
                let private = pair.to_pkcs8v1().map_err(fail)?;
                let public: PublicKeyX509Der<'_> = pair.public_key().as_der().map_err(fail)?;
                (
                    Algorithm::EdDSA,
                    private.as_ref().to_vec(),
                    public.as_ref().to_vec(),
                )
            }
        };
        Ok(Self {
            alg,
            private_pem: pem("PRIVATE KEY", &private),
            public_pem: pem("PUBLIC KEY", &public),
        })
    }

    /// The public key, as a PEM file herald reads (`auth.public_key_files`).
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// The private key (PKCS#8 PEM).
    pub fn private_pem(&self) -> &str {
        &self.private_pem
    }

    fn encoding_key(&self) -> Result<EncodingKey, String> {
        let pem = self.private_pem.as_bytes();
        match self.alg.family() {
            AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(pem),
            AlgorithmFamily::Ec => EncodingKey::from_ec_pem(pem),
            AlgorithmFamily::Ed => EncodingKey::from_ed_pem(pem),
            _ => return Err("not an asymmetric key".into()),
        }
        .map_err(|e| e.to_string())
    }

    /// A token with `claims`, signed with the key's algorithm (or `alg`
    /// of the same family, e.g. PS256 with an RSA key), naming `kid`.
    pub fn sign(
        &self,
        claims: &Value,
        alg: Option<Algorithm>,
        kid: Option<&str>,
    ) -> Result<String, String> {
        let mut header = Header::new(alg.unwrap_or(self.alg));
        header.kid = kid.map(str::to_string);
        encode(&header, claims, &self.encoding_key()?).map_err(|e| e.to_string())
    }

    /// The public key as a JWKS entry with `kid`.
    pub fn jwk(&self, kid: &str) -> Result<Value, String> {
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&self.encoding_key()?, self.alg)
            .map_err(|e| e.to_string())?;
        jwk.common.key_id = Some(kid.to_string());
        serde_json::to_value(jwk).map_err(|e| e.to_string())
    }
}

/// DER as PEM with `label`.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
