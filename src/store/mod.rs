//! The log: per-channel, append-only, with offsets, epochs and dedupe.
//!
//! Invariants every [`Store`] keeps:
//! - per channel, offsets start at 1 and strictly increase with no holes;
//!   retention trims only from the oldest end;
//! - a channel's `epoch` changes whenever its history starts afresh (the
//!   memory store: every start, and a channel dropped then created again);
//!   a client's `last_id` from another epoch is never treated as a
//!   position in this one;
//! - state is bounded: retention by count, size and age per channel, and a
//!   channel nobody subscribes to and nothing was appended to within
//!   `max_age_secs` is dropped whole; reading a channel creates nothing;
//! - `append` is idempotent by dedupe key within the store's dedupe window:
//!   a key already in the window returns the existing offset and appends
//!   nothing;
//! - a notification is published to the hub only once it is durable for the
//!   store in use, and per channel in offset order: the hub never shows a
//!   client an offset that a restart could give to something else;
//! - calls to `append` made one after another keep their order in the log,
//!   even when the returned futures are awaited later; that is what lets a
//!   source keep several appends in flight and still acknowledge in order.
//!
//! The kinds: [`memory`] (the default, nothing survives a restart),
//! [`disk`] (embedded redb, survives `kill -9` and reboots) and [`redis`]
//! (shared by several herald nodes). The durable ones commit appends in
//! groups through [`group`].

pub mod config;
pub mod disk;
mod group;
pub mod memory;
pub mod redis;

use std::fmt;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use crate::metrics::Metrics;
pub use config::{StoreConfig, StoreKind};

pub use disk::DiskStore;
pub use memory::MemoryStore;
pub use redis::RedisStore;

/// A notification on its way into the log.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub channel: String,
    pub dedupe_key: String,
    /// The notification's own members as JSON (`"event":…,"title":…,
    /// "body":…,"data":…,"priority":…`, an object without its braces),
    /// serialized once by the pipeline; the log adds id, offset, epoch and
    /// time around them.
    pub fields: String,
    /// Where the notification came from, a JSON object
    /// (`{"rule":…,"rules_version":…,"source":…}`) serialized once by the
    /// pipeline. Opaque to the store, which keeps it beside `fields` and
    /// hands it back; `None` for entries written before herald kept it.
    pub provenance: Option<String>,
}

/// A committed log entry: what the store publishes and reads return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub channel: Arc<str>,
    pub epoch: Arc<str>,
    pub offset: u64,
    /// Milliseconds since the Unix epoch when it was appended.
    pub at_ms: u64,
    /// [`NewNotification::fields`] as appended.
    pub fields: String,
    /// [`NewNotification::provenance`] as appended (`None` for entries
    /// stored before herald kept it).
    pub provenance: Option<String>,
}

/// Where a store hands each committed entry, once it is durable, per
/// channel in offset order (the delivery hub implements it). Owned here so
/// the store does not depend on who listens.
///
/// `publish` is called on the append path, sometimes under a channel's
/// lock: it must not block or wait.
pub trait Publish: Send + Sync + fmt::Debug + 'static {
    fn publish(&self, entry: &Arc<Entry>);

    /// Whether a session subscribes to `channel` now: a store never drops
    /// the state of such a channel. Same rule as `publish`: no waiting.
    fn has_subscribers(&self, channel: &str) -> bool;
}

/// The result of appending one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub channel: Arc<str>,
    pub offset: u64,
    /// The dedupe key was already in the window; nothing was appended.
    pub duplicate: bool,
}

/// A page of one channel's log.
#[derive(Debug, Clone)]
pub struct Page {
    pub epoch: Arc<str>,
    /// Oldest retained offset (`last + 1` when nothing is retained).
    pub first: u64,
    /// Newest offset ever appended in this epoch (0 when none).
    pub last: u64,
    /// Notifications after the requested offset, in order, at most `limit`.
    pub entries: Vec<Arc<Entry>>,
}

