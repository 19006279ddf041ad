//! The WebSocket gateway against a real server on 127.0.0.1:0 with real
//! WebSocket clients: subscriptions, replay after disconnect, honest gaps,
//! the replay→live seam under concurrent appends, slow clients, bad frames.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Herald, Next, offsets, unique};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn event(channel: &str, n: usize) -> Value {
    json!({ "type": "test.event", "channel": channel, "title": format!("n{n}"), "body": "b", "data": { "n": n } })
}

async fn publish_n(h: &Herald, channel: &str, from: usize, to: usize) {
    for n in from..to {
        h.publish("t", &event(channel, n)).await;
    }
}

#[tokio::test]
async fn default_session_receives_broadcasts_as_full_notification_frames() {
    let h = Herald::start().await;
    let (mut client, subscribed) = h.subscribe("").await;
    assert_eq!(subscribed["channel"], "broadcast");
    assert_eq!(subscribed["replayed"], 0);
    assert_eq!(subscribed["recovered"], true);
    let answer = h
        .publish(
            "demo",
            &json!({"type": "greeting", "title": "Hello", "body": "world", "priority": "high"}),
        )
        .await;
    assert_eq!(answer["notifications"], 1);
    let n = client.next_of_type("notification").await;
    assert_eq!(n["channel"], "broadcast");
    assert_eq!(n["title"], "Hello");
    assert_eq!(n["body"], "world");
    assert_eq!(n["event"], "greeting");
    assert_eq!(n["priority"], "high");
    assert_eq!(n["offset"], 1);
    assert_eq!(n["data"], json!({}));
    let epoch = n["epoch"].as_str().unwrap();
    assert_eq!(n["id"], format!("{epoch}-1"));
    assert!(n["time"].as_str().unwrap().ends_with('Z'));
    // The position in `subscribed` was the channel head before the event.
    assert_eq!(subscribed["position"], format!("{epoch}-0"));
    h.stop().await;
}

#[tokio::test]
async fn reconnect_with_last_id_replays_exactly_what_was_missed_then_goes_live() {
    let h = Herald::start().await;
    let channel = unique("user");
    let (mut client, _) = h.subscribe(&format!("channel={channel}")).await;
    publish_n(&h, &channel, 0, 3).await;
    let seen = client.notifications(3).await;
    let last_id = seen[2]["id"].as_str().unwrap().to_string();
    drop(client);

    publish_n(&h, &channel, 3, 7).await;
    let mut client = h
        .connect(&format!("channel={channel}&last_id={last_id}"))
        .await;
    let replayed = client.notifications(4).await;
    assert_eq!(offsets(&replayed), [4, 5, 6, 7]);
    let titles: Vec<_> = replayed.iter().map(|f| f["title"].clone()).collect();
    assert_eq!(titles, [json!("n3"), json!("n4"), json!("n5"), json!("n6")]);
    let subscribed = client.next_of_type("subscribed").await;
    assert_eq!(subscribed["replayed"], 4);
    assert_eq!(subscribed["recovered"], true);
    assert_eq!(subscribed["position"], replayed[3]["id"]);

    publish_n(&h, &channel, 7, 8).await;
    let live = client.next_of_type("notification").await;
    assert_eq!(live["offset"], 8);
    h.stop().await;
}

#[tokio::test]
async fn a_last_id_from_another_epoch_is_not_recovered() {
    let h = Herald::start().await;
    let channel = unique("user");
    publish_n(&h, &channel, 0, 2).await;
    let mut client = h
        .connect(&format!("channel={channel}&last_id=0123456789abcdef-1"))
        .await;
    let subscribed = client.next_of_type("subscribed").await;
    assert_eq!(subscribed["recovered"], false);
    assert_eq!(subscribed["replayed"], 0);
    let position = subscribed["position"].as_str().unwrap();
    assert!(position.ends_with("-2"), "live from the head: {position}");
    assert!(!position.starts_with("0123456789abcdef"));
    publish_n(&h, &channel, 2, 3).await;
    assert_eq!(client.next_of_type("notification").await["offset"], 3);
    h.stop().await;
}

