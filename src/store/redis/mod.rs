//! The Redis store: the log in Redis, shared by every herald node that uses
//! the same `url` and `key_prefix`.
//!
//! Invariants, beyond the [`Store`](super::Store) ones:
//! - offset assignment, dedupe, the epoch, retention by count and the live
//!   feed entry are one Lua script per group of appends, so they are atomic
//!   on the server whatever the number of nodes;
//! - a channel's epoch lives in its `meta` hash, created (`epoch`, `last`
//!   = 0) by the first append or read that finds it missing. If Redis loses
//!   the hash (a restart without persistence, a flush), the next append or
//!   read creates a new epoch and drops what is left of the old history, so
//!   clients are told `recovered: false`, never resumed into a gap;
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
//! Keys (`P` is `key_prefix`): `P ch:{channel}:m` (hash: `epoch`, `last`),
//! `P ch:{channel}:l` (stream of entries with id `{offset}-0`, fields `t`
//! time in ms and `f` the notification fields), `P ch:{channel}:d` (sorted
//! set: dedupe key scored by offset, the newest `dedupe_window` kept),
//! `P notify` (the live feed, about `NOTIFY_MAX_LEN` entries), `P heads`
//! (sorted set: channel scored by the time of its oldest entry, what
//! retention by age visits). Scripts name their keys in `KEYS`, but one
//! group spans many channels: Redis Cluster is not supported.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, ready};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Script, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::StoreConfig;
use super::group::{self, Item, Request};
use super::{
    Appended, Entry, NewNotification, OpenError, Page, Publish, Store, StoreError, new_epoch,
};
use crate::metrics::Metrics;

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

/// KEYS: notify, heads, then (meta, log, dedupe) per notification.
/// ARGV: now, max_per_channel, dedupe_window, notify_max_len, fresh epoch,
/// then (channel, dedupe key, fields) per notification.
/// Returns {epoch, offset, duplicate} per notification.
const APPEND: &str = r"
local now, maxlen, window, notify_max, fresh = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local out = {}
for i = 1, (#KEYS - 2) / 3 do
  local meta, log, dd = KEYS[3 * i], KEYS[3 * i + 1], KEYS[3 * i + 2]
  local channel, key, fields = ARGV[3 * i + 3], ARGV[3 * i + 4], ARGV[3 * i + 5]
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    redis.call('DEL', log, dd)
    redis.call('HSET', meta, 'epoch', fresh, 'last', 0)
    epoch = fresh
  end
  local seen = redis.call('ZSCORE', dd, key)
  if seen then
    out[i] = {epoch, tonumber(seen), 1}
  else
    local offset = redis.call('HINCRBY', meta, 'last', 1)
    redis.call('XADD', log, 'MAXLEN', maxlen, string.format('%d-0', offset), 't', now, 'f', fields)
    if redis.call('XLEN', log) == 1 then
      redis.call('ZADD', KEYS[2], 'NX', now, channel)
    end
    redis.call('ZADD', dd, offset, key)
    if offset > window then
      redis.call('ZREMRANGEBYSCORE', dd, '-inf', offset - window)
    end
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', notify_max, '*',
      'c', channel, 'e', epoch, 'o', offset, 't', now, 'f', fields)
    out[i] = {epoch, offset, 0}
  end
end
return out
";

/// KEYS: meta, log, dedupe. ARGV: fresh epoch, after, limit.
/// Returns {epoch, last, first, entries}.
const READ: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'last', 0)
  epoch = ARGV[1]
end
local last = tonumber(redis.call('HGET', KEYS[1], 'last'))
local first = last + 1
local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #head > 0 then
  first = tonumber(string.match(head[1][1], '^(%d+)'))
end
local entries = {}
local limit = tonumber(ARGV[3])
if limit > 0 then
  entries = redis.call('XRANGE', KEYS[2], string.format('%d-0', tonumber(ARGV[2]) + 1), '+', 'COUNT', limit)
