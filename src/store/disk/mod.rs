//! The disk store: the log in an embedded redb database under `store.path`.
//! Nothing to install; survives restarts, `kill -9` and power loss.
//!
//! Invariants, beyond the [`Store`](super::Store) ones:
//! - one epoch per database, written when the database is created: a
//!   restart keeps every channel's epoch, offsets, retained history and
//!   dedupe index, so clients resume with `recovered: true`;
//! - an append is acknowledged (its future resolves `Ok`) only after the
//!   write transaction holding it is committed with fsync
//!   (`Durability::Immediate`); only then is it published to the hub;
//! - group commit: `append` only queues (see [`super::group`]); one writer
//!   thread takes everything queued, commits it in one transaction and one
//!   fsync, publishes in order and answers. redb is blocking, so the writer
//!   is a thread of its own and never blocks the async runtime;
//! - a transaction writes each channel's new notifications as one chunk
//!   (see [`chunk`]), one B-tree insert per channel rather than per
//!   notification; chunks are never changed once written;
//! - retention by count happens in the append's own transaction: the
//!   channel's first offset moves, and chunks wholly below it are deleted;
//!   retention by age runs in the same writer, at most `TRIM_BUDGET`
//!   notifications per transaction between append groups, so a large
//!   expiry never stalls appends;
//! - a failed commit (disk full, I/O error) fails every append of its group
//!   and every append queued behind it with [`StoreError::Unavailable`]
//!   (see `group::Receiver::fail_queued_appends`), breaks the fences of
//!   their streams (see [`super::Fence`]) and commits nothing of it; the sources
//!   then do not acknowledge. The writer reopens the database (redb
//!   refuses to go on after an I/O error) before the next group, at most
//!   once per second, and drops the in-memory cache, whose view the failed
//!   commit may have made stale.
//!
//! Reads: each channel the writer has touched since start keeps its head
//! (first and last offsets) and its newest `TAIL` notifications in memory,
//! updated under the channel's mutex together with the hub publish, so a
//! reader that registered with the hub first and then reads the cache or
//! the database cannot miss a notification between the two. Older history
//! is read from the database on the blocking pool.
//!
//! Dedupe window: a key counts as a duplicate while its offset is one of
//! the channel's newest `dedupe_window` offsets (`offset > last - window`),
//! exactly the keys the memory store remembers. Rows that fell out of the
//! window are only ignored at first; once a channel has a window's worth
//! of them, the writer sweeps them away in the background, at most
//! `SWEEP_BUDGET` deletions per transaction, like retention by age. So an
//! append writes one row in `entries` and one in `dedupe`, and no
//! per-append eviction.
//!
//! Layout (tables): `meta` (format, epoch), `counters` (next channel id),
//! `channels` (name → id, first retained offset, last offset, swept: every
//! `dedupe` row of the channel at or below it is gone), `entries` ((id,
//! offset of a chunk's last notification) → chunk; a chunk may begin below
//! the first retained offset, and readers skip that part), `dedupe` ((id,
//! key) → offset), `heads` ((time of the oldest retained notification, id)
//! → name: what retention by age visits; may be older than the real head
//! after count trims, never newer).
//!
//! Files: this one (opening, the tables, the [`Store`] handle), `read.rs`
//! (the in-memory heads and tails, pages read from the database),
//! `writer.rs` (the writer thread: commit, publish, reopen), `retention.rs`
//! (retention by age and the dedupe sweep, run by the writer), `chunk.rs`
//! (the encoding of an `entries` value).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, ready};
use redb::{Database, DatabaseError, Durability, ReadableTable, TableDefinition};

use super::StoreConfig;
use super::group;
use super::{
    Appended, Hints, NewNotification, OpenError, Page, Publish, Store, StoreError, new_epoch,
};
use crate::metrics::Metrics;
use read::{Cached, read_disk};
use writer::Writer;

const META: TableDefinition<'static, &str, &str> = TableDefinition::new("meta");
const COUNTERS: TableDefinition<'static, &str, u64> = TableDefinition::new("counters");
const CHANNELS: TableDefinition<'static, &str, (u64, u64, u64, u64)> =
    TableDefinition::new("channels");
