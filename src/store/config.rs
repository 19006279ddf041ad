//! `[store]`: which kind of log, where, and how much it keeps.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In the process: zero set-up, history lost on restart.
    Memory,
    /// Embedded (redb) in `path`: survives restarts and `kill -9`.
    Disk,
    /// In Redis at `url`: shared by several herald nodes.
    Redis,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Disk => "disk",
            StoreKind::Redis => "redis",
        }
    }
}

/// The default `store.key_prefix` of the Redis store.
pub const DEFAULT_KEY_PREFIX: &str = "herald:";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// Disk store: the directory of the database (created when missing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Redis store: `redis://[user:password@]host:port[/db]` or `rediss://`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Redis store: prefix of every key herald writes (default `herald:`);
    /// deployments sharing one Redis use different prefixes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// Redis store with a `rediss://` URL: PEM file of the certificate
    /// authority that signed Redis's certificate (a private CA). Without
    /// it, `rediss://` trusts the system's root certificates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// Retained notifications per channel; older ones are trimmed.
    pub max_per_channel: usize,
    /// Retained bytes per channel (the notifications' JSON); older ones are
    /// trimmed, the newest is always kept. 0: no limit by size.
    pub max_bytes_per_channel: usize,
    /// Retained age in seconds; 0 keeps notifications regardless of age.
    /// A channel with nothing newer and no subscribers is dropped whole.
    pub max_age_secs: u64,
    /// Channels held at most; creating one more first drops the channel
    /// without subscribers idle the longest. 0: no limit.
    pub max_channels: usize,
    /// Dedupe keys remembered per channel. A redelivered event whose key is
    /// still remembered appends nothing.
    pub dedupe_window: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Memory,
            path: None,
            url: None,
            key_prefix: None,
            tls_ca_file: None,
            max_per_channel: 10_000,
            max_bytes_per_channel: 16 * 1024 * 1024,
            max_age_secs: 7 * 24 * 3600,
            max_channels: 100_000,
            dedupe_window: 10_000,
        }
    }
}

impl StoreConfig {
    /// The Redis key prefix in effect.
    pub fn key_prefix(&self) -> &str {
        self.key_prefix.as_deref().unwrap_or(DEFAULT_KEY_PREFIX)
    }

    /// The keys each kind takes, and the combinations that make no sense.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let kind = self.kind.as_str();
        let only = |key: &str, set: bool, owner: &str| {
            if set {
                Err((
                    format!("store.{key}"),
                    format!("only used by kind = \"{owner}\", not by kind = \"{kind}\""),
                ))
            } else {
                Ok(())
            }
        };
        match self.kind {
            StoreKind::Memory => {
                only("path", self.path.is_some(), "disk")?;
                only("url", self.url.is_some(), "redis")?;
                only("key_prefix", self.key_prefix.is_some(), "redis")?;
                only("tls_ca_file", self.tls_ca_file.is_some(), "redis")?;
            }
            StoreKind::Disk => {
                only("url", self.url.is_some(), "redis")?;
                only("key_prefix", self.key_prefix.is_some(), "redis")?;
                only("tls_ca_file", self.tls_ca_file.is_some(), "redis")?;
                match &self.path {
                    None => {
                        return Err((
                            "store.path".into(),
                            "required by kind = \"disk\": the directory of the database".into(),
                        ));
                    }
                    Some(p) if p.as_os_str().is_empty() => {
                        return Err(("store.path".into(), "must not be empty".into()));
                    }
                    Some(_) => {}
                }
            }
            StoreKind::Redis => {
                only("path", self.path.is_some(), "disk")?;
                let Some(url) = &self.url else {
                    return Err((
                        "store.url".into(),
                        "required by kind = \"redis\": redis://host:port".into(),
                    ));
                };
                if !["redis://", "rediss://", "redis+unix://", "unix://"]
                    .iter()
                    .any(|scheme| url.starts_with(scheme))
                {
                    return Err((
                        "store.url".into(),
                        "must start with redis://, rediss://, redis+unix:// or unix://".into(),
                    ));
                }
                if self.tls_ca_file.is_some() && !url.starts_with("rediss://") {
                    return Err((
                        "store.tls_ca_file".into(),
                        "only used with a rediss:// store.url".into(),
                    ));
                }
                let prefix = self.key_prefix();
                if prefix.len() > 64 || prefix.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err((
                        "store.key_prefix".into(),
                        "at most 64 characters, without whitespace".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}