end
return {epoch, last, first, entries}
";

/// KEYS: heads, log. ARGV: channel, cutoff, budget.
/// Drops the channel's entries older than cutoff; returns how many.
const TRIM: &str = r"
local cutoff, budget = tonumber(ARGV[2]), tonumber(ARGV[3])
local trimmed, keep, start = 0, nil, '-'
while true do
  local batch = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', 100)
  for _, e in ipairs(batch) do
    if tonumber(e[2][2]) < cutoff and trimmed < budget then
      trimmed = trimmed + 1
    else
      keep = e
      break
    end
  end
  if keep or #batch < 100 then break end
  start = '(' .. batch[#batch][1]
end
if trimmed > 0 then
  if keep then
    redis.call('XTRIM', KEYS[2], 'MINID', keep[1])
  else
    redis.call('XTRIM', KEYS[2], 'MAXLEN', 0)
  end
end
if keep then
  redis.call('ZADD', KEYS[1], tonumber(keep[2][2]), ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return trimmed
";

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
        let writer = tokio::spawn(write(rx, conn.clone(), settings.clone()));
        let feed = tokio::spawn(feed(client, settings.clone(), hub, stop.clone()));
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
            .key(keys.dedupe(channel))
            .arg(new_epoch())
            .arg(after.min(MAX_OFFSET))
            .arg(limit);
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

/// The writer task: one script call per group of queued appends.
async fn write(mut rx: group::Receiver, mut conn: ConnectionManager, settings: Arc<Settings>) {
    let script = Script::new(APPEND);
    while let Some(items) = rx.next_group(MAX_GROUP).await {
        let mut appends = Vec::new();
        let mut close = None;
        for item in items {
            match item {
                Item::Append(r) => appends.push(r),
                // Retention by age runs outside the queue for Redis.
                Item::Trim { reply, .. } => {
                    let _ = reply.send(Ok(0));
                }
                Item::Close(done) => close = Some(done),
            }
        }
        if !appends.is_empty() && !commit(&script, &mut conn, &settings, appends).await {
            let error = StoreError::Unavailable("redis: an earlier append failed".into());
            for item in rx.fail_queued_appends(&error) {
                match item {
                    Item::Trim { reply, .. } => {
                        let _ = reply.send(Ok(0));
                    }
                    Item::Close(done) => close = Some(done),
                    Item::Append(_) => {}
                }
            }
        }
        if let Some(done) = close {
            let _ = done.send(());
            return;
        }
    }
}

async fn commit(
    script: &Script,
    conn: &mut ConnectionManager,
    settings: &Settings,
    appends: Vec<Request>,
) -> bool {
    let keys = &settings.keys;
    let mut invocation = script.prepare_invoke();
    invocation
        .key(keys.notify())
        .key(keys.heads())
        .arg(appends.first().map_or(0, |r| r.at_ms))
        .arg(settings.max_per_channel)
        .arg(settings.dedupe_window)
        .arg(NOTIFY_MAX_LEN)
        .arg(new_epoch());
    let mut count = 0;
    for request in &appends {
        for n in &request.batch {
            invocation
                .key(keys.meta(&n.channel))
                .key(keys.log(&n.channel))
                .key(keys.dedupe(&n.channel))
                .arg(&n.channel)
                .arg(&n.dedupe_key)
                .arg(&n.fields);
            count += 1;
        }
    }
    let reply: Result<Value, _> = invocation.invoke_async(conn).await;
    let results = reply
        .map_err(|e| e.to_string())
        .and_then(|v| parse_appended(v, count));
    match results {
        Ok(results) => {
            let new = results.iter().filter(|(_, dup)| !dup).count();
            settings.metrics.store_committed(new);
            let mut results = results.into_iter();
            for request in appends {
                let answer = request
                    .batch
                    .iter()
                    .zip(results.by_ref())
                    .map(|(n, (offset, duplicate))| Appended {
                        channel: n.channel.as_str().into(),
                        offset,
                        duplicate,
                    })
                    .collect();
                let _ = request.reply.send(Ok(answer));
            }
            true
        }
        Err(e) => {
            settings.metrics.store_error("append");
            let channel = appends
                .first()
                .and_then(|r| r.batch.first())
                .map(|n| n.channel.clone())
                .unwrap_or_default();
            tracing::warn!(
                appends = appends.len(),
                notifications = count,
                channel,
                error = %e,
                "redis store append failed; appends not acknowledged"
            );
            let error = StoreError::Unavailable(format!("redis: {e}"));
            for request in appends {
                request.fail(&error);
            }
            false
        }
    }
}

/// The live feed: follow the `notify` stream and publish to the local hub,
/// reconnecting until stopped.
async fn feed(
    client: Client,
    settings: Arc<Settings>,
    hub: Arc<dyn Publish>,
    stop: CancellationToken,
) {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_millis(FEED_BLOCK_MS + 5000)));
    let mut cursor: Option<String> = None;
    let mut backoff = Duration::from_millis(100);
    let mut failing = false;
    loop {
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            c = client.get_multiplexed_async_connection_with_config(&config) => c,
        };
        let error = match connected {
            Ok(mut conn) => {
                if failing {
                    tracing::info!("redis live feed reconnected");
                    failing = false;
                }
                backoff = Duration::from_millis(100);
                match follow(&mut conn, &settings, &*hub, &mut cursor, &stop).await {
                    Ok(()) => return,
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        settings.metrics.store_error("feed");
        settings.set_problem(Some(format!("redis at {}: {error}", settings.addr)));
        if !failing {
            tracing::warn!(
                redis = %settings.addr,
                error = %error,
                cursor = cursor.as_deref().unwrap_or("none"),
                "redis live feed lost; reconnecting"
            );
            failing = true;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Read the feed from `cursor` on until stopped (`Ok`) or the connection
/// fails.
async fn follow(
    conn: &mut MultiplexedConnection,
    settings: &Settings,
    hub: &dyn Publish,
    cursor: &mut Option<String>,
    stop: &CancellationToken,
) -> redis::RedisResult<()> {
    let notify = settings.keys.notify();
    let newest: Value = redis::cmd("XREVRANGE")
        .arg(&notify)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    let newest = stream_entries(&newest).first().map(|e| e.id.clone());
    *cursor = match (cursor.take(), newest) {
        // First start: only what is appended from now on (no session could
        // subscribe before: reads fail until `feeding`).
        (None, newest) => Some(newest.unwrap_or_else(|| "0-0".into())),
        // The stream is gone or older than our position: Redis lost data
        // and started a new stream; read all of it.
        (Some(_), None) => Some("0-0".into()),
        (Some(at), Some(newest)) if stream_id(&newest) < stream_id(&at) => {
            tracing::warn!(cursor = %at, newest = %newest, "redis live feed restarted from scratch (Redis lost data)");
            Some("0-0".into())
        }
        (Some(at), Some(_)) => Some(at),
    };
    if !settings.persistence_checked.load(Ordering::Acquire)
        && check_persistence(conn, &settings.addr).await
    {
        settings.persistence_checked.store(true, Ordering::Release);
    }
    settings.feeding.store(true, Ordering::Release);
    settings.set_problem(None);
    let mut channel_names: std::collections::HashMap<String, Arc<str>> =
        std::collections::HashMap::new();
    loop {
        let from = cursor.clone().unwrap_or_else(|| "0-0".into());
        let mut xread = redis::cmd("XREAD");
        xread
            .arg("COUNT")
            .arg(FEED_COUNT)
            .arg("BLOCK")
            .arg(FEED_BLOCK_MS)
            .arg("STREAMS")
            .arg(&notify)
            .arg(from);
        let read = xread.query_async::<Value>(conn);
        let reply = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            r = read => r?,
        };
        let Value::Array(streams) = reply else {
            continue; // nil: nothing new within the block time
        };
        for stream in streams {
            let Value::Array(pair) = stream else { continue };
            let Some(entries) = pair.get(1) else { continue };
            for entry in stream_entries(entries) {
                if channel_names.len() > 10_000 {
                    channel_names.clear();
                }
                match live_entry(&entry, &mut channel_names) {
                    Some(d) => hub.publish(&Arc::new(d)),
                    None => {
                        tracing::warn!(id = %entry.id, "redis live feed entry malformed; skipped")
                    }
                }
                *cursor = Some(entry.id);
            }
        }
    }
}

/// Warn once when Redis does not keep every acknowledged append (README,
/// "Redis settings herald needs": `appendonly yes`, `appendfsync
/// always`), naming the settings and what is at risk. herald still
/// starts: the operator may accept the risk. A Redis that refuses `CONFIG`
/// (managed services often rename it) cannot be checked; that is said at
/// info level and is not an error. Returns whether the check is done (not
/// cut short by a lost connection).
async fn check_persistence(conn: &mut MultiplexedConnection, addr: &str) -> bool {
    let reply: redis::RedisResult<std::collections::HashMap<String, String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("append*")
        .query_async(conn)
        .await;
    let settings = match reply {
        Ok(settings) => settings,
        Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => return false,
        Err(e) => {
            tracing::info!(
                redis = addr,
                error = %e,
                "cannot read the redis persistence settings (CONFIG GET refused); \
                 no loss needs appendonly yes and appendfsync always"
            );
            return true;
        }
    };
    let get = |key: &str| settings.get(key).map_or("unknown", String::as_str);
    if let Some(risk) = persistence_risk(get("appendonly"), get("appendfsync")) {
        tracing::warn!(
            redis = addr,
            appendonly = get("appendonly"),
            appendfsync = get("appendfsync"),
            at_risk = risk,
            "redis may lose notifications herald acknowledged; set appendonly yes and \
             appendfsync always for no loss"
        );
    }
    true
}

/// What a Redis with these settings can lose of what herald acknowledged;
/// `None` when nothing.
fn persistence_risk(appendonly: &str, appendfsync: &str) -> Option<&'static str> {
    if appendonly != "yes" {
        return Some(
            "a Redis restart loses history and dedupe keys written since its last \
             snapshot (all of them without snapshots): clients get recovered: false, \
             redelivered events append again",
        );
    }
    match appendfsync {
        "always" => None,
        "everysec" => Some(
            "a Redis crash or power loss can lose about the last second of \
             acknowledged notifications",
        ),
        _ => Some(
            "a Redis crash or power loss can lose the acknowledged notifications the \
             operating system had not yet written",
        ),
    }
}

/// One stream entry: its id and its fields in order.
#[derive(Debug)]
struct StreamEntry {
    id: String,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl StreamEntry {
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    fn get_str(&self, name: &str) -> Option<&str> {
        std::str::from_utf8(self.get(name)?).ok()
    }

    fn get_u64(&self, name: &str) -> Option<u64> {
        self.get_str(name)?.parse().ok()
    }

    /// The offset in a log entry id `{offset}-0`.
    fn offset(&self) -> Option<u64> {
        self.id.split('-').next()?.parse().ok()
    }
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => std::str::from_utf8(&bytes(other)?).ok()?.parse().ok(),
    }
}

/// Entries of an `XRANGE`-shaped reply: `[[id, [field, value, ...]], ...]`.
fn stream_entries(v: &Value) -> Vec<StreamEntry> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let id = String::from_utf8(bytes(pair.first()?)?).ok()?;
            let Value::Array(flat) = pair.get(1)? else {
                return None;
            };
            let fields = flat
                .chunks(2)
                .filter_map(|kv| Some((bytes(kv.first()?)?, bytes(kv.get(1)?)?)))
                .collect();
            Some(StreamEntry { id, fields })
        })
        .collect()
}

