//! The JSON Web Key Set cache.
//!
//! Fetched at start, then every `jwks_refresh_secs`, and again when a token
//! names a `kid` the cache does not hold (the identity provider rotated its
//! keys). Invariants:
//! - a failed fetch (server down, bad answer) keeps the keys already held,
//!   so an outage of the identity provider does not log everyone out; a
//!   successful fetch replaces them all (a key removed from the set stops
//!   working);
//! - fetches for unknown `kid`s are single-flight and at least
//!   `jwks_cooldown_secs` apart, so made-up key ids cannot turn herald
//!   into a flood against the provider;
//! - readers never wait for a fetch: the keys are swapped atomically.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, Validation};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::keys::{VerifyKey, from_jwk};

/// Longest a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest key set accepted.
const MAX_BODY: usize = 1024 * 1024;
/// First retry after a failed periodic fetch; doubles up to the refresh
/// interval.
const RETRY_FIRST: Duration = Duration::from_secs(2);

/// Why a fetch failed (the keys held stay in use).
#[derive(Debug, thiserror::Error)]
pub(super) enum JwksError {
    #[error("JWKS request failed: {0}")]
    Request(String),
    #[error("JWKS answered HTTP {0}")]
    Status(u16),
    #[error("JWKS larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("JWKS is not a JSON Web Key Set: {0}")]
    Parse(String),
}

/// Cached keys of one JWKS URL.
#[derive(Debug)]
pub(super) struct Jwks {
    url: String,
    client: reqwest::Client,
    allowed: Vec<Algorithm>,
    base: Validation,
    keys: ArcSwap<Vec<VerifyKey>>,
    cooldown: Duration,
    /// When the last fetch started, for the cooldown; also serializes
    /// fetches.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    /// Completed fetches, so a caller that waited for another's fetch
    /// does not fetch again.
    generation: AtomicU64,
    /// The outcome of the last fetch, for readiness and logs.
    status: std::sync::Mutex<Status>,
}

/// Whether the key set was ever fetched, and the last outcome.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub fetched_once: bool,
    pub last_error: Option<String>,
    pub keys: usize,
}

impl Jwks {
    pub(super) fn new(
        url: String,
        allowed: Vec<Algorithm>,
        base: Validation,
        cooldown: Duration,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            url,
            client,
            allowed,
            base,
            keys: ArcSwap::from_pointee(Vec::new()),
            cooldown,
            last_fetch: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            status: std::sync::Mutex::new(Status::default()),
        })
    }

    /// Successful fetches so far: a token verified under another
    /// generation may have been checked against keys no longer held.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The keys held now.
    pub(super) fn keys(&self) -> Arc<Vec<VerifyKey>> {
        self.keys.load_full()
    }

    pub(super) fn status(&self) -> Status {
        crate::sync::lock(&self.status).clone()
    }

    /// Fetch now (waiting for a fetch in flight first) and replace the keys
    /// on success.
    pub(super) async fn fetch(&self) -> Result<usize, JwksError> {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        self.fetch_locked().await
    }

    /// A token named `kid`, which the keys do not hold: fetch again unless
    /// another fetch finished while waiting or the cooldown has not passed.
    /// Returns whether the keys may have changed.
    pub(super) async fn refetch_for_unknown_kid(&self, kid: &str) -> bool {
        let seen = self.generation.load(Ordering::Acquire);
        let mut last = self.last_fetch.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return true; // someone fetched while we waited
        }
        if last.is_some_and(|t| t.elapsed() < self.cooldown) {
            tracing::debug!(kid = %printable(kid), "unknown key id; JWKS fetched recently, not again");
            return false;
        }
        *last = Some(Instant::now());
        tracing::info!(kid = %printable(kid), "unknown key id; fetching the JWKS again");
        self.fetch_locked().await.is_ok()
    }

    async fn fetch_locked(&self) -> Result<usize, JwksError> {
        let result = self.download().await;
        let mut status = crate::sync::lock(&self.status);
        match result {
            Ok(keys) => {
                let n = keys.len();
                self.keys.store(Arc::new(keys));
                self.generation.fetch_add(1, Ordering::AcqRel);
                status.fetched_once = true;
                status.last_error = None;
                status.keys = n;
                Ok(n)
            }
            Err(e) => {
                status.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    async fn download(&self) -> Result<Vec<VerifyKey>, JwksError> {
        let mut response = self
            .client
            .get(&self.url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| JwksError::Request(e.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(JwksError::Status(response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY as u64)
        {
            return Err(JwksError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| JwksError::Request(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(JwksError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| JwksError::Parse(e.to_string()))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            match from_jwk(jwk, &self.allowed, &self.base) {
                Ok(key) => keys.push(key),
                Err(why) => tracing::debug!(
                    kid = jwk.common.key_id.as_deref().unwrap_or("-"),
                    why,
                    "JWKS key skipped"
                ),
            }
        }
        if keys.is_empty() && !set.keys.is_empty() {
            tracing::warn!(
                url = %self.url,
                listed = set.keys.len(),
                "the JWKS holds no key herald can use"
            );
        }
        Ok(keys)
    }

    /// Fetch every `every` until `stop`; after a failure, retry sooner
    /// (2 s, doubling up to `every`).
    pub(super) fn spawn_refresh(self: &Arc<Self>, every: Duration, stop: CancellationToken) {
        let jwks = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut wait = every;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                let Some(jwks) = jwks.upgrade() else { return };
                wait = match jwks.fetch().await {
                    Ok(n) => {
                        tracing::debug!(keys = n, "JWKS refreshed");
                        every
                    }
                    Err(e) => {
                        let next = if wait == every {
                            RETRY_FIRST.min(every)
                        } else {
                            (wait * 2).min(every)
                        };
                        tracing::warn!(
                            error = %e,
                            keys_kept = jwks.keys().len(),
                            retry_secs = next.as_secs(),
                            "JWKS refresh failed; the keys held stay in use"
                        );
                        next
                    }
                };
            }
        });
    }
}

/// A `kid` from a token, safe to log: short printable ASCII, else a
/// placeholder (it is attacker-controlled).
pub(super) fn printable(kid: &str) -> &str {
    if kid.len() <= 64 && kid.chars().all(|c| c.is_ascii_graphic()) {
        kid
    } else {
        "<unprintable>"
    }
}
