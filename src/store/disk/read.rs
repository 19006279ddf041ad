//! Reads: a channel's head and newest notifications kept in memory
//! ([`Cached`], updated by the writer together with the hub publish), and
//! pages read from the database when memory does not hold all of one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, ReadableTable};

use super::{CHANNELS, DiskState, ENTRIES, TAIL, chunk};
use crate::store::{Entry, Page, StoreError};

/// A channel's committed state as readers see it.
#[derive(Debug)]
pub(super) struct Cached {
    pub(super) first: u64,
    pub(super) last: u64,
    /// The newest notifications, contiguous, ending at `last`.
    pub(super) tail: VecDeque<Arc<Entry>>,
}

impl Cached {
    pub(super) fn trim_front(&mut self) {
        while self.tail.len() > TAIL || self.tail.front().is_some_and(|d| d.offset < self.first) {
            self.tail.pop_front();
        }
    }
}

impl DiskState {
    pub(super) fn db(&self) -> Result<Arc<Database>, StoreError> {
        crate::sync::read(&self.db)
            .clone()
            .ok_or_else(|| StoreError::Unavailable("disk store: database not open".into()))
    }

    pub(super) fn cached(&self, channel: &str) -> Option<Arc<Mutex<Cached>>> {
        crate::sync::read(&self.channels).get(channel).cloned()
    }

    /// The page from memory, when memory has all of it.
    pub(super) fn cached_page(&self, channel: &str, after: u64, limit: usize) -> Option<Page> {
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

/// A channel's page read from the database (one read transaction, so a
/// consistent snapshot of committed state).
pub(super) fn read_disk(
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
        |(offset, at_ms, fields, provenance)| {
            page.entries.push(Arc::new(Entry {
                channel: name.clone(),
                epoch: epoch.clone(),
                offset,
                at_ms,
                fields: fields.into(),
                provenance: provenance.map(str::to_string),
            }));
            page.entries.len() < limit
        },
    )?;
    Ok(page)
}

/// Visit channel `id`'s notifications from offset `start` on, in order,
/// while `visit` returns true.
pub(super) fn each_from(
    entries: &impl ReadableTable<(u64, u64), &'static [u8]>,
    id: u64,
    start: u64,
    mut visit: impl FnMut(chunk::Record<'_>) -> bool,
) -> Result<(), redb::Error> {
    // The chunk holding `start` is the first whose last offset is >= it.
    for item in entries.range((id, start)..=(id, u64::MAX))? {
        let (_, chunk) = item?;
        for record in chunk::decode(chunk.value())? {
            let record = record?;
            if record.0 >= start && !visit(record) {
                return Ok(());
            }
        }
    }
    Ok(())
}
