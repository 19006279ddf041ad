//! Identity and authorization.
//!
//! - [`Auth`]: built once from `[auth]`; turns a client's token (or its
//!   absence) into a [`Principal`], at connect and on `refresh`;
//! - [`Principal::check`]: **the** channel check. The WebSocket gateway,
//!   the SSE gateway and the history API all ask it, at subscribe time
//!   only (never per notification);
//! - [`policy`]: `auth.channels` templates, the `channels_claim` and
//!   anonymous channels;
//! - `verify`, `keys`, `jwks`: signature and claim checks with
//!   jsonwebtoken, static keys and the JWKS cache;
//! - [`api_keys`]: producers' keys for `POST /events/{topic}`;
//! - [`admin`]: the admin token;
//! - [`mint`]: `herald token` and `herald keys new`.
//!
//! Invariants:
//! - with `mode = "none"` every principal is [`Principal::open`], which
//!   grants every channel: herald behaves as before authentication existed;
//! - a token is never logged: callers log [`redact_query`]'d URLs, and
//!   rejections name the failed check, not the token;
//! - nothing here is node-local: a token valid on one node is valid on
//!   every node with the same configuration, so a client resumes anywhere.

pub mod admin;
pub mod api_keys;
mod cache;
pub mod config;
mod jwks;
mod keys;
pub mod mint;
pub mod policy;
mod verify;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, header};
use tokio_util::sync::CancellationToken;

pub use config::{AdminConfig, AuthConfig, AuthMode, Secret};
use jwks::Jwks;
pub use jwks::Status as JwksStatus;
use policy::{Grants, Policy};
use verify::Verifier;

/// Why a client's token was refused. Every variant but `Expired` is
/// "authentication failed" (close 4001, HTTP 401); `Expired` is 4010.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No token, and clients without one get no channel.
    Missing,
    /// Bad signature, malformed, wrong `iss`/`aud`, `nbf` ahead, `alg`
    /// not allowed, unknown key id, ...: the check that failed.
    Invalid(Cow<'static, str>),
    /// `exp` (plus the leeway) has passed.
    Expired,
    /// A refresh token for another `sub`.
    OtherSubject,
    /// Authentication is off: there is no token to refresh.
    Disabled,
}

impl Rejection {
    fn invalid(reason: &'static str) -> Self {
        Rejection::Invalid(Cow::Borrowed(reason))
    }

    pub fn is_expired(&self) -> bool {
        matches!(self, Rejection::Expired)
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::Missing => "missing",
            Rejection::Invalid(_) => "invalid",
            Rejection::Expired => "expired",
            Rejection::OtherSubject => "other_subject",
            Rejection::Disabled => "disabled",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Missing => f.write_str("a token is required"),
            Rejection::Invalid(why) => write!(f, "invalid token: {why}"),
            Rejection::Expired => f.write_str("token expired"),
            Rejection::OtherSubject => f.write_str("the refresh token is for another subject"),
            Rejection::Disabled => {
                f.write_str("authentication is off; there is nothing to refresh")
            }
        }
    }
}

/// A channel the principal may not subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Forbidden(&'static str);

/// Who a client is, and what it may subscribe to.
#[derive(Debug)]
pub struct Principal {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// Authentication is off: every channel.
    Open,
    /// No token: the anonymous channels.
    Anonymous(Arc<Grants>),
    User {
        sub: String,
        expires_at: Option<u64>,
        leeway: u64,
        fixed: Arc<Grants>,
        own: Grants,
    },
}

impl Principal {
    /// Every channel, no identity (`mode = "none"`).
    pub fn open() -> Self {
        Self { kind: Kind::Open }
    }

    /// The check every gateway makes before a subscription.
    pub fn check(&self, channel: &str) -> Result<(), Forbidden> {
        match &self.kind {
            Kind::Open => Ok(()),
            Kind::Anonymous(grants) if grants.allows(channel) => Ok(()),
            Kind::Anonymous(_) => Err(Forbidden("not granted to clients without a token")),
            Kind::User { fixed, own, .. } if fixed.allows(channel) || own.allows(channel) => Ok(()),
            Kind::User { .. } => Err(Forbidden("not granted by your token")),
        }
    }

