//! Explaining an evaluation: for one event, each rule in order, whether it
//! matched (source, topic glob, `when` and the values it read), each field
//! it rendered or the error, the channel and the dedupe key.
//!
//! Explain evaluates the same compiled rules as [`super::eval`] but keeps
//! going where evaluation stops at the first error of a notification, so
//! every field's result is shown. Its channels and dedupe keys are the
//! evaluation's (a test pins that); it is not on the hot path.

use std::collections::BTreeMap;

use minijinja::value::ValueKind;
use minijinja::{Value as JValue, context};
use serde::Serialize;
use serde_json::Value;

use super::Priority;
use super::compile::{Compiled, Condition, PriorityTemplate, Rule, describe};
use super::eval::{MAX_ITEMS, data, json_kind, text};
use crate::event::Event;

/// A `match` check: what the rule wants and what the event has.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub want: String,
    pub got: String,
    pub ok: bool,
}

/// The `when` condition's result.
#[derive(Debug, Clone, Serialize)]
pub struct WhenTrace {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    /// `true`, `false`, or absent when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The fields it read that the event has (`event.total`: 12).
    pub values: BTreeMap<String, Value>,
    /// The fields it read that the event lacks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

/// One field's rendering: its value or why it failed.
#[derive(Debug, Clone, Serialize)]
pub struct FieldTrace {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One notification a matched rule renders (one per `for_each` item).
#[derive(Debug, Clone, Serialize)]
pub struct ItemTrace {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// `emit.channel`, `emit.title`, ... in the order they render.
    pub fields: BTreeMap<&'static str, FieldTrace>,
    /// Set when every field rendered: the notification was produced.
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dedupe_key: Option<String>,
}

/// One rule's part in an event's evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct RuleTrace {
    pub rule: String,
    /// `matched`, `other_source`, `other_topic`, `when_false`,
    /// `when_failed` or `for_each_failed`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Check>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<Check>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<WhenTrace>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What it rendered (matched rules).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<ItemTrace>,
    /// For a rule that did not match: the channels it would have rendered
    /// (what "could this event have reached user:42" asks).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub channels_if_matched: Vec<String>,
}

pub(super) fn explain(compiled: &Compiled, event: &Event) -> Vec<RuleTrace> {
    let payload = JValue::from(minijinja::value::Serde(&event.payload));
    let meta_json = serde_json::to_value(&event.meta).unwrap_or(Value::Null);
    let meta = JValue::from(minijinja::value::Serde(&event.meta));
    compiled.rules(|rules| {
        rules
            .iter()
            .map(|rule| trace(rule, event, &payload, &meta, &meta_json))
            .collect()
    })
}

/// The ids of the rules whose `match` and `when` accept `event` (what
/// [`super::Evaluation::matched`] counts), without rendering anything.
pub(super) fn matching(compiled: &Compiled, event: &Event) -> Vec<std::sync::Arc<str>> {
    let payload = JValue::from(minijinja::value::Serde(&event.payload));
    let meta = JValue::from(minijinja::value::Serde(&event.meta));
    let base = context! { event => payload, meta => meta };
    compiled.rules(|rules| {
        rules
            .iter()
            .filter(|rule| {
                rule.source.is_none_or(|s| s == event.meta.source)
                    && rule
                        .topic
                        .as_ref()
                        .is_none_or(|g| g.is_match(&event.meta.topic))
                    && match &rule.when {
                        Condition::Always => true,
                        Condition::Never => false,
                        Condition::Expr(e) => e.eval(base.clone()).is_ok_and(|v| v.is_true()),
                    }
            })
            .map(|rule| rule.id.clone())
            .collect()
    })
}

fn trace(
    rule: &Rule<'_>,
    event: &Event,
    payload: &JValue,
    meta: &JValue,
    meta_json: &Value,
) -> RuleTrace {
    let mut t = RuleTrace {
        rule: rule.id.to_string(),
        outcome: "matched",
        source: rule.source.map(|s| Check {
            want: s.to_string(),
            got: event.meta.source.to_string(),
            ok: s == event.meta.source,
        }),
        topic: rule.topic.as_ref().map(|g| Check {
            want: g.glob().glob().to_string(),
            got: event.meta.topic.clone(),
            ok: g.is_match(&event.meta.topic),
        }),
        when: None,
        error: None,
        notifications: Vec::new(),
        channels_if_matched: Vec::new(),
    };
    let base = context! { event => payload, meta => meta };
    let mut matched = true;
    if t.source.as_ref().is_some_and(|c| !c.ok) {
        t.outcome = "other_source";
        matched = false;
    } else if t.topic.as_ref().is_some_and(|c| !c.ok) {
        t.outcome = "other_topic";
        matched = false;
    }
    if matched {
        match &rule.when {
            Condition::Always => {}
            Condition::Never => {
                t.outcome = "when_false";
                matched = false;
            }
            Condition::Expr(expr) => {
                let (values, missing) =
                    read_values(expr.undeclared_variables(true), &event.payload, meta_json);
                let mut w = WhenTrace {
                    expression: rule.when_text.clone(),
                    result: None,
                    error: None,
                    values,
                    missing,
                };
                match expr.eval(base.clone()) {
                    Ok(v) => {
                        w.result = Some(v.is_true());
                        if !v.is_true() {
                            t.outcome = "when_false";
                            matched = false;
                        }
                    }
                    Err(e) => {
                        w.error = Some(describe(&e));
                        t.outcome = "when_failed";
                        t.error = Some(format!("when: {}", describe(&e)));
                        matched = false;
                    }
                }
                t.when = Some(w);
            }
        }
    }
    let items = match items(rule, &base) {
        Ok(items) => items,
        Err(e) => {
            if matched {
                t.outcome = "for_each_failed";
                t.error = Some(format!("for_each: {e}"));
            }
            return t;
        }
    };
    for (index, ctx) in items {
        let item = render(rule, event, ctx, index);
        if matched {
            t.notifications.push(item);
        } else if let Some(channel) = item
            .fields
            .get("emit.channel")
            .and_then(|f| f.value.as_ref())
            && let Some(c) = channel.as_str()
        {
            t.channels_if_matched.push(c.to_string());
        }
    }
    t
}

/// The contexts a rule renders in: one, or one per `for_each` item.
fn items(rule: &Rule<'_>, base: &JValue) -> Result<Vec<(Option<usize>, JValue)>, String> {
    let Some(for_each) = &rule.for_each else {
        return Ok(vec![(None, base.clone())]);
    };
    let list = for_each.eval(base.clone()).map_err(|e| describe(&e))?;
    let iter = match list.kind() {
        ValueKind::Seq | ValueKind::Iterable => list.try_iter().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("expected a list, got {}", list.kind()))?;
    let items: Vec<JValue> = iter.take(MAX_ITEMS + 1).collect();
    if items.len() > MAX_ITEMS {
        return Err(format!("more than {MAX_ITEMS} items"));
    }
    let event = base.get_attr("event").unwrap_or_default();
    let meta = base.get_attr("meta").unwrap_or_default();
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            (
                Some(i),
                context! { event => event.clone(), meta => meta.clone(), item => item, index => i },
            )
        })
        .collect())
}