#[tokio::test]
async fn a_last_id_older_than_the_retained_history_is_not_recovered() {
    let h = Herald::start_with(|c| c.store.max_per_channel = 3).await;
    let channel = unique("user");
    let (mut watcher, _) = h.subscribe(&format!("channel={channel}")).await;
    publish_n(&h, &channel, 0, 6).await; // offsets 1..=6, 4..=6 retained
    let all = watcher.notifications(6).await;
    let epoch = all[0]["epoch"].as_str().unwrap();

    // After offset 2, offset 3 is needed but trimmed: a gap, said out loud.
    let mut gap = h
        .connect(&format!("channel={channel}&last_id={epoch}-2"))
        .await;
    let subscribed = gap.next_of_type("subscribed").await;
    assert_eq!(subscribed["recovered"], false);
    assert_eq!(subscribed["replayed"], 0);
    assert_eq!(subscribed["position"], format!("{epoch}-6"));

    // After offset 3 the history still reaches back far enough.
    let mut ok = h
        .connect(&format!("channel={channel}&last_id={epoch}-3"))
        .await;
    assert_eq!(offsets(&ok.notifications(3).await), [4, 5, 6]);
    let subscribed = ok.next_of_type("subscribed").await;
    assert_eq!(subscribed["recovered"], true);
    assert_eq!(subscribed["replayed"], 3);
    h.stop().await;
}

#[tokio::test]
async fn a_last_id_ahead_of_the_head_is_not_recovered() {
    let h = Herald::start().await;
    let channel = unique("c");
    let (mut c, sub) = h.subscribe(&format!("channel={channel}")).await;
    let epoch = sub["position"]
        .as_str()
        .unwrap()
        .split('-')
        .next()
        .unwrap()
        .to_string();
    drop(c);
    c = h
        .connect(&format!("channel={channel}&last_id={epoch}-99"))
        .await;
    let subscribed = c.next_of_type("subscribed").await;
    assert_eq!(subscribed["recovered"], false);
    assert_eq!(subscribed["position"], format!("{epoch}-0"));
    h.stop().await;
}

/// The seam under load: two producers append to one channel while a client
/// keeps dropping and resuming with its last id. In the end it has every
/// notification exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_seam_has_no_gap_and_no_duplicate_under_concurrent_appends() {
    const PER_PRODUCER: usize = 600;
    const BATCH: usize = 5;
    let h = std::sync::Arc::new(Herald::start().await);
    let channel = unique("seam");
    // The first session is live before anything is appended.
    let (first, subscribed) = h.subscribe(&format!("channel={channel}")).await;
    assert!(subscribed["position"].as_str().unwrap().ends_with("-0"));
    let mut first = Some(first);
    let mut producers = Vec::new();
    for p in 0..2 {
        let h = h.clone();
        let channel = channel.clone();
        producers.push(tokio::spawn(async move {
            for batch in 0..PER_PRODUCER / BATCH {
                let events: Vec<Value> = (0..BATCH)
                    .map(|i| event(&channel, p * 1_000_000 + batch * BATCH + i))
                    .collect();
                h.publish("t", &Value::Array(events)).await;
            }
        }));
    }
    let total = 2 * PER_PRODUCER as u64;
    let mut received: Vec<u64> = Vec::new();
    let mut last_id: Option<String> = None;
    let mut reconnects = 0;
    let mut titles = HashSet::new();
    while (received.len() as u64) < total {
        let query = match &last_id {
            Some(id) => format!("channel={channel}&last_id={id}"),
            None => format!("channel={channel}"),
        };
        let mut client = match first.take() {
            Some(c) => c,
            None => h.connect(&query).await,
        };
        reconnects += 1;
        // Read a random number of frames, then drop the connection mid-stream.
        let budget = fastrand::usize(1..120);
        let mut read = 0;
        while read < budget && (received.len() as u64) < total {
            let frame = client.frame().await;
            match frame["type"].as_str() {
                Some("notification") => {
                    let offset = frame["offset"].as_u64().unwrap();
                    let expected = received.last().map_or(1, |l| l + 1);
                    assert_eq!(offset, expected, "gap or duplicate at the seam");
                    assert!(titles.insert(frame["title"].as_str().unwrap().to_string()));
                    received.push(offset);
                    last_id = Some(frame["id"].as_str().unwrap().to_string());
                }
                Some("subscribed") => {
                    assert_eq!(frame["recovered"], true, "{frame}");
                    assert_eq!(
                        frame["position"].as_str(),
                        last_id.as_deref(),
                        "replay ends at the head it read"
                    );
                }
                other => panic!("unexpected frame {other:?}: {frame}"),
            }
            read += 1;
        }
    }
    for p in producers {
        p.await.unwrap();
    }
    assert_eq!(received, (1..=total).collect::<Vec<_>>());
    assert!(
        reconnects > 5,
        "the test exercised the seam ({reconnects} connections)"
    );
    std::sync::Arc::try_unwrap(h).ok().unwrap().stop().await;
}

