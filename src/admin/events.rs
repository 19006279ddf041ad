//! `/admin/events` (the recorder's events) and `/admin/explain` (why an
//! event did or did not become a notification).
//!
//! - `GET /admin/events?topic=&channel=&after=&limit=`: recorded events on
//!   that topic / reaching that channel, oldest first: the first `limit`
//!   (default 100) with an id above `after`, or without `after` the newest
//!   `limit`; `newest` is the newest id recorded (where paging can stop);
//! - `GET /admin/explain?event=<id>`: every rule's part in that event, with
//!   the recorded offsets and duplicates, evaluated by the rules version
//!   that processed it when it is kept (else the live one, said in `note`);
//! - `GET /admin/explain?channel=<c>&since=<RFC 3339 or id>`: the recorded
//!   events that could have reached `c` (a rule sent there, or would have
//!   had it matched) and, for each, why it did or did not.
//!
//! 404 when the recorder is off (`recorder.capacity = 0`) or the event is
//! no longer kept.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Admin;
use super::rules::error;
use crate::event::Provenance;
use crate::recorder::RecordedEvent;
use crate::rules::versions::Versions;
use crate::rules::{RuleTrace, Rules};

/// Most events one listing or explain answers.
const MAX_LIMIT: usize = 10_000;

pub(super) fn routes() -> Router<Admin> {
    Router::new()
        .route("/admin/events", get(events))
        .route("/admin/explain", get(explain))
}

fn recorder_off() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "the recorder is off (recorder.capacity = 0)",
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    topic: Option<String>,
    channel: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

