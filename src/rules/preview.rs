//! Preview: what a candidate rules version would change on recorded
//! traffic, compared with the version it would replace.
//!
//! Both versions evaluate every event (pure, no store); their
//! notifications are paired per event by rule, channel and occurrence.
//! A pair whose content differs is `changed`; a notification only the old
//! version makes is `removed`, only the new one `added`. So renaming a
//! channel shows each affected event as one removal and one addition, and
//! a candidate identical in effect has no differences at all.
//!
//! A *regression* is an event the old version handled without a rule
//! failure on which the candidate has one: `herald rules diff` exits 1
//! when there is any.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::{Rendered, RuleFailure, Rules};
use crate::event::Event;

/// One event to evaluate, with what identifies it in the answer.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The recorder id.
    pub id: u64,
    pub event: Event,
}

/// Old and new counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pair {
    pub old: usize,
    pub new: usize,
}

/// The totals of a preview.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Events evaluated.
    pub events: usize,
    /// Events whose notifications or failures differ.
    pub events_changed: usize,
    /// Events the old version handled and the candidate fails on.
    pub regressions: usize,
    /// Notifications made by each version.
    pub notifications: Pair,
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
    /// Events each rule matched, per version.
    pub matched: BTreeMap<String, Pair>,
    /// Rule failures, per rule and version.
    pub failures: BTreeMap<String, Pair>,
}

/// A notification as a preview shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Shown {
    pub rule: String,
    pub channel: String,
    pub event: String,
    pub title: String,
    pub body: String,
    pub data: Value,
    pub priority: super::Priority,
    pub dedupe_key: String,
}

impl From<&Rendered> for Shown {
    fn from(r: &Rendered) -> Self {
        Self {
            rule: r.rule.to_string(),
            channel: r.channel.clone(),
            event: r.event.clone(),
            title: r.title.clone(),
            body: r.body.clone(),
            data: r.data.clone(),
            priority: r.priority,
            dedupe_key: r.dedupe_key.clone(),
        }
    }
}

/// One difference on one event.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    Added {
        notification: Shown,
    },
    Removed {
        notification: Shown,
    },
    Changed {
        old: Shown,
        new: Shown,
    },
    /// A rule failure the candidate has and the old version had not.
    Failed {
        failure: RuleFailure,
    },
    /// A failure of the old version the candidate no longer has.
    Fixed {
        failure: RuleFailure,
    },
}

impl Change {
    /// The channel the change concerns (failures have none).
    pub fn channel(&self) -> Option<&str> {
        match self {
            Change::Added { notification } | Change::Removed { notification } => {
                Some(&notification.channel)
            }
            Change::Changed { new, .. } => Some(&new.channel),
            Change::Failed { .. } | Change::Fixed { .. } => None,
        }
    }
}

/// The differences on one event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventDiff {
    pub id: u64,
    pub topic: String,
    pub position: String,
    /// The candidate fails where the old version did not.
    pub regression: bool,
    pub changes: Vec<Change>,
}

/// A whole preview: the summary over every event, and the differences.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Preview {
    pub summary: Summary,
    /// Events with differences, in the samples' order.
    pub differences: Vec<EventDiff>,
}

