//! The writer thread, the only one that writes the database: it takes
//! every append queued (see [`crate::store::group`]), commits them in one
//! transaction with fsync, then publishes in order and answers; between
//! groups it runs slices of retention by age and of the dedupe sweep (see
//! [`super::retention`]). After a failed commit it reopens the database.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable};

use super::read::Cached;
use super::retention::{PendingTrim, Sweep};
use super::{
    CACHE_BYTES, CHANNELS, COUNTERS, DEDUPE, DiskState, ENTRIES, HEADS, MAX_GROUP, NEXT_ID,
    REOPEN_EVERY, chunk,
};
use crate::store::group::{self, Item, Request};
use crate::store::{Appended, Entry, StoreError};

/// Where the writer knows a channel to be (committed state).
#[derive(Debug, Clone)]
pub(super) struct Meta {
    pub(super) id: u64,
    pub(super) first: u64,
    pub(super) last: u64,
    /// Every dedupe row at or below this offset is deleted.
    pub(super) swept: u64,
}

impl Meta {
    /// Dedupe rows at or below this offset are out of the window.
    pub(super) fn stale_below(&self, window: u64) -> u64 {
        self.last.saturating_sub(window)
    }
}

/// What one committed transaction changes in memory.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    pub(super) staged: HashMap<Arc<str>, Meta>,
    pub(super) next_id: u64,
    pub(super) results: Vec<Vec<Appended>>,
    pub(super) entries: Vec<Arc<Entry>>,
    /// New first offsets after retention by age.
    pub(super) firsts: Vec<(Arc<str>, u64)>,
    pub(super) trimmed_by_count: usize,
    pub(super) trimmed_by_age: usize,
    /// Whether retention by age has nothing more to do for its cutoff.
    pub(super) trim_done: bool,
    /// Where the sweep at the front of the queue got to; `None` when it
    /// did not run.
    pub(super) swept: Option<Sweep>,
    /// Whether that sweep is finished.
    pub(super) sweep_done: bool,
}

/// The writer thread: the only one that writes the database.
pub(super) struct Writer {
    pub(super) shared: Arc<DiskState>,
    pub(super) rx: group::Receiver,
    /// Channels loaded from the database since start.
    pub(super) loaded: HashMap<Arc<str>, Meta>,
    pub(super) next_id: u64,
    pub(super) max_per_channel: u64,
    pub(super) dedupe_window: u64,
    pub(super) trim: Option<PendingTrim>,
    /// Channels whose stale dedupe rows are to be swept, oldest first.
    pub(super) sweeps: VecDeque<Sweep>,
    /// The ids in `sweeps`.
    pub(super) sweeping: HashSet<u64>,
    /// Set when a commit failed: the database must be reopened.
    pub(super) broken: Option<Instant>,
}

impl Writer {
    pub(super) fn run(mut self) {
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
    pub(super) fn handle(&mut self, group: Vec<Item>) -> bool {
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
    pub(super) fn database(&mut self) -> Result<Arc<Database>, redb::Error> {
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
    pub(super) fn commit(&mut self, appends: &[Request]) -> Result<Outcome, redb::Error> {
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
                    chunk.push(request.at_ms, &n.fields, n.provenance.as_deref());
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
                        provenance: n.provenance.clone(),
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
    pub(super) fn stage(
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
    /// After the commit: remember, publish in order, answer.
    pub(super) fn apply(&mut self, appends: Vec<Request>, out: Outcome) {
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
    pub(super) fn failed(&mut self, appends: Vec<Request>, e: &redb::Error) {
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

pub(super) fn other(e: StoreError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
