//! The hub: which live sessions want which channel, and fan-out.
//!
//! Invariants:
//! - `publish` never blocks and never waits for a session: each subscriber
//!   has a bounded queue, and a full queue marks that session too slow (it is
//!   then closed with 4008 and resumes from its last id) without touching the
//!   others;
//! - the store calls `publish` (the hub is its [`Publish`]) per channel in
//!   offset order; the hub keeps that order into every queue;
//! - a channel is held only while it has subscribers: the last unsubscribe
//!   removes it, so the hub's state is bounded by the live subscriptions;
//! - a notification is encoded once, and only when its channel has
//!   subscribers: one `Arc<NotificationFrame>` per notification, cloned (a
//!   reference count) per subscriber; it carries the entry's provenance
//!   only when `delivery.provenance` is on.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{Notify, mpsc};

use super::protocol::{NotificationFrame, Provenance};
use crate::metrics::Metrics;
use crate::store::{Entry, Publish};

const SHARDS: usize = 16;

type Subscribers = HashMap<Arc<str>, Vec<Arc<Subscriber>>>;

/// Channel → subscribed sessions.
#[derive(Debug)]
pub struct Hub {
    shards: Box<[RwLock<Subscribers>]>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
    /// Whether frames carry the entry's provenance.
    provenance: Provenance,
}

/// A session's end of the hub: its bounded queue and its too-slow signal.
#[derive(Debug)]
pub struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Arc<NotificationFrame>>,
    too_slow: AtomicBool,
    overflow: Notify,
}

impl Subscriber {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the queue overflowed; the session must close.
    pub fn is_too_slow(&self) -> bool {
        self.too_slow.load(Ordering::Acquire)
    }

    /// Resolves once the queue has overflowed.
    pub async fn overflowed(&self) {
        while !self.is_too_slow() {
            self.overflow.notified().await;
        }
    }
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            next_id: AtomicU64::new(1),
            metrics,
            provenance: Provenance::Omit,
        }
    }

    /// Frames carry the entry's provenance, or not (`delivery.provenance`).
    pub fn with_provenance(mut self, provenance: Provenance) -> Self {
        self.provenance = provenance;
        self
    }

    /// A new subscriber with a queue of `capacity` notifications.
    pub fn subscriber(
        &self,
        capacity: usize,
    ) -> (Arc<Subscriber>, mpsc::Receiver<Arc<NotificationFrame>>) {
        let (tx, rx) = mpsc::channel(capacity);
        let sub = Arc::new(Subscriber {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            tx,
            too_slow: AtomicBool::new(false),
            overflow: Notify::new(),
        });
        (sub, rx)
    }

    fn shard(&self, channel: &str) -> &RwLock<Subscribers> {
        let mut h = DefaultHasher::new();
        channel.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// Start delivering `channel` to `sub`. Idempotent.
    pub fn subscribe(&self, channel: &str, sub: &Arc<Subscriber>) {
        let mut shard = crate::sync::write(self.shard(channel));
        let subs = shard.entry(Arc::from(channel)).or_default();
        if !subs.iter().any(|s| s.id == sub.id) {
            subs.push(sub.clone());
        }
    }

    /// Stop delivering `channel` to the subscriber `id`.
    pub fn unsubscribe(&self, channel: &str, id: u64) {
        let mut shard = crate::sync::write(self.shard(channel));
        if let Some(subs) = shard.get_mut(channel) {
            subs.retain(|s| s.id != id);
            if subs.is_empty() {
                shard.remove(channel);
                // A shard that held a burst of channels gives its table
                // back (amortized: only once it is three-quarters empty).
                let (len, cap) = (shard.len(), shard.capacity());
                if cap > 64 && len < cap / 4 {
                    shard.shrink_to(len * 2);
                }
            }
        }
    }

    /// Channels with at least one subscriber.
    pub fn channels(&self) -> usize {
        self.shards.iter().map(|s| crate::sync::read(s).len()).sum()
    }

    /// Number of sessions subscribed to `channel`.
    pub fn subscribers(&self, channel: &str) -> usize {
        crate::sync::read(self.shard(channel))
            .get(channel)
            .map_or(0, Vec::len)
    }
}

impl Publish for Hub {
    /// Queue `entry`'s frame for every subscriber of its channel.
    fn publish(&self, entry: &Arc<Entry>) {
        let shard = crate::sync::read(self.shard(&entry.channel));
        let Some(subs) = shard.get(&entry.channel) else {
            return;
        };
        let frame = Arc::new(NotificationFrame::encode(entry, self.provenance));
        let mut queued = 0u64;
        for sub in subs {
            match sub.tx.try_send(frame.clone()) {
                Ok(()) => queued += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if !sub.too_slow.swap(true, Ordering::AcqRel) {
                        sub.overflow.notify_one();
                    }
                }
                // The session is ending; it unsubscribes itself.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        self.metrics.fanout_queued.inc_by(queued);
    }

    fn has_subscribers(&self, channel: &str) -> bool {
        self.subscribers(channel) > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(channel: &str, offset: u64) -> Arc<Entry> {
        Arc::new(Entry {
            channel: channel.into(),
            epoch: "e".into(),
            offset,
            at_ms: 0,
            fields: String::new(),
            provenance: None,
        })
    }

    #[tokio::test]
    async fn full_queue_marks_only_that_subscriber() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let (slow, _slow_rx) = hub.subscriber(2);
        let (fast, mut fast_rx) = hub.subscriber(8);
        hub.subscribe("c", &slow);
        hub.subscribe("c", &fast);
        for offset in 1..=3 {
            hub.publish(&entry("c", offset));
        }
        assert!(slow.is_too_slow());
        slow.overflowed().await;
        assert!(!fast.is_too_slow());
        for expected in 1..=3 {
            let d = fast_rx.recv().await.expect("queued");
            assert_eq!(d.offset, expected);
        }
    }

    #[test]
    fn unsubscribe_stops_delivery() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let (sub, mut rx) = hub.subscriber(4);
        hub.subscribe("c", &sub);
        hub.subscribe("c", &sub);
        assert_eq!(hub.subscribers("c"), 1);
        hub.unsubscribe("c", sub.id());
        hub.publish(&entry("c", 1));
        assert!(rx.try_recv().is_err());
        assert_eq!(hub.subscribers("c"), 0);
    }

    #[test]
    fn channels_without_subscribers_are_not_held() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let (a, _a_rx) = hub.subscriber(4);
        let (b, _b_rx) = hub.subscriber(4);
        for i in 0..1000 {
            hub.subscribe(&format!("c{i}"), &a);
        }
        hub.subscribe("c0", &b);
        assert_eq!(hub.channels(), 1000);
        for i in 0..1000 {
            hub.unsubscribe(&format!("c{i}"), a.id());
        }
        assert_eq!(hub.channels(), 1, "c0 still has b");
        assert!(hub.has_subscribers("c0") && !hub.has_subscribers("c1"));
        hub.unsubscribe("c0", b.id());
        assert_eq!(hub.channels(), 0);
    }
}