/// Evaluate `samples` with `old` and `new` and compare.
pub fn preview(old: &Rules, new: &Rules, samples: &[Sample]) -> Preview {
    let mut out = Preview::default();
    let matched_rules = |rules: &Rules, event: &Event| -> Vec<String> {
        rules
            .matching(event)
            .into_iter()
            .map(|r| r.to_string())
            .collect()
    };
    for sample in samples {
        let a = old.evaluate(&sample.event);
        let b = new.evaluate(&sample.event);
        let s = &mut out.summary;
        s.events += 1;
        s.notifications.old += a.notifications.len();
        s.notifications.new += b.notifications.len();
        for rule in matched_rules(old, &sample.event) {
            s.matched.entry(rule).or_default().old += 1;
        }
        for rule in matched_rules(new, &sample.event) {
            s.matched.entry(rule).or_default().new += 1;
        }
        for f in &a.failures {
            s.failures.entry(f.rule.to_string()).or_default().old += 1;
        }
        for f in &b.failures {
            s.failures.entry(f.rule.to_string()).or_default().new += 1;
        }
        let mut changes = compare(&a.notifications, &b.notifications);
        for f in &b.failures {
            if !a.failures.contains(f) {
                changes.push(Change::Failed { failure: f.clone() });
            }
        }
        for f in &a.failures {
            if !b.failures.contains(f) {
                changes.push(Change::Fixed { failure: f.clone() });
            }
        }
        if changes.is_empty() {
            continue;
        }
        let regression = a.failures.is_empty() && !b.failures.is_empty();
        for c in &changes {
            match c {
                Change::Added { .. } => s.added += 1,
                Change::Removed { .. } => s.removed += 1,
                Change::Changed { .. } => s.changed += 1,
                Change::Failed { .. } | Change::Fixed { .. } => {}
            }
        }
        s.events_changed += 1;
        s.regressions += usize::from(regression);
        out.differences.push(EventDiff {
            id: sample.id,
            topic: sample.event.meta.topic.clone(),
            position: sample.event.meta.position.clone(),
            regression,
            changes,
        });
    }
    out
}

/// Pair notifications by (rule, channel, occurrence) and compare them.
fn compare(old: &[Rendered], new: &[Rendered]) -> Vec<Change> {
    type Key = (String, String, usize);
    fn keyed(list: &[Rendered]) -> BTreeMap<Key, &Rendered> {
        let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
        list.iter()
            .map(|r| {
                let n = seen
                    .entry((r.rule.to_string(), r.channel.clone()))
                    .or_default();
                *n += 1;
                ((r.rule.to_string(), r.channel.clone(), *n), r)
            })
            .collect()
    }
    let (a, b) = (keyed(old), keyed(new));
    let mut changes = Vec::new();
    for (key, o) in &a {
        match b.get(key) {
            Some(n) if o == n => {}
            Some(n) => changes.push(Change::Changed {
                old: Shown::from(*o),
                new: Shown::from(*n),
            }),
            None => changes.push(Change::Removed {
                notification: Shown::from(*o),
            }),
        }
    }
    for (key, n) in &b {
        if !a.contains_key(key) {
            changes.push(Change::Added {
                notification: Shown::from(*n),
            });
        }
    }
    changes
}

impl Preview {
    /// The preview as text for a terminal: the summary, a table per rule,
    /// then the first `limit` events with differences.
    pub fn to_text(&self, limit: usize) -> String {
        use std::fmt::Write;
        let s = &self.summary;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "events: {}, changed: {}, regressions: {}",
            s.events, s.events_changed, s.regressions
        );
        let _ = writeln!(
            out,
            "notifications: old {}, new {} (added {}, removed {}, changed {})",
            s.notifications.old, s.notifications.new, s.added, s.removed, s.changed
        );
        let mut rules: Vec<&String> = s.matched.keys().chain(s.failures.keys()).collect();
        rules.sort();
        rules.dedup();
        if !rules.is_empty() {
            let _ = writeln!(
                out,
                "{:<24} {:>18} {:>18}",
                "rule", "matched old/new", "failures old/new"
            );
            for r in rules {
                let m = s.matched.get(r).copied().unwrap_or_default();
                let f = s.failures.get(r).copied().unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{:<24} {:>18} {:>18}",
                    r,
                    format!("{}/{}", m.old, m.new),
                    format!("{}/{}", f.old, f.new)
                );
            }
        }
        for d in self.differences.iter().take(limit) {
            let flag = if d.regression { "  REGRESSION" } else { "" };
            let _ = writeln!(
                out,
                "\nevent {} {} (topic {}){flag}",
                d.id, d.position, d.topic
            );
            for c in &d.changes {
                let line = match c {
                    Change::Added { notification: n } => {
                        format!("+ {} (rule {}): {:?}", n.channel, n.rule, n.title)
                    }
                    Change::Removed { notification: n } => {
                        format!("- {} (rule {}): {:?}", n.channel, n.rule, n.title)
                    }
                    Change::Changed { old, new } => format!(
                        "~ {} (rule {}): {}",
                        new.channel,
                        new.rule,
                        changed_fields(old, new).join(", ")
                    ),
                    Change::Failed { failure: f } => {
                        format!("! rule {} fails at {}: {}", f.rule, f.field, f.message)
                    }
                    Change::Fixed { failure: f } => {
                        format!("  rule {} no longer fails at {}", f.rule, f.field)
                    }
                };
                let _ = writeln!(out, "  {line}");
            }
        }
        if self.differences.len() > limit {
            let _ = writeln!(
                out,
                "\n... {} more events with differences",
                self.differences.len() - limit
            );
        }
        out
    }
}

