//! The memory store: the zero-set-up default. History lives as long as the
//! process, and is bounded: per channel by count (`max_per_channel`), size
//! (`max_bytes_per_channel`) and age (`max_age_secs`), and in channels
//! (`max_channels`).
//!
//! Each channel is a ring of `Arc<Entry>` behind its own mutex, so appends
//! to different channels never contend. Append does its whole work (dedupe,
//! offset, entry, publish) under that mutex: the hub sees each channel in
//! offset order, and a reader that subscribed to the hub before reading the
//! log cannot miss a notification between the two. The critical section is
//! short and never awaits, so it does not block the runtime.
//!
//! Dropping channels. A channel without subscribers whose newest
//! notification is older than `max_age_secs` is dropped whole (entries,
//! dedupe keys, counters) by the retention pass; at `max_channels`, creating
//! a channel first drops the channel without subscribers idle the longest
//! (see [`evict`]). A channel with subscribers is never dropped: when every
//! channel has subscribers, a new channel is created above the limit (the
//! hub's own limits bound subscribed channels).
//!
//! Epochs. A channel carries the epoch it was created in, and a read of a
//! channel the store does not hold reports the *fresh* epoch, the one the
//! next channel created will carry. Dropping a channel created in the fresh
//! epoch replaces the fresh epoch, so a channel dropped and created again
//! never reuses an epoch its earlier life gave out: a `last_id` from before
//! the drop is answered `recovered: false`, never a resume into a different
//! history with the same offsets. A position read from an absent channel
//! (`<fresh>-0`) stays valid when the channel is then created in that epoch.
//! Every start is a new fresh epoch, so resuming across a restart is
//! `recovered: false` too.
//!
//! Lock order: the channel map, then one channel's mutex, then the hub's
//! (through [`Publish`]). Append takes a channel's mutex without the map
//! lock; a log found `dropped` under its mutex was removed from the map
//! meanwhile, and append looks the channel up again.

mod evict;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, ready};

use super::StoreConfig;
use super::{Appended, Entry, NewNotification, Page, Publish, Store, StoreError, new_epoch};
use crate::metrics::Metrics;
use evict::Candidates;

/// See the module docs.
#[derive(Debug)]
pub struct MemoryStore {
    channels: RwLock<Channels>,
    limits: Limits,
    hub: Arc<dyn Publish>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_per_channel: usize,
    /// 0: no retention by size.
    max_bytes_per_channel: usize,
    /// 0: no retention by age and no idle drop.
    max_age_ms: u64,
    dedupe_window: usize,
    /// 0: unbounded.
    max_channels: usize,
}

type Log = Arc<Mutex<ChannelLog>>;

#[derive(Debug)]
struct Channels {
    map: HashMap<Arc<str>, Log>,
    /// The epoch of the next channel created, reported for channels the
    /// store does not hold.
    fresh_epoch: Arc<str>,
    /// Eviction candidates for `max_channels`.
    candidates: Candidates,
}

#[derive(Debug)]
struct ChannelLog {
    name: Arc<str>,
    epoch: Arc<str>,
    /// Last offset assigned.
    last: u64,
    /// When the newest notification was appended (creation time before).
    last_at_ms: u64,
    entries: VecDeque<Arc<Entry>>,
    /// Sum of the retained entries' `fields` lengths.
    bytes: usize,
    dedupe: HashMap<String, u64>,
    dedupe_order: VecDeque<String>,
    /// Removed from the map: an append that finds it so looks again.
    dropped: bool,
}

impl ChannelLog {
    fn first(&self) -> u64 {
        self.entries.front().map_or(self.last + 1, |d| d.offset)
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.fields.len();
        }
    }
}

/// Why a channel was dropped (the `reason` label of
/// `herald_store_channels_dropped_total`).
#[derive(Debug, Clone, Copy)]
enum DropReason {
    /// Nothing appended within `max_age_secs`, no subscribers.
    Idle,
    /// Room for a new channel at `max_channels`.
    MaxChannels,
}

impl DropReason {
    fn as_str(self) -> &'static str {
        match self {
            DropReason::Idle => "idle",
            DropReason::MaxChannels => "max_channels",
        }
    }
}

impl MemoryStore {
    pub fn new(config: &StoreConfig, hub: Arc<dyn Publish>, metrics: Arc<Metrics>) -> Self {
        Self {
            channels: RwLock::new(Channels {
                map: HashMap::new(),
                fresh_epoch: new_epoch().into(),
                candidates: Candidates::default(),
            }),
            limits: Limits {
                max_per_channel: config.max_per_channel.max(1),
                max_bytes_per_channel: config.max_bytes_per_channel,
                max_age_ms: config.max_age_secs.saturating_mul(1000),
                dedupe_window: config.dedupe_window,
                max_channels: config.max_channels,
            },
            hub,
            metrics,
        }
    }

