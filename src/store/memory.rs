//! The memory store: the zero-set-up default. History lives as long as the
//! process; every start is a new epoch for every channel, so clients that
//! resume across a restart are told `recovered: false`.
//!
//! Each channel is a ring of `Arc<Entry>` behind its own mutex, so appends
//! to different channels never contend. Append does its whole work (dedupe,
//! offset, entry, publish) under that mutex: the hub sees each channel in
//! offset order, and a reader that subscribed to the hub before reading the
//! log cannot miss a notification between the two. The critical section is
//! short and never awaits, so it does not block the runtime.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, ready};

use super::StoreConfig;
use super::{Appended, Entry, NewNotification, Page, Publish, Store, StoreError, new_epoch};

/// See the module docs.
#[derive(Debug)]
pub struct MemoryStore {
    /// One epoch for the whole process lifetime: history starts afresh for
    /// every channel at each start.
    epoch: Arc<str>,
    channels: RwLock<HashMap<Arc<str>, Arc<Mutex<ChannelLog>>>>,
    max_per_channel: usize,
    max_age_ms: u64,
    dedupe_window: usize,
    hub: Arc<dyn Publish>,
}

#[derive(Debug)]
struct ChannelLog {
    name: Arc<str>,
    /// Last offset assigned.
    last: u64,
    entries: VecDeque<Arc<Entry>>,
    dedupe: HashMap<String, u64>,
    dedupe_order: VecDeque<String>,
}

impl ChannelLog {
    fn first(&self) -> u64 {
        self.entries.front().map_or(self.last + 1, |d| d.offset)
    }
}

impl MemoryStore {
    pub fn new(config: &StoreConfig, hub: Arc<dyn Publish>) -> Self {
        Self {
            epoch: new_epoch().into(),
            channels: RwLock::new(HashMap::new()),
            max_per_channel: config.max_per_channel,
            max_age_ms: config.max_age_secs.saturating_mul(1000),
            dedupe_window: config.dedupe_window,
            hub,
        }
    }

    fn channel(&self, name: &str) -> Arc<Mutex<ChannelLog>> {
        if let Some(log) = crate::sync::read(&self.channels).get(name) {
            return log.clone();
        }
        let mut channels = crate::sync::write(&self.channels);
        channels
            .entry(Arc::from(name))
            .or_insert_with(|| {
                Arc::new(Mutex::new(ChannelLog {
                    name: name.into(),
                    last: 0,
                    entries: VecDeque::new(),
                    dedupe: HashMap::new(),
                    dedupe_order: VecDeque::new(),
                }))
            })
            .clone()
    }

