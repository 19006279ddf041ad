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

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, ready};
use redb::{Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::StoreConfig;
use super::group::{self, Item, Request};
use super::{
    Appended, Entry, Hints, NewNotification, OpenError, Page, Publish, Store, StoreError, new_epoch,
};
use crate::metrics::Metrics;

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

/// A channel's committed state as readers see it.
#[derive(Debug)]
struct Cached {
    first: u64,
    last: u64,
    /// The newest notifications, contiguous, ending at `last`.
    tail: VecDeque<Arc<Entry>>,
}

impl Cached {
    fn trim_front(&mut self) {
        while self.tail.len() > TAIL || self.tail.front().is_some_and(|d| d.offset < self.first) {
            self.tail.pop_front();
        }
    }
}

impl DiskState {
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        crate::sync::read(&self.db)
            .clone()
            .ok_or_else(|| StoreError::Unavailable("disk store: database not open".into()))
    }

    fn cached(&self, channel: &str) -> Option<Arc<Mutex<Cached>>> {
        crate::sync::read(&self.channels).get(channel).cloned()
    }

    /// The page from memory, when memory has all of it.
    fn cached_page(&self, channel: &str, after: u64, limit: usize) -> Option<Page> {
        let cached = self.cached(channel)?;
        let c = crate::sync::lock(&cached);
        let start = after.saturating_add(1).max(c.first);
        let mut page = Page {
            epoch: self.epoch.clone(),
            first: c.first,
            last: c.last,
            entries: Vec::new(),
        };
        if limit == 0 || start > c.last {
            return Some(page);
        }
        let front = c.tail.front()?.offset;
        if start < front {
            return None;
        }
        let skip = usize::try_from(start - front).unwrap_or(usize::MAX);
        page.entries = c.tail.iter().skip(skip).take(limit).cloned().collect();
        Some(page)
    }
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

/// A channel's page read from the database (one read transaction, so a
/// consistent snapshot of committed state).
fn read_disk(
    db: &Database,
    epoch: &Arc<str>,
    channel: &str,
    after: u64,
    limit: usize,
) -> Result<Page, redb::Error> {
    let txn = db.begin_read()?;
    let mut page = Page {
        epoch: epoch.clone(),
        first: 1,
        last: 0,
        entries: Vec::new(),
    };
    let Some((id, first, last, _)) = txn.open_table(CHANNELS)?.get(channel)?.map(|v| v.value())
    else {
        return Ok(page);
    };
    (page.first, page.last) = (first, last);
    if limit == 0 {
        return Ok(page);
    }
    let start = after.saturating_add(1).max(first);
    let name: Arc<str> = channel.into();
    each_from(
        &txn.open_table(ENTRIES)?,
        id,
        start,
        |offset, at_ms, fields| {
            page.entries.push(Arc::new(Entry {
                channel: name.clone(),
                epoch: epoch.clone(),
                offset,
                at_ms,
                fields: fields.into(),
            }));
            page.entries.len() < limit
        },
    )?;
    Ok(page)
}

/// Visit channel `id`'s notifications from offset `start` on, in order,
/// with (offset, time in ms, fields), while `visit` returns true.
fn each_from(
    entries: &impl ReadableTable<(u64, u64), &'static [u8]>,
    id: u64,
    start: u64,
    mut visit: impl FnMut(u64, u64, &str) -> bool,
) -> Result<(), redb::Error> {
    // The chunk holding `start` is the first whose last offset is >= it.
    for item in entries.range((id, start)..=(id, u64::MAX))? {
        let (_, chunk) = item?;
        for record in chunk::decode(chunk.value())? {
            let (offset, at_ms, fields) = record?;
            if offset >= start && !visit(offset, at_ms, fields) {
                return Ok(());
            }
        }
    }
    Ok(())
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

/// Where the writer knows a channel to be (committed state).
#[derive(Debug, Clone)]
struct Meta {
    id: u64,
    first: u64,
    last: u64,
    /// Every dedupe row at or below this offset is deleted.
    swept: u64,
}

impl Meta {
    /// Dedupe rows at or below this offset are out of the window.
    fn stale_below(&self, window: u64) -> u64 {
        self.last.saturating_sub(window)
    }
}

/// A sweep of a channel's stale dedupe rows in progress.
#[derive(Debug, Clone)]
struct Sweep {
    name: Arc<str>,
    id: u64,
    /// Rows at or below this offset go.
    cutoff: u64,
    /// The key the next slice starts at; `None` from the beginning.
    from: Option<String>,
}

/// Retention by age in progress.
#[derive(Debug)]
struct PendingTrim {
    cutoff_ms: u64,
    trimmed: usize,
    replies: Vec<oneshot::Sender<Result<usize, StoreError>>>,
}

/// What one committed transaction changes in memory.
#[derive(Debug, Default)]
struct Outcome {
    staged: HashMap<Arc<str>, Meta>,
    next_id: u64,
    results: Vec<Vec<Appended>>,
    entries: Vec<Arc<Entry>>,
    /// New first offsets after retention by age.
    firsts: Vec<(Arc<str>, u64)>,
    trimmed_by_count: usize,
    trimmed_by_age: usize,
    /// Whether retention by age has nothing more to do for its cutoff.
    trim_done: bool,
    /// Where the sweep at the front of the queue got to; `None` when it
    /// did not run.
    swept: Option<Sweep>,
    /// Whether that sweep is finished.
    sweep_done: bool,
}

/// The writer thread: the only one that writes the database.
struct Writer {
    shared: Arc<DiskState>,
    rx: group::Receiver,
    /// Channels loaded from the database since start.
    loaded: HashMap<Arc<str>, Meta>,
    next_id: u64,
    max_per_channel: u64,
    dedupe_window: u64,
    trim: Option<PendingTrim>,
    /// Channels whose stale dedupe rows are to be swept, oldest first.
    sweeps: VecDeque<Sweep>,
    /// The ids in `sweeps`.
    sweeping: HashSet<u64>,
    /// Set when a commit failed: the database must be reopened.
    broken: Option<Instant>,
}

impl Writer {
    fn run(mut self) {
        loop {
            // Background work left: take what is queued without waiting.
            let group = if self.trim.is_some() || !self.sweeps.is_empty() {
                self.rx.try_group(MAX_GROUP)
            } else {
                match self.rx.blocking_next_group(MAX_GROUP) {
                    Some(group) => group,
                    None => return,
                }
            };
            if self.handle(group) {
                return;
            }
        }
    }

    /// Commit one group; true when the store is closing.
    fn handle(&mut self, group: Vec<Item>) -> bool {
        let mut appends = Vec::new();
        let mut close = None;
        for item in group {
            match item {
                Item::Append(r) => appends.push(r),
                Item::Trim { cutoff_ms, reply } => {
                    let trim = self.trim.get_or_insert(PendingTrim {
                        cutoff_ms,
                        trimmed: 0,
                        replies: Vec::new(),
                    });
                    trim.cutoff_ms = trim.cutoff_ms.max(cutoff_ms);
                    trim.replies.push(reply);
                }
                Item::Close(done) => close = Some(done),
            }
        }
        if !appends.is_empty() || self.trim.is_some() || !self.sweeps.is_empty() {
            match self.commit(&appends) {
                Ok(outcome) => self.apply(appends, outcome),
                Err(e) => {
                    self.failed(appends, &e);
                    let error =
                        StoreError::Unavailable(format!("disk: an earlier append failed: {e}"));
                    for item in self.rx.fail_queued_appends(&error) {
                        match item {
                            Item::Trim { reply, .. } => {
                                let _ = reply.send(Err(error.clone()));
                            }
                            Item::Close(done) => close = Some(done),
                            Item::Append(_) => {}
                        }
                    }
                }
            }
        }
        match close {
            Some(done) => {
                if let Some(trim) = self.trim.take() {
                    for reply in trim.replies {
                        let _ = reply.send(Ok(trim.trimmed));
                    }
                }
                let _ = done.send(());
                true
            }
            None => false,
        }
    }

    /// The database, reopened first when the last commit failed.
    fn database(&mut self) -> Result<Arc<Database>, redb::Error> {
        let Some(since) = self.broken else {
            return self.shared.db().map_err(|e| redb::Error::Io(other(e)));
        };
        if since.elapsed() < REOPEN_EVERY {
            return Err(redb::Error::PreviousIo);
        }
        self.broken = Some(Instant::now());
        let old = crate::sync::write(&self.shared.db).take();
        if let Some(old) = old {
            // Readers hold the handle only for one read; the file lock is
            // released when the last one is gone.
            let deadline = Instant::now() + Duration::from_secs(2);
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let mut builder = Database::builder();
        builder.set_cache_size(CACHE_BYTES);
        let db = Arc::new(builder.create(&self.shared.file)?);
        *crate::sync::write(&self.shared.db) = Some(db.clone());
        // A failed commit may still have reached the disk: forget what
        // memory believes and reload channels from the database.
        self.loaded.clear();
        crate::sync::write(&self.shared.channels).clear();
        self.next_id = db
            .begin_read()?
            .open_table(COUNTERS)?
            .get(NEXT_ID)?
            .map_or(1, |v| v.value());
        self.broken = None;
        tracing::info!(file = %self.shared.file.display(), "disk store reopened");
        Ok(db)
    }

    /// One write transaction: the appends in order, then a slice of
    /// retention by age; committed with fsync.
    fn commit(&mut self, appends: &[Request]) -> Result<Outcome, redb::Error> {
        let db = self.database()?;
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let mut out = Outcome {
            next_id: self.next_id,
            ..Outcome::default()
        };
        {
            let mut channels = txn.open_table(CHANNELS)?;
            let mut entries = txn.open_table(ENTRIES)?;
            let mut dedupe = txn.open_table(DEDUPE)?;
            let mut heads = txn.open_table(HEADS)?;
            // This transaction's chunk per channel id, written when full
            // and at the end.
            let mut chunks: HashMap<u64, chunk::Builder> = HashMap::new();
            // Channels whose first offset moved (retention by count).
            let mut trimmed: HashMap<u64, u64> = HashMap::new();
            for request in appends {
                let mut results = Vec::with_capacity(request.batch.len());
                for n in &request.batch {
                    let name = self.stage(&mut out, &channels, &n.channel)?;
                    let Some(meta) = out.staged.get_mut(&name) else {
                        continue; // stage() just inserted it
                    };
                    let id = meta.id;
                    let offset = meta.last + 1;
                    // One B-tree walk for the usual case, a new key: insert
                    // (replacing a stale row of the same key, if any), and
                    // put the old row back when it was in the window.
                    let key = (id, n.dedupe_key.as_str());
                    let seen = dedupe
                        .insert(key, offset)?
                        .map(|v| v.value())
                        .filter(|&old| old > meta.stale_below(self.dedupe_window));
                    if let Some(old) = seen {
                        dedupe.insert(key, old)?;
                        results.push(Appended {
                            channel: name.clone(),
                            offset: old,
                            duplicate: true,
                        });
                        continue;
                    }
                    let chunk = chunks
                        .entry(id)
                        .or_insert_with(|| chunk::Builder::new(offset));
                    if chunk.is_full() {
                        entries.insert((id, chunk.last()), chunk.bytes())?;
                        *chunk = chunk::Builder::new(offset);
                    }
                    chunk.push(request.at_ms, &n.fields);
                    if meta.first > meta.last {
                        // The channel was empty: retention by age must visit it.
                        heads.insert((request.at_ms, id), &*name)?;
                    }
                    meta.last = offset;
                    if meta.last - meta.first + 1 > self.max_per_channel {
                        let first = meta.last + 1 - self.max_per_channel;
                        out.trimmed_by_count += usize::try_from(first - meta.first).unwrap_or(0);
                        meta.first = first;
                        trimmed.insert(id, first);
                    }
                    out.entries.push(Arc::new(Entry {
                        channel: name.clone(),
                        epoch: self.shared.epoch.clone(),
                        offset,
                        at_ms: request.at_ms,
                        fields: n.fields.clone(),
                    }));
                    results.push(Appended {
                        channel: name.clone(),
                        offset,
                        duplicate: false,
                    });
                }
                out.results.push(results);
            }
            for (id, chunk) in &chunks {
                if !chunk.is_empty() {
                    entries.insert((*id, chunk.last()), chunk.bytes())?;
                }
            }
            for (id, first) in trimmed {
                entries.retain_in((id, 0)..(id, first), |_, _| false)?;
            }
            if let Some(cutoff) = self.trim.as_ref().map(|t| t.cutoff_ms) {
                out.trim_done =
                    self.trim_slice(&mut out, cutoff, &channels, &mut entries, &mut heads)?;
            }
            self.sweep_slice(&mut out, &mut dedupe)?;
            for (name, meta) in &out.staged {
                channels.insert(&**name, (meta.id, meta.first, meta.last, meta.swept))?;
            }
            if out.next_id != self.next_id {
                txn.open_table(COUNTERS)?.insert(NEXT_ID, out.next_id)?;
            }
        }
        txn.commit()?;
        Ok(out)
    }

    /// Make `channel` part of this transaction's staged state, loading it
    /// from the database (or creating it) on first touch.
    fn stage(
        &mut self,
        out: &mut Outcome,
        channels: &redb::Table<'_, &'static str, (u64, u64, u64, u64)>,
        channel: &str,
    ) -> Result<Arc<str>, redb::Error> {
        if let Some((name, _)) = out.staged.get_key_value(channel) {
            return Ok(name.clone());
        }
        let (name, meta) = match self.loaded.get_key_value(channel) {
            Some((name, meta)) => (name.clone(), meta.clone()),
            None => {
                let name: Arc<str> = channel.into();
                let meta = match channels.get(channel)?.map(|v| v.value()) {
                    Some((id, first, last, swept)) => Meta {
                        id,
                        first,
                        last,
                        swept,
                    },
                    None => {
                        let id = out.next_id;
                        out.next_id += 1;
                        Meta {
                            id,
                            first: 1,
                            last: 0,
                            swept: 0,
                        }
                    }
                };
                // Readers see the committed state from now on; the tail
                // fills as notifications are appended.
                crate::sync::write(&self.shared.channels)
                    .entry(name.clone())
                    .or_insert_with(|| {
                        Arc::new(Mutex::new(Cached {
                            first: meta.first,
                            last: meta.last,
                            tail: VecDeque::new(),
                        }))
                    });
                (name, meta)
            }
        };
        out.staged.insert(name.clone(), meta);
        Ok(name)
    }

    /// Trim up to `TRIM_BUDGET` notifications older than `cutoff`, oldest
    /// channels first. True when nothing older than `cutoff` is left.
    fn trim_slice(
        &mut self,
        out: &mut Outcome,
        cutoff: u64,
        channels: &redb::Table<'_, &'static str, (u64, u64, u64, u64)>,
        entries: &mut redb::Table<'_, (u64, u64), &'static [u8]>,
        heads: &mut redb::Table<'_, (u64, u64), &'static str>,
    ) -> Result<bool, redb::Error> {
        let due: Vec<((u64, u64), String)> = heads
            .range(..(cutoff, 0))?
            .take(TRIM_HEADS)
            .map(|item| item.map(|(k, v)| (k.value(), v.value().to_string())))
            .collect::<Result<_, _>>()?;
        let mut budget = TRIM_BUDGET;
        let mut done = due.len() < TRIM_HEADS;
        for ((at, id), name) in due {
            if budget == 0 {
                done = false;
                break;
            }
            heads.remove((at, id))?;
            let name = self.stage(out, channels, &name)?;
            let Some(meta) = out.staged.get(&name) else {
                continue;
            };
            let (old_first, mut first) = (meta.first, meta.first);
            // The time of the oldest notification kept, if any is.
            let mut head = None;
            each_from(&*entries, id, old_first, |offset, at_ms, _| {
                if at_ms >= cutoff || budget == 0 {
                    head = Some(at_ms);
                    return false;
                }
                first = offset + 1;
                budget -= 1;
                true
            })?;
            if let Some(at_ms) = head {
                heads.insert((at_ms, id), &*name)?;
                if at_ms < cutoff {
                    done = false;
                }
            }
            if first > old_first {
                entries.retain_in((id, 0)..(id, first), |_, _| false)?;
                out.trimmed_by_age += usize::try_from(first - old_first).unwrap_or(0);
                if let Some(meta) = out.staged.get_mut(&name) {
                    meta.first = first;
                }
                out.firsts.push((name, first));
            }
        }
        Ok(done)
    }

    /// Delete up to `SWEEP_BUDGET` stale dedupe rows of the channel at the
    /// front of the sweep queue, reading at most `SWEEP_SCAN` rows; when
    /// its sweep is over, move its sweep point.
    fn sweep_slice(
        &mut self,
        out: &mut Outcome,
        dedupe: &mut redb::Table<'_, (u64, &'static str), u64>,
    ) -> Result<(), redb::Error> {
        let Some(mut sweep) = self.sweeps.front().cloned() else {
            return Ok(());
        };
        let start = match &sweep.from {
            Some(key) => Bound::Included((sweep.id, key.as_str())),
            None => Bound::Included((sweep.id, "")),
        };
        let end = Bound::Excluded((sweep.id + 1, ""));
        let mut stale = Vec::new();
        let mut stopped_at = None;
        for (scanned, item) in dedupe.range::<(u64, &str)>((start, end))?.enumerate() {
            let (key, offset) = item?;
            if scanned == SWEEP_SCAN || stale.len() == SWEEP_BUDGET {
                stopped_at = Some(key.value().1.to_string());
                break;
            }
            if offset.value() <= sweep.cutoff {
                stale.push(key.value().1.to_string());
            }
        }
        for key in &stale {
            dedupe.remove((sweep.id, key.as_str()))?;
        }
        out.sweep_done = stopped_at.is_none();
        sweep.from = stopped_at;
        if out.sweep_done
            && let Some(meta) = restage(out, &self.loaded, &sweep.name)
        {
            meta.swept = meta.swept.max(sweep.cutoff);
        }
        out.swept = Some(sweep);
        Ok(())
    }

    /// After the commit: remember, publish in order, answer.
    fn apply(&mut self, appends: Vec<Request>, out: Outcome) {
        let shared = &self.shared;
        let appended = out.entries.len();
        self.next_id = out.next_id;
        match out.swept {
            Some(_) if out.sweep_done => {
                if let Some(done) = self.sweeps.pop_front() {
                    self.sweeping.remove(&done.id);
                }
            }
            Some(progress) => {
                if let Some(front) = self.sweeps.front_mut() {
                    *front = progress;
                }
            }
            None => {}
        }
        // A channel is due once a window's worth of its rows is stale.
        for (name, meta) in &out.staged {
            let cutoff = meta.stale_below(self.dedupe_window);
            if cutoff >= meta.swept + self.dedupe_window && self.sweeping.insert(meta.id) {
                self.sweeps.push_back(Sweep {
                    name: name.clone(),
                    id: meta.id,
                    cutoff,
                    from: None,
                });
            }
        }
        self.loaded.extend(out.staged);
        for d in &out.entries {
            let Some(cached) = shared.cached(&d.channel) else {
                continue;
            };
            let mut c = crate::sync::lock(&cached);
            c.last = d.offset;
            c.first = c
                .first
                .max((d.offset + 1).saturating_sub(self.max_per_channel));
            c.tail.push_back(d.clone());
            c.trim_front();
            // Under the channel lock: the hub sees each channel in order,
            // and a reader sees either the entry or its publication.
            shared.hub.publish(d);
        }
        for (name, first) in &out.firsts {
            if let Some(cached) = shared.cached(name) {
                let mut c = crate::sync::lock(&cached);
                c.first = c.first.max(*first);
                c.trim_front();
            }
        }
        if appended > 0 {
            shared.metrics.store_committed(appended);
        }
        let trimmed = out.trimmed_by_count + out.trimmed_by_age;
        shared.metrics.store_trimmed.inc_by(trimmed as u64);
        for (request, results) in appends.into_iter().zip(out.results) {
            let _ = request.reply.send(Ok(results));
        }
        if let Some(trim) = &mut self.trim {
            trim.trimmed += out.trimmed_by_age;
            if out.trim_done
                && let Some(trim) = self.trim.take()
            {
                for reply in trim.replies {
                    let _ = reply.send(Ok(trim.trimmed));
                }
            }
        }
    }

    /// The commit failed: nothing of it is durable; say so to every caller.
    fn failed(&mut self, appends: Vec<Request>, e: &redb::Error) {
        let notifications: usize = appends.iter().map(|r| r.batch.len()).sum();
        let first_channel = appends
            .first()
            .and_then(|r| r.batch.first())
            .map(|n| n.channel.clone())
            .unwrap_or_default();
        if !matches!(e, redb::Error::PreviousIo) || self.broken.is_none() {
            tracing::error!(
                file = %self.shared.file.display(),
                appends = appends.len(),
                notifications,
                channel = first_channel,
                error = %e,
                "disk store commit failed; appends not acknowledged"
            );
        }
        self.shared.metrics.store_error("append");
        self.broken.get_or_insert_with(Instant::now);
        let error = StoreError::Unavailable(format!("disk store: {e}"));
        for request in appends {
            request.fail(&error);
        }
        // Not retried in a loop against a broken disk: a sweep is queued
        // again when its channel next takes an append.
        self.sweeps.clear();
        self.sweeping.clear();
        if let Some(trim) = self.trim.take() {
            self.shared.metrics.store_error("trim");
            for reply in trim.replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// `name`'s state in this transaction: staged already, or staged now from
/// what the writer loaded. `None` for a channel the writer does not know.
fn restage<'a>(
    out: &'a mut Outcome,
    loaded: &HashMap<Arc<str>, Meta>,
    name: &Arc<str>,
) -> Option<&'a mut Meta> {
    if !out.staged.contains_key(name) {
        out.staged.insert(name.clone(), loaded.get(name)?.clone());
    }
    out.staged.get_mut(name)
}

fn other(e: StoreError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

mod chunk;
#[cfg(test)]
mod tests;
