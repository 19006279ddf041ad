//! Compile diagnostics and evaluation semantics. Input → output fixtures
//! for whole rules files live in `tests/fixtures/rules/`.
#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;
use crate::event::{Event, Meta, SourceKind};

fn event(source: SourceKind, topic: &str, payload: serde_json::Value) -> Event {
    Event {
        payload,
        meta: Meta::new(source, topic, format!("{source}:{topic}:7")),
    }
}

fn http(payload: serde_json::Value) -> Event {
    event(SourceKind::Http, "t", payload)
}

fn yaml(text: &str) -> Result<Rules, RulesError> {
    Rules::parse(text, Format::Yaml, "rules.yaml")
}

fn diagnostics(text: &str) -> Vec<Diagnostic> {
    match yaml(text) {
        Ok(_) => panic!("expected diagnostics"),
        Err(e) => e.diagnostics,
    }
}

#[test]
fn default_rule_routes_by_channel_then_user_then_broadcast() {
    let rules = Rules::builtin();
    let cases = [
        (
            json!({"channel": "team:7", "user_id": 1, "title": "t"}),
            "team:7",
        ),
        (json!({"user_id": 42, "type": "x"}), "user:42"),
        (json!({"user_id": "abc"}), "user:abc"),
        (json!({"type": "x"}), "broadcast"),
        (json!({"channel": 5}), "broadcast"),
    ];
    for (payload, channel) in cases {
        let out = rules.evaluate(&http(payload.clone()));
        assert!(out.failures.is_empty(), "{payload}: {:?}", out.failures);
        assert_eq!(out.notifications.len(), 1);
        assert_eq!(out.notifications[0].channel, channel, "{payload}");
    }
}

#[test]
fn default_rule_takes_title_and_body_from_the_event_else_its_type() {
    let rules = Rules::builtin();
    let n = &rules
        .evaluate(&http(json!({"type": "order.shipped", "data": {"id": 1}})))
        .notifications[0];
    assert_eq!(
        (n.title.as_str(), n.body.as_str()),
        ("order.shipped", "order.shipped")
    );
    assert_eq!(n.event, "order.shipped");
    assert_eq!(n.data, json!({"id": 1}));
    assert_eq!(n.priority, Priority::Normal);
    let n = &rules
        .evaluate(&http(
            json!({"title": "T", "body": "B", "priority": "urgent"}),
        ))
        .notifications[0];
    assert_eq!((n.title.as_str(), n.body.as_str()), ("T", "B"));
    assert_eq!(n.priority, Priority::Urgent);
    // Without a type, the event field falls back to the topic.
    assert_eq!(n.event, "t");
}

#[test]
fn default_dedupe_key_is_position_rule_and_index() {
    let rules = Rules::builtin();
    let out = rules.evaluate(&http(json!({"title": "x"})));
    assert_eq!(out.notifications[0].dedupe_key, "http:t:7/default/0");
}

const ORDER: &str = r#"
rules:
  - id: order-shipped
    match: { source: kafka, topic: "orders*" }
    when: event.type == "order.shipped" and event.total > 100
    for_each: event.recipients
    emit:
      channel: "user:{{ item }}"
      title: "Order {{ event.order_id }} has shipped"
      body: "Arriving {{ event.eta }}"
      priority: high
      data: { order_id: "{{ event.order_id }}", total: "{{ event.total }}", who: "{{ item }}!" }
      dedupe_key: "{{ event.event_id }}-{{ item }}"
"#;

#[test]
fn for_each_emits_one_notification_per_item() {
    let rules = yaml(ORDER).unwrap();
    let e = event(
        SourceKind::Kafka,
        "orders-eu",
        json!({"type": "order.shipped", "total": 250, "recipients": [1, 2], "order_id": "A7",
               "eta": "Friday", "event_id": "ev9"}),
    );
    let out = rules.evaluate(&e);
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    let channels: Vec<_> = out
        .notifications
        .iter()
        .map(|n| n.channel.as_str())
        .collect();
    assert_eq!(channels, ["user:1", "user:2"]);
    let n = &out.notifications[1];
    assert_eq!(n.title, "Order A7 has shipped");
    assert_eq!(n.body, "Arriving Friday");
    assert_eq!(n.priority, Priority::High);
    assert_eq!(n.dedupe_key, "ev9-2");
    // A whole-expression data value keeps its JSON type; mixed text is a string.
    assert_eq!(n.data, json!({"order_id": "A7", "total": 250, "who": "2!"}));
}

#[test]
fn match_and_when_select_events_and_missing_fields_compare_false() {
    let rules = yaml(ORDER).unwrap();
    let other_topic = event(
        SourceKind::Kafka,
        "payments",
        json!({"type": "order.shipped"}),
    );
    let other_source = event(SourceKind::Amqp, "orders", json!({"type": "order.shipped"}));
    let cheap = event(
        SourceKind::Kafka,
        "orders",
        json!({"type": "order.shipped", "total": 5, "recipients": [1]}),
    );
    let untyped = event(SourceKind::Kafka, "orders", json!({"hello": 1}));
    for e in [other_topic, other_source, cheap, untyped] {
        let out = rules.evaluate(&e);
        assert_eq!(out.matched, 0, "{:?}", e.payload);
        assert!(out.notifications.is_empty() && out.failures.is_empty());
    }
}

