//! Evaluating compiled rules against one event. Pure and bounded.

use std::sync::Arc;

use minijinja::value::ValueKind;
use minijinja::{Value as JValue, context};
use serde::Serialize;
use serde_json::Value;

use super::Priority;
use super::compile::{Compiled, Condition, Data, PriorityTemplate, Rule, Text, describe};
use crate::event::Event;

/// A notification a rule produced, before the log gives it an offset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rendered {
    pub rule: Arc<str>,
    pub channel: String,
    /// The source event's type.
    pub event: String,
    pub title: String,
    pub body: String,
    pub data: Value,
    pub priority: Priority,
    pub dedupe_key: String,
}

/// One rule that failed for one event (or one `for_each` item).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct RuleFailure {
    pub rule: Arc<str>,
    pub field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub message: String,
}

/// What the rules made of an event.
#[derive(Debug, Default)]
pub struct Evaluation {
    /// Rules whose `match` and `when` accepted the event.
    pub matched: usize,
    pub notifications: Vec<Rendered>,
    pub failures: Vec<RuleFailure>,
}

impl Evaluation {
    /// True when rules failed and none produced anything: the event is
    /// poison for this rules version (dead-lettered where configured).
    pub fn all_failed(&self) -> bool {
        !self.failures.is_empty() && self.notifications.is_empty()
    }
}

/// Most notifications one rule may make of one event with `for_each`.
pub(super) const MAX_ITEMS: usize = 1000;

pub(super) fn evaluate(compiled: &Compiled, event: &Event) -> Evaluation {
    let mut out = Evaluation::default();
    let payload = JValue::from(minijinja::value::Serde(&event.payload));
    let meta = JValue::from(minijinja::value::Serde(&event.meta));
    compiled.rules(|rules| {
        for rule in rules {
            if let Err(failure) = apply(rule, event, &payload, &meta, &mut out) {
                out.failures.push(failure);
            }
        }
    });
    out
}

fn apply(
    rule: &Rule<'_>,
    event: &Event,
    payload: &JValue,
    meta: &JValue,
    out: &mut Evaluation,
) -> Result<(), RuleFailure> {
    if rule.source.is_some_and(|s| s != event.meta.source) {
        return Ok(());
    }
    if let Some(topic) = &rule.topic
        && !topic.is_match(&event.meta.topic)
    {
        return Ok(());
    }
    let fail = |field: &str, index: Option<usize>, message: String| RuleFailure {
        rule: rule.id.clone(),
        field: field.to_string(),
        index,
        message,
    };
    let base = context! { event => payload, meta => meta };
    match &rule.when {
        Condition::Always => {}
        Condition::Never => return Ok(()),
        Condition::Expr(expr) => {
            let v = expr
                .eval(base.clone())
                .map_err(|e| fail("when", None, describe(&e)))?;
            if !v.is_true() {
                return Ok(());
            }
        }
    }
    out.matched += 1;
    let Some(for_each) = &rule.for_each else {
        match render(rule, event, base, 0) {
            Ok(n) => out.notifications.push(n),
            Err((field, msg)) => out.failures.push(fail(field, None, msg)),
        }
        return Ok(());
    };
    let list = for_each
        .eval(base)
        .map_err(|e| fail("for_each", None, describe(&e)))?;
    // Strings and maps are iterable too, but iterating them here is
    // almost always a mistake: insist on a list.
    let items = match list.kind() {
        ValueKind::Seq | ValueKind::Iterable => list.try_iter().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        fail(
            "for_each",
            None,
            format!("expected a list, got {}", list.kind()),
        )
    })?;
    // One event must not fan out without bound (a 1 MiB payload can hold a
    // list of hundreds of thousands of items).
    let items: Vec<JValue> = items.take(MAX_ITEMS + 1).collect();
    if items.len() > MAX_ITEMS {
        return Err(fail(
            "for_each",
            None,
            format!("more than {MAX_ITEMS} items"),
        ));
    }
    for (index, item) in items.into_iter().enumerate() {
        let ctx = context! { event => payload, meta => meta, item => item, index => index };
        match render(rule, event, ctx, index) {
            Ok(n) => out.notifications.push(n),
            Err((field, msg)) => out.failures.push(fail(field, Some(index), msg)),
        }
    }
    Ok(())
}

type FieldError = (&'static str, String);

fn render(
    rule: &Rule<'_>,
    event: &Event,
    ctx: JValue,
    index: usize,
) -> Result<Rendered, FieldError> {
    let channel = text(&rule.channel, &ctx).map_err(|m| ("emit.channel", m))?;
    let channel = channel.trim().to_string();
    crate::channel::check(&channel).map_err(|m| ("emit.channel", format!("{m}: {channel:?}")))?;
    let title = match &rule.title {
        Some(t) => text(t, &ctx).map_err(|m| ("emit.title", m))?,
        None => event.event_type().to_string(),
    };
    let body = match &rule.body {
        Some(t) => text(t, &ctx).map_err(|m| ("emit.body", m))?,
        None => String::new(),
    };
    let data = match &rule.data {
        Some(d) => match data(d, &ctx).map_err(|m| ("emit.data", m))? {
            Value::Object(o) => Value::Object(o),
            other => {
                return Err((
                    "emit.data",
                    format!("must be an object, got {}", json_kind(&other)),
                ));
            }
        },
        None => Value::Object(Default::default()),
    };
    let priority = match &rule.priority {
        PriorityTemplate::Fixed(p) => *p,
        PriorityTemplate::Template(t) => {
            let s = t
                .render(&ctx)
                .map_err(|e| ("emit.priority", describe(&e)))?;
            Priority::parse(&s).ok_or_else(|| {
                (
                    "emit.priority",
                    format!("rendered {s:?}, not one of low, normal, high, urgent"),
                )
            })?
        }
    };
    let dedupe_key = match &rule.dedupe_key {
        Some(t) => {
            let key = text(t, &ctx).map_err(|m| ("emit.dedupe_key", m))?;
            if key.is_empty() {
                return Err(("emit.dedupe_key", "rendered an empty key".into()));
            }
            key
        }
        None => format!("{}/{}/{}", event.meta.position, rule.id, index),
    };
    Ok(Rendered {
        rule: rule.id.clone(),
        channel,
        event: event.event_type().to_string(),
        title,
        body,
        data,
        priority,
        dedupe_key,
    })
}

pub(super) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

pub(super) fn text(t: &Text<'_>, ctx: &JValue) -> Result<String, String> {
    match t {
        Text::Literal(s) => Ok(s.clone()),
        Text::Template(t) => t.render(ctx).map_err(|e| describe(&e)),
    }
}

pub(super) fn data(d: &Data<'_>, ctx: &JValue) -> Result<Value, String> {
    Ok(match d {
        Data::Literal(v) => v.clone(),
        Data::Text(t) => Value::String(text(t, ctx)?),
        Data::Expr(e) => {
            let v = e.eval(ctx.clone()).map_err(|e| describe(&e))?;
            if v.is_undefined() {
                return Err("expression is undefined".into());
            }
            serde_json::to_value(&v).map_err(|e| e.to_string())?
        }
        Data::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| data(i, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Data::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| Ok((k.clone(), data(v, ctx)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}
