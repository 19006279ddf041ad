//! The traffic recorder: the last events herald received and what became
//! of them, for the admin API (`/admin/events`, explain, preview) and for
//! `herald rules record`.
//!
//! Invariants:
//! - bounded twice: at most `recorder.capacity` events and about
//!   `recorder.max_bytes` (an estimate of each event's payload and meta);
//!   the oldest go first;
//! - off the hot path's critical section: the pipeline builds the entry
//!   (a clone of the event) before taking the ring's lock, and the lock
//!   covers one push and the evictions it causes; the outcome of the
//!   append is filled in later through the entry's own cell, without the
//!   ring's lock;
//! - ids increase by one per recorded event, from 1 at start; they are
//!   what `?event=` and `?after=` name;
//! - an event submitted again (a source retrying after a store failure) is
//!   recorded again: the recorder shows what happened, each time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{Event, Meta};
use crate::rules::{Rendered, RuleFailure};
use crate::store::Appended;

/// `[recorder]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecorderConfig {
    /// Events kept; 0 turns the recorder off.
    pub capacity: usize,
    /// About how many bytes of events are kept (payloads and meta).
    pub max_bytes: usize,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// One notification a recorded event produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedNotification {
    pub rule: String,
    pub channel: String,
    pub dedupe_key: String,
    /// The offset in the channel's log (the existing one for a duplicate);
    /// absent while the append is pending or when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(default)]
    pub duplicate: bool,
}

/// What became of a recorded event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// `appended`, `duplicate` (every notification was already in the
    /// log), `no_rule_matched`, `all_rules_failed`, `store_failed` or
    /// `pending` (the append has not answered yet).
    pub result: String,
    /// Rules whose `match` and `when` accepted the event.
    pub matched: usize,
    pub notifications: Vec<RecordedNotification>,
    pub failures: Vec<RuleFailure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One recorded event, as `/admin/events` lists it and `events.jsonl`
/// holds it (one per line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub id: u64,
    /// RFC 3339, when herald received it.
    pub at: String,
    /// The rules version that evaluated it.
    pub rules_version: String,
    /// The event's identity at its source (the root of default dedupe keys).
    pub position: String,
    /// Where the event sits at its source, for people (`kafka:orders/2@1834`;
    /// [`Meta::locator`]): the `source` of its notifications' provenance.
    /// Empty in files recorded before herald kept it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub locator: String,
    pub meta: Meta,
    pub event: Value,
    pub outcome: Outcome,
}

impl RecordedEvent {
    /// The event, to be evaluated again (explain, preview, diff).
    pub fn to_event(&self) -> Event {
        let mut meta = self.meta.clone();
        meta.position = self.position.clone();
        meta.locator = self.locator.clone();
        Event {
            payload: self.event.clone(),
            meta,
        }
    }

    /// What its notifications' provenance names as `source`: the locator,
    /// or the position for an event recorded before herald kept locators
    /// (as [`Meta::locator`] falls back).
    pub fn source(&self) -> &str {
        if self.locator.is_empty() {
            &self.position
        } else {
            &self.locator
        }
    }

    /// Whether one of its notifications went to `channel`.
    pub fn reached(&self, channel: &str) -> bool {
        self.outcome
            .notifications
            .iter()
            .any(|n| n.channel == channel)
    }
}

/// An entry in the ring: the event and, once the append answers, the
/// appended offsets (or the error).
#[derive(Debug)]
pub struct Entry {
    id: u64,
    at_ms: u64,
    bytes: usize,
    rules_version: Arc<str>,
    event: Event,
    matched: usize,
    notifications: Vec<(Arc<str>, String, String)>,
    failures: Vec<RuleFailure>,
    rejected: bool,
    done: OnceLock<Result<Vec<(u64, bool)>, String>>,
}

impl Entry {
    /// Record the append's answer (its offsets, in the batch's order).
    pub fn appended(&self, appended: &[Appended]) {
        let _ = self.done.set(Ok(appended
            .iter()
            .map(|a| (a.offset, a.duplicate))
            .collect()));
    }

    /// Record that the append failed.
    pub fn failed(&self, error: String) {
        let _ = self.done.set(Err(error));
    }