/// A stream id `ms-seq` as a comparable pair.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

fn live_entry(
    entry: &StreamEntry,
    names: &mut std::collections::HashMap<String, Arc<str>>,
) -> Option<Entry> {
    let channel = entry.get_str("c")?;
    let name = names
        .entry(channel.to_string())
        .or_insert_with(|| Arc::from(channel))
        .clone();
    Some(Entry {
        channel: name,
        epoch: entry.get_str("e")?.into(),
        offset: entry.get_u64("o")?,
        at_ms: entry.get_u64("t")?,
        fields: entry.get_str("f")?.into(),
    })
}

fn parse_appended(v: Value, expected: usize) -> Result<Vec<(u64, bool)>, String> {
    let Value::Array(items) = v else {
        return Err(format!("append script answered {v:?}"));
    };
    if items.len() != expected {
        return Err(format!(
            "append script answered {} results for {expected} notifications",
            items.len()
        ));
    }
    items
        .iter()
        .map(|item| match item {
            Value::Array(t) if t.len() == 3 => {
                let offset = t.get(1).and_then(int).ok_or("offset is not a number")?;
                let dup = t.get(2).and_then(int).ok_or("flag is not a number")?;
                Ok((offset, dup == 1))
            }
            other => Err(format!("append script result {other:?}")),
        })
        .collect()
}

