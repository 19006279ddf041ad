//! What a delivery becomes: the `meta` rules see, its position (the dedupe
//! root) and locator (what provenance shows), and the dead-letter copy of a
//! poison one.

use std::collections::BTreeMap;

use lapin::message::Delivery;
use lapin::types::{AMQPValue, LongString};
use serde_json::Value;

use crate::event::{Meta, SourceKind};
use crate::pipeline::Rejection;

/// The reason detail put in a dead-letter header is cut to this many bytes.
const MAX_DETAIL_BYTES: usize = 1024;

/// What rules see under `meta`, the event's position (dedupe root) and its
/// locator, `amqp:<queue>/<message id>`, or `amqp:<queue>/xxh3:<hash>`
/// (the position's hash) for a message without an id.
pub(super) fn meta_of(delivery: &Delivery, queue: &str) -> Meta {
    let props = &delivery.properties;
    let exchange = delivery.exchange.as_str();
    let routing_key = delivery.routing_key.as_str();
    let message_id = props
        .message_id()
        .as_ref()
        .map(|id| id.as_str())
        .filter(|id| !id.is_empty());
    let (position, locator) = identity(queue, exchange, routing_key, message_id, &delivery.data);
    let mut meta = Meta::new(SourceKind::Amqp, routing_key, position).with_locator(locator);
    meta.exchange = Some(exchange.to_string());
    meta.message_id = message_id.map(str::to_string);
    meta.redelivered = Some(delivery.redelivered);
    meta.timestamp = props
        .timestamp()
        .map(|secs| crate::clock::rfc3339_ms(secs.saturating_mul(1000)));
    if let Some(headers) = props.headers() {
        meta.headers = headers
            .inner()
            .iter()
            .map(|(k, v)| (k.to_string(), header_text(v)))
            .collect();
    }
    meta
}

/// The event's (position, locator). The position is
/// `amqp:<exchange>:id:<message_id>`, or, without a message id,
/// `amqp:<exchange>:<routing key>:xxh3:<hash>` where the 128-bit XXH3 hash
/// covers exchange, routing key and body (length-prefixed, so no two
/// different triples feed it the same bytes). XXH3 is specified and stable
/// across versions and platforms. The locator names the queue and the same
/// id or hash.
fn identity(
    queue: &str,
    exchange: &str,
    routing_key: &str,
    message_id: Option<&str>,
    body: &[u8],
) -> (String, String) {
    if let Some(id) = message_id {
        return (
            format!("amqp:{exchange}:id:{id}"),
            format!("amqp:{queue}/{id}"),
        );
    }
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for part in [exchange.as_bytes(), routing_key.as_bytes(), body] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let hash = hasher.digest128();
    (
        format!("amqp:{exchange}:{routing_key}:xxh3:{hash:032x}"),
        format!("amqp:{queue}/xxh3:{hash:032x}"),
    )
}

