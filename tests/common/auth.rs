//! Authentication for tests: keys generated here (RSA 2048, P-256,
//! Ed25519), tokens minted with jsonwebtoken, a JWKS server the test
//! changes and stops, clients that present a token.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use herald::auth::mint::{KeyKind, SigningKey};
use herald::auth::{AuthConfig, AuthMode, Secret};
use herald::config::Config;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use super::Client;

/// The HMAC secret of the tests' configurations.
pub const SECRET: &str = "integration-tests-hmac-secret-0123456789";

pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// An HS256 token signed with `secret`.
pub fn hs256_with(secret: &[u8], claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &key).unwrap()
}

/// An HS256 token signed with [`SECRET`].
pub fn hs256(claims: &Value) -> String {
    hs256_with(SECRET.as_bytes(), claims)
}

/// An HS256 token for `sub` valid `ttl` seconds, with `extra` claims.
pub fn token_for(sub: &str, ttl: u64, extra: Value) -> String {
    let mut claims = json!({ "sub": sub, "exp": now() + ttl });
    if let Value::Object(extra) = extra {
        claims.as_object_mut().unwrap().extend(extra);
    }
    hs256(&claims)
}

/// `[auth] mode = "jwt"` with [`SECRET`] and the default policy.
pub fn jwt(config: &mut Config) {
    config.auth = AuthConfig {
        mode: AuthMode::Jwt,
        hmac_secret: Some(Secret::new(SECRET)),
        ..AuthConfig::default()
    };
}

/// Public keys as PEM files in a directory that lives as long as this.
pub struct KeyFiles {
    dir: tempfile::TempDir,
}

impl KeyFiles {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn public(&self, name: &str, key: &SigningKey) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, key.public_pem()).unwrap();
        path
    }

    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

pub fn key(kind: KeyKind) -> SigningKey {
    SigningKey::generate(kind).unwrap()
}

/// Connect with `Authorization: Bearer <token>` instead of the query.
pub async fn connect_bearer(url: &str, token: &str) -> Client {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("WebSocket handshake");
    Client { ws }
}

/// A JWKS endpoint on 127.0.0.1: the test replaces its keys, can make it
/// answer 503 or stop it; it counts the fetches.
pub struct JwksServer {
    pub url: String,
    set: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl JwksServer {
    pub async fn start(keys: Vec<Value>) -> Self {
        use axum::routing::get;
        let set = Arc::new(Mutex::new(json!({ "keys": keys })));
        let hits = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let (s, h, f) = (set.clone(), hits.clone(), failing.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            get(move || {
                let (s, h, f) = (s.clone(), h.clone(), f.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    if f.load(Ordering::SeqCst) {
                        return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
                    }
                    Ok(axum::Json(s.lock().unwrap().clone()))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await;
        });
        Self {
            url,
            set,
            hits,
            failing,
            stop,
        }
    }

    /// Answer 503 (an identity provider that is down) while `on`.
    pub fn set_failing(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }

    pub fn replace(&self, keys: Vec<Value>) {
        *self.set.lock().unwrap() = json!({ "keys": keys });
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stop answering: new connections are refused.
    pub async fn stop(&self) {
        self.stop.cancel();
        // Until the listener is closed, a connection could still succeed.
        let addr = self.url.trim_start_matches("http://");
        let addr = addr.split('/').next().unwrap().to_string();
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(&addr).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the JWKS server did not stop");
    }
}