#[test]
fn a_missing_field_in_a_template_fails_that_notification_only() {
    let rules = yaml(
        r#"
rules:
  - id: strict
    emit: { channel: "c", title: "{{ event.missing }}" }
  - id: fine
    emit: { channel: "c", title: "ok" }
  - id: per-item
    for_each: event.items
    emit: { channel: "c", title: "{{ item.name }}" }
"#,
    )
    .unwrap();
    let out = rules.evaluate(&http(json!({"items": [{"name": "a"}, {}, {"name": "c"}]})));
    let titles: Vec<_> = out.notifications.iter().map(|n| n.title.as_str()).collect();
    assert_eq!(titles, ["ok", "a", "c"]);
    let failed: Vec<_> = out
        .failures
        .iter()
        .map(|f| (f.rule.as_ref(), f.field.as_str(), f.index))
        .collect();
    assert_eq!(
        failed,
        [
            ("strict", "emit.title", None),
            ("per-item", "emit.title", Some(1))
        ]
    );
    assert!(!out.all_failed());
}

#[test]
fn bad_runtime_values_are_failures_not_panics() {
    let rules = yaml(
        r#"
rules:
  - id: empty-channel
    emit: { channel: "{{ event.c }}" }
  - id: not-a-list
    for_each: event.c
    emit: { channel: "x" }
  - id: bad-priority
    emit: { channel: "x", priority: "{{ event.c }}" }
  - id: runaway
    emit: { channel: "x", title: "{% for i in range(100000) %}{% for j in range(100000) %}.{% endfor %}{% endfor %}" }
"#,
    )
    .unwrap();
    let out = rules.evaluate(&http(json!({"c": ""})));
    let failed: Vec<_> = out
        .failures
        .iter()
        .map(|f| (f.rule.as_ref(), f.field.as_str()))
        .collect();
    assert_eq!(
        failed,
        [
            ("empty-channel", "emit.channel"),
            ("not-a-list", "for_each"),
            ("bad-priority", "emit.priority"),
            ("runaway", "emit.title"),
        ]
    );
    assert!(out.all_failed());
}

#[test]
fn meta_is_visible_to_rules() {
    let rules = yaml(
        r#"
rules:
  - id: m
    when: meta.source == "kafka" and meta.partition is none
    emit: { channel: "{{ meta.topic }}", title: "{{ meta.source }}" }
"#,
    )
    .unwrap();
    let out = rules.evaluate(&event(SourceKind::Kafka, "orders", json!({})));
    assert_eq!(out.notifications[0].channel, "orders");
    assert_eq!(out.notifications[0].title, "kafka");
}

#[test]
fn diagnostics_name_rule_field_and_line() {
    let d = diagnostics(
        "rules:\n  - id: a\n    emit:\n      channel: x\n      title: \"{{ oops\"\n  - id: b\n    when: \"event.x ==\"\n    emit: { channel: y }\n",
    );
    let got: Vec<_> = d
        .iter()
        .map(|d| (d.rule.as_deref(), d.field.as_str(), d.line))
        .collect();
    assert_eq!(
        got,
        [
            (Some("a"), "emit.title", Some(5)),
            (Some("b"), "when", Some(7))
        ],
        "every problem, in line order"
    );
}

#[test]
fn schema_violations_are_located() {
    let d = diagnostics(
        "rules:\n  - id: a\n    emit:\n      channel: x\n      titel: typo\n  - id: b\n    match: { source: mqtt }\n    emit: { channel: y }\n  - emit: { channel: z }\n",
    );
    let got: Vec<_> = d
        .iter()
        .map(|d| (d.rule.clone(), d.field.clone(), d.line))
        .collect();
    assert!(
        got.contains(&(Some("a".into()), "emit.titel".into(), Some(5))),
        "{got:?}"
    );
    assert!(
        got.contains(&(Some("b".into()), "match.source".into(), Some(7))),
        "{got:?}"
    );
    assert!(
        got.contains(&(Some("#2".into()), String::new(), Some(9))),
        "{got:?}"
    );
}

#[test]
fn duplicate_ids_bad_globs_and_priorities_are_rejected() {
    let d = diagnostics(
        "rules:\n  - id: a\n    emit: { channel: x }\n  - id: a\n    match: { topic: \"[\" }\n    emit: { channel: x, priority: loud }\n",
    );
    let fields: Vec<_> = d.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(fields, ["id", "match.topic", "emit.priority"]);
    assert!(d.iter().all(|d| d.rule.as_deref() == Some("a")));
    assert_eq!(d[0].line, Some(4));
}

#[test]
fn syntax_errors_have_a_line() {
    let d = diagnostics("rules:\n  - id: a\n    emit: { channel: [x\n");
    assert!(d[0].line.is_some());
    assert!(d[0].message.starts_with("syntax error"));
}