    /// How many channels the store holds.
    pub fn channel_count(&self) -> usize {
        crate::sync::read(&self.channels).map.len()
    }

    /// `name`'s log, created when missing (at `max_channels`, after making
    /// room).
    fn channel(&self, name: &str, now_ms: u64) -> Log {
        if let Some(log) = crate::sync::read(&self.channels).map.get(name) {
            return log.clone();
        }
        let mut channels = crate::sync::write(&self.channels);
        if let Some(log) = channels.map.get(name) {
            return log.clone();
        }
        if self.limits.max_channels > 0 {
            while channels.map.len() >= self.limits.max_channels {
                if !self.evict_one(&mut channels) {
                    // Every channel has subscribers: over the limit, since
                    // refusing the notification would help nobody.
                    break;
                }
            }
        }
        let log = Arc::new(Mutex::new(ChannelLog {
            name: name.into(),
            epoch: channels.fresh_epoch.clone(),
            last: 0,
            last_at_ms: now_ms,
            entries: VecDeque::new(),
            bytes: 0,
            dedupe: HashMap::new(),
            dedupe_order: VecDeque::new(),
            dropped: false,
        }));
        channels.map.insert(Arc::from(name), log.clone());
        self.metrics.store_channels.set(gauge(channels.map.len()));
        log
    }

    /// Remove `log` from `channels`; both locks are held by the caller,
    /// who checked that no one subscribes to it.
    fn drop_channel(&self, channels: &mut Channels, log: &mut ChannelLog, reason: DropReason) {
        log.dropped = true;
        channels.map.remove(&log.name);
        if *log.epoch == *channels.fresh_epoch {
            // Its history is gone: a later channel of that name must not
            // carry the epoch its ids were given in.
            channels.fresh_epoch = new_epoch().into();
        }
        self.metrics
            .store_channels_dropped
            .get_or_create(&vec![("reason", reason.as_str().to_string())])
            .inc();
        self.metrics.store_channels.set(gauge(channels.map.len()));
    }

    /// Whether `log` may be dropped now: no session subscribes to it.
    fn unwatched(&self, log: &ChannelLog) -> bool {
        !log.dropped && !self.hub.has_subscribers(&log.name)
    }

    fn append_one(&self, n: NewNotification, now_ms: u64) -> Appended {
        loop {
            let log = self.channel(&n.channel, now_ms);
            let mut log = crate::sync::lock(&log);
            if log.dropped {
                continue; // dropped between the lookup and the lock
            }
            return self.append_locked(&mut log, n, now_ms);
        }
    }

    fn append_locked(&self, log: &mut ChannelLog, n: NewNotification, now_ms: u64) -> Appended {
        if let Some(&offset) = log.dedupe.get(&n.dedupe_key) {
            return Appended {
                channel: log.name.clone(),
                offset,
                duplicate: true,
            };
        }
        log.last += 1;
        log.last_at_ms = now_ms;
        let offset = log.last;
        let entry = Arc::new(Entry {
            channel: log.name.clone(),
            epoch: log.epoch.clone(),
            offset,
            at_ms: now_ms,
            fields: n.fields,
            provenance: n.provenance,
        });
        log.bytes += entry.fields.len();
        log.entries.push_back(entry.clone());
        let mut trimmed = 0u64;
        while log.entries.len() > self.limits.max_per_channel
            || (self.limits.max_bytes_per_channel > 0
                && log.bytes > self.limits.max_bytes_per_channel
                && log.entries.len() > 1)
        {
            log.pop_front();
            trimmed += 1;
        }
        if trimmed > 0 {
            self.metrics.store_trimmed.inc_by(trimmed);
        }
        log.dedupe.insert(n.dedupe_key.clone(), offset);
        log.dedupe_order.push_back(n.dedupe_key);
        while log.dedupe_order.len() > self.limits.dedupe_window {
            if let Some(old) = log.dedupe_order.pop_front() {
                log.dedupe.remove(&old);
            }
        }
        // Under the channel lock: the hub sees this channel in offset order.
        self.hub.publish(&entry);
        Appended {
            channel: log.name.clone(),
            offset,
            duplicate: false,
        }
    }

    /// The log of `channel` if held, else the fresh epoch (see the module
    /// docs), read under one lock.
    fn lookup(&self, channel: &str) -> Result<Log, Arc<str>> {
        let channels = crate::sync::read(&self.channels);
        channels
            .map
            .get(channel)
            .cloned()
            .ok_or_else(|| channels.fresh_epoch.clone())
    }

