//! Criterion: rule evaluation (Event → notifications), the pure step every
//! event goes through. `cargo bench --bench rules`
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use herald::event::{Event, Meta, SourceKind};
use herald::rules::preview::Sample;
use herald::rules::{Format, Rules};
use serde_json::json;

fn event(source: SourceKind, topic: &str, payload: serde_json::Value) -> Event {
    Event {
        payload,
        meta: Meta::new(source, topic, format!("{topic}:0:42")),
    }
}

fn rules(c: &mut Criterion) {
    let builtin = Rules::builtin();
    let bench_event = event(
        SourceKind::Http,
        "bench",
        json!({"type": "bench", "channel": "fanout-1", "title": "bench",
               "data": {"seq": 1, "ts": 1_700_000_000_000_000u64, "pad": "x".repeat(60)}}),
    );
    c.bench_function("rules/builtin: channel event", |b| {
        b.iter(|| black_box(builtin.evaluate(black_box(&bench_event))))
    });
    let user_event = event(
        SourceKind::Http,
        "orders",
        json!({"type": "order.shipped", "user_id": 42, "title": "Shipped", "body": "Friday"}),
    );
    c.bench_function("rules/builtin: user_id event", |b| {
        b.iter(|| black_box(builtin.evaluate(black_box(&user_event))))
    });

    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/rules.yaml"))
        .unwrap();
    let examples = Rules::parse(&text, Format::Yaml, "examples/rules.yaml").unwrap();
    let order: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/events/order-shipped.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let order_event = event(SourceKind::Kafka, "orders", order);
    c.bench_function("rules/examples: order-shipped, 2 recipients", |b| {
        b.iter(|| black_box(examples.evaluate(black_box(&order_event))))
    });
    let unmatched = event(SourceKind::Kafka, "nobody-listens", json!({"type": "x"}));
    c.bench_function("rules/examples: event no rule matches", |b| {
        b.iter(|| black_box(examples.evaluate(black_box(&unmatched))))
    });
}

/// Preview throughput: 1000 recorded events (orders, half of them
/// shipped ones the example rules notify about) evaluated by the example
/// rules and by an edit of them (a retitled notification), compared.
/// Events per second = 1000 / the time per iteration.
fn preview(c: &mut Criterion) {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/rules.yaml"))
        .unwrap();
    let old = Rules::parse(&text, Format::Yaml, "old").unwrap();
    let edited = text.replace("has shipped\"", "is on its way\"");
    assert_ne!(edited, text, "the edit changes a title");
    let new = Rules::parse(&edited, Format::Yaml, "new").unwrap();
    let order: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/events/order-shipped.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let samples: Vec<Sample> = (0..1000u64)
        .map(|i| {
            let payload = if i % 2 == 0 {
                order.clone()
            } else {
                json!({"type": "order.created", "user_id": i, "order_id": i})
            };
            Sample {
                id: i,
                event: event(SourceKind::Kafka, "orders", payload),
            }
        })
        .collect();
    c.bench_function("rules/preview: 1000 recorded events, both versions", |b| {
        b.iter(|| {
            black_box(herald::rules::preview::preview(
                &old,
                &new,
                black_box(&samples),
            ))
        })
    });
}

criterion_group!(benches, rules, preview);
criterion_main!(benches);