/// `title "a" → "b"` for each field that differs.
fn changed_fields(old: &Shown, new: &Shown) -> Vec<String> {
    let a = serde_json::to_value(old).unwrap_or(Value::Null);
    let b = serde_json::to_value(new).unwrap_or(Value::Null);
    let mut out = Vec::new();
    if let (Value::Object(a), Value::Object(b)) = (a, b) {
        for (k, v) in &a {
            if b.get(k) != Some(v) {
                out.push(format!("{k} {v} → {}", b.get(k).unwrap_or(&Value::Null)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::event::{Meta, SourceKind};
    use crate::rules::Format;

    fn rules(text: &str) -> Rules {
        Rules::parse(text, Format::Yaml, "t").unwrap()
    }

    fn samples() -> Vec<Sample> {
        (0..4)
            .map(|i| Sample {
                id: i,
                event: Event {
                    payload: serde_json::json!({"user": i, "total": i * 100}),
                    meta: Meta::new(SourceKind::Http, "orders", format!("http:orders:{i}")),
                },
            })
            .collect()
    }

    const OLD: &str = "rules:\n  - id: r\n    when: event.total >= 100\n    emit: { channel: \"user:{{ event.user }}\", title: \"t{{ event.total }}\" }\n";

    #[test]
    fn the_same_rules_change_nothing() {
        let p = preview(
            &rules(OLD),
            &rules(&format!("# a comment\n{OLD}")),
            &samples(),
        );
        assert!(p.differences.is_empty());
        assert_eq!(p.summary.notifications, Pair { old: 3, new: 3 });
        assert_eq!(p.summary.matched["r"], Pair { old: 3, new: 3 });
    }

    #[test]
    fn a_renamed_channel_is_removed_and_added() {
        let p = preview(
            &rules(OLD),
            &rules(&OLD.replace("user:", "customer:")),
            &samples(),
        );
        assert_eq!(p.summary.events_changed, 3);
        assert_eq!(
            (p.summary.added, p.summary.removed, p.summary.changed),
            (3, 3, 0)
        );
        let channels: Vec<Option<&str>> = p.differences[0]
            .changes
            .iter()
            .map(Change::channel)
            .collect();
        assert_eq!(channels, [Some("user:1"), Some("customer:1")]);
        assert_eq!(p.summary.regressions, 0);
    }

    #[test]
    fn a_broken_template_is_a_regression() {
        let p = preview(
            &rules(OLD),
            &rules(&OLD.replace("{{ event.total }}", "{{ event.totl.x }}")),
            &samples(),
        );
        assert_eq!(p.summary.regressions, 3);
        assert_eq!(p.summary.failures["r"], Pair { old: 0, new: 3 });
        assert!(matches!(
            p.differences[0].changes[0],
            Change::Removed { .. }
        ));
        assert!(
            matches!(&p.differences[0].changes[1], Change::Failed { failure } if failure.field == "emit.title")
        );
    }

    #[test]
    fn changed_content_is_changed() {
        let p = preview(
            &rules(OLD),
            &rules(&OLD.replace("title: \"t", "title: \"T")),
            &samples(),
        );
        assert_eq!(
            (p.summary.added, p.summary.removed, p.summary.changed),
            (0, 0, 3)
        );
    }
}
