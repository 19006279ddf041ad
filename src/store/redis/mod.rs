//! The Redis store: the log in Redis, shared by every herald node that uses
//! the same `url` and `key_prefix`.
//!
//! Invariants, beyond the [`Store`](super::Store) ones:
//! - offset assignment, dedupe, the epoch, retention by count and the live
//!   feed entry are one Lua script per group of appends, so they are atomic
//!   on the server whatever the number of nodes;
//! - a channel's epoch lives in its `meta` hash, created (`epoch`, `last`
//!   = 0) by the first append that finds it missing. Reads write nothing:
//!   a channel without its hash reads empty, in the epoch its creation
//!   will take, derived from the deployment's base (`P epoch`, random,
//!   set when the feed connects) and the channel's name, so a position
//!   read there (`<epoch>-0`) resumes into what is appended later. If
//!   Redis loses its data (a restart without persistence, a flush), the
//!   base goes with it and every channel comes back in a new epoch; if it
//!   loses only a channel's hash, what is left of its log or dedupe set
//!   makes the next append pick a random epoch and drop them. Either way
//!   clients are told `recovered: false`, never resumed into a gap. (A
//!   channel whose keys are all evicted comes back in its old epoch: run
//!   Redis with `maxmemory-policy noeviction`.);
//! - group commit: `append` only queues (see [`super::group`]); one writer
//!   task sends everything queued as one script call (one round trip and,
//!   with `appendfsync always`, one fsync) and answers after Redis replied;
//! - live fan-out: the script also adds each new notification to one
//!   `notify` stream; every node follows it with `XREAD` on a connection of
//!   its own and publishes to its own hub, in stream order, which is commit
//!   order. The appending node does not publish directly, so nothing is
//!   published twice, and nothing before Redis has it;
//! - after a lost connection the feed resumes after the last entry it saw,
//!   so a Redis restart with persistence loses nothing live either. Until
//!   the feed first knows where it starts, reads fail, so no session can
//!   subscribe before a point the feed would skip; the
//!   command connection reconnects by itself (`ConnectionManager`). The
//!   store is ready (`/readyz`) while the feed follows Redis; start-up
//!   waits for the feed's first attempt only, so an unreachable Redis does
//!   not hold up listening. While
//!   Redis is unreachable appends fail with [`StoreError::Unavailable`] and
//!   sources do not acknowledge. A failed group also fails every append
//!   queued behind it and breaks its streams' fences ([`super::Fence`]),
//!   so none commits ahead of an earlier failed one.
//!
//! Keys (`P` is `key_prefix`): `P epoch` (the base of new channels'
//! epochs), `P ch:{channel}:m` (hash: `epoch`, `last`),
//! `P ch:{channel}:l` (stream of entries with id `{offset}-0`, fields `t`
//! time in ms, `f` the notification fields and, when it has one, `p` its
//! provenance), `P ch:{channel}:d` (sorted
//! set: dedupe key scored by offset, the newest `dedupe_window` kept),
//! `P notify` (the live feed, about `NOTIFY_MAX_LEN` entries), `P heads`
//! (sorted set: channel scored by the time of its oldest entry, what
//! retention by age visits). Scripts name their keys in `KEYS`, but one
//! group spans many channels: Redis Cluster is not supported.
//!
//! Compatibility: readers look stream fields up by name, so `p` (added
//! with provenance) is simply absent in older entries (no provenance) and
//! ignored by an older herald reading newer ones; nodes of both versions
//! can share one prefix during a rolling upgrade.
//!
//! Files: this one (connecting, keys, the [`Store`] handle, retention by
//! age), `writer.rs` (the writer task), `feed.rs` (the live feed and the
//! persistence check), `reply.rs` (reading Redis replies), and the Lua
//! scripts `append.lua`, `read.lua`, `trim.lua`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, ready};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::StoreConfig;
use super::group;
use super::{Appended, NewNotification, OpenError, Page, Publish, Store, StoreError, new_epoch};
use crate::metrics::Metrics;
use reply::parse_page;

/// Most notifications in one script call.
const MAX_GROUP: usize = 1024;
/// Approximate length of the live feed stream. A node that is cut off
/// longer than this many notifications misses live ones; its sessions
/// still fill the hole from the log at the channel's next notification.
const NOTIFY_MAX_LEN: usize = 100_000;
const FEED_BLOCK_MS: u64 = 1000;
const FEED_COUNT: usize = 1000;
/// Channels per round of retention by age, and rounds per pass.
const TRIM_CHANNELS: usize = 100;
const TRIM_ROUNDS: usize = 100;
/// Entries one channel may lose per trim call.
const TRIM_BUDGET: usize = 10_000;
/// Lua numbers are doubles: offsets beyond this are not exact.
const MAX_OFFSET: u64 = 1 << 53;
/// Longest start-up waits for the live feed's first connection attempt
/// (its connection timeout is 1 s).
const FIRST_ATTEMPT_WAIT: Duration = Duration::from_millis(1500);