async fn events(State(admin): State<Admin>, Query(q): Query<EventsQuery>) -> Response {
    let Some(recorder) = admin.recorder.as_ref() else {
        return recorder_off();
    };
    let limit = q.limit.unwrap_or(100).min(MAX_LIMIT);
    let entries = recorder.list(q.after, limit, |e| {
        q.topic.as_deref().is_none_or(|t| e.topic() == t)
            && q.channel.as_deref().is_none_or(|c| e.reached(c))
    });
    let events: Vec<RecordedEvent> = entries.iter().map(|e| e.view()).collect();
    let (kept, bytes) = recorder.usage();
    axum::Json(json!({
        "events": events,
        "last": events.last().map(|e| e.id),
        "newest": recorder.newest(),
        "kept": kept,
        "bytes": bytes,
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainQuery {
    event: Option<u64>,
    channel: Option<String>,
    since: Option<String>,
    limit: Option<usize>,
}

async fn explain(State(admin): State<Admin>, Query(q): Query<ExplainQuery>) -> Response {
    let Some(recorder) = admin.recorder.as_ref() else {
        return recorder_off();
    };
    let mut versions = VersionCache::new(&admin.versions);
    match (q.event, q.channel) {
        (Some(id), None) => {
            let Some(entry) = recorder.get(id) else {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("event {id} is not (or no longer) recorded"),
                );
            };
            let view = entry.view();
            let (rules, note) = versions.get(&view.rules_version).await;
            let traces = annotate(&view, rules.explain(&view.to_event()));
            axum::Json(json!({
                "event": view,
                "rules_version": rules.content_id(),
                "note": note,
                "rules": traces,
            }))
            .into_response()
        }
        (None, Some(channel)) => {
            let since = match parse_since(q.since.as_deref()) {
                Ok(s) => s,
                Err(m) => return error(StatusCode::BAD_REQUEST, &m),
            };
            let limit = q.limit.unwrap_or(100).min(MAX_LIMIT);
            let entries = recorder.list(None, usize::MAX, |e| match since {
                Since::All => true,
                Since::Id(id) => e.id() >= id,
                Since::Ms(ms) => e.at_ms() >= ms,
            });
            let mut out = Vec::new();
            for entry in entries.iter().rev() {
                if out.len() >= limit {
                    break;
                }
                let view = entry.view();
                let (rules, _) = versions.get(&view.rules_version).await;
                let traces = rules.explain(&view.to_event());
                if let Some(answer) = for_channel(&view, &traces, &channel) {
                    out.push(answer);
                }
            }
            out.reverse();
            axum::Json(json!({ "channel": channel, "events": out })).into_response()
        }
        _ => error(
            StatusCode::BAD_REQUEST,
            "name one recorded event (?event=<id>) or a channel (?channel=<name>&since=<RFC 3339 time or event id>)",
        ),
    }
}

enum Since {
    All,
    Id(u64),
    Ms(u64),
}

fn parse_since(since: Option<&str>) -> Result<Since, String> {
    let Some(s) = since else {
        return Ok(Since::All);
    };
    if let Ok(id) = s.parse::<u64>() {
        return Ok(Since::Id(id));
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("since {s:?}: an RFC 3339 time or an event id: {e}"))?;
    Ok(Since::Ms(
        u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
    ))
}

/// The rules version that evaluated a recorded event, compiled once per
/// request; the live version when that one is not kept.
struct VersionCache<'a> {
    versions: &'a Versions,
    compiled: HashMap<String, (Arc<Rules>, Option<String>)>,
}

impl<'a> VersionCache<'a> {
    fn new(versions: &'a Versions) -> Self {
        Self {
            versions,
            compiled: HashMap::new(),
        }
    }

    async fn get(&mut self, id: &str) -> (Arc<Rules>, Option<String>) {
        if let Some(hit) = self.compiled.get(id) {
            return hit.clone();
        }
        let live = self.versions.rules();
        let found = if live.content_id() == id {
            (live, None)
        } else {
            let text = self.versions.text(id).await.ok().flatten();
            match text.map(|t| Rules::parse(&t.text, t.format, id)) {
                Some(Ok(rules)) => (Arc::new(rules), None),
                _ => {
                    let note = format!(
                        "rules version {id} is not kept; explained with the live version {}",
                        live.content_id()
                    );
                    (live, Some(note))
                }
            }
        };
        self.compiled.insert(id.to_string(), found.clone());
        found
    }
}

/// The traces as JSON, each notification with what the log made of it
/// (offset, duplicate) from the recorded outcome, and the provenance the
/// stored notification carries.
fn annotate(view: &RecordedEvent, traces: Vec<RuleTrace>) -> Value {
    let mut out = serde_json::to_value(&traces).unwrap_or(Value::Null);
    if let Some(rules) = out.as_array_mut() {
        for rule in rules {
            let id = rule["rule"].as_str().unwrap_or_default().to_string();
            if let Some(items) = rule.get_mut("notifications").and_then(Value::as_array_mut) {
                for item in items {
                    let key = item["dedupe_key"].as_str().unwrap_or_default();
                    let recorded = view
                        .outcome
                        .notifications
                        .iter()
                        .find(|n| n.rule == id && n.dedupe_key == key);
                    if let Some(n) = recorded {
                        item["offset"] = json!(n.offset);
                        item["duplicate"] = json!(n.duplicate);
                        item["provenance"] = json!(Provenance {
                            rule: &n.rule,
                            rules_version: &view.rules_version,
                            source: view.source(),
                        });
                    }
                }
            }
        }
    }
    out
}

/// Whether the event concerns `channel` and, if so, the answer: reached or
/// not, and one sentence per rule that sends (or would send) there.
fn for_channel(view: &RecordedEvent, traces: &[RuleTrace], channel: &str) -> Option<Value> {
    let mut why = Vec::new();
    let mut concerned = Vec::new();
    for t in traces {
        let sends = t
            .notifications
            .iter()
            .filter(|i| i.channel.as_deref() == Some(channel));
        let mut any = false;
        for item in sends {
            any = true;
            why.push(sentence_matched(view, t, item));
        }
        if !any && t.channels_if_matched.iter().any(|c| c == channel) {
            any = true;
            why.push(sentence_unmatched(t, channel));
        }
        if any {
            concerned.push(t.clone());
        }
    }
    if concerned.is_empty() && !view.reached(channel) {
        return None;
    }
    Some(json!({
        "id": view.id,
        "at": view.at,
        "topic": view.meta.topic,
        "position": view.position,
        "source": view.source(),
        "rules_version": view.rules_version,
        "reached": view.reached(channel),
        "result": view.outcome.result,
        "why": why,
        "rules": concerned,
    }))
}

fn sentence_matched(view: &RecordedEvent, t: &RuleTrace, item: &crate::rules::ItemTrace) -> String {
    let rule = &t.rule;
    if !item.ok {
        let failed: Vec<String> = item
            .fields
            .iter()
            .filter_map(|(f, v)| v.error.as_ref().map(|e| format!("{f}: {e}")))
            .collect();
        return format!(
            "rule `{rule}` matched but failed to render: {}",
            failed.join("; ")
        );
    }
    let key = item.dedupe_key.as_deref().unwrap_or_default();
    let recorded = view
        .outcome
        .notifications
        .iter()
        .find(|n| n.rule == *rule && n.dedupe_key == key);
    match recorded {
        Some(n) if n.duplicate => format!(
            "rule `{rule}` matched; its dedupe key `{key}` was already in the log (offset {}), so nothing new was sent",
            n.offset.unwrap_or(0)
        ),
        Some(n) if n.offset.is_some() => format!(
            "rule `{rule}` matched and appended offset {}",
            n.offset.unwrap_or(0)
        ),
        Some(_) => format!(
            "rule `{rule}` matched; the append {}",
            if view.outcome.result == "pending" {
                "has not answered yet"
            } else {
                "failed"
            }
        ),
        None => format!(
            "rule `{rule}` matches with the rules version explained, but was not what ran (or the notification was too large)"
        ),
    }
}

fn sentence_unmatched(t: &RuleTrace, channel: &str) -> String {
    let rule = &t.rule;
    match t.outcome {
        "other_source" => {
            let c = t.source.as_ref();
            format!(
                "rule `{rule}` would send to {channel}, but it takes {} events and this one came from {}",
                c.map_or("", |c| c.want.as_str()),
                c.map_or("", |c| c.got.as_str())
            )
        }
        "other_topic" => {
            let c = t.topic.as_ref();
            format!(
                "rule `{rule}` would send to {channel}, but the topic `{}` does not match `{}`",
                c.map_or("", |c| c.got.as_str()),
                c.map_or("", |c| c.want.as_str())
            )
        }
        "when_false" => {
            let w = t.when.as_ref();
            let values: Vec<String> = w
                .map(|w| {
                    w.values
                        .iter()
                        .map(|(k, v)| format!("{k} = {v}"))
                        .chain(w.missing.iter().map(|m| format!("{m} is missing")))
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "rule `{rule}` would send to {channel}, but `when: {}` was false ({})",
                w.and_then(|w| w.expression.as_deref()).unwrap_or("false"),
                values.join(", ")
            )
        }
        _ => format!(
            "rule `{rule}` would send to {channel}, but {}",
            t.error.as_deref().unwrap_or("it did not match")
        ),
    }
}