    /// When the event was received, ms since the Unix epoch.
    pub fn at_ms(&self) -> u64 {
        self.at_ms
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The event's topic.
    pub fn topic(&self) -> &str {
        &self.event.meta.topic
    }

    /// Whether one of its notifications went (or was on its way) to
    /// `channel`.
    pub fn reached(&self, channel: &str) -> bool {
        self.notifications.iter().any(|(_, c, _)| c == channel)
    }

    /// The entry as the API shows it.
    pub fn view(&self) -> RecordedEvent {
        let done = self.done.get();
        let mut notifications: Vec<RecordedNotification> = self
            .notifications
            .iter()
            .map(|(rule, channel, dedupe_key)| RecordedNotification {
                rule: rule.to_string(),
                channel: channel.clone(),
                dedupe_key: dedupe_key.clone(),
                offset: None,
                duplicate: false,
            })
            .collect();
        let mut error = None;
        let result = match done {
            _ if self.notifications.is_empty() && self.rejected => "all_rules_failed",
            _ if self.notifications.is_empty() => "no_rule_matched",
            None => "pending",
            Some(Err(e)) => {
                error = Some(e.clone());
                "store_failed"
            }
            Some(Ok(offsets)) => {
                for (n, (offset, duplicate)) in notifications.iter_mut().zip(offsets) {
                    n.offset = Some(*offset);
                    n.duplicate = *duplicate;
                }
                if offsets.iter().all(|(_, d)| *d) {
                    "duplicate"
                } else {
                    "appended"
                }
            }
        };
        // The position is a field of its own (meta does not serialize it).
        let mut meta = self.event.meta.clone();
        let locator = self.event.meta.locator().to_string();
        meta.locator.clear();
        let position = std::mem::take(&mut meta.position);
        RecordedEvent {
            id: self.id,
            at: crate::clock::rfc3339_ms(self.at_ms),
            rules_version: self.rules_version.to_string(),
            position,
            locator,
            meta,
            event: self.event.payload.clone(),
            outcome: Outcome {
                result: result.to_string(),
                matched: self.matched,
                notifications,
                failures: self.failures.clone(),
                error,
            },
        }
    }
}

#[derive(Debug, Default)]
struct Ring {
    entries: VecDeque<Arc<Entry>>,
    bytes: usize,
    next_id: u64,
}

/// See the module docs.
#[derive(Debug)]
pub struct Recorder {
    capacity: usize,
    max_bytes: usize,
    ring: Mutex<Ring>,
}

impl Recorder {
    /// `None` when `config.capacity` is 0 (the recorder is off).
    pub fn new(config: &RecorderConfig) -> Option<Arc<Self>> {
        (config.capacity > 0).then(|| {
            Arc::new(Self {
                capacity: config.capacity,
                max_bytes: config.max_bytes,
                ring: Mutex::new(Ring {
                    next_id: 1,
                    ..Ring::default()
                }),
            })
        })
    }

    /// Record `event` as evaluated by `rules_version`: `kept` are the
    /// notifications handed to the store (in the batch's order),
    /// `failures` every rule failure. The caller fills in the append's
    /// answer through the returned entry.
    pub fn record(
        &self,
        event: &Event,
        rules_version: &Arc<str>,
        matched: usize,
        kept: &[&Rendered],
        failures: &[RuleFailure],
        rejected: bool,
    ) -> Arc<Entry> {
        let at_ms = crate::clock::now_ms();
        let bytes = approximate_size(&event.payload) + 256 + event.meta.headers.len() * 64;
        let mut entry = Entry {
            id: 0,
            at_ms,
            bytes,
            rules_version: rules_version.clone(),
            event: event.clone(),
            matched,
            notifications: kept
                .iter()
                .map(|r| (r.rule.clone(), r.channel.clone(), r.dedupe_key.clone()))
                .collect(),
            failures: failures.to_vec(),
            rejected,
            done: OnceLock::new(),
        };
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        entry.id = ring.next_id;
        ring.next_id += 1;
        let entry = Arc::new(entry);
        ring.bytes += entry.bytes;
        ring.entries.push_back(entry.clone());
        while ring.entries.len() > self.capacity
            || (ring.bytes > self.max_bytes && ring.entries.len() > 1)
        {
            if let Some(old) = ring.entries.pop_front() {
                ring.bytes -= old.bytes;
            }
        }
        entry
    }

    /// Recorded entries that `keep` accepts, oldest first: with `after`,
    /// the first `limit` with an id above it (paging forward); without,
    /// the newest `limit`.
    pub fn list(
        &self,
        after: Option<u64>,
        limit: usize,
        keep: impl Fn(&Entry) -> bool,
    ) -> Vec<Arc<Entry>> {
        let snapshot: Vec<Arc<Entry>> = {
            let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            let first = ring.entries.front().map_or(0, |e| e.id);
            let skip = after.map_or(0, |a| (a + 1).saturating_sub(first) as usize);
            ring.entries.iter().skip(skip).cloned().collect()
        };
        let matching = snapshot.into_iter().filter(|e| keep(e));
        if after.is_some() {
            return matching.take(limit).collect();
        }
        let mut out: Vec<Arc<Entry>> = matching.collect();
        if out.len() > limit {
            out.drain(..out.len() - limit);
        }
        out
    }