/// The append script: offsets, dedupe, retention by count and the live
/// feed entry for one group (its header names `KEYS` and `ARGV`).
const APPEND: &str = include_str!("append.lua");

/// The read script: a page of a channel's log with its head.
const READ: &str = include_str!("read.lua");

/// The retention-by-age script for one channel.
const TRIM: &str = include_str!("trim.lua");

/// Key names under the configured prefix.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn meta(&self, channel: &str) -> String {
        format!("{}ch:{channel}:m", self.prefix)
    }
    fn log(&self, channel: &str) -> String {
        format!("{}ch:{channel}:l", self.prefix)
    }
    fn dedupe(&self, channel: &str) -> String {
        format!("{}ch:{channel}:d", self.prefix)
    }
    fn notify(&self) -> String {
        format!("{}notify", self.prefix)
    }
    fn heads(&self) -> String {
        format!("{}heads", self.prefix)
    }
    fn fresh(&self) -> String {
        format!("{}epoch", self.prefix)
    }
}

/// What the store handle and its tasks share.
#[derive(Debug)]
struct Settings {
    keys: Keys,
    max_per_channel: usize,
    dedupe_window: usize,
    max_age_ms: u64,
    metrics: Arc<Metrics>,
    /// Set once the live feed knows where it starts. Until then reads fail:
    /// a session that subscribed before would miss what the feed skips.
    feeding: AtomicBool,
    /// `host:port` of Redis, for messages.
    addr: String,
    /// Why the live feed is not following Redis now (`None` while it is):
    /// the store's readiness.
    problem: Mutex<Option<String>>,
    /// Told when the feed's connection attempt ends, either way.
    attempted: tokio::sync::Notify,
    /// The persistence settings were checked (once per process).
    persistence_checked: AtomicBool,
}

impl Settings {
    fn set_problem(&self, problem: Option<String>) {
        *crate::sync::lock(&self.problem) = problem;
        self.attempted.notify_one();
    }
}

/// See the module docs.
pub struct RedisStore {
    conn: ConnectionManager,
    settings: Arc<Settings>,
    queue: group::Queue,
    read: Script,
    trim: Script,
    stop: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.settings.keys.prefix)
            .finish_non_exhaustive()
    }
}

/// The client for `url`. With `ca_file` (a `rediss://` URL only, as
/// configuration checks), the server certificate must chain to the PEM
/// certificates in that file and to nothing else; without it, `rediss://`
/// trusts the system's roots. A file that cannot be read, or holds no
/// certificate, is a configuration error: herald does not start.
pub fn client(url: &str, ca_file: Option<&std::path::Path>) -> Result<Client, String> {
    let Some(ca_file) = ca_file else {
        if url.starts_with("rediss://") {
            crate::tls::install_default_provider();
        }
        return Client::open(url).map_err(|e| format!("store.url: {e}"));
    };
    let pem = std::fs::read(ca_file)
        .map_err(|e| format!("store.tls_ca_file: {}: {e}", ca_file.display()))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "store.tls_ca_file: {}: no CERTIFICATE block",
            ca_file.display()
        ));
    }
    crate::tls::install_default_provider();
    Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        },
    )
    .map_err(|e| format!("store.tls_ca_file: {}: {e}", ca_file.display()))
}