    /// The token's `sub`, when there is a token.
    pub fn sub(&self) -> Option<&str> {
        match &self.kind {
            Kind::User { sub, .. } => Some(sub),
            _ => None,
        }
    }

    /// The token's `exp` (unix seconds), when it has one.
    pub fn expires_at(&self) -> Option<u64> {
        match &self.kind {
            Kind::User { expires_at, .. } => *expires_at,
            _ => None,
        }
    }

    /// When a live session must end: `exp` plus the leeway (unix seconds).
    pub fn closes_at(&self) -> Option<u64> {
        match &self.kind {
            Kind::User {
                expires_at, leeway, ..
            } => expires_at.map(|e| e.saturating_add(*leeway)),
            _ => None,
        }
    }

    /// Time left before [`Self::closes_at`], from the wall clock.
    pub fn time_left(&self) -> Option<Duration> {
        let closes = Duration::from_secs(self.closes_at()?);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Some(closes.saturating_sub(now))
    }

    /// The channels a session joins when it names none: `user:{sub}` when
    /// authenticated, then `configured` (`delivery.default_channels`),
    /// each only when granted.
    pub fn default_channels(&self, configured: &[String]) -> Vec<String> {
        let own = self.sub().map(|sub| format!("user:{sub}"));
        let mut channels: Vec<String> = Vec::new();
        for c in own.iter().chain(configured) {
            if self.check(c).is_ok() && !channels.contains(c) {
                channels.push(c.clone());
            }
        }
        channels
    }
}

/// A configuration problem found while loading keys: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: key `{key}`: {problem}")]
pub struct AuthError {
    pub key: String,
    pub problem: String,
}

/// Token checks and the channel policy of one herald process.
#[derive(Debug)]
pub struct Auth {
    mode: AuthMode,
    leeway: u64,
    verifier: Option<Verifier>,
    policy: Option<Policy>,
}

impl Auth {
    /// Authentication off: every client is [`Principal::open`].
    pub fn disabled() -> Arc<Self> {
        Arc::new(Self {
            mode: AuthMode::None,
            leeway: 0,
            verifier: None,
            policy: None,
        })
    }

