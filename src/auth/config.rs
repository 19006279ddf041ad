//! `[auth]` (clients' tokens and channel policy) and `[admin]` (the admin
//! token and listener).
//!
//! Secrets (`hmac_secret`, `[admin] token`) are [`Secret`]s: their `Debug`
//! form is redacted, so a configuration printed for diagnosis never shows
//! them. Files named here (`*_file`, `public_key_files`) are read when
//! herald starts, not by [`AuthConfig::validate`], which only checks what
//! the configuration itself says.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::policy::Template;

/// Whether clients need a token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No identity: every client may subscribe to every channel.
    #[default]
    None,
    /// Clients present a JWT; channels are checked against the policy.
    Jwt,
}

/// A secret from the configuration: printed as `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    /// A string; also a number, because an environment variable made only
    /// of digits reaches serde as one.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret::new(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret::new(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret::new(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Serve without authentication on an address other than loopback
    /// (clients with `mode = "none"`, producers without API keys). Without
    /// it herald refuses to start in that case.
    pub allow_anonymous: bool,
    /// Shared secret of HS256/384/512 tokens (at least 32 bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hmac_secret: Option<Secret>,
    /// A file holding the HMAC secret (surrounding whitespace ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hmac_secret_file: Option<PathBuf>,
    /// PEM public keys: RSA (RS*, PS*), EC P-256 (ES256) or P-384 (ES384),
    /// Ed25519 (EdDSA). Several for key rotation.
    pub public_key_files: Vec<PathBuf>,
    /// A JSON Web Key Set, fetched at start, every `jwks_refresh_secs`,
    /// and when a token names a key id it does not know.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    pub jwks_refresh_secs: u64,
    /// Least time between two fetches caused by unknown key ids, so a
    /// flood of made-up `kid`s cannot hammer the identity provider.
    pub jwks_cooldown_secs: u64,
    /// Accepted `alg`s; empty: every algorithm the configured keys support.
    pub algorithms: Vec<Algorithm>,
    /// Required `iss`, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud` (one of the token's), when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`; a live session is closed
    /// this long after its token's `exp`.
    pub leeway_secs: u64,
    /// Refuse tokens without `exp` (they would never expire).
    pub require_exp: bool,
    /// Channels every authenticated client may subscribe to. `{claim}`
    /// is replaced by the claim's value (each item of a list claim); `*`,
    /// `?` and `[...]` are globs.
    pub channels: Vec<String>,
    /// A claim holding extra channel patterns (globs) the token grants.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels_claim: Option<String>,
    /// Channels (globs) a client without a token may subscribe to. Empty:
    /// a client without a token is refused (4001).
    pub anonymous_channels: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::None,
            allow_anonymous: false,
            hmac_secret: None,
            hmac_secret_file: None,
            public_key_files: Vec::new(),
            jwks_url: None,
            jwks_refresh_secs: 300,
            jwks_cooldown_secs: 10,
            algorithms: Vec::new(),
            issuer: None,
            audience: None,
            leeway_secs: 30,
            require_exp: true,
            channels: vec!["user:{sub}".into(), "broadcast".into()],
            channels_claim: None,
            anonymous_channels: Vec::new(),
        }
    }
}

/// Shortest HMAC secret accepted: RFC 7518 asks for a key at least as long
/// as the hash (32 bytes for HS256).
pub const MIN_HMAC_SECRET: usize = 32;
/// Shortest admin token accepted.
pub const MIN_ADMIN_TOKEN: usize = 16;

impl AuthConfig {
    /// Whether an HMAC secret is configured (inline or in a file).
    pub fn has_hmac(&self) -> bool {
        self.hmac_secret.is_some() || self.hmac_secret_file.is_some()
    }