fn parse_page(channel: &str, v: Value) -> Result<Page, String> {
    let Value::Array(parts) = v else {
        return Err(format!("read script answered {v:?}"));
    };
    let epoch = parts
        .first()
        .and_then(bytes)
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or("epoch missing")?;
    let last = parts.get(1).and_then(int).ok_or("last missing")?;
    let first = parts.get(2).and_then(int).ok_or("first missing")?;
    let epoch: Arc<str> = epoch.into();
    let name: Arc<str> = channel.into();
    let entries = parts
        .get(3)
        .map(stream_entries)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            Some(Arc::new(Entry {
                channel: name.clone(),
                epoch: epoch.clone(),
                offset: e.offset()?,
                at_ms: e.get_u64("t")?,
                fields: e.get_str("f")?.into(),
            }))
        })
        .collect::<Option<Vec<_>>>()
        .ok_or("malformed log entry")?;
    Ok(Page {
        epoch,
        first,
        last,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_appendonly_with_fsync_always_risks_nothing() {
        assert_eq!(persistence_risk("yes", "always"), None);
        assert!(persistence_risk("no", "always").is_some_and(|r| r.contains("restart")));
        assert!(persistence_risk("yes", "everysec").is_some_and(|r| r.contains("second")));
        assert!(persistence_risk("yes", "no").is_some());
        assert!(persistence_risk("unknown", "unknown").is_some());
    }

    #[test]
    fn stream_ids_compare_numerically() {
        assert!(stream_id("10-0") > stream_id("9-5"));
        assert!(stream_id("10-2") > stream_id("10-1"));
        assert_eq!(stream_id("junk"), (0, 0));
    }

    #[test]
    fn entries_parse_from_xrange_replies() {
        let reply = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"7-0".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"t".to_vec()),
                Value::BulkString(b"1700000000000".to_vec()),
                Value::BulkString(b"f".to_vec()),
                Value::BulkString(b"\"title\":\"x\"".to_vec()),
            ]),
        ])]);
        let page = parse_page(
            "user:1",
            Value::Array(vec![
                Value::BulkString(b"e1".to_vec()),
                Value::Int(7),
                Value::Int(7),
                reply,
            ]),
        )
        .expect("page");
        assert_eq!((page.first, page.last), (7, 7));
        assert_eq!(page.entries[0].offset, 7);
        assert_eq!(&*page.entries[0].epoch, "e1");
        assert_eq!(page.entries[0].fields, "\"title\":\"x\"");
        assert!(parse_page("c", Value::Nil).is_err());
        assert!(parse_appended(Value::Array(vec![]), 1).is_err());
    }
}