    /// Load the keys `config` names, fetch the JWKS (a failure is logged
    /// and retried in the background; the other keys work meanwhile) and
    /// keep it fresh until `stop`.
    pub async fn start(
        config: &AuthConfig,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, AuthError> {
        if config.mode == AuthMode::None {
            return Ok(Self::disabled());
        }
        let fail = |(key, problem): (String, String)| AuthError { key, problem };
        config.validate().map_err(fail)?;
        let base = keys::base_validation(config);
        let static_keys = keys::load_static(config, &base).map_err(fail)?;
        let allowed = keys::allowed_algorithms(config, &static_keys);
        let jwks = match &config.jwks_url {
            Some(url) => {
                let jwks = Jwks::new(
                    url.clone(),
                    allowed.clone(),
                    base,
                    Duration::from_secs(config.jwks_cooldown_secs),
                )
                .map_err(|problem| AuthError {
                    key: "auth.jwks_url".into(),
                    problem,
                })?;
                let jwks = Arc::new(jwks);
                match jwks.fetch().await {
                    Ok(n) => tracing::info!(url = %url, keys = n, "JWKS fetched"),
                    Err(e) => tracing::warn!(
                        url = %url,
                        error = %e,
                        "JWKS fetch failed at start; retrying in the background"
                    ),
                }
                jwks.spawn_refresh(Duration::from_secs(config.jwks_refresh_secs), stop);
                Some(jwks)
            }
            None => None,
        };
        let policy = Policy::new(
            &config.channels,
            config.channels_claim.as_deref(),
            &config.anonymous_channels,
        )
        .map_err(|problem| AuthError {
            key: "auth.channels".into(),
            problem,
        })?;
        tracing::info!(
            algorithms = ?allowed,
            static_keys = static_keys.len(),
            jwks = jwks.is_some(),
            "authentication on: clients need a JWT"
        );
        Ok(Arc::new(Self {
            mode: config.mode,
            leeway: config.leeway_secs,
            verifier: Some(Verifier {
                allowed,
                static_keys,
                jwks,
                verified: cache::Verified::new(config.leeway_secs),
            }),
            policy: Some(policy),
        }))
    }

    pub fn is_enabled(&self) -> bool {
        self.mode != AuthMode::None
    }

    /// Whether tokens can be checked at all: not when the only keys are a
    /// JWKS that was never fetched (every client would be refused). Once
    /// fetched, a failing refresh keeps the cached keys and stays ready.
    pub fn readiness(&self) -> Result<(), String> {
        let Some(verifier) = &self.verifier else {
            return Ok(());
        };
        match &verifier.jwks {
            Some(jwks) if verifier.static_keys.is_empty() => {
                let status = jwks.status();
                if status.fetched_once {
                    Ok(())
                } else {
                    Err(format!(
                        "the JWKS was never fetched, so no token can be checked: {}",
                        status
                            .last_error
                            .as_deref()
                            .unwrap_or("first fetch pending")
                    ))
                }
            }
            _ => Ok(()),
        }
    }

    /// The JWKS cache's state, when one is configured.
    pub fn jwks_status(&self) -> Option<JwksStatus> {
        let jwks = self.verifier.as_ref()?.jwks.as_ref()?;
        Some(jwks.status())
    }

    /// Who presents `token` (or no token).
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Principal, Rejection> {
        let (Some(verifier), Some(policy)) = (&self.verifier, &self.policy) else {
            return Ok(Principal::open());
        };
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            let anonymous = policy.anonymous();
            return if anonymous.is_empty() {
                Err(Rejection::Missing)
            } else {
                Ok(Principal {
                    kind: Kind::Anonymous(anonymous),
                })
            };
        };
        let claims = verifier.verify(token).await?;
        let sub = match claims.get("sub") {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(Rejection::invalid("`sub` must be a non-empty string")),
        };
        let expires_at = claims.get("exp").and_then(serde_json::Value::as_u64);
        let own = policy
            .grants_for(&claims)
            .map_err(|why| Rejection::Invalid(Cow::Owned(why)))?;
        Ok(Principal {
            kind: Kind::User {
                sub,
                expires_at,
                leeway: self.leeway,
                fixed: policy.fixed(),
                own,
            },
        })
    }

    /// A live session's new token: valid, and for the same `sub`.
    pub async fn refresh(&self, current: &Principal, token: &str) -> Result<Principal, Rejection> {
        if !self.is_enabled() {
            return Err(Rejection::Disabled);
        }
        if token.is_empty() {
            return Err(Rejection::Missing);
        }
        let next = self.authenticate(Some(token)).await?;
        if next.sub() != current.sub() {
            return Err(Rejection::OtherSubject);
        }
        Ok(next)
    }

    /// Warn about default channels no authenticated client is granted
    /// (they would be skipped silently otherwise).
    pub fn warn_ungranted(&self, default_channels: &[String]) {
        let Some(policy) = &self.policy else { return };
        for c in default_channels {
            if !policy.fixed().allows(c) {
                tracing::warn!(
                    channel = %c,
                    "delivery.default_channels names a channel auth.channels does not grant; \
                     sessions will not join it"
                );
            }
        }
    }
}

/// The value of an `Authorization: Bearer …` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// A client's token: the `token` query parameter (browsers cannot set
/// headers on a WebSocket), else `Authorization: Bearer`.
pub fn client_token(query: Option<&str>, headers: &HeaderMap) -> Option<String> {
    let from_query = query.and_then(|q| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .ok()?
            .into_iter()
            .find(|(k, v)| k == "token" && !v.is_empty())
            .map(|(_, v)| v)
    });
    from_query.or_else(|| bearer(headers).map(str::to_string))
}

/// `query` with the value of every `token` parameter replaced, for logs.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| {
            // Compare the decoded name: `tok%65n=` is a token too.
            let is_token = url::form_urlencoded::parse(pair.as_bytes())
                .next()
                .is_some_and(|(k, _)| k == "token");
            if is_token {
                "token=REDACTED".to_string()
            } else {
                pair.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests;
