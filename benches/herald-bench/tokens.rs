//! Tokens for an authenticated herald: a key per algorithm generated here
//! (once per process), the `HERALD_AUTH__*` settings that make herald check
//! it, and a token per client (`sub` = `bench-<i>`), as each user of a real
//! app has its own. herald remembers a token it verified until it expires,
//! so only distinct tokens make it check a signature at every new
//! connection (connect-rate); a client reconnecting with its own token
//! (reconnect-storm) is served from that memory, as in production.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context, Result, anyhow};
use clap::ValueEnum;
use herald::auth::mint::{KeyKind, SigningKey};
use serde_json::json;

/// The token a bench client presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub(crate) enum Alg {
    /// Authentication off.
    None,
    Hs256,
    Rs256,
    Es256,
    Eddsa,
}

impl Alg {
    pub(crate) const EACH: [Alg; 5] = [Alg::None, Alg::Hs256, Alg::Rs256, Alg::Es256, Alg::Eddsa];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Alg::None => "none",
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::Eddsa => "EdDSA",
        }
    }
}

/// herald's settings and the clients' tokens for one algorithm.
pub(crate) struct BenchAuth {
    pub env: Vec<(&'static str, String)>,
    key: Key,
    /// Tokens minted so far, by client index (minted once per process:
    /// an RSA signature takes about a millisecond).
    minted: Mutex<Vec<Arc<str>>>,
}

enum Key {
    Hmac(jsonwebtoken::EncodingKey),
    Pair(SigningKey),
}

impl std::fmt::Debug for BenchAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchAuth")
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

impl BenchAuth {
    /// Client `i`'s token: `sub` `bench-<i>`, every channel, valid a week.
    pub(crate) fn token(&self, i: usize) -> Result<Arc<str>> {
        let mut minted = self.minted.lock().map_err(|_| anyhow!("poisoned"))?;
        while minted.len() <= i {
            let claims = json!({
                "sub": format!("bench-{}", minted.len()),
                "exp": jsonwebtoken::get_current_timestamp() + 7 * 24 * 3600,
                "channels": ["*"],
            });
            let token = match &self.key {
                Key::Hmac(key) => {
                    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, key)?
                }
                Key::Pair(key) => key.sign(&claims, None, None).map_err(|e| anyhow!(e))?,
            };
            minted.push(token.into());
        }
        Ok(minted[i].clone())
    }
}

const SECRET: &str = "herald-bench-hmac-secret-0123456789abcdef";

/// The settings for `alg` (`None` for authentication off), made once.
pub(crate) fn auth(alg: Alg) -> Result<Option<Arc<BenchAuth>>> {
    static MADE: OnceLock<Mutex<HashMap<Alg, Arc<BenchAuth>>>> = OnceLock::new();
    if alg == Alg::None {
        return Ok(None);
    }
    let made = MADE.get_or_init(Default::default);
    if let Some(a) = made.lock().map_err(|_| anyhow!("poisoned"))?.get(&alg) {
        return Ok(Some(a.clone()));
    }
    let mut env = vec![
        ("HERALD_AUTH__MODE", "jwt".to_string()),
        ("HERALD_AUTH__CHANNELS_CLAIM", "channels".to_string()),
    ];
    let key = match alg {
        Alg::Hs256 => {
            env.push(("HERALD_AUTH__HMAC_SECRET", SECRET.to_string()));
            Key::Hmac(jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes())?)
        }
        _ => {
            let kind = match alg {
                Alg::Rs256 => KeyKind::Rsa2048,
                Alg::Es256 => KeyKind::P256,
                _ => KeyKind::Ed25519,
            };
            let key = SigningKey::generate(kind).map_err(|e| anyhow!(e))?;
            let dir = std::path::PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/target/herald-bench"
            ));
            std::fs::create_dir_all(&dir)?;
            let path = dir.join(format!("key-{}-{}.pem", alg.name(), std::process::id()));
            std::fs::write(&path, key.public_pem())
                .with_context(|| format!("write {}", path.display()))?;
            env.push((
                "HERALD_AUTH__PUBLIC_KEY_FILES",
                format!("[\"{}\"]", path.display()),
            ));
            Key::Pair(key)
        }
    };
    let made_now = Arc::new(BenchAuth {
        env,
        key,
        minted: Mutex::new(Vec::new()),
    });
    made.lock()
        .map_err(|_| anyhow!("poisoned"))?
        .insert(alg, made_now.clone());
    Ok(Some(made_now))
}
