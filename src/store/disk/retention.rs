//! Background work of the writer between append groups, each bounded per
//! transaction so it never stalls appends: retention by age (at most
//! `TRIM_BUDGET` notifications over `TRIM_HEADS` channels) and the sweep
//! of dedupe rows that fell out of the window (at most `SWEEP_BUDGET`
//! deletions over `SWEEP_SCAN` rows read).

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;

use redb::ReadableTable;
use tokio::sync::oneshot;

use super::read::each_from;
use super::writer::{Meta, Outcome, Writer};
use super::{SWEEP_BUDGET, SWEEP_SCAN, TRIM_BUDGET, TRIM_HEADS};
use crate::store::StoreError;

/// A sweep of a channel's stale dedupe rows in progress.
#[derive(Debug, Clone)]
pub(super) struct Sweep {
    pub(super) name: Arc<str>,
    pub(super) id: u64,
    /// Rows at or below this offset go.
    pub(super) cutoff: u64,
    /// The key the next slice starts at; `None` from the beginning.
    pub(super) from: Option<String>,
}

/// Retention by age in progress.
#[derive(Debug)]
pub(super) struct PendingTrim {
    pub(super) cutoff_ms: u64,
    pub(super) trimmed: usize,
    pub(super) replies: Vec<oneshot::Sender<Result<usize, StoreError>>>,
}

impl Writer {
    /// Trim up to `TRIM_BUDGET` notifications older than `cutoff`, oldest
    /// channels first. True when nothing older than `cutoff` is left.
    pub(super) fn trim_slice(
        &mut self,
        out: &mut Outcome,
        cutoff: u64,
        channels: &redb::Table<'_, &'static str, (u64, u64, u64, u64)>,
        entries: &mut redb::Table<'_, (u64, u64), &'static [u8]>,
        heads: &mut redb::Table<'_, (u64, u64), &'static str>,
    ) -> Result<bool, redb::Error> {
        let due: Vec<((u64, u64), String)> = heads
            .range(..(cutoff, 0))?
            .take(TRIM_HEADS)
            .map(|item| item.map(|(k, v)| (k.value(), v.value().to_string())))
            .collect::<Result<_, _>>()?;
        let mut budget = TRIM_BUDGET;
        let mut done = due.len() < TRIM_HEADS;
        for ((at, id), name) in due {
            if budget == 0 {
                done = false;
                break;
            }
            heads.remove((at, id))?;
            let name = self.stage(out, channels, &name)?;
            let Some(meta) = out.staged.get(&name) else {
                continue;
            };
            let (old_first, mut first) = (meta.first, meta.first);
            // The time of the oldest notification kept, if any is.
            let mut head = None;
            each_from(&*entries, id, old_first, |(offset, at_ms, _, _)| {
                if at_ms >= cutoff || budget == 0 {
                    head = Some(at_ms);
                    return false;
                }
                first = offset + 1;
                budget -= 1;
                true
            })?;
            if let Some(at_ms) = head {
                heads.insert((at_ms, id), &*name)?;
                if at_ms < cutoff {
                    done = false;
                }
            }
            if first > old_first {
                entries.retain_in((id, 0)..(id, first), |_, _| false)?;
                out.trimmed_by_age += usize::try_from(first - old_first).unwrap_or(0);
                if let Some(meta) = out.staged.get_mut(&name) {
                    meta.first = first;
                }
                out.firsts.push((name, first));
            }
        }
        Ok(done)
    }

    /// Delete up to `SWEEP_BUDGET` stale dedupe rows of the channel at the
    /// front of the sweep queue, reading at most `SWEEP_SCAN` rows; when
    /// its sweep is over, move its sweep point.
    pub(super) fn sweep_slice(
        &mut self,
        out: &mut Outcome,
        dedupe: &mut redb::Table<'_, (u64, &'static str), u64>,
    ) -> Result<(), redb::Error> {
        let Some(mut sweep) = self.sweeps.front().cloned() else {
            return Ok(());
        };
        let start = match &sweep.from {
            Some(key) => Bound::Included((sweep.id, key.as_str())),
            None => Bound::Included((sweep.id, "")),
        };
        let end = Bound::Excluded((sweep.id + 1, ""));
        let mut stale = Vec::new();
        let mut stopped_at = None;
        for (scanned, item) in dedupe.range::<(u64, &str)>((start, end))?.enumerate() {
            let (key, offset) = item?;
            if scanned == SWEEP_SCAN || stale.len() == SWEEP_BUDGET {
                stopped_at = Some(key.value().1.to_string());
                break;
            }
            if offset.value() <= sweep.cutoff {
                stale.push(key.value().1.to_string());
            }
        }
        for key in &stale {
            dedupe.remove((sweep.id, key.as_str()))?;
        }
        out.sweep_done = stopped_at.is_none();
        sweep.from = stopped_at;
        if out.sweep_done
            && let Some(meta) = restage(out, &self.loaded, &sweep.name)
        {
            meta.swept = meta.swept.max(sweep.cutoff);
        }
        out.swept = Some(sweep);
        Ok(())
    }
}

/// `name`'s state in this transaction: staged already, or staged now from
/// what the writer loaded. `None` for a channel the writer does not know.
pub(super) fn restage<'a>(
    out: &'a mut Outcome,
    loaded: &HashMap<Arc<str>, Meta>,
    name: &Arc<str>,
) -> Option<&'a mut Meta> {
    if !out.staged.contains_key(name) {
        out.staged.insert(name.clone(), loaded.get(name)?.clone());
    }
    out.staged.get_mut(name)
}