    /// Checks serde cannot express: the offending key (under `auth.`) and
    /// why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, problem: String| Err((format!("auth.{key}"), problem));
        if self.hmac_secret.is_some() && self.hmac_secret_file.is_some() {
            return err(
                "hmac_secret_file",
                "set hmac_secret or hmac_secret_file, not both".into(),
            );
        }
        if let Some(secret) = &self.hmac_secret {
            check_hmac_secret(secret.expose()).or_else(|p| err("hmac_secret", p))?;
        }
        let has_keys =
            self.has_hmac() || !self.public_key_files.is_empty() || self.jwks_url.is_some();
        match self.mode {
            AuthMode::None => {
                for (key, set) in [
                    ("hmac_secret", self.hmac_secret.is_some()),
                    ("hmac_secret_file", self.hmac_secret_file.is_some()),
                    ("public_key_files", !self.public_key_files.is_empty()),
                    ("jwks_url", self.jwks_url.is_some()),
                    ("anonymous_channels", !self.anonymous_channels.is_empty()),
                ] {
                    if set {
                        return err(key, "only used when auth.mode = \"jwt\"".into());
                    }
                }
            }
            AuthMode::Jwt if !has_keys => {
                return err(
                    "mode",
                    "\"jwt\" needs keys: auth.hmac_secret (or hmac_secret_file), \
                     auth.public_key_files or auth.jwks_url"
                        .into(),
                );
            }
            AuthMode::Jwt => {}
        }
        if let Some(url) = &self.jwks_url {
            check_jwks_url(url).or_else(|p| err("jwks_url", p))?;
            if self.jwks_refresh_secs == 0 {
                return err("jwks_refresh_secs", "must be greater than 0".into());
            }
        }
        for alg in &self.algorithms {
            let usable = match alg.family() {
                AlgorithmFamily::Hmac => self.has_hmac(),
                _ => !self.public_key_files.is_empty() || self.jwks_url.is_some(),
            };
            if !usable {
                let needs = if alg.family() == AlgorithmFamily::Hmac {
                    "auth.hmac_secret"
                } else {
                    "auth.public_key_files or auth.jwks_url"
                };
                return err(
                    "algorithms",
                    format!("{alg:?} is listed but no key can check it (it needs {needs})"),
                );
            }
        }
        if self.leeway_secs > 3600 {
            return err("leeway_secs", "at most 3600 seconds".into());
        }
        for (key, value) in [("issuer", &self.issuer), ("audience", &self.audience)] {
            if value.as_deref().is_some_and(str::is_empty) {
                return err(
                    key,
                    "must not be empty (leave it out to not check it)".into(),
                );
            }
        }
        if self.channels_claim.as_deref().is_some_and(str::is_empty) {
            return err("channels_claim", "must not be empty".into());
        }
        for pattern in &self.channels {
            Template::parse(pattern)
                .map_err(|p| (String::from("auth.channels"), format!("`{pattern}`: {p}")))?;
        }
        for pattern in &self.anonymous_channels {
            super::policy::check_glob(pattern).map_err(|p| {
                (
                    String::from("auth.anonymous_channels"),
                    format!("`{pattern}`: {p}"),
                )
            })?;
        }
        Ok(())
    }
}

/// An HMAC secret long enough, and not a PEM key pasted by mistake (an
/// HMAC secret that is a public key is exactly what an attacker can sign
/// with).
pub fn check_hmac_secret(secret: &str) -> Result<(), String> {
    if secret.contains("-----BEGIN") {
        return Err("is a PEM key; an HMAC secret must be a random secret \
                    (public keys go in auth.public_key_files)"
            .into());
    }
    if secret.len() < MIN_HMAC_SECRET {
        return Err(format!(
            "at least {MIN_HMAC_SECRET} bytes (`herald keys new` prints a random one)"
        ));
    }
    Ok(())
}

/// HTTPS, or plain HTTP to a loopback address (a local identity provider,
/// tests): keys fetched in clear over a network could be replaced.
fn check_jwks_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback_host(&parsed) => Ok(()),
        "http" => Err("must be https:// (http:// only to a loopback address)".into()),
        other => Err(format!("scheme {other}: must be https://")),
    }
}

fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token required by `/metrics`, `/readyz` and `/admin/*`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// A file holding the admin token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// A second listener for `/metrics`, `/readyz` and `/admin/*`; when
    /// set they leave the public listener (`/healthz` stays on both).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// TLS on the admin listener (`[admin.tls]`, as `[server.tls]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::TlsConfig>,
}

impl AdminConfig {
    pub fn validate(&self, public: SocketAddr) -> Result<(), (String, String)> {
        if self.token.is_some() && self.token_file.is_some() {
            return Err((
                "admin.token_file".into(),
                "set token or token_file, not both".into(),
            ));
        }
        if let Some(token) = &self.token {
            check_admin_token(token.expose()).map_err(|p| ("admin.token".into(), p))?;
        }
        if self.tls.is_some() && self.listen.is_none() {
            return Err((
                "admin.tls".into(),
                "needs admin.listen (without it the admin endpoints use server.tls)".into(),
            ));
        }
        if let Some(listen) = self.listen
            && listen == public
            && listen.port() != 0
        {
            return Err((
                "admin.listen".into(),
                format!("{listen} is server.listen; give the admin listener its own port"),
            ));
        }
        Ok(())
    }
}

pub fn check_admin_token(token: &str) -> Result<(), String> {
    if token.len() < MIN_ADMIN_TOKEN || token.chars().any(|c| c.is_whitespace()) {
        return Err(format!(
            "at least {MIN_ADMIN_TOKEN} characters without whitespace \
             (`herald keys new` prints a random one)"
        ));
    }
    Ok(())
}

