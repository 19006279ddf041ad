//! Server-Sent Events on `GET /notifications` against a real herald over
//! real HTTP: framing and headers, ids that resume every channel with
//! `Last-Event-ID`, heartbeat comments, refusals, token expiry, slow
//! clients and shutdown.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::auth::{hs256, jwt, now, token_for};
use common::{Herald, unique};
use serde_json::{Value, json};

fn event(channel: &str, n: usize) -> Value {
    json!({ "type": "test.event", "channel": channel, "title": format!("n{n}"), "body": "b" })
}

/// One block of an event stream.
#[derive(Debug, Default, Clone)]
struct Event {
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
    retry: Option<String>,
    comment: Option<String>,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().unwrap()).unwrap()
    }
}

fn parse_block(block: &str) -> Event {
    let mut e = Event::default();
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_string();
        match field {
            "" => e.comment = Some(value),
            "event" => e.event = Some(value),
            "data" => e.data = Some(value),
            "id" => e.id = Some(value),
            "retry" => e.retry = Some(value),
            other => panic!("unexpected field {other:?} in {block:?}"),
        }
    }
    e
}

/// An event-stream reader.
struct Sse {
    res: reqwest::Response,
    buf: String,
}

impl Sse {
    async fn open(h: &Herald, query: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = reqwest::Client::new()
            .get(format!("{}/notifications?{query}", h.base))
            .header("accept", "text/event-stream");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    async fn connect(h: &Herald, query: &str, headers: &[(&str, &str)]) -> Self {
        let res = Self::open(h, query, headers).await;
        assert_eq!(res.status(), 200, "{query}");
        Self {
            res,
            buf: String::new(),
        }
    }

    /// The next block, or None when the stream ended.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block = self.buf[..end].to_string();
                self.buf.drain(..end + 2);
                return Some(parse_block(&block));
            }
            let chunk = tokio::time::timeout(common::FRAME_TIMEOUT, self.res.chunk())
                .await
                .expect("stream bytes within the timeout")
                .expect("a clean stream");
            self.buf.push_str(std::str::from_utf8(&chunk?).unwrap());
        }
    }

    /// The next block with data (a frame or a close).
    async fn frame(&mut self) -> Event {
        loop {
            let e = self.next().await.expect("an event before the end");
            if e.data.is_some() {
                return e;
            }
        }
    }

    async fn of_type(&mut self, ty: &str) -> Event {
        loop {
            let e = self.frame().await;
            if e.json()["type"] == ty {
                return e;
            }
        }
    }

    /// The `event: close` block's data (checked against its schema).
    async fn close(&mut self) -> Value {
        loop {
            let e = self.frame().await;
            if e.event.as_deref() == Some("close") {
                assert!(self.next().await.is_none(), "the stream ends after close");
                let data = e.json();
                assert_close_schema(&data);
                return data;
            }
        }
    }
}

#[tokio::test]
async fn each_event_is_the_websocket_frame_with_an_id_and_stream_headers() {
    let h = Herald::start_with(|c| c.delivery.sse_heartbeat_ms = 200).await;
    let channel = unique("user");
    let (mut ws, _) = h.subscribe(&format!("channel={channel}")).await;
    let res = Sse::open(&h, &format!("channel={channel}"), &[]).await;
    let header = |name: &str| res.headers()[name].to_str().unwrap().to_string();
    assert_eq!(header("content-type"), "text/event-stream");
    assert_eq!(header("cache-control"), "no-cache");
    assert_eq!(header("x-accel-buffering"), "no");
    let mut sse = Sse {
        res,
        buf: String::new(),
    };
    assert_eq!(sse.next().await.unwrap().retry.as_deref(), Some("3000"));
    let subscribed = sse.frame().await;
    assert_eq!(subscribed.event, None, "default event type: message");
    let position = subscribed.json()["position"].as_str().unwrap().to_string();
    assert_eq!(subscribed.id.as_deref(), Some(position.as_str()));
    h.publish("t", &event(&channel, 1)).await;
    let n = sse.of_type("notification").await;
    let common::Next::Frame(on_ws) = ws.next().await else {
        panic!("a frame");
    };
    assert_eq!(n.json(), on_ws, "the same frame on both transports");
    assert_eq!(
        n.id.as_deref(),
        on_ws["id"].as_str(),
        "one channel: a plain id"
    );
    // Quiet: heartbeat comments.
    loop {
        let e = sse.next().await.unwrap();
        if e.comment.is_some() {
            assert_eq!(e.comment.as_deref(), Some("heartbeat"));
            break;
        }
    }
    // Without Accept: text/event-stream it is still the WebSocket endpoint.
    assert_eq!(h.get("/notifications").await.0, 426);
    h.stop().await;
}