#[tokio::test]
async fn subscribe_and_unsubscribe_frames_change_what_arrives() {
    let h = Herald::start().await;
    let a = unique("a");
    let b = unique("b");
    let (mut client, _) = h.subscribe(&format!("channel={a}")).await;
    client
        .send_json(&json!({"type": "subscribe", "channel": b}))
        .await;
    let sub = client.next_of_type("subscribed").await;
    assert_eq!(sub["channel"], b.as_str());
    publish_n(&h, &b, 0, 1).await;
    assert_eq!(
        client.next_of_type("notification").await["channel"],
        b.as_str()
    );
    client
        .send_json(&json!({"type": "unsubscribe", "channel": b}))
        .await;
    client.send_json(&json!({"type": "ping"})).await;
    client.next_of_type("pong").await; // the unsubscribe was handled
    publish_n(&h, &b, 1, 2).await;
    publish_n(&h, &a, 0, 1).await;
    let next = client.next_of_type("notification").await;
    assert_eq!(next["channel"], a.as_str(), "nothing more from {b}");
    h.stop().await;
}

#[tokio::test]
async fn malformed_frames_get_error_frames_and_the_session_stays_open() {
    let h = Herald::start_with(|c| c.delivery.max_subscriptions = 2).await;
    let (mut client, _) = h.subscribe("").await;
    let cases: Vec<(Message, &str)> = vec![
        (Message::Text("not json".into()), "bad_frame"),
        (Message::Text("[1,2]".into()), "bad_frame"),
        (Message::Text(r#"{"type":"dance"}"#.into()), "bad_frame"),
        (Message::Text(r#"{"type":"subscribe"}"#.into()), "bad_frame"),
        (Message::Binary(vec![1, 2, 3].into()), "bad_frame"),
        (
            Message::Text(r#"{"type":"subscribe","channel":"has space"}"#.into()),
            "bad_channel",
        ),
        (
            Message::Text(r#"{"type":"unsubscribe","channel":"never"}"#.into()),
            "not_subscribed",
        ),
    ];
    for (msg, code) in cases {
        client.ws.send(msg.clone()).await.unwrap();
        let err = client.next_of_type("error").await;
        assert_eq!(err["code"], code, "for {msg:?}: {err}");
        assert!(!err["message"].as_str().unwrap().is_empty());
    }
    // A malformed last_id: an error, then a live subscription that says it
    // recovered nothing.
    client
        .send_json(&json!({"type": "subscribe", "channel": "x1", "last_id": "garbage"}))
        .await;
    assert_eq!(client.next_of_type("error").await["code"], "bad_last_id");
    let sub = client.next_of_type("subscribed").await;
    assert_eq!(sub["recovered"], false);
    // broadcast + x1 = 2 = the limit.
    client
        .send_json(&json!({"type": "subscribe", "channel": "x2"}))
        .await;
    assert_eq!(
        client.next_of_type("error").await["code"],
        "too_many_subscriptions"
    );
    client.send_json(&json!({"type": "ping"})).await;
    client.next_of_type("pong").await;
    h.publish("t", &json!({"title": "still here"})).await;
    assert_eq!(
        client.next_of_type("notification").await["title"],
        "still here"
    );
    let (_, metrics) = h.get("/metrics").await;
    assert!(
        metrics.contains(r#"herald_client_errors_total{code="bad_frame"} 5"#),
        "{metrics}"
    );
    h.stop().await;
}

#[tokio::test]
async fn an_oversized_client_message_closes_with_1009() {
    let h = Herald::start_with(|c| c.delivery.max_message_bytes = 1024).await;
    let (mut client, _) = h.subscribe("").await;
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(4096));
    let _ = client.ws.send(Message::Text(big.into())).await;
    assert_eq!(client.close_code().await, Some(1009));
    // Others are unaffected.
    let (mut other, _) = h.subscribe("").await;
    other.send_json(&json!({"type": "ping"})).await;
    other.next_of_type("pong").await;
    h.stop().await;
}

#[tokio::test]
async fn query_with_many_channels_and_bad_channel_names() {
    let h = Herald::start().await;
    let mut client = h
        .connect("channel=ok-1&channel=bad%20name&channel=ok-2")
        .await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let f = client.frame().await;
        seen.push((
            f["type"].as_str().unwrap().to_string(),
            f["channel"].as_str().unwrap().to_string(),
        ));
    }
    assert_eq!(
        seen,
        [
            ("subscribed".to_string(), "ok-1".to_string()),
            ("error".to_string(), "bad name".to_string()),
            ("subscribed".to_string(), "ok-2".to_string()),
        ]
    );
    h.stop().await;
}

/// A client that stops reading: its socket's receive buffer is small (so
/// herald's writes back up quickly), and after the handshake request it
/// sends nothing and reads nothing until [`Unread::drain`]. Not even a pong
/// while draining: data arriving at the socket herald has closed would
/// make its kernel answer with a reset, which discards what the client has
/// not read yet (a WebSocket library answers the pings it reads).
struct Unread {
    stream: tokio::net::TcpStream,
}

async fn unread_client(h: &Herald, query: &str) -> Unread {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(h.local_addr()).await.unwrap();
    let request = format!(
        "GET /notifications?{query} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        h.local_addr()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    Unread { stream }
}

/// Bytes read from memory, writes dropped: tungstenite parses what an
/// [`Unread`] client received, and its pongs go nowhere.
struct Received(std::io::Cursor<Vec<u8>>);

impl std::io::Read for Received {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl std::io::Write for Received {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Unread {
    /// Read everything herald sent until it closed the connection: the
    /// notifications must have contiguous offsets (from wherever the
    /// subscription started: the client does not wait for `subscribed`, so
    /// a notification appended before it may precede its live start). How
    /// many arrived, and the close code (`None`: no close frame before the
    /// end).
    async fn drain(mut self) -> (u64, Option<u16>) {
        use tokio::io::AsyncReadExt;
        use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket};
        let mut bytes = Vec::new();
        tokio::time::timeout(common::WAIT, self.stream.read_to_end(&mut bytes))
            .await
            .expect("herald ends the connection")
            .expect("a clean end of the connection, not a reset");
        let head_end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP response")
            + 4;
        assert!(bytes.starts_with(b"HTTP/1.1 101"), "upgraded");
        let frames = Received(std::io::Cursor::new(bytes[head_end..].to_vec()));
        let mut ws = WebSocket::from_raw_socket(frames, Role::Client, None);
        let mut last: Option<u64> = None;
        let mut received = 0;
        loop {
            match ws.read() {
                Ok(Message::Text(t)) => {
                    let f: Value = serde_json::from_str(&t).unwrap();
                    if f["type"] == "notification" {
                        let offset = f["offset"].as_u64().unwrap();
                        if let Some(last) = last {
                            assert_eq!(offset, last + 1, "contiguous offsets");
                        }
                        last = Some(offset);
                        received += 1;
                    }
                }
                Ok(Message::Close(frame)) => return (received, frame.map(|f| f.code.into())),
                Ok(_) => {} // pings
                Err(_) => return (received, None),
            }
        }
    }
}

/// One client that stops reading among readers: it is closed with 4008 and
/// the others receive everything, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_closed_with_4008_and_others_keep_receiving() {
    const EVENTS: usize = 800;
    let h = Herald::start_with(|c| {
        c.delivery.queue_capacity = 64;
        c.sources = vec![herald::source::SourceConfig::Http(
            herald::source::http::HttpSourceConfig {
                max_body_bytes: 8 * 1024 * 1024,
                ..Default::default()
            },
        )];
    })
    .await;
    let channel = unique("busy");
    let query = format!("channel={channel}");
    // The slow client does not read until the others are done.
    let slow = unread_client(&h, &query).await;
    let mut fast = Vec::new();
    for _ in 0..3 {
        let (mut client, _) = h.subscribe(&query).await;
        fast.push(tokio::spawn(
            async move { client.notifications(EVENTS).await },
        ));
    }
    let pad = "p".repeat(10_000);
    for chunk in 0..EVENTS / 20 {
        let events: Vec<Value> = (0..20)
            .map(|i| json!({"channel": channel, "title": format!("{}", chunk * 20 + i), "body": pad}))
            .collect();
        h.publish("t", &Value::Array(events)).await;
    }
    for reader in fast {
        let got = reader.await.unwrap();
        assert_eq!(offsets(&got), (1..=EVENTS as u64).collect::<Vec<_>>());
    }
    // Now the slow one reads: a contiguous prefix, then the close. Its
    // buffers were full when its queue overflowed, so the close frame got
    // through only if it started reading within herald's 5 s close
    // timeout; on a loaded machine the fast readers may take longer, and
    // herald then drops the connection (documented). Either way herald
    // counts exactly this session as too slow.
    let (last, code) = slow.drain().await;
    assert!(matches!(code, Some(4008) | None), "closed with {code:?}");
    assert!(
        last < EVENTS as u64,
        "the slow client was cut off before the end"
    );
    let too_slow = r#"herald_sessions_closed_total{reason="too_slow"}"#;
    assert_eq!(h.metric(too_slow).await, 1.0, "{}", h.metrics().await);
    h.stop().await;
}

/// The close reasons counted so far, without those still at 0.
fn closed_reasons(metrics: &str) -> Vec<(String, f64)> {
    let mut reasons = common::metric_family(metrics, "herald_sessions_closed_total");
    reasons.retain(|(_, n)| *n > 0.0);
    reasons
}

/// A client that stops reading on a channel far too quiet to overflow its
/// queue is not left to the kernel's send buffer: the ping it does not
/// answer, with notifications sent after it, closes it as too slow.
///
/// Pings every 300 ms, but 3 s for the pong: a notification is published
/// every 50 ms, so one is always written after the ping however loaded the
/// machine (herald on worker threads of its own). The few hundred bytes a
/// second never fill the socket buffers, so the close frame reaches the
/// client: exactly 4008, after every notification herald wrote. Fails if
/// herald closes it as `heartbeat_missed` (the notifications written after
/// the ping ignored), or never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_quiet_channel_is_closed_as_too_slow() {
    let h = Herald::start_with(|c| {
        c.delivery.ping_interval_ms = 300;
        c.delivery.pong_timeout_ms = 3000;
    })
    .await;
    let channel = unique("quiet");
    let query = format!("channel={channel}");
    let slow = unread_client(&h, &query).await;
    let too_slow = r#"herald_sessions_closed_total{reason="too_slow"}"#;
    let missed = r#"herald_sessions_closed_total{reason="heartbeat_missed"}"#;
    // At most 20 a second, for at most 15 s: never enough to fill the
    // buffers (a few hundred bytes each).
    let mut published = 0;
    loop {
        let metrics = h.metrics().await;
        if common::metric_value(&metrics, too_slow) >= 1.0 {
            break;
        }
        assert_eq!(
            common::metric_value(&metrics, missed),
            0.0,
            "closed as silent"
        );
        assert!(
            published < 300,
            "not closed after {published} notifications"
        );
        h.publish("t", &event(&channel, published)).await;
        published += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (last, code) = slow.drain().await;
    assert_eq!(code, Some(4008));
    let metrics = h.metrics().await;
    // Every notification herald wrote to it arrived before the close (the
    // only session: herald's count is its own).
    let written = common::metric_value(&metrics, "herald_deliveries_total");
    assert!(last >= 1, "it was fed after the ping");
    assert_eq!(last as f64, written, "{metrics}");
    assert_eq!(
        closed_reasons(&metrics),
        [(r#"{reason="too_slow"}"#.to_string(), 1.0)],
        "{metrics}"
    );
    h.stop().await;
}

#[tokio::test]
async fn over_the_connection_limit_a_session_is_closed_with_1013() {
    let h = Herald::start_with(|c| c.server.max_connections = 1).await;
    let (first, _) = h.subscribe("").await;
    let mut second = h.connect("").await;
    assert_eq!(second.close_code().await, Some(1013));
    drop(first);
    // The slot frees up once herald has seen the first session end.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let mut c = h.connect("").await;
        match c.next().await {
            Next::Frame(f) if f["type"] == "subscribed" => break,
            Next::Closed(Some(1013), _) => {}
            other => panic!("neither subscribed nor 1013: {other:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no slot became free"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.stop().await;
}

#[tokio::test]
async fn shutdown_closes_sessions_with_1001() {
    let h = Herald::start().await;
    let (mut client, _) = h.subscribe("").await;
    let stopping = tokio::spawn(h.stop());
    assert_eq!(client.close_code().await, Some(1001));
    stopping.await.unwrap();
}

#[tokio::test]
async fn plain_http_on_the_websocket_endpoint_gets_426() {
    let h = Herald::start().await;
    let (status, body) = h.get("/notifications").await;
    assert_eq!(status, 426);
    assert!(body.contains("WebSocket"));
    h.stop().await;
}

#[tokio::test]
async fn a_client_close_is_echoed_cleanly() {
    let h = Herald::start().await;
    let (mut client, _) = h.subscribe("").await;
    client
        .ws
        .send(Message::Close(Some(
            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: 1000.into(),
                reason: "bye".into(),
            },
        )))
        .await
        .unwrap();
    match client.next().await {
        Next::Closed(code, _) => assert_eq!(code, Some(1000), "the server echoed the close"),
        Next::Frame(f) => panic!("unexpected frame {f}"),
    }
    h.stop().await;
}

#[tokio::test]
async fn too_many_channels_in_the_query_closes_with_4000() {
    let h = Herald::start_with(|c| c.delivery.max_subscriptions = 2).await;
    let mut client = h.connect("channel=a&channel=b&channel=c").await;
    assert_eq!(client.close_code().await, Some(4000));
    h.stop().await;
}

#[tokio::test]
async fn an_oversized_notification_fails_its_rule_and_the_channel_goes_on() {
    let h = Herald::start_with(|c| c.rules.max_notification_bytes = 4096).await;
    let channel = unique("c");
    let (mut client, _) = h.subscribe(&format!("channel={channel}")).await;
    let answer = h
        .publish(
            "t",
            &json!([{"channel": channel, "title": "x".repeat(5000)}, {"channel": channel, "title": "small"}]),
        )
        .await;
    assert_eq!(answer["notifications"], 1);
    assert_eq!(answer["failed_rules"], 1);
    assert_eq!(client.next_of_type("notification").await["title"], "small");
    h.stop().await;
}

/// A client that closes, and one whose TCP connection just ends, are
/// counted as such; neither is a `protocol_error` (tungstenite reports the
/// second as one). Mutation: mapping `ResetWithoutClosingHandshake` back
/// to a protocol error fails the `dropped` wait.
#[tokio::test]
async fn a_normal_close_and_a_dropped_connection_are_not_protocol_errors() {
    let h = Herald::start().await;
    let wait_for = |series: &'static str| {
        let h = &h;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while h.metric(series).await != 1.0 {
                assert!(tokio::time::Instant::now() < deadline, "{series} not 1");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let (mut closing, _) = h.subscribe("").await;
    closing.ws.close(None).await.unwrap();
    wait_for(r#"herald_sessions_closed_total{reason="client_closed"}"#).await;
    let (dropping, _) = h.subscribe("").await;
    drop(dropping); // the TCP connection ends without a close frame
    wait_for(r#"herald_sessions_closed_total{reason="dropped"}"#).await;
    assert_eq!(
        h.metric(r#"herald_sessions_closed_total{reason="protocol_error"}"#)
            .await,
        0.0
    );
    h.stop().await;
}

/// A resume whose backlog is many times `delivery.replay_page` is read
/// page after page up to the head: with nothing appended meanwhile it
/// ends at the head (`replayed` = the backlog); with notifications appended
/// while it runs, the replay, `subscribed` and the live stream join without
/// a gap or a duplicate. The counters follow: `herald_replayed_total`,
/// `herald_subscriptions_total{recovered}`. Fails if the replay stops
/// after its first page (the quiet case: no live notification fills the
/// hole), or if a notification both replayed and queued is sent twice
/// (both tried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_many_pages_joins_the_live_stream_exactly() {
    const PAGE: usize = 7;
    const BACKLOG: usize = 1000;
    let h = Herald::start_with(|c| c.delivery.replay_page = PAGE).await;
    let channel = unique("pages");
    let (_, subscribed) = h.subscribe(&format!("channel={channel}")).await;
    let epoch = common::epoch_of(subscribed["position"].as_str().unwrap());
    publish_batches(&h, &channel, 0, BACKLOG).await;

    // Quiet: the whole backlog after offset 3, then `subscribed` at the head.
    let mut quiet = h
        .connect(&format!("channel={channel}&last_id={epoch}-3"))
        .await;
    let replayed = quiet.notifications(BACKLOG - 3).await;
    assert_eq!(offsets(&replayed), (4..=BACKLOG as u64).collect::<Vec<_>>());
    let done = quiet.next_of_type("subscribed").await;
    assert_eq!(done["replayed"], BACKLOG - 3, "{done}");
    assert_eq!(done["recovered"], true);
    assert_eq!(done["position"], format!("{epoch}-{BACKLOG}"));
    quiet.assert_quiet(Duration::from_millis(200)).await;
    quiet.ws.close(None).await.unwrap();
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while h.metric("herald_sessions").await > 0.0 {
        assert!(tokio::time::Instant::now() < deadline, "sessions left open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Live traffic during the replay, for certain: a client that reads
    // nothing yet (a small socket buffer, a backlog of about 1 MB) holds
    // the replay on its socket, while notifications are appended and
    // queued for it (herald_fanout_queued_total; the only session). The
    // replay, chasing the head, reads some of those from the log too.
    let mut busy = small_buffer_client(&h, &format!("channel={channel}&last_id={epoch}-1")).await;
    let mut end = BACKLOG;
    while h.metric("herald_fanout_queued_total").await < 1.0 {
        assert!(
            end < 2 * BACKLOG,
            "nothing was queued for the resuming client"
        );
        publish_batches(&h, &channel, end, end + 1).await;
        end += 1;
    }
    publish_batches(&h, &channel, end, end + 100).await;
    end += 100;
    let mut last = 1;
    let mut resumed = None;
    while last < end as u64 || resumed.is_none() {
        let frame = busy.frame().await;
        match frame["type"].as_str() {
            Some("notification") => {
                let offset = frame["offset"].as_u64().unwrap();
                assert_eq!(offset, last + 1, "gap or duplicate at the seam");
                last = offset;
            }
            Some("subscribed") => {
                assert!(resumed.is_none(), "one subscribed: {frame}");
                assert_eq!(frame["recovered"], true, "{frame}");
                assert_eq!(frame["position"], format!("{epoch}-{last}"));
                resumed = Some(frame["replayed"].as_u64().unwrap());
            }
            _ => panic!("unexpected frame {frame}"),
        }
    }
    let busy_replayed = resumed.expect("subscribed after the replay");
    assert!(busy_replayed >= BACKLOG as u64 - 1, "{busy_replayed}");
    busy.assert_quiet(Duration::from_millis(200)).await;

    let metrics = h.metrics().await;
    let replayed_total = common::metric_value(&metrics, "herald_replayed_total");
    assert_eq!(
        replayed_total,
        (BACKLOG - 3) as f64 + busy_replayed as f64,
        "{metrics}"
    );
    let recovered = r#"herald_subscriptions_total{recovered="true"}"#;
    assert_eq!(common::metric_value(&metrics, recovered), 3.0, "{metrics}");
    h.stop().await;
}

/// A client whose socket receive buffer is small: it holds little that it
/// has not read yet, so herald's writes wait for it.
async fn small_buffer_client(h: &Herald, query: &str) -> common::Client {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(h.local_addr()).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(
        h.ws_url(query),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    common::Client { ws }
}

/// Events `from..to` of `channel` with a body of 1 KB, fifty per request.
async fn publish_batches(h: &Herald, channel: &str, from: usize, to: usize) {
    let body = "b".repeat(1000);
    let mut n = from;
    while n < to {
        let end = (n + 50).min(to);
        let events: Vec<Value> = (n..end)
            .map(|i| json!({"channel": channel, "title": format!("n{i}"), "body": body}))
            .collect();
        h.publish("t", &Value::Array(events)).await;
        n = end;
    }
}

/// A resume that cannot be answered from the history (another epoch) is
/// counted with `recovered="false"`, apart from the recovered ones.
#[tokio::test]
async fn subscriptions_are_counted_by_whether_they_recovered() {
    let h = Herald::start().await;
    let channel = unique("c");
    let (_, fresh) = h.subscribe(&format!("channel={channel}")).await;
    assert_eq!(fresh["recovered"], true);
    let (_, other) = h
        .subscribe(&format!("channel={channel}&last_id=0123456789abcdef-1"))
        .await;
    assert_eq!(other["recovered"], false);
    let metrics = h.metrics().await;
    let mut counted = common::metric_family(&metrics, "herald_subscriptions_total");
    counted.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        counted,
        [
            (r#"{recovered="false"}"#.to_string(), 1.0),
            (r#"{recovered="true"}"#.to_string(), 1.0)
        ],
        "{metrics}"
    );
    h.stop().await;
}

/// A connection that does not finish its request head within
/// `server.handshake_timeout_ms` is closed; one that does is served.
/// Fails if the setting is not applied (hyper's own default is 30 s, the
/// wait here 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_not_finished_in_time_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Herald::start_with(|c| c.server.handshake_timeout_ms = 300).await;
    let mut slow = tokio::net::TcpStream::connect(h.local_addr())
        .await
        .unwrap();
    slow.write_all(b"GET /notifications HTTP/1.1\r\nHost: herald\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the connection is still open after 10 s");
    let rest = String::from_utf8_lossy(&rest);
    assert!(!rest.contains("101 Switching"), "{rest}");
    // Herald still serves a client that sends its head at once.
    let (_, subscribed) = h.subscribe("").await;
    assert_eq!(subscribed["type"], "subscribed");
    h.stop().await;
}