    /// Drop the channels of `idle` still idle before `cutoff` and unwatched,
    /// a bounded number per hold of the map lock.
    async fn drop_idle(&self, idle: Vec<Log>, cutoff: u64) {
        for chunk in idle.chunks(DROP_CHUNK) {
            {
                let mut channels = crate::sync::write(&self.channels);
                for log in chunk {
                    let mut log = crate::sync::lock(log);
                    if log.last_at_ms < cutoff && self.unwatched(&log) {
                        self.drop_channel(&mut channels, &mut log, DropReason::Idle);
                    }
                }
                // A map that held a burst of channels gives its table back.
                let (len, cap) = (channels.map.len(), channels.map.capacity());
                if cap > 64 && len < cap / 4 {
                    channels.map.shrink_to(len * 2);
                }
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Channels dropped per hold of the map lock by the retention pass: reads
/// and channel creations wait at most for this many.
const DROP_CHUNK: usize = 1024;

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Store for MemoryStore {
    fn append(
        &self,
        batch: Vec<NewNotification>,
    ) -> BoxFuture<'static, Result<Vec<Appended>, StoreError>> {
        let now = crate::clock::now_ms();
        let out = batch.into_iter().map(|n| self.append_one(n, now)).collect();
        ready(Ok(out)).boxed()
    }

    fn read_after(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Page, StoreError>> {
        let page = match self.lookup(channel) {
            Err(epoch) => Page::empty(epoch),
            Ok(log) => {
                let log = crate::sync::lock(&log);
                let first = log.first();
                // Offsets are contiguous, so the position is arithmetic.
                let start = after.saturating_add(1).max(first);
                let skip = usize::try_from(start - first).unwrap_or(usize::MAX);
                let entries = log.entries.iter().skip(skip).take(limit).cloned().collect();
                Page {
                    epoch: log.epoch.clone(),
                    first,
                    last: log.last,
                    entries,
                }
            }
        };
        ready(Ok(page)).boxed()
    }

    /// One lock for the range and the entries: the page is consistent.
    fn read_before(
        &self,
        channel: &str,
        before: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Page, StoreError>> {
        let page = match self.lookup(channel) {
            Err(epoch) => Page::empty(epoch),
            Ok(log) => {
                let log = crate::sync::lock(&log);
                let mut page = Page {
                    epoch: log.epoch.clone(),
                    first: log.first(),
                    last: log.last,
                    entries: Vec::new(),
                };
                let (start, end) = super::before_range(&page, before, limit);
                if start < end {
                    let skip = usize::try_from(start - page.first).unwrap_or(usize::MAX);
                    let take = usize::try_from(end - start).unwrap_or(usize::MAX);
                    page.entries = log.entries.iter().skip(skip).take(take).cloned().collect();
                }
                page
            }
        };
        ready(Ok(page)).boxed()
    }

    /// Always ready: it lives in the process.
    fn readiness(&self) -> Result<(), String> {
        Ok(())
    }

    /// Trims by age, then drops the channels idle for `max_age_secs` that
    /// nobody subscribes to. Yields between bounded chunks of work.
    fn trim_expired(&self, now_ms: u64) -> BoxFuture<'_, Result<usize, StoreError>> {
        async move {
            if self.limits.max_age_ms == 0 {
                return Ok(0);
            }
            let cutoff = now_ms.saturating_sub(self.limits.max_age_ms);
            let logs: Vec<Log> = crate::sync::read(&self.channels)
                .map
                .values()
                .cloned()
                .collect();
            let mut trimmed = 0;
            let mut idle = Vec::new();
            for (i, log) in logs.into_iter().enumerate() {
                {
                    let mut guard = crate::sync::lock(&log);
                    while guard.entries.front().is_some_and(|d| d.at_ms < cutoff) {
                        guard.pop_front();
                        trimmed += 1;
                    }
                    if guard.entries.is_empty() {
                        // An idle channel keeps only its counters, not the
                        // capacity its busiest hour needed.
                        guard.entries.shrink_to_fit();
                    }
                    if guard.last_at_ms < cutoff && self.unwatched(&guard) {
                        drop(guard);
                        idle.push(log);
                    }
                }
                if i % DROP_CHUNK == DROP_CHUNK - 1 {
                    tokio::task::yield_now().await;
                }
            }
            self.metrics.store_trimmed.inc_by(trimmed as u64);
            self.drop_idle(idle, cutoff).await;
            Ok(trimmed)
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        ready(Ok(())).boxed()
    }
}
