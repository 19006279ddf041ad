//! Room at `max_channels`: which channel goes.
//!
//! The channel without subscribers whose newest notification is the oldest
//! goes first. Finding it means looking at every channel, so a scan keeps
//! the oldest sixteenth (at least 64) as candidates, oldest last, and the
//! next creations take from them: one scan per many evictions. A candidate
//! appended to or subscribed since the scan is skipped (it is no longer
//! idle the longest, or not droppable); when the candidates run out, the
//! next eviction scans again. When no channel is droppable, nothing goes.

use std::sync::{Arc, Weak};

use super::{ChannelLog, Channels, DropReason, MemoryStore};

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct Candidates {
    /// Oldest last.
    list: Vec<Candidate>,
}

#[derive(Debug)]
struct Candidate {
    log: Weak<std::sync::Mutex<ChannelLog>>,
    /// The channel's `last_at_ms` at the scan.
    last_at_ms: u64,
}

impl MemoryStore {
    /// Drop the channel idle the longest among those without subscribers.
    /// False when there is none. The caller holds the map's write lock.
    pub(super) fn evict_one(&self, channels: &mut Channels) -> bool {
        let mut scanned = false;
        loop {
            while let Some(c) = channels.candidates.list.pop() {
                let Some(log) = c.log.upgrade() else {
                    continue; // dropped meanwhile
                };
                let mut log = crate::sync::lock(&log);
                if log.last_at_ms == c.last_at_ms && self.unwatched(&log) {
                    self.drop_channel(channels, &mut log, DropReason::MaxChannels);
                    return true;
                }
            }
            if scanned {
                return false;
            }
            self.scan(channels);
            scanned = true;
        }
    }

    fn scan(&self, channels: &mut Channels) {
        let mut list: Vec<Candidate> = channels
            .map
            .values()
            .filter_map(|log| {
                let guard = crate::sync::lock(log);
                self.unwatched(&guard).then(|| Candidate {
                    log: Arc::downgrade(log),
                    last_at_ms: guard.last_at_ms,
                })
            })
            .collect();
        let keep = (channels.map.len() / 16).max(64);
        if list.len() > keep {
            list.select_nth_unstable_by_key(keep, |c| c.last_at_ms);
            list.truncate(keep);
        }
        list.sort_unstable_by_key(|c| std::cmp::Reverse(c.last_at_ms));
        channels.candidates.list = list;
    }
}