#[tokio::test]
async fn last_event_id_resumes_every_channel_without_gap_or_duplicate() {
    let h = Herald::start().await;
    let (a, b, c) = (unique("a"), unique("b"), unique("c"));
    let query = format!("channel={a}&channel={b}");
    let mut sse = Sse::connect(&h, &query, &[]).await;
    for (ch, n) in [(&a, 1), (&b, 1), (&a, 2)] {
        h.publish("t", &event(ch, n)).await;
    }
    let mut last_id = String::new();
    let mut got = Vec::new();
    while got.len() < 3 {
        let e = sse.frame().await;
        if e.json()["type"] == "notification" {
            got.push((e.json()["channel"].clone(), e.json()["offset"].clone()));
            last_id = e.id.unwrap();
        }
    }
    assert!(
        last_id.starts_with("c1."),
        "several channels: a cursor, {last_id}"
    );
    drop(sse);
    // Missed while away.
    for (ch, n) in [(&b, 2), (&a, 3), (&c, 1)] {
        h.publish("t", &event(ch, n)).await;
    }
    let mut sse = Sse::connect(&h, &query, &[("last-event-id", &last_id)]).await;
    let mut resumed = Vec::new();
    for _ in 0..4 {
        let f = sse.frame().await.json();
        resumed.push((
            f["type"].clone(),
            f["channel"].clone(),
            f["offset"].clone(),
            f["recovered"].clone(),
        ));
    }
    assert_eq!(
        resumed,
        [
            (json!("notification"), json!(a), json!(3), Value::Null),
            (json!("subscribed"), json!(a), Value::Null, json!(true)),
            (json!("notification"), json!(b), json!(2), Value::Null),
            (json!("subscribed"), json!(b), Value::Null, json!(true)),
        ]
    );
    drop(sse);
    // `last_id` wins over the header; a channel the cursor does not name
    // starts from its rewind.
    let query = format!("channel={a}&channel={c}&rewind=1&last_id={last_id}");
    let mut sse = Sse::connect(&h, &query, &[("last-event-id", "junk")]).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let f = sse.frame().await.json();
        seen.push((f["type"].clone(), f["channel"].clone(), f["offset"].clone()));
    }
    assert_eq!(
        seen,
        [
            (json!("notification"), json!(a), json!(3)),
            (json!("subscribed"), json!(a), Value::Null),
            (json!("notification"), json!(c), json!(1)),
            (json!("subscribed"), json!(c), Value::Null),
        ]
    );
    h.stop().await;
}

async fn refused(h: &Herald, query: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let res = Sse::open(h, query, headers).await;
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test]
async fn refused_streams_answer_a_status_and_the_close_code() {
    let h = Herald::start_with(jwt).await;
    let ann = token_for("ann", 300, json!({}));
    let bearer = format!("Bearer {ann}");
    for (query, status, code) in [
        ("channel=user:ann&rewind=x", 400, 4000),
        ("channel=user:ann&last_id=c1.%25%25", 400, 4000),
        ("channel=user:bob", 403, 4003),
    ] {
        let (got, body) = refused(&h, query, &[("authorization", &bearer)]).await;
        assert_eq!(
            (got, body["code"].clone()),
            (status, json!(code)),
            "{query}: {body}"
        );
        assert!(body["error"].is_string());
    }
    let (status, body) = refused(&h, "channel=user:ann", &[]).await;
    assert_eq!((status, body["code"].clone()), (401, json!(4001)), "{body}");
    let expired = hs256(&json!({ "sub": "ann", "exp": now() - 3600 }));
    let (status, body) = refused(&h, &format!("channel=user:ann&token={expired}"), &[]).await;
    assert_eq!((status, body["code"].clone()), (401, json!(4010)), "{body}");
    // The header and the query parameter both work.
    Sse::connect(&h, "channel=user:ann", &[("authorization", &bearer)]).await;
    Sse::connect(&h, &format!("token={ann}"), &[]).await;
    // No channel: a stream of heartbeats (a client reopens it with channels).
    let mut idle = Sse::connect(&h, "defaults=false", &[("authorization", &bearer)]).await;
    assert_eq!(idle.next().await.unwrap().retry.as_deref(), Some("3000"));
    h.stop().await;
}