/// Refuse to serve unauthenticated on an address other than loopback
/// unless `auth.allow_anonymous` says so: `open_ingest` is whether an HTTP
/// source accepts events without an API key.
pub fn check_exposure(
    listen: SocketAddr,
    auth: &AuthConfig,
    open_ingest: bool,
) -> Result<(), (String, String)> {
    if listen.ip().is_loopback() || auth.allow_anonymous {
        return Ok(());
    }
    let mut open = Vec::new();
    if auth.mode == AuthMode::None {
        open.push(
            "auth.mode = \"none\" (any client can read any channel); set auth.mode = \"jwt\" \
             with auth.hmac_secret, auth.public_key_files or auth.jwks_url",
        );
    }
    if open_ingest {
        open.push(
            "the HTTP source has no api_keys (anyone can post events); set sources.api_keys \
             or sources.api_keys_file",
        );
    }
    if open.is_empty() {
        return Ok(());
    }
    Err((
        "server.listen".into(),
        format!(
            "{listen} is not a loopback address and herald would serve without \
             authentication: {}; or set auth.allow_anonymous = true to accept that",
            open.join("; ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt() -> AuthConfig {
        AuthConfig {
            mode: AuthMode::Jwt,
            hmac_secret: Some(Secret::new("s".repeat(32))),
            ..AuthConfig::default()
        }
    }

    fn key_of(config: &AuthConfig) -> String {
        config.validate().expect_err("invalid").0
    }

    #[test]
    fn the_default_is_off_and_valid() {
        let config = AuthConfig::default();
        assert_eq!(config.mode, AuthMode::None);
        config.validate().expect("valid");
        jwt().validate().expect("valid");
    }

    #[test]
    fn jwt_without_keys_and_keys_without_jwt_are_refused() {
        let mut c = jwt();
        c.hmac_secret = None;
        assert_eq!(key_of(&c), "auth.mode");
        let c = AuthConfig {
            public_key_files: vec!["k.pem".into()],
            ..AuthConfig::default()
        };
        assert_eq!(key_of(&c), "auth.public_key_files");
    }

    #[test]
    fn weak_or_pem_hmac_secrets_are_refused() {
        let mut c = jwt();
        c.hmac_secret = Some(Secret::new("short"));
        assert_eq!(key_of(&c), "auth.hmac_secret");
        c.hmac_secret = Some(Secret::new(
            "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n",
        ));
        let (key, problem) = c.validate().expect_err("a PEM");
        assert_eq!(key, "auth.hmac_secret");
        assert!(problem.contains("PEM"), "{problem}");
    }

    #[test]
    fn an_algorithm_no_key_can_check_is_refused() {
        let mut c = jwt();
        c.algorithms = vec![Algorithm::RS256];
        assert_eq!(key_of(&c), "auth.algorithms");
        let c = AuthConfig {
            mode: AuthMode::Jwt,
            public_key_files: vec!["rs.pem".into()],
            algorithms: vec![Algorithm::HS256],
            ..AuthConfig::default()
        };
        assert_eq!(key_of(&c), "auth.algorithms");
    }

    #[test]
    fn jwks_over_plain_http_only_to_loopback() {
        let mut c = jwt();
        for ok in [
            "https://idp.example/.well-known/jwks.json",
            "http://127.0.0.1:9/jwks",
            "http://localhost/jwks",
            "http://[::1]:8/k",
        ] {
            c.jwks_url = Some(ok.into());
            c.validate().expect(ok);
        }
        for bad in ["http://idp.example/jwks", "ftp://x/y", "not a url"] {
            c.jwks_url = Some(bad.into());
            assert_eq!(key_of(&c), "auth.jwks_url", "{bad}");
        }
    }

    #[test]
    fn bad_channel_patterns_are_named() {
        let mut c = jwt();
        c.channels = vec!["user:{sub".into()];
        assert_eq!(key_of(&c), "auth.channels");
        c.channels = vec!["team:{}".into()];
        assert_eq!(key_of(&c), "auth.channels");
        let mut c = jwt();
        c.anonymous_channels = vec!["news:[".into()];
        assert_eq!(key_of(&c), "auth.anonymous_channels");
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let c = jwt();
        let text = format!("{c:?}");
        assert!(!text.contains("ssssssss"), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
    }

    #[test]
    fn exposure_is_refused_off_loopback_unless_allowed() {
        let public: SocketAddr = "0.0.0.0:8080".parse().expect("addr");
        let local: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        let open = AuthConfig::default();
        check_exposure(local, &open, true).expect("loopback is fine");
        let (key, problem) = check_exposure(public, &open, false).expect_err("refused");
        assert_eq!(key, "server.listen");
        assert!(problem.contains("auth.mode"), "{problem}");
        assert!(problem.contains("auth.allow_anonymous"), "{problem}");
        let (_, problem) = check_exposure(public, &jwt(), true).expect_err("open ingest");
        assert!(problem.contains("api_keys"), "{problem}");
        check_exposure(public, &jwt(), false).expect("jwt and keyed ingest");
        let allowed = AuthConfig {
            allow_anonymous: true,
            ..AuthConfig::default()
        };
        check_exposure(public, &allowed, true).expect("explicitly allowed");
    }

    #[test]
    fn admin_token_rules() {
        let public: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        let admin = AdminConfig {
            token: Some(Secret::new("short")),
            ..AdminConfig::default()
        };
        assert_eq!(admin.validate(public).expect_err("short").0, "admin.token");
        let admin = AdminConfig {
            listen: Some(public),
            ..AdminConfig::default()
        };
        assert_eq!(admin.validate(public).expect_err("same").0, "admin.listen");
    }
}