    fn append_one(&self, n: NewNotification, now_ms: u64) -> Appended {
        let log = self.channel(&n.channel);
        let mut log = crate::sync::lock(&log);
        if let Some(&offset) = log.dedupe.get(&n.dedupe_key) {
            return Appended {
                channel: log.name.clone(),
                offset,
                duplicate: true,
            };
        }
        log.last += 1;
        let offset = log.last;
        let entry = Arc::new(Entry {
            channel: log.name.clone(),
            epoch: self.epoch.clone(),
            offset,
            at_ms: now_ms,
            fields: n.fields,
        });
        log.entries.push_back(entry.clone());
        while log.entries.len() > self.max_per_channel {
            log.entries.pop_front();
        }
        log.dedupe.insert(n.dedupe_key.clone(), offset);
        log.dedupe_order.push_back(n.dedupe_key);
        while log.dedupe_order.len() > self.dedupe_window {
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
        let existing = crate::sync::read(&self.channels).get(channel).cloned();
        let page = match existing {
            None => Page {
                epoch: self.epoch.clone(),
                first: 1,
                last: 0,
                entries: Vec::new(),
            },
            Some(log) => {
                let log = crate::sync::lock(&log);
                let first = log.first();
                // Offsets are contiguous, so the position is arithmetic.
                let start = after.saturating_add(1).max(first);
                let skip = usize::try_from(start - first).unwrap_or(usize::MAX);
                let entries = log.entries.iter().skip(skip).take(limit).cloned().collect();
                Page {
                    epoch: self.epoch.clone(),
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
        let existing = self
            .channels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(channel)
            .cloned();
        let mut page = Page {
            epoch: self.epoch.clone(),
            first: 1,
            last: 0,
            entries: Vec::new(),
        };
        if let Some(log) = existing {
            let log = log.lock().unwrap_or_else(|e| e.into_inner());
            (page.first, page.last) = (log.first(), log.last);
            let (start, end) = super::before_range(&page, before, limit);
            if start < end {
                let skip = usize::try_from(start - page.first).unwrap_or(usize::MAX);
                let take = usize::try_from(end - start).unwrap_or(usize::MAX);
                page.entries = log.entries.iter().skip(skip).take(take).cloned().collect();
            }
        }
        ready(Ok(page)).boxed()
    }

    /// Always ready: it lives in the process.
    fn readiness(&self) -> Result<(), String> {
        Ok(())
    }

    fn trim_expired(&self, now_ms: u64) -> BoxFuture<'_, Result<usize, StoreError>> {
        let mut trimmed = 0;
        if self.max_age_ms > 0 {
            let cutoff = now_ms.saturating_sub(self.max_age_ms);
            let logs: Vec<_> = crate::sync::read(&self.channels)
                .values()
                .cloned()
                .collect();
            for log in logs {
                let mut log = crate::sync::lock(&log);
                while log.entries.front().is_some_and(|d| d.at_ms < cutoff) {
                    log.entries.pop_front();
                    trimmed += 1;
                }
                if log.entries.is_empty() {
                    // An idle channel keeps only its counters, not the
                    // capacity its busiest hour needed.
                    log.entries.shrink_to_fit();
                }
            }
        }
        ready(Ok(trimmed)).boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        ready(Ok(())).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Recorder;

    fn store(max: usize, age_secs: u64) -> (MemoryStore, Arc<Recorder>) {
        let hub = Arc::new(Recorder::default());
        let config = StoreConfig {
            max_per_channel: max,
            max_age_secs: age_secs,
            dedupe_window: 3,
            ..StoreConfig::default()
        };
        (MemoryStore::new(&config, hub.clone()), hub)
    }

    fn n(channel: &str, key: &str) -> NewNotification {
        NewNotification {
            channel: channel.into(),
            dedupe_key: key.into(),
            fields: format!("\"title\":{key:?}"),
        }
    }

    #[tokio::test]
    async fn offsets_start_at_one_per_channel() {
        let (s, _) = store(10, 0);
        let out = s
            .append(vec![n("a", "1"), n("b", "2"), n("a", "3")])
            .await
            .expect("append");
        let offsets: Vec<_> = out
            .iter()
            .map(|a| (a.channel.to_string(), a.offset))
            .collect();
        assert_eq!(offsets, [("a".into(), 1), ("b".into(), 1), ("a".into(), 2)]);
    }

    #[tokio::test]
    async fn dedupe_returns_the_first_offset_within_the_window() {
        let (s, _) = store(10, 0);
        s.append(vec![n("a", "k1")]).await.expect("append");
        let again = s.append(vec![n("a", "k1")]).await.expect("append");
        assert_eq!(again[0].offset, 1);
        assert!(again[0].duplicate);
        // The same key in another channel is another notification.
        let other = s.append(vec![n("b", "k1")]).await.expect("append");
        assert!(!other[0].duplicate);
        // The window holds 3 keys: k1 is forgotten after 3 more.
        s.append(vec![n("a", "k2"), n("a", "k3"), n("a", "k4")])
            .await
            .expect("append");
        let late = s.append(vec![n("a", "k1")]).await.expect("append");
        assert!(!late[0].duplicate);
        assert_eq!(late[0].offset, 5);
    }

    #[tokio::test]
    async fn retention_by_count_moves_first() {
        let (s, _) = store(3, 0);
        for i in 0..5 {
            s.append(vec![n("a", &i.to_string())])
                .await
                .expect("append");
        }
        let page = s.read_after("a", 0, 100).await.expect("read");
        assert_eq!((page.first, page.last), (3, 5));
        let offsets: Vec<_> = page.entries.iter().map(|d| d.offset).collect();
        assert_eq!(offsets, [3, 4, 5]);
        let tail = s.read_after("a", 4, 100).await.expect("read");
        assert_eq!(tail.entries.len(), 1);
        assert_eq!(tail.entries[0].offset, 5);
        let limited = s.read_after("a", 0, 2).await.expect("read");
        assert_eq!(limited.entries.len(), 2);
    }

    #[tokio::test]
    async fn retention_by_age_trims_old_entries() {
        let (s, _) = store(10, 60);
        s.append(vec![n("a", "1"), n("a", "2")])
            .await
            .expect("append");
        let now = crate::clock::now_ms();
        assert_eq!(s.trim_expired(now).await.expect("trim"), 0);
        assert_eq!(s.trim_expired(now + 61_000).await.expect("trim"), 2);
        let page = s.read_after("a", 0, 10).await.expect("read");
        assert_eq!((page.first, page.last), (3, 2));
        assert!(page.entries.is_empty());
    }

    #[tokio::test]
    async fn unknown_channel_reads_empty_in_the_store_epoch() {
        let (s, _) = store(10, 0);
        let page = s.read_after("nobody", 0, 10).await.expect("read");
        assert_eq!((page.first, page.last), (1, 0));
        s.append(vec![n("a", "1")]).await.expect("append");
        let a = s.read_after("a", 0, 10).await.expect("read");
        assert_eq!(a.epoch, page.epoch);
    }

    #[tokio::test]
    async fn every_start_is_a_new_epoch() {
        let (a, _) = store(10, 0);
        let (b, _) = store(10, 0);
        let ea = a.read_after("c", 0, 0).await.expect("read").epoch;
        let eb = b.read_after("c", 0, 0).await.expect("read").epoch;
        assert_ne!(ea, eb);
    }

    #[tokio::test]
    async fn appends_are_published_in_order() {
        let (s, hub) = store(10, 0);
        s.append(vec![n("a", "1"), n("a", "2")])
            .await
            .expect("append");
        s.append(vec![n("a", "1")]).await.expect("duplicate");
        let offsets: Vec<_> = hub.take().iter().map(|e| e.offset).collect();
        assert_eq!(offsets, [1, 2], "a duplicate is not published");
    }
}
