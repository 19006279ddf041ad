//! The log: per-channel, append-only, with offsets, epochs and dedupe.
//!
//! Invariants every [`Store`] keeps:
//! - per channel, offsets start at 1 and strictly increase with no holes;
//!   retention trims only from the oldest end;
//! - a channel's `epoch` changes whenever its history starts afresh (the
//!   memory store: every start); a client's `last_id` from another epoch is
//!   never treated as a position in this one;
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

pub mod disk;
mod group;
pub mod memory;
pub mod redis;

use std::fmt;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::config::{StoreConfig, StoreKind};
use crate::delivery::hub::Hub;
use crate::metrics::Metrics;
use crate::rules::{Priority, Rendered};

pub use disk::DiskStore;
pub use memory::MemoryStore;
pub use redis::RedisStore;

/// A notification on its way into the log.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub channel: String,
    pub dedupe_key: String,
    /// The frame's notification fields (`"event":…,"title":…,"body":…,
    /// "data":…,"priority":…`), serialized once before the log adds id,
    /// offset, epoch and time.
    pub fields: String,
}

impl NewNotification {
    pub fn from_rendered(r: &Rendered) -> Self {
        #[derive(Serialize)]
        struct Fields<'a> {
            event: &'a str,
            title: &'a str,
            body: &'a str,
            data: &'a serde_json::Value,
            priority: Priority,
        }
        let object = serde_json::to_string(&Fields {
            event: &r.event,
            title: &r.title,
            body: &r.body,
            data: &r.data,
            priority: r.priority,
        })
        .unwrap_or_else(|_| "{}".into());
        // `{...}` without its braces, to be spliced into the frame.
        let fields = object[1..object.len() - 1].to_string();
        Self {
            channel: r.channel.clone(),
            dedupe_key: r.dedupe_key.clone(),
            fields,
        }
    }
}

/// A committed notification: what the hub fans out and replays read.
#[derive(Debug)]
pub struct Delivery {
    pub channel: Arc<str>,
    pub epoch: Arc<str>,
    pub offset: u64,
    /// Milliseconds since the Unix epoch when it was appended.
    pub at_ms: u64,
    /// The complete `notification` frame, serialized once and shared by
    /// every subscriber.
    pub frame: Utf8Bytes,
}

impl Delivery {
    /// Build the frame text for a notification at `offset`.
    pub fn build(
        channel: Arc<str>,
        channel_json: &str,
        epoch: Arc<str>,
        offset: u64,
        at_ms: u64,
        fields: &str,
    ) -> Self {
        let time = crate::clock::rfc3339_ms(at_ms);
        let mut frame = String::with_capacity(96 + channel_json.len() + fields.len());
        frame.push_str("{\"type\":\"notification\",\"id\":\"");
        frame.push_str(&epoch);
        frame.push('-');
        frame.push_str(&offset.to_string());
        frame.push_str("\",\"channel\":");
        frame.push_str(channel_json);
        frame.push_str(",\"offset\":");
        frame.push_str(&offset.to_string());
        frame.push_str(",\"epoch\":\"");
        frame.push_str(&epoch);
        frame.push_str("\",\"time\":\"");
        frame.push_str(&time);
        frame.push('"');
        if !fields.is_empty() {
            frame.push(',');
            frame.push_str(fields);
        }
        frame.push('}');
        Self {
            channel,
            epoch,
            offset,
            at_ms,
            frame: Utf8Bytes::from(frame),
        }
    }
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
    pub entries: Vec<Arc<Delivery>>,
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

/// Open the store `config` describes. Its notifications go to `hub`.
pub async fn open(
    config: &StoreConfig,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
) -> Result<Arc<dyn Store>, OpenError> {
    Ok(match config.kind {
        StoreKind::Memory => Arc::new(MemoryStore::new(config, hub)),
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

    #[test]
    fn frame_is_one_json_object() {
        let d = Delivery::build(
            "user:1".into(),
            "\"user:1\"",
            "e1".into(),
            7,
            1_700_000_000_000,
            "\"title\":\"t\"",
        );
        let v: serde_json::Value = serde_json::from_str(&d.frame).expect("json");
        assert_eq!(v["id"], "e1-7");
        assert_eq!(v["offset"], 7);
        assert_eq!(v["channel"], "user:1");
        assert_eq!(v["title"], "t");
        assert_eq!(v["time"], "2023-11-14T22:13:20Z");
    }
}
