//! The store herald runs with (`--store`): memory (its default), disk in a
//! fresh temporary directory, or Redis at `REDIS_URL` (default
//! 127.0.0.1:6379) under a fresh key prefix. Each measurement gets its own
//! and removes it afterwards (the directory when dropped, the Redis keys in
//! [`StoreUnderTest::remove`]), so no run reads another's history.

use anyhow::{Context, Result};
use clap::ValueEnum;

/// Which store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StoreKind {
    Memory,
    Disk,
    Redis,
}

impl StoreKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Disk => "disk",
            StoreKind::Redis => "redis",
        }
    }
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// One measurement's store.
#[derive(Debug)]
pub(crate) struct StoreUnderTest {
    kind: StoreKind,
    dir: Option<tempfile::TempDir>,
    prefix: String,
}

impl StoreUnderTest {
    pub(crate) fn new(kind: StoreKind) -> Result<Self> {
        let dir = match kind {
            StoreKind::Disk => Some(
                tempfile::Builder::new()
                    .prefix("herald-bench-")
                    .tempdir()
                    .context("a temporary directory for the disk store")?,
            ),
            _ => None,
        };
        Ok(Self {
            kind,
            dir,
            prefix: format!("herald-bench-{:08x}:", fastrand::u32(..)),
        })
    }

    /// herald's `HERALD_STORE__*` settings for it.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("HERALD_STORE__KIND", self.kind.name().to_string())];
        match self.kind {
            StoreKind::Memory => {}
            StoreKind::Disk => {
                if let Some(dir) = &self.dir {
                    env.push(("HERALD_STORE__PATH", dir.path().display().to_string()));
                }
            }
            StoreKind::Redis => {
                env.push(("HERALD_STORE__URL", redis_url()));
                env.push(("HERALD_STORE__KEY_PREFIX", self.prefix.clone()));
            }
        }
        env
    }

    /// Delete what the measurement stored (after herald stopped).
    pub(crate) async fn remove(self) -> Result<()> {
        if self.kind != StoreKind::Redis {
            return Ok(()); // the directory goes with `self`
        }
        let client = redis::Client::open(redis_url())?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .context("connect to Redis")?;
        let pattern = format!("{}*", self.prefix);
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .context("SCAN")?;
            if !keys.is_empty() {
                let () = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .context("UNLINK")?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}