const ENTRIES: TableDefinition<'static, (u64, u64), &[u8]> = TableDefinition::new("entries");
const DEDUPE: TableDefinition<'static, (u64, &str), u64> = TableDefinition::new("dedupe");
const HEADS: TableDefinition<'static, (u64, u64), &str> = TableDefinition::new("heads");

/// The on-disk layout version; another one is refused at start. Version 1
/// kept a `dedupe_order` table and no sweep point per channel; version 2
/// one `entries` row per notification.
const FORMAT: &str = "3";
/// The database file inside `store.path`.
pub const FILE_NAME: &str = "herald.redb";
const NEXT_ID: &str = "next_channel_id";
/// Newest notifications per channel kept in memory for replay and gap fill.
const TAIL: usize = 64;
/// Most notifications committed in one transaction.
const MAX_GROUP: usize = 32768;
/// Most notifications retention by age trims in one transaction.
const TRIM_BUDGET: usize = 4096;
/// Channels retention by age visits in one transaction.
const TRIM_HEADS: usize = 256;
/// Most stale dedupe rows the sweep deletes in one transaction.
const SWEEP_BUDGET: usize = 4096;
/// Most dedupe rows the sweep reads in one transaction.
const SWEEP_SCAN: usize = 4 * SWEEP_BUDGET;
/// redb's page cache.
const CACHE_BYTES: usize = 64 << 20;
const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// See the module docs.
pub struct DiskStore {
    shared: Arc<DiskState>,
    /// Retention by age; 0 keeps everything.
    max_age_ms: u64,
    queue: group::Queue,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskStore")
            .field("file", &self.shared.file)
            .field("epoch", &self.shared.epoch)
            .finish_non_exhaustive()
    }
}

/// What the store handle and the writer thread share.
struct DiskState {
    file: PathBuf,
    epoch: Arc<str>,
    /// `None` while the writer reopens the database, and after close.
    db: RwLock<Option<Arc<Database>>>,
    /// Channels the writer touched since start: committed head and tail.
    channels: RwLock<HashMap<Arc<str>, Arc<Mutex<Cached>>>>,
    hub: Arc<dyn Publish>,
    metrics: Arc<Metrics>,
}

impl DiskStore {
    /// Open (or create) the database in `config.path`. Blocking: call it
    /// from a blocking context.
    pub fn open(
        config: &StoreConfig,
        hub: Arc<dyn Publish>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, OpenError> {
        let dir = config
            .path
            .clone()
            .ok_or_else(|| OpenError::Config("store.path is required for the disk store".into()))?;
        std::fs::create_dir_all(&dir).map_err(|e| OpenError::Unavailable {
            what: format!("disk store directory {}", dir.display()),
            reason: e.to_string(),
        })?;
        let file = dir.join(FILE_NAME);
        let db = open_database(&file)?;
        let (epoch, next_id) = initialize(&db).map_err(|e| OpenError::Unavailable {
            what: format!("disk store {}", file.display()),
            reason: e.to_string(),
        })?;
        tracing::info!(file = %file.display(), %epoch, "disk store open");
        let shared = Arc::new(DiskState {
            file: file.clone(),
            epoch: epoch.into(),
            db: RwLock::new(Some(Arc::new(db))),
            channels: RwLock::new(HashMap::new()),
            hub,
            metrics,
        });
        let (queue, rx) = group::queue();
        let writer = Writer {
            shared: shared.clone(),
            rx,
            loaded: HashMap::new(),
            next_id,
            max_per_channel: config.max_per_channel.max(1) as u64,
            dedupe_window: config.dedupe_window.max(1) as u64,
            trim: None,
            sweeps: VecDeque::new(),
            sweeping: HashSet::new(),
            broken: None,
        };
        let handle = std::thread::Builder::new()
            .name("herald-disk-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| OpenError::Unavailable {
                what: "disk store writer thread".into(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            shared,
            max_age_ms: config.max_age_secs.saturating_mul(1000),
            queue,
            writer: Mutex::new(Some(handle)),
        })
    }
}

fn open_database(file: &Path) -> Result<Database, OpenError> {
    let mut builder = Database::builder();
    builder.set_cache_size(CACHE_BYTES);
    builder.create(file).map_err(|e| {
        let reason = match e {
            DatabaseError::DatabaseAlreadyOpen => {
                "already open (is another herald using this store.path?)".to_string()
            }
            other => other.to_string(),
        };
        OpenError::Unavailable {
            what: format!("disk store {}", file.display()),
            reason,
        }
    })
}

/// Create the tables and the epoch of a new database, or check an existing
/// one. Returns the epoch and the next channel id.
fn initialize(db: &Database) -> Result<(String, u64), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let found = {
        let mut meta = txn.open_table(META)?;
        let format = meta.get("format")?.map(|v| v.value().to_string());
        let epoch = meta.get("epoch")?.map(|v| v.value().to_string());
        let found = match (format, epoch) {
            (Some(format), _) if format != FORMAT => {
                return Err(redb::Error::Corrupted(format!(
                    "layout version {format}, this herald reads version {FORMAT} only \
                     (move the file away to start an empty store)"
                )));
            }
            (Some(_), Some(epoch)) => epoch,
            _ => {
                let epoch = new_epoch();
                meta.insert("format", FORMAT)?;
                meta.insert("epoch", epoch.as_str())?;
                epoch
            }
        };
        let next_id = txn
            .open_table(COUNTERS)?
            .get(NEXT_ID)?
            .map_or(1, |v| v.value());
        txn.open_table(CHANNELS)?;
        txn.open_table(ENTRIES)?;
        txn.open_table(DEDUPE)?;
        txn.open_table(HEADS)?;
        (found, next_id)
    };
    txn.commit()?;
    Ok(found)
}