/// A header value as rules see it: strings as they are, numbers and
/// booleans as text, tables and arrays as JSON.
fn header_text(value: &AMQPValue) -> String {
    match header_json(value) {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn header_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::from(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Timestamp(n) => Value::from(*n),
        AMQPValue::Float(f) => Value::from(*f),
        AMQPValue::Double(f) => Value::from(*f),
        AMQPValue::DecimalValue(d) => {
            Value::from(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => Value::from(s.as_str()),
        AMQPValue::LongString(s) => Value::from(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ByteArray(b) => Value::from(String::from_utf8_lossy(b.as_slice())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(header_json).collect()),
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.to_string(), header_json(v)))
                .collect(),
        ),
        AMQPValue::Void => Value::Null,
    }
}

/// The properties of a dead-letter copy: the original's, persistent, with
/// herald's reason and the message's origin added to the headers.
pub(super) fn dead_letter_copy(
    delivery: &Delivery,
    queue: &str,
    rejection: Rejection,
    detail: &str,
) -> lapin::BasicProperties {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    let mut cut = detail.len().min(MAX_DETAIL_BYTES);
    while !detail.is_char_boundary(cut) {
        cut -= 1;
    }
    let added: BTreeMap<&str, &str> = BTreeMap::from([
        ("x-herald-reason", rejection.as_str()),
        ("x-herald-detail", &detail[..cut]),
        ("x-herald-queue", queue),
        ("x-herald-exchange", delivery.exchange.as_str()),
        ("x-herald-routing-key", delivery.routing_key.as_str()),
    ]);
    for (key, value) in added {
        headers.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    }
    delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldTable;

    fn position(exchange: &str, routing_key: &str, id: Option<&str>, body: &[u8]) -> String {
        identity("q", exchange, routing_key, id, body).0
    }

    #[test]
    fn the_locator_names_the_queue_and_the_same_id_or_hash() {
        let (_, with_id) = identity("herald", "ex", "a.b", Some("m-1"), b"{}");
        assert_eq!(with_id, "amqp:herald/m-1");
        let (p, without) = identity("herald", "", "k", None, b"{}");
        assert_eq!(without, format!("amqp:herald/xxh3:{}", p_known()));
        assert!(p.ends_with(&p_known()));
    }

    #[test]
    fn position_prefers_message_id_and_hashes_stably() {
        assert_eq!(position("ex", "a.b", Some("m-1"), b"{}"), "amqp:ex:id:m-1");
        let p = position("ex", "a.b", None, br#"{"n":1}"#);
        assert_eq!(p, position("ex", "a.b", None, br#"{"n":1}"#));
        assert_ne!(p, position("ex", "a.b", None, br#"{"n":2}"#));
        assert_ne!(p, position("ex", "a.c", None, br#"{"n":1}"#));
        // Length prefixes: moving bytes between fields changes the hash.
        assert_ne!(
            position("ab", "c", None, b"x").rsplit(':').next(),
            position("a", "bc", None, b"x").rsplit(':').next()
        );
        // The hash is part of stored dedupe keys: it must never change.
        assert_eq!(
            position("", "k", None, b"{}"),
            format!("amqp::k:xxh3:{}", p_known())
        );
    }

    fn p_known() -> String {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for part in [&b""[..], b"k", b"{}"] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        format!("{:032x}", h.digest128())
    }

    #[test]
    fn headers_become_text() {
        let mut table = FieldTable::default();
        table.insert("n".into(), AMQPValue::LongInt(3));
        assert_eq!(header_text(&AMQPValue::LongString("é".into())), "é");
        assert_eq!(header_text(&AMQPValue::Boolean(true)), "true");
        assert_eq!(header_text(&AMQPValue::LongLongInt(-7)), "-7");
        assert_eq!(header_text(&AMQPValue::Void), "");
        assert_eq!(
            header_text(&AMQPValue::FieldTable(table.clone())),
            r#"{"n":3}"#
        );
        assert_eq!(
            header_text(&AMQPValue::FieldArray(
                vec![
                    AMQPValue::FieldTable(table),
                    AMQPValue::ShortString("s".into())
                ]
                .into()
            )),
            r#"[{"n":3},"s"]"#
        );
    }

    #[test]
    fn dead_letter_copy_carries_the_reason() {
        let delivery = Delivery::mock(4, "ex".into(), "a.b".into(), false, b"x".to_vec());
        let detail = "é".repeat(MAX_DETAIL_BYTES);
        let props = dead_letter_copy(&delivery, "q", Rejection::InvalidJson, &detail);
        let headers = props.headers().clone().unwrap();
        let text = |k: &str| header_text(&headers.inner()[k]);
        assert_eq!(text("x-herald-reason"), "invalid_json");
        assert_eq!(text("x-herald-queue"), "q");
        assert_eq!(text("x-herald-routing-key"), "a.b");
        assert!(text("x-herald-detail").len() <= MAX_DETAIL_BYTES);
        assert_eq!(props.delivery_mode(), &Some(2));
    }
}
