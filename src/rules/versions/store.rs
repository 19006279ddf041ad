//! Where rules versions are kept: beside the notifications, in the store
//! kind the configuration names.
//!
//! - memory: in the process (history lost on restart, like the log);
//! - disk: `rules-versions.json` in `store.path`, replaced atomically
//!   (written to a temporary file, synced, renamed), so a crash leaves the
//!   old or the new history, never half of one;
//! - redis: `<prefix>rules:active` (the active id), `<prefix>rules:history`
//!   (records, newest first) and `<prefix>rules:text:<id>` (each version's
//!   text), written in one `MULTI`, shared by every node on that prefix.
//!
//! Every kind keeps at most [`HISTORY`] records; the text of every version
//! a record names is kept, so any listed version can be rolled back to.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};

use super::VersionRecord;
use crate::rules::Format;
use crate::store::{StoreConfig, StoreKind};

/// Records kept per deployment, newest first.
pub const HISTORY: usize = 100;

/// A version's source text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredText {
    pub format: Format,
    pub text: String,
}

/// The active version and the history, newest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    pub active: Option<String>,
    pub records: Vec<VersionRecord>,
}

/// The version store could not be read or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VersionStoreError {
    /// Redis did not answer, or the disk refused: retrying later can help.
    #[error("rules versions unavailable: {0}")]
    Unavailable(String),
    /// What is stored cannot be read back (edited by hand, another
    /// program): retrying does not help.
    #[error("rules versions corrupt: {0}")]
    Corrupt(String),
}

type Result<T> = std::result::Result<T, VersionStoreError>;

/// Keeps rules versions. Activation order is the caller's: it writes the
/// record first, then makes the version live.
pub trait VersionStore: Send + Sync + std::fmt::Debug + 'static {
    /// The active id and the history.
    fn history(&self) -> BoxFuture<'_, Result<History>>;
    /// The active id alone (what a follower polls).
    fn active(&self) -> BoxFuture<'_, Result<Option<String>>> {
        async move { Ok(self.history().await?.active) }.boxed()
    }
    /// The text of version `id`, if kept.
    fn text<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<StoredText>>>;
    /// Record `record` as the newest entry, keep `text` under its id and
    /// make it the active version, in one step.
    fn activate<'a>(
        &'a self,
        record: &'a VersionRecord,
        text: &'a StoredText,
    ) -> BoxFuture<'a, Result<()>>;
    /// Whether other processes can activate versions (Redis): the caller
    /// then follows [`VersionStore::history`]'s `active`.
    fn shared(&self) -> bool {
        false
    }
}

/// Open the version store of the store `config` describes.
pub fn open(config: &StoreConfig) -> std::result::Result<Box<dyn VersionStore>, String> {
    Ok(match config.kind {
        StoreKind::Memory => Box::new(MemoryVersions::default()),
        StoreKind::Disk => {
            let dir = config.path.clone().ok_or("store.path is required")?;
            Box::new(DiskVersions::new(dir.join(DISK_FILE)))
        }
        StoreKind::Redis => {
            let url = config.url.as_deref().ok_or("store.url is required")?;
            let client = crate::store::redis::client(url, config.tls_ca_file.as_deref())?;
            Box::new(RedisVersions::new(client, config.key_prefix())?)
        }
    })
}

/// The state memory and disk keep: the history plus the texts it names.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    #[serde(flatten)]
    history: History,
    texts: HashMap<String, StoredText>,
}

impl State {
    fn push(&mut self, record: &VersionRecord, text: &StoredText) {
        self.texts.insert(record.id.clone(), text.clone());
        self.history.records.insert(0, record.clone());
        self.history.records.truncate(HISTORY);
        self.history.active = Some(record.id.clone());
        let named: std::collections::HashSet<&str> =
            self.history.records.iter().map(|r| r.id.as_str()).collect();
        self.texts.retain(|id, _| named.contains(id.as_str()));
    }
}

/// In the process.
#[derive(Debug, Default)]
pub struct MemoryVersions {
    state: Mutex<State>,
}

impl MemoryVersions {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl VersionStore for MemoryVersions {
    fn history(&self) -> BoxFuture<'_, Result<History>> {
        let h = self.lock().history.clone();
        async move { Ok(h) }.boxed()
    }

    fn text<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<StoredText>>> {
        let t = self.lock().texts.get(id).cloned();
        async move { Ok(t) }.boxed()
    }

    fn activate<'a>(
        &'a self,
        record: &'a VersionRecord,
        text: &'a StoredText,
    ) -> BoxFuture<'a, Result<()>> {
        self.lock().push(record, text);
        async move { Ok(()) }.boxed()
    }
}

/// The disk store's file of rules versions.
pub const DISK_FILE: &str = "rules-versions.json";