#[test]
fn toml_rules_compile_and_locate_errors() {
    let ok = Rules::parse(
        "[[rules]]\nid = \"t\"\n[rules.emit]\nchannel = \"user:{{ event.user_id }}\"\n",
        Format::Toml,
        "rules.toml",
    )
    .unwrap();
    assert_eq!(
        ok.evaluate(&http(json!({"user_id": 3}))).notifications[0].channel,
        "user:3"
    );
    let err = Rules::parse(
        "[[rules]]\nid = \"t\"\n[rules.emit]\nchannel = \"x\"\ntitle = \"{% if %}\"\n",
        Format::Toml,
        "rules.toml",
    )
    .unwrap_err();
    assert_eq!(err.diagnostics[0].line, Some(5));
    assert_eq!(err.diagnostics[0].field, "emit.title");
    let text = err.to_string();
    assert!(
        text.starts_with("rules.toml:5: rule `t`: field `emit.title`:"),
        "{text}"
    );
}

#[test]
fn data_must_be_an_object_and_for_each_is_bounded() {
    let rules = yaml(
        r#"
rules:
  - id: list-data
    emit: { channel: c, data: "{{ event.items }}" }
  - id: object-data
    emit: { channel: c, data: "{{ event.obj }}" }
  - id: fan-out
    for_each: event.items
    emit: { channel: c }
"#,
    )
    .unwrap();
    let many: Vec<u32> = (0..1001).collect();
    let out = rules.evaluate(&http(json!({"items": many, "obj": {"a": 1}})));
    let failed: Vec<_> = out
        .failures
        .iter()
        .map(|f| (f.rule.as_ref(), f.field.as_str()))
        .collect();
    assert_eq!(
        failed,
        [("list-data", "emit.data"), ("fan-out", "for_each")]
    );
    assert_eq!(out.notifications.len(), 1);
    assert_eq!(out.notifications[0].data, json!({"a": 1}));
    let few = rules.evaluate(&http(json!({"items": [1, 2], "obj": {}})));
    assert_eq!(few.notifications.len(), 3);
    assert!(
        yaml("rules:\n  - id: x\n    emit: { channel: c, data: [1] }\n").is_err(),
        "a literal list is rejected by the schema"
    );
}

#[test]
fn templates_in_rules_with_dotted_ids_and_keys_do_not_collide() {
    let rules = yaml(
        r#"
rules:
  - id: a
    emit: { channel: c, data: { title: "{{ 'from a' ~ '' }}x", x.y: "{{ 1 }}-dot", x: { y: "{{ 2 }}-nested" } } }
  - id: a.data
    emit: { channel: c, title: "{{ 'from a.data' }}" }
"#,
    )
    .unwrap();
    let out = rules.evaluate(&http(json!({})));
    assert_eq!(
        out.notifications[0].data,
        json!({"title": "from ax", "x.y": "1-dot", "x": {"y": "2-nested"}})
    );
    assert_eq!(out.notifications[1].title, "from a.data");
}

/// Messages name the rule and field themselves: minijinja's internal
/// template names (`strict#0:title:1`, `<expression>:1`) stay out, and the
/// expression at fault is quoted.
#[test]
fn failure_messages_carry_no_internal_template_names() {
    let rules = yaml(
        r#"
rules:
  - id: strict
    emit: { channel: "c", title: "Hello {{ event.user.name }}" }
  - id: long
    emit:
      channel: c
      body: "first line\n{{ event.user.name }}"
"#,
    )
    .unwrap();
    let out = rules.evaluate(&http(json!({"user": {}})));
    let messages: Vec<_> = out.failures.iter().map(|f| f.message.as_str()).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    for m in &messages {
        assert!(!m.contains("(in "), "{m}");
        assert!(!m.contains('#'), "{m}");
        assert!(m.contains("`event.user.name`"), "{m}");
    }
    assert!(
        messages[1].contains("line 2 of the template"),
        "{messages:?}"
    );
    let d = diagnostics("rules:\n  - id: w\n    when: \"event.x +\"\n    emit: { channel: c }\n");
    assert!(!d[0].message.contains("<expression>"), "{}", d[0].message);
    assert!(d[0].message.starts_with("syntax error"), "{}", d[0].message);
}

#[test]
fn an_empty_file_is_called_empty() {
    for text in ["", "# only a comment\n"] {
        let d = diagnostics(text);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].message.contains("the file is empty"), "{d:?}");
    }
    let err = Rules::parse("", Format::Toml, "rules.toml").unwrap_err();
    assert!(err.to_string().contains("the file is empty"), "{err}");
}

#[test]
fn content_ids_follow_the_bytes() {
    let a = super::content_id("rules: []\n");
    assert_eq!(a.len(), 12);
    assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(a, super::content_id("rules: []\n"));
    assert_ne!(a, super::content_id("rules: [] \n"));
    let rules = Rules::parse(DEFAULT_RULES, Format::Yaml, "x").unwrap();
    assert_eq!(rules.content_id(), super::content_id(DEFAULT_RULES));
}