impl Store for DiskStore {
    /// The disk store commits what is queued while its last fsync ran, so
    /// a deeper window makes bigger groups and fewer B-tree pages per
    /// notification: 8192 (Kafka → disk over 1000 channels 16.8k events/s
    /// at 1024, 53.6k at 8192; BENCHMARKS.md, "ingest with the disk
    /// store"), at up to that many copied messages per partition in memory.
    fn hints(&self) -> Hints {
        Hints { in_flight: 8192 }
    }

    fn append(
        &self,
        batch: Vec<NewNotification>,
    ) -> BoxFuture<'static, Result<Vec<Appended>, StoreError>> {
        self.queue.append(batch, None)
    }

    fn append_fenced(
        &self,
        batch: Vec<NewNotification>,
        fence: &Arc<super::Fence>,
    ) -> BoxFuture<'static, Result<Vec<Appended>, StoreError>> {
        self.queue.append(batch, Some(fence))
    }

    fn read_after(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Page, StoreError>> {
        if let Some(page) = self.shared.cached_page(channel, after, limit) {
            return ready(Ok(page)).boxed();
        }
        let shared = self.shared.clone();
        let channel = channel.to_string();
        async move {
            let db = shared.db()?;
            let epoch = shared.epoch.clone();
            let read = tokio::task::spawn_blocking(move || {
                read_disk(&db, &epoch, &channel, after, limit).map_err(|e| (channel, e.to_string()))
            })
            .await
            .map_err(|e| StoreError::Unavailable(format!("disk store read: {e}")))?;
            read.map_err(|(channel, e)| {
                shared.metrics.store_error("read");
                tracing::warn!(channel, after, error = %e, "disk store read failed");
                StoreError::Unavailable(format!("disk store read: {e}"))
            })
        }
        .boxed()
    }

    /// Ready while the database is open; not while the writer reopens it
    /// after an I/O error.
    fn readiness(&self) -> Result<(), String> {
        self.shared.db().map(|_| ()).map_err(|e| e.to_string())
    }

    fn trim_expired(&self, now_ms: u64) -> BoxFuture<'_, Result<usize, StoreError>> {
        if self.max_age_ms == 0 {
            return ready(Ok(0)).boxed();
        }
        self.queue.trim(now_ms.saturating_sub(self.max_age_ms))
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            self.queue.close().await;
            let handle = crate::sync::lock(&self.writer).take();
            if let Some(handle) = handle {
                let _ = tokio::task::spawn_blocking(move || handle.join()).await;
            }
            // Releases the file lock: the same path can be opened again.
            crate::sync::write(&self.shared.db).take();
            Ok(())
        }
        .boxed()
    }
}

mod chunk;
mod read;
mod retention;
#[cfg(test)]
mod tests;
mod writer;