fn render(rule: &Rule<'_>, event: &Event, ctx: JValue, index: Option<usize>) -> ItemTrace {
    let mut fields = BTreeMap::new();
    let mut put = |name: &'static str, r: Result<Value, String>| {
        let ok = r.is_ok();
        let trace = match r {
            Ok(v) => FieldTrace {
                value: Some(v),
                error: None,
            },
            Err(e) => FieldTrace {
                value: None,
                error: Some(e),
            },
        };
        fields.insert(name, trace);
        ok
    };
    let channel = text(&rule.channel, &ctx).and_then(|c| {
        let c = c.trim().to_string();
        crate::channel::check(&c).map_err(|m| format!("{m}: {c:?}"))?;
        Ok(c)
    });
    let mut ok = put("emit.channel", channel.clone().map(Value::String));
    let title = match &rule.title {
        Some(t) => text(t, &ctx),
        None => Ok(event.event_type().to_string()),
    };
    ok &= put("emit.title", title.map(Value::String));
    let body = match &rule.body {
        Some(t) => text(t, &ctx),
        None => Ok(String::new()),
    };
    ok &= put("emit.body", body.map(Value::String));
    let data = match &rule.data {
        Some(d) => data(d, &ctx).and_then(|v| match v {
            Value::Object(o) => Ok(Value::Object(o)),
            other => Err(format!("must be an object, got {}", json_kind(&other))),
        }),
        None => Ok(Value::Object(Default::default())),
    };
    ok &= put("emit.data", data);
    let priority = match &rule.priority {
        PriorityTemplate::Fixed(p) => Ok(*p),
        PriorityTemplate::Template(t) => t.render(&ctx).map_err(|e| describe(&e)).and_then(|s| {
            Priority::parse(&s)
                .ok_or_else(|| format!("rendered {s:?}, not one of low, normal, high, urgent"))
        }),
    };
    ok &= put(
        "emit.priority",
        priority.map(|p| serde_json::to_value(p).unwrap_or(Value::Null)),
    );
    let dedupe_key = match &rule.dedupe_key {
        Some(t) => text(t, &ctx).and_then(|k| {
            if k.is_empty() {
                Err("rendered an empty key".to_string())
            } else {
                Ok(k)
            }
        }),
        None => Ok(format!(
            "{}/{}/{}",
            event.meta.position,
            rule.id,
            index.unwrap_or(0)
        )),
    };
    ok &= put("emit.dedupe_key", dedupe_key.clone().map(Value::String));
    ItemTrace {
        index,
        fields,
        ok,
        channel: channel.ok(),
        dedupe_key: dedupe_key.ok(),
    }
}