impl Page {
    /// A channel with nothing appended in `epoch`.
    pub fn empty(epoch: Arc<str>) -> Self {
        Self {
            epoch,
            first: 1,
            last: 0,
            entries: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached now; retrying later can help.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store is shutting down.
    #[error("store closed")]
    Closed,
}

impl StoreError {
    /// Whether retrying the same call later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// The order guard of one stream of appends; see [`Store::append_fenced`].
///
/// Without it, a stream with appends in flight could see one fail (a
/// store outage) and a later one, submitted before the stream learned of
/// the failure, committed after the outage: the later record would sit in
/// the log ahead of the failed ones the stream then retries.
#[derive(Debug, Default)]
pub struct Fence {
    pub(crate) broken: std::sync::atomic::AtomicBool,
}

impl Fence {
    /// Whether an append of the stream failed since the last resume.
    pub fn is_broken(&self) -> bool {
        self.broken.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Accept the stream's appends again. Call it once every append in
    /// flight has answered, before submitting the failed ones again.
    pub fn resume(&self) {
        self.broken
            .store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Why a store could not be opened at start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The settings cannot work (a malformed URL): fix the configuration.
    #[error("store: configuration: {0}")]
    Config(String),
    /// The store is there but cannot be used now (a directory that cannot
    /// be created, a database another herald holds open).
    #[error("store: {what}: {reason}")]
    Unavailable { what: String, reason: String },
}

/// What a store tells the sources that feed it (sources read it when they
/// are built, so no source matches on store kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hints {
    /// Appends worth keeping in flight per ordered stream (a Kafka
    /// partition) when the source's configuration does not say. 1024 suits
    /// the memory store (a deeper window costs it ~15 % of its throughput)
    /// and Redis (whose groups are bounded by the script call); the disk
    /// store asks for more (see [`DiskStore`]).
    pub in_flight: usize,
}

impl Default for Hints {
    fn default() -> Self {
        Self { in_flight: 1024 }
    }
}

/// A [`Publish`] that keeps what it is given, for tests of the stores; it
/// reports the channels named by [`Recorder::watch`] as subscribed.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    published: std::sync::Mutex<Vec<Arc<Entry>>>,
    watched: std::sync::Mutex<std::collections::HashSet<String>>,
}

#[cfg(test)]
impl Recorder {
    /// The entries published since the last call, in order.
    pub(crate) fn take(&self) -> Vec<Arc<Entry>> {
        std::mem::take(&mut *crate::sync::lock(&self.published))
    }

    /// Report `channel` as subscribed (`true`) or not.
    pub(crate) fn watch(&self, channel: &str, on: bool) {
        let mut watched = crate::sync::lock(&self.watched);
        if on {
            watched.insert(channel.to_string());
        } else {
            watched.remove(channel);
        }
    }
}

#[cfg(test)]
impl Publish for Recorder {
    fn publish(&self, entry: &Arc<Entry>) {
        crate::sync::lock(&self.published).push(entry.clone());
    }

    fn has_subscribers(&self, channel: &str) -> bool {
        crate::sync::lock(&self.watched).contains(channel)
    }
}

/// Open the store `config` describes. Its committed entries go to `hub`.
pub async fn open(
    config: &StoreConfig,
    hub: Arc<dyn Publish>,
    metrics: Arc<Metrics>,
) -> Result<Arc<dyn Store>, OpenError> {
    Ok(match config.kind {
        StoreKind::Memory => Arc::new(MemoryStore::new(config, hub, metrics)),
        StoreKind::Disk => {
            let config = config.clone();
            // Opening may repair the file after a crash: off the runtime.
            let store = tokio::task::spawn_blocking(move || DiskStore::open(&config, hub, metrics))
                .await
                .map_err(|e| OpenError::Unavailable {
                    what: "disk store".into(),
                    reason: e.to_string(),
                })??;
            Arc::new(store)
        }
        StoreKind::Redis => Arc::new(RedisStore::open(config, hub, metrics).await?),
    })
}

/// The per-channel log. See the module docs for the invariants.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Append notifications in order. The call fixes their order; the future
    /// resolves once they are durable (and published to the hub).
    fn append(
        &self,
        batch: Vec<NewNotification>,
    ) -> BoxFuture<'static, Result<Vec<Appended>, StoreError>>;

    /// [`Store::append`] for an ordered stream of appends (one Kafka
    /// partition) that keeps several in flight: once one of them fails,
    /// every later append of the stream fails too, uncommitted, until the
    /// stream calls [`Fence::resume`]. Stores whose appends cannot fail
    /// one by one (memory) need not look at the fence.
    fn append_fenced(
        &self,
        batch: Vec<NewNotification>,
        fence: &Arc<Fence>,
    ) -> BoxFuture<'static, Result<Vec<Appended>, StoreError>> {
        let _ = fence;
        self.append(batch)
    }

    /// Up to `limit` notifications of `channel` with offsets above `after`,
    /// plus the channel's epoch and retained range. `limit` 0 reads only the
    /// head.
    fn read_after(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Page, StoreError>>;

    /// Up to `limit` notifications of `channel` with offsets below
    /// `before` — the newest of them — oldest first, plus the channel's
    /// epoch and retained range: paging back through history. A `before`
    /// past the head (`u64::MAX`) reads the newest `limit`.
    ///
    /// Offsets are contiguous in the retained range, so the default reads
    /// the head, then forwards from `before - limit`; two reads, each
    /// consistent, and a notification appended or trimmed between them
    /// is kept out (`offset < before`) or simply missing from the page's
    /// oldest end, as a trim a moment earlier would have made it. A store
    /// that can read both in one step overrides it.
    fn read_before(
        &self,
        channel: &str,
        before: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Page, StoreError>> {
        let channel = channel.to_string();
        async move {
            let head = self.read_after(&channel, 0, 0).await?;
            let (start, end) = before_range(&head, before, limit);
            if start >= end {
                return Ok(head);
            }
            let want = usize::try_from(end - start).unwrap_or(usize::MAX);
            let mut page = self.read_after(&channel, start - 1, want).await?;
            page.entries.retain(|d| d.offset < end);
            Ok(page)
        }
        .boxed()
    }

    /// Whether the store can take appends and serve reads now; if not, why
    /// (`/readyz` then answers 503 with the reason). Cheap and never
    /// waiting: it reports state the store keeps (the Redis store: whether
    /// its live feed follows Redis), it does no I/O of its own. Every kind
    /// says; the default (ready) is for test doubles.
    fn readiness(&self) -> Result<(), String> {
        Ok(())
    }

    /// How sources should feed this store.
    fn hints(&self) -> Hints {
        Hints::default()
    }

    /// Drop notifications older than the retention age. Returns how many.
    fn trim_expired(&self, now_ms: u64) -> BoxFuture<'_, Result<usize, StoreError>>;

    /// Flush and stop accepting appends (last step of shutdown).
    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// The offsets `start..end` a backwards read of `limit` below `before`
/// covers, given the channel's retained range in `head` (empty when
/// `start >= end`). `start` is at least 1.
pub(crate) fn before_range(head: &Page, before: u64, limit: usize) -> (u64, u64) {
    let end = before.min(head.last.saturating_add(1));
    let limit = u64::try_from(limit).unwrap_or(u64::MAX);
    let start = end.saturating_sub(limit).max(head.first).max(1);
    (start, end)
}

/// A fresh epoch: 16 hex digits, no `-`, so `<epoch>-<offset>` splits at
/// its last dash.
pub fn new_epoch() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Parse a notification id `<epoch>-<offset>`.
pub fn parse_id(id: &str) -> Option<(&str, u64)> {
    let (epoch, offset) = id.rsplit_once('-')?;
    if epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    Some((epoch, offset.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let epoch = new_epoch();
        let id = format!("{epoch}-42");
        assert_eq!(parse_id(&id), Some((epoch.as_str(), 42)));
        assert_eq!(parse_id("42"), None);
        assert_eq!(parse_id("abc-"), None);
        assert_eq!(parse_id("a b-1"), None);
        assert_eq!(parse_id("abc--1"), None);
    }
}
