//! Tokens for an authenticated herald: a key per algorithm generated here
//! (once per process), the `HERALD_AUTH__*` settings that make herald check
//! it, and one token every client presents (herald verifies it at every
//! handshake; it caches nothing, so one token costs the server what many
//! would).

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

/// herald's settings and the clients' token for one algorithm.
#[derive(Debug)]
pub(crate) struct BenchAuth {
    pub env: Vec<(&'static str, String)>,
    pub token: Arc<str>,
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
    let claims = json!({
        "sub": "bench",
        "exp": jsonwebtoken::get_current_timestamp() + 7 * 24 * 3600,
        "channels": ["*"],
    });
    let mut env = vec![
        ("HERALD_AUTH__MODE", "jwt".to_string()),
        ("HERALD_AUTH__CHANNELS_CLAIM", "channels".to_string()),
    ];
    let token = match alg {
        Alg::Hs256 => {
            env.push(("HERALD_AUTH__HMAC_SECRET", SECRET.to_string()));
            let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes())?;
            jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)?
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
            key.sign(&claims, None, None).map_err(|e| anyhow!(e))?
        }
    };
    let made_now = Arc::new(BenchAuth {
        env,
        token: token.into(),
    });
    made.lock()
        .map_err(|_| anyhow!("poisoned"))?
        .insert(alg, made_now.clone());
    Ok(Some(made_now))
}