#[tokio::test]
async fn an_expiring_token_ends_the_stream_with_4010() {
    let h = Herald::start_with(|c| {
        jwt(c);
        c.auth.leeway_secs = 0;
    })
    .await;
    let token = token_for("ann", 2, json!({}));
    let mut sse = Sse::connect(&h, &format!("channel=user:ann&token={token}"), &[]).await;
    let close = sse.close().await;
    assert_eq!(close["code"], 4010, "{close}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_with_1001() {
    let h = Herald::start().await;
    let channel = unique("c");
    let mut sse = Sse::connect(&h, &format!("channel={channel}"), &[]).await;
    sse.of_type("subscribed").await;
    let stop = tokio::spawn(h.stop());
    assert_eq!(sse.close().await["code"], 1001);
    stop.await.unwrap();
}

/// A stream whose reader stops: its queue overflows and herald ends it
/// (4008, when the close event still fits), having written a contiguous
/// prefix; nothing is lost for a client that resumes from its last id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_is_not_read_is_ended_as_too_slow() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const EVENTS: usize = 400;
    let h = Herald::start_with(|c| {
        c.delivery.queue_capacity = 32;
        c.sources = vec![herald::source::SourceConfig::Http(
            herald::source::http::HttpSourceConfig {
                max_body_bytes: 8 * 1024 * 1024,
                ..Default::default()
            },
        )];
    })
    .await;
    let channel = unique("busy");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(h.local_addr()).await.unwrap();
    let request = format!(
        "GET /notifications?channel={channel} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        h.local_addr()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let pad = "p".repeat(10_000);
    for chunk in 0..EVENTS / 20 {
        let events: Vec<Value> = (0..20)
            .map(|i| json!({"channel": channel, "title": format!("{}", chunk * 20 + i), "body": pad}))
            .collect();
        h.publish("t", &Value::Array(events)).await;
    }
    let too_slow = r#"herald_sessions_closed_total{reason="too_slow"}"#;
    assert_eq!(h.wait_metric(too_slow, 1.0).await, 1.0);
    let mut bytes = Vec::new();
    tokio::time::timeout(common::WAIT, stream.read_to_end(&mut bytes))
        .await
        .expect("herald ends the stream")
        .expect("a clean end");
    let text = String::from_utf8_lossy(&bytes);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut last = 0;
    let mut last_id = None;
    for block in dechunk(body).split("\n\n").filter(|b| !b.is_empty()) {
        let e = parse_block(block);
        let Some(_) = &e.data else { continue };
        let f = e.json();
        if f["type"] == "notification" {
            let offset = f["offset"].as_u64().unwrap();
            assert_eq!(offset, last + 1, "contiguous offsets");
            last = offset;
            last_id = e.id;
        } else if e.event.as_deref() == Some("close") {
            assert_eq!(f["code"], 4008);
        }
    }
    assert!(last < EVENTS as u64, "cut off before the end");
    // Resuming from the last id gets the rest, from the next offset.
    let last_id = last_id.unwrap_or_default();
    let mut sse = Sse::connect(
        &h,
        &format!("channel={channel}"),
        &[("last-event-id", &last_id)],
    )
    .await;
    let next = sse.frame().await.json();
    assert_eq!(next["offset"], last + 1, "{next}");
    h.stop().await;
}

/// The body of a chunked HTTP/1.1 response, as far as it got.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            out.push_str(&rest[..size.min(rest.len())]);
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

#[tokio::test]
async fn sse_sessions_count_as_sessions() {
    let h = Herald::start().await;
    let mut sse = Sse::connect(&h, &format!("channel={}", unique("c")), &[]).await;
    sse.of_type("subscribed").await;
    assert_eq!(h.metric("herald_sessions").await, 1.0);
    drop(sse);
    let gone = tokio::time::Instant::now() + common::WAIT;
    while h.metric("herald_sessions").await != 0.0 {
        assert!(
            tokio::time::Instant::now() < gone,
            "the session ends with its client"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.stop().await;
}

/// `data` matches `schemas/sse-close.schema.json`.
fn assert_close_schema(data: &Value) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/sse-close.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    let errors: Vec<String> = validator.iter_errors(data).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "close data {data} does not match: {errors:?}"
    );
}