/// One JSON file in the disk store's directory.
#[derive(Debug)]
pub struct DiskVersions {
    file: PathBuf,
    /// Serializes read-modify-write on this process (the disk store's
    /// database lock keeps other processes out of the directory).
    lock: tokio::sync::Mutex<()>,
}

impl DiskVersions {
    pub fn new(file: PathBuf) -> Self {
        Self {
            file,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    async fn read(&self) -> Result<State> {
        let file = self.file.clone();
        blocking(move || match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| VersionStoreError::Corrupt(format!("{}: {e}", file.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(VersionStoreError::Unavailable(format!(
                "{}: {e}",
                file.display()
            ))),
        })
        .await
    }

    async fn write(&self, state: State) -> Result<()> {
        let file = self.file.clone();
        blocking(move || {
            let fail = |e: std::io::Error| {
                VersionStoreError::Unavailable(format!("{}: {e}", file.display()))
            };
            let bytes = serde_json::to_vec_pretty(&state)
                .map_err(|e| VersionStoreError::Corrupt(e.to_string()))?;
            let tmp = file.with_extension("json.tmp");
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp).map_err(fail)?;
                f.write_all(&bytes).map_err(fail)?;
                f.sync_all().map_err(fail)?;
            }
            std::fs::rename(&tmp, &file).map_err(fail)?;
            // The rename is durable once the directory is.
            if let Some(dir) = file.parent()
                && let Ok(d) = std::fs::File::open(dir)
            {
                let _ = d.sync_all();
            }
            Ok(())
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| VersionStoreError::Unavailable(e.to_string()))?
}

impl VersionStore for DiskVersions {
    fn history(&self) -> BoxFuture<'_, Result<History>> {
        async move { Ok(self.read().await?.history) }.boxed()
    }

    fn text<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<StoredText>>> {
        async move { Ok(self.read().await?.texts.remove(id)) }.boxed()
    }

    fn activate<'a>(
        &'a self,
        record: &'a VersionRecord,
        text: &'a StoredText,
    ) -> BoxFuture<'a, Result<()>> {
        async move {
            let _guard = self.lock.lock().await;
            let mut state = self.read().await?;
            state.push(record, text);
            self.write(state).await
        }
        .boxed()
    }
}

/// In Redis, shared by the nodes on one key prefix.
pub struct RedisVersions {
    conn: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisVersions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisVersions")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisVersions {
    /// A lazy connection: nothing is sent until the first call, so an
    /// unreachable Redis at start is not an error here.
    pub fn new(client: redis::Client, prefix: &str) -> std::result::Result<Self, String> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("store.url: {e}"))?;
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}rules:{name}", self.prefix)
    }
}

fn unavailable(e: redis::RedisError) -> VersionStoreError {
    VersionStoreError::Unavailable(format!("redis: {e}"))
}

impl VersionStore for RedisVersions {
    fn history(&self) -> BoxFuture<'_, Result<History>> {
        let mut conn = self.conn.clone();
        async move {
            let (active, raw): (Option<String>, Vec<String>) = redis::pipe()
                .get(self.key("active"))
                .lrange(self.key("history"), 0, (HISTORY - 1) as isize)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let records = raw
                .iter()
                .map(|r| serde_json::from_str(r))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| VersionStoreError::Corrupt(format!("{}: {e}", self.key("history"))))?;
            Ok(History { active, records })
        }
        .boxed()
    }

    fn active(&self) -> BoxFuture<'_, Result<Option<String>>> {
        let mut conn = self.conn.clone();
        async move { conn.get(self.key("active")).await.map_err(unavailable) }.boxed()
    }

    fn text<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<StoredText>>> {
        let mut conn = self.conn.clone();
        async move {
            let key = self.key(&format!("text:{id}"));
            let raw: Option<String> = conn.get(&key).await.map_err(unavailable)?;
            raw.map(|r| serde_json::from_str(&r))
                .transpose()
                .map_err(|e| VersionStoreError::Corrupt(format!("{key}: {e}")))
        }
        .boxed()
    }

    fn activate<'a>(
        &'a self,
        record: &'a VersionRecord,
        text: &'a StoredText,
    ) -> BoxFuture<'a, Result<()>> {
        let mut conn = self.conn.clone();
        async move {
            let record_json = serde_json::to_string(record)
                .map_err(|e| VersionStoreError::Corrupt(e.to_string()))?;
            let text_json = serde_json::to_string(text)
                .map_err(|e| VersionStoreError::Corrupt(e.to_string()))?;
            // Texts are kept (a few KiB per version); records are bounded.
            let () = redis::pipe()
                .atomic()
                .set(self.key(&format!("text:{}", record.id)), text_json)
                .ignore()
                .lpush(self.key("history"), record_json)
                .ignore()
                .ltrim(self.key("history"), 0, (HISTORY - 1) as isize)
                .ignore()
                .set(self.key("active"), &record.id)
                .ignore()
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(())
        }
        .boxed()
    }

    fn shared(&self) -> bool {
        true
    }
}