/// The values of the dotted paths an expression reads (`event.total`,
/// `meta.topic`), split into those present and those missing.
fn read_values(
    paths: std::collections::HashSet<String>,
    payload: &Value,
    meta: &Value,
) -> (BTreeMap<String, Value>, Vec<String>) {
    let mut values = BTreeMap::new();
    let mut missing = Vec::new();
    let mut paths: Vec<String> = paths.into_iter().collect();
    paths.sort();
    for path in paths {
        let mut parts = path.split('.');
        let mut at = match parts.next() {
            Some("event") => Some(payload),
            Some("meta") => Some(meta),
            _ => None,
        };
        for part in parts {
            at = at.and_then(|v| match v {
                Value::Object(o) => o.get(part),
                Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            });
        }
        match at {
            Some(v) => {
                values.insert(path, v.clone());
            }
            None => missing.push(path),
        }
    }
    (values, missing)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::{Format, Rules};
    use crate::event::{Event, Meta, SourceKind};

    /// Explain renders what evaluation renders: the same channels and
    /// dedupe keys for every notification, the same rules failing.
    #[test]
    fn explain_agrees_with_evaluation() {
        let rules = Rules::parse(
            r#"rules:
  - id: each
    for_each: event.items
    emit: { channel: "user:{{ item.user }}", title: "{{ item.name }}" }
  - id: plain
    when: event.total > 10
    emit: { channel: broadcast }
  - id: broken
    emit: { channel: "x", title: "{{ event.nope.deeper }}" }
"#,
            Format::Yaml,
            "t",
        )
        .unwrap();
        for payload in [
            serde_json::json!({"items": [{"user": 1, "name": "a"}, {"user": 2}], "total": 11}),
            serde_json::json!({"items": [], "total": 3}),
            serde_json::json!({"total": 30}),
        ] {
            let event = Event {
                payload,
                meta: Meta::new(SourceKind::Http, "t", "http:t:1"),
            };
            let evaluation = rules.evaluate(&event);
            let explained: Vec<(String, String)> = rules
                .explain(&event)
                .iter()
                .flat_map(|t| {
                    t.notifications
                        .iter()
                        .filter(|i| i.ok)
                        .map(|i| (i.channel.clone().unwrap(), i.dedupe_key.clone().unwrap()))
                })
                .collect();
            let evaluated: Vec<(String, String)> = evaluation
                .notifications
                .iter()
                .map(|n| (n.channel.clone(), n.dedupe_key.clone()))
                .collect();
            assert_eq!(explained, evaluated, "{}", event.payload);
            let failing: Vec<String> = rules
                .explain(&event)
                .iter()
                .filter(|t| t.error.is_some() || t.notifications.iter().any(|i| !i.ok))
                .map(|t| t.rule.clone())
                .collect();
            let mut failed: Vec<String> = evaluation
                .failures
                .iter()
                .map(|f| f.rule.to_string())
                .collect();
            failed.dedup();
            assert_eq!(failing, failed, "{}", event.payload);
        }
    }
}