impl RedisStore {
    /// Connect to `config.url`. An unreachable Redis is not an error here:
    /// herald starts, appends fail until Redis answers.
    pub async fn open(
        config: &StoreConfig,
        hub: Arc<dyn Publish>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, OpenError> {
        let url = config
            .url
            .as_deref()
            .ok_or_else(|| OpenError::Config("store.url is required for the redis store".into()))?;
        let client = client(url, config.tls_ca_file.as_deref()).map_err(OpenError::Config)?;
        let addr = client.get_connection_info().addr().to_string();
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            // Generous: with `appendfsync always` a big group waits for an fsync.
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager)
            .map_err(|e| OpenError::Config(format!("store.url: {e}")))?;
        let settings = Arc::new(Settings {
            keys: Keys {
                prefix: config.key_prefix().to_string(),
            },
            max_per_channel: config.max_per_channel,
            dedupe_window: config.dedupe_window,
            max_age_ms: config.max_age_secs.saturating_mul(1000),
            metrics,
            feeding: AtomicBool::new(false),
            problem: Mutex::new(Some(format!("connecting to redis at {addr}"))),
            addr: addr.clone(),
            attempted: tokio::sync::Notify::new(),
            persistence_checked: AtomicBool::new(false),
        });
        let (queue, rx) = group::queue();
        let stop = CancellationToken::new();
        let writer = tokio::spawn(writer::write(rx, conn.clone(), settings.clone()));
        let feed = tokio::spawn(feed::feed(client, settings.clone(), hub, stop.clone()));
        // A reachable Redis answers within milliseconds, and the node is
        // ready when it starts listening; an unreachable one fails the
        // first attempt at once (or at its connection timeout), and the
        // node listens, not ready, while the feed keeps trying.
        let _ = tokio::time::timeout(FIRST_ATTEMPT_WAIT, settings.attempted.notified()).await;
        if settings.feeding.load(Ordering::Acquire) {
            tracing::info!(%addr, prefix = %settings.keys.prefix, "redis store connected");
        } else {
            tracing::warn!(%addr, "redis unreachable at start; /readyz answers 503 and appends and reads fail until it answers");
        }
        Ok(Self {
            conn,
            settings,
            queue,
            read: Script::new(READ),
            trim: Script::new(TRIM),
            stop,
            tasks: Mutex::new(vec![writer, feed]),
        })
    }
}

impl Store for RedisStore {
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
        let keys = &self.settings.keys;
        let mut invocation = self.read.prepare_invoke();
        invocation
            .key(keys.meta(channel))
            .key(keys.log(channel))
            .key(keys.fresh())
            .arg(after.min(MAX_OFFSET))
            .arg(limit)
            .arg(new_epoch())
            .arg(channel);
        let mut conn = self.conn.clone();
        let channel = channel.to_string();
        async move {
            if !self.settings.feeding.load(Ordering::Acquire) {
                return Err(StoreError::Unavailable(
                    "redis: live feed not connected yet".into(),
                ));
            }
            let reply: Result<Value, _> = invocation.invoke_async(&mut conn).await;
            let page = reply
                .map_err(|e| e.to_string())
                .and_then(|v| parse_page(&channel, v));
            page.map_err(|e| {
                self.settings.metrics.store_error("read");
                tracing::warn!(channel, after, error = %e, "redis store read failed");
                StoreError::Unavailable(format!("redis: {e}"))
            })
        }
        .boxed()
    }

    fn trim_expired(&self, now_ms: u64) -> BoxFuture<'_, Result<usize, StoreError>> {
        if self.settings.max_age_ms == 0 {
            return ready(Ok(0)).boxed();
        }
        let cutoff = now_ms.saturating_sub(self.settings.max_age_ms);
        async move {
            let result = self.trim_before(cutoff).await;
            match result {
                Ok(n) => {
                    self.settings.metrics.store_trimmed.inc_by(n as u64);
                    Ok(n)
                }
                Err(e) => {
                    self.settings.metrics.store_error("trim");
                    tracing::warn!(cutoff, error = %e, "redis store retention pass failed");
                    Err(StoreError::Unavailable(format!("redis: {e}")))
                }
            }
        }
        .boxed()
    }

    fn readiness(&self) -> Result<(), String> {
        match &*crate::sync::lock(&self.settings.problem) {
            None => Ok(()),
            Some(problem) => Err(problem.clone()),
        }
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            self.queue.close().await;
            self.stop.cancel();
            let tasks = std::mem::take(&mut *crate::sync::lock(&self.tasks));
            for task in tasks {
                let _ = task.await;
            }
            Ok(())
        }
        .boxed()
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        // The feed runs until stopped; the writer ends with the queue.
        self.stop.cancel();
    }
}

impl RedisStore {
    /// Retention by age: visit the channels whose oldest entry is older
    /// than `cutoff`, a bounded number of rounds per pass.
    async fn trim_before(&self, cutoff: u64) -> redis::RedisResult<usize> {
        let keys = &self.settings.keys;
        let mut conn = self.conn.clone();
        let mut total = 0;
        for _ in 0..TRIM_ROUNDS {
            let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(keys.heads())
                .arg("-inf")
                .arg(format!("({cutoff}"))
                .arg("LIMIT")
                .arg(0)
                .arg(TRIM_CHANNELS)
                .query_async(&mut conn)
                .await?;
            for channel in &due {
                let trimmed: usize = self
                    .trim
                    .key(keys.heads())
                    .key(keys.log(channel))
                    .arg(channel)
                    .arg(cutoff)
                    .arg(TRIM_BUDGET)
                    .invoke_async(&mut conn)
                    .await?;
                total += trimmed;
            }
            if due.len() < TRIM_CHANNELS {
                break;
            }
        }
        Ok(total)
    }
}

mod feed;
mod reply;
mod writer;