    /// The id of the newest recorded event (0 before the first).
    pub fn newest(&self) -> u64 {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.next_id - 1
    }

    /// The entry with id `id`, if still kept.
    pub fn get(&self, id: u64) -> Option<Arc<Entry>> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let first = ring.entries.front()?.id;
        ring.entries.get(id.checked_sub(first)? as usize).cloned()
    }

    /// Events kept now, and their estimated bytes.
    pub fn usage(&self) -> (usize, usize) {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        (ring.entries.len(), ring.bytes)
    }
}

/// About the bytes a JSON value takes in memory: its strings plus a fixed
/// cost per node. Cheap (no serialization), and close enough for a bound.
fn approximate_size(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 16,
        Value::String(s) => 24 + s.len(),
        Value::Array(a) => 24 + a.iter().map(approximate_size).sum::<usize>(),
        Value::Object(o) => {
            24 + o
                .iter()
                .map(|(k, v)| 24 + k.len() + approximate_size(v))
                .sum::<usize>()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::SourceKind;

    fn event(i: usize, payload: Value) -> Event {
        Event {
            payload,
            meta: Meta::new(SourceKind::Http, "t", format!("http:t:{i}")),
        }
    }

    fn recorder(capacity: usize, max_bytes: usize) -> Arc<Recorder> {
        Recorder::new(&RecorderConfig {
            capacity,
            max_bytes,
        })
        .expect("on")
    }

    #[test]
    fn bounded_by_count_and_by_bytes() {
        let version: Arc<str> = "v".into();
        let r = recorder(3, usize::MAX);
        for i in 0..5 {
            r.record(
                &event(i, serde_json::json!({"i": i})),
                &version,
                0,
                &[],
                &[],
                false,
            );
        }
        let ids: Vec<u64> = r.list(None, 10, |_| true).iter().map(|e| e.id()).collect();
        assert_eq!(ids, vec![3, 4, 5]);
        assert_eq!(r.list(Some(3), 10, |_| true).len(), 2, "after=3");
        assert_eq!(
            r.list(None, 1, |_| true)[0].id(),
            5,
            "the newest within a limit"
        );
        assert_eq!(
            r.list(Some(0), 1, |_| true)[0].id(),
            3,
            "the oldest after 0"
        );
        assert_eq!(r.newest(), 5);
        assert!(r.get(2).is_none());
        assert_eq!(r.get(4).expect("kept").id(), 4);

        let big = serde_json::json!({"s": "x".repeat(10_000)});
        let r = recorder(1000, 25_000);
        for i in 0..5 {
            r.record(&event(i, big.clone()), &version, 0, &[], &[], false);
        }
        let (count, bytes) = r.usage();
        assert_eq!(count, 2, "two 10 kB events fit in 25 kB");
        assert!(bytes <= 25_000);
    }

    #[test]
    fn the_outcome_follows_the_append() {
        let version: Arc<str> = "v".into();
        let r = recorder(10, usize::MAX);
        let rendered = Rendered {
            rule: "r".into(),
            channel: "user:1".into(),
            event: "e".into(),
            title: String::new(),
            body: String::new(),
            data: Value::Null,
            priority: crate::rules::Priority::Normal,
            dedupe_key: "k".into(),
        };
        let e = r.record(
            &event(1, serde_json::json!({})),
            &version,
            1,
            &[&rendered],
            &[],
            false,
        );
        assert_eq!(e.view().outcome.result, "pending");
        e.appended(&[Appended {
            channel: "user:1".into(),
            offset: 7,
            duplicate: false,
        }]);
        let view = e.view();
        assert_eq!(view.outcome.result, "appended");
        assert_eq!(view.outcome.notifications[0].offset, Some(7));
        assert!(view.reached("user:1"));
        let back: RecordedEvent =
            serde_json::from_str(&serde_json::to_string(&view).expect("json")).expect("reads back");
        assert_eq!(back, view);
        assert_eq!(back.to_event().meta.position, "http:t:1");
        let none = r.record(
            &event(2, serde_json::json!({})),
            &version,
            0,
            &[],
            &[],
            false,
        );
        assert_eq!(none.view().outcome.result, "no_rule_matched");
    }
}
