//! Session logic over an in-memory pipe, with paused time where timing
//! matters: the real tungstenite protocol on both ends, no sockets.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::DuplexStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

use super::{SessionContext, Subscription, run};
use crate::auth::{Auth, Principal};
use crate::config::{DeliveryConfig, StoreConfig};
use crate::delivery::hub::Hub;
use crate::metrics::Metrics;
use crate::store::{MemoryStore, NewNotification, Store};

struct Fixture {
    shared: Arc<SessionContext>,
    store: Arc<MemoryStore>,
}

fn fixture(config: DeliveryConfig) -> Fixture {
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(Hub::new(metrics.clone()));
    let store = Arc::new(MemoryStore::new(
        &StoreConfig::default(),
        hub.clone(),
        metrics.clone(),
    ));
    let shared = Arc::new(SessionContext {
        hub,
        store: store.clone(),
        metrics,
        config,
        auth: Auth::disabled(),
        shutdown: CancellationToken::new(),
    });
    Fixture { shared, store }
}

async fn pair() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
    let (a, b) = tokio::io::duplex(1 << 16);
    let server = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
    let client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
    (server, client)
}

fn broadcast() -> Vec<Subscription> {
    vec![Subscription {
        channel: "broadcast".into(),
        last_id: None,
        rewind: None,
    }]
}

fn heartbeat(ping_ms: u64, pong_ms: u64) -> DeliveryConfig {
    DeliveryConfig {
        ping_interval_ms: ping_ms,
        pong_timeout_ms: pong_ms,
        ..DeliveryConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_answers_pings_is_closed_with_4009() {
    let f = fixture(heartbeat(1_000, 500));
    // The client end stays raw bytes: nothing answers the pings.
    let (a, mut raw_client) = tokio::io::duplex(1 << 16);
    let server = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
    let started = tokio::time::Instant::now();
    let reason = run(server, f.shared.clone(), broadcast(), Principal::open()).await;
    assert_eq!(reason, "heartbeat_missed");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1_500) && elapsed < Duration::from_millis(1_600),
        "closed one ping interval plus the pong timeout after start: {elapsed:?}"
    );
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut raw_client, &mut bytes)
        .await
        .unwrap();
    // Server frames are unmasked: a ping (0x89), then a close (0x88) whose
    // payload starts with the code 4009 (0x0FA9).
    assert!(
        bytes.windows(2).any(|w| w == [0x89, 0x00]),
        "a ping was sent"
    );
    let close = bytes
        .windows(4)
        .position(|w| w[0] == 0x88 && w[2] == 0x0F && w[3] == 0xA9);
    assert!(close.is_some(), "a close frame with 4009 was sent");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_answers_pings_stays_connected() {
    let f = fixture(heartbeat(1_000, 500));
    let (server, mut client) = pair().await;
    let session = tokio::spawn(run(
        server,
        f.shared.clone(),
        broadcast(),
        Principal::open(),
    ));
    // Reading lets tungstenite answer each ping with a pong.
    let reader = tokio::spawn(async move {
        let mut pings = 0;
        while let Some(Ok(msg)) = client.next().await {
            if matches!(msg, Message::Ping(_)) {
                pings += 1;
                if pings == 10 {
                    break;
                }
            }
        }
        (pings, client) // keep the connection open
    });
    let (pings, _client) = reader.await.unwrap();
    assert_eq!(pings, 10);
    assert!(
        !session.is_finished(),
        "still connected after 10 ping rounds"
    );
    f.shared.shutdown.cancel();
    assert_eq!(session.await.unwrap(), "going_away");
}

#[tokio::test]
async fn a_ping_frame_is_answered_with_pong() {
    let f = fixture(DeliveryConfig::default());
    let (server, mut client) = pair().await;
    tokio::spawn(run(
        server,
        f.shared.clone(),
        broadcast(),
        Principal::open(),
    ));
    let first = client.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("\"subscribed\""));
    client
        .send(Message::Text(r#"{"type":"ping"}"#.into()))
        .await
        .unwrap();
    let pong = client.next().await.unwrap().unwrap();
    assert_eq!(pong.to_text().unwrap(), r#"{"type":"pong"}"#);
}

/// A store that appends one more notification during the first read, as if
/// a producer raced the replay: that notification is then both in the
/// replayed page and in the session's live queue.
#[derive(Debug)]
struct RacingStore {
    inner: Arc<MemoryStore>,
    raced: std::sync::atomic::AtomicBool,
}

impl Store for RacingStore {
    fn append(
        &self,
        batch: Vec<NewNotification>,
    ) -> futures_util::future::BoxFuture<
        'static,
        Result<Vec<crate::store::Appended>, crate::store::StoreError>,
    > {
        self.inner.append(batch)
    }

    fn read_after(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> futures_util::future::BoxFuture<'_, Result<crate::store::Page, crate::store::StoreError>>
    {
        if !self.raced.swap(true, std::sync::atomic::Ordering::SeqCst) {
            // Published to the hub (so queued) and in the log.
            drop(self.inner.append(vec![note("3")]));
        }
        self.inner.read_after(channel, after, limit)
    }

    fn trim_expired(
        &self,
        now_ms: u64,
    ) -> futures_util::future::BoxFuture<'_, Result<usize, crate::store::StoreError>> {
        self.inner.trim_expired(now_ms)
    }

    fn close(&self) -> futures_util::future::BoxFuture<'_, Result<(), crate::store::StoreError>> {
        self.inner.close()
    }
}

fn note(k: &str) -> NewNotification {
    NewNotification {
        channel: "c".into(),
        dedupe_key: k.into(),
        fields: format!("\"title\":{k:?}"),
        provenance: None,
    }
}

#[tokio::test]
async fn a_notification_both_replayed_and_queued_is_sent_once() {
    let f = fixture(DeliveryConfig::default());
    f.store.append(vec![note("1"), note("2")]).await.unwrap();
    let epoch = f.store.read_after("c", 0, 0).await.unwrap().epoch;
    let racing = Arc::new(RacingStore {
        inner: f.store.clone(),
        raced: Default::default(),
    });
    let shared = Arc::new(SessionContext {
        hub: f.shared.hub.clone(),
        store: racing,
        metrics: f.shared.metrics.clone(),
        config: DeliveryConfig::default(),
        auth: Auth::disabled(),
        shutdown: CancellationToken::new(),
    });
    let (server, mut client) = pair().await;
    tokio::spawn(run(
        server,
        shared,
        vec![Subscription {
            channel: "c".into(),
            last_id: Some(format!("{epoch}-0")),
            rewind: None,
        }],
        Principal::open(),
    ));
    let mut texts = Vec::new();
    for _ in 0..4 {
        texts.push(
            client
                .next()
                .await
                .unwrap()
                .unwrap()
                .into_text()
                .unwrap()
                .to_string(),
        );
    }
    assert!(texts[0].contains("\"offset\":1"));
    assert!(texts[1].contains("\"offset\":2"));
    assert!(texts[2].contains("\"offset\":3"));
    assert!(texts[3].contains("\"subscribed\"") && texts[3].contains("\"replayed\":3"));
    f.store.append(vec![note("4")]).await.unwrap();
    let next = client.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(
        next.contains("\"offset\":4"),
        "offset 3 was not sent twice: {next}"
    );
}

#[tokio::test]
async fn a_session_that_ends_mid_replay_leaves_no_hub_subscription() {
    let f = fixture(DeliveryConfig::default());
    let batch: Vec<_> = (0..3000).map(|i| note(&i.to_string())).collect();
    f.store.append(batch).await.unwrap();
    let epoch = f.store.read_after("c", 0, 0).await.unwrap().epoch;
    let (server, mut client) = pair().await;
    let session = tokio::spawn(run(
        server,
        f.shared.clone(),
        vec![Subscription {
            channel: "c".into(),
            last_id: Some(format!("{epoch}-0")),
            rewind: None,
        }],
        Principal::open(),
    ));
    // Read a little of the replay, then go away while it is still running.
    for _ in 0..10 {
        client.next().await.unwrap().unwrap();
    }
    drop(client);
    let reason = tokio::time::timeout(Duration::from_secs(10), session)
        .await
        .expect("the session ends")
        .unwrap();
    assert_eq!(reason, "dropped");
    assert_eq!(f.shared.hub.subscribers("c"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_on_a_quiet_channel_is_dropped() {
    let f = fixture(heartbeat(1_000, 500));
    let batch: Vec<_> = (0..3000).map(|i| note(&i.to_string())).collect();
    f.store.append(batch).await.unwrap();
    let epoch = f.store.read_after("c", 0, 0).await.unwrap().epoch;
    // The replay fills the pipe, nothing reads it, nothing new is queued.
    let (a, _unread_client_end) = tokio::io::duplex(4096);
    let server = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
    let session = run(
        server,
        f.shared.clone(),
        vec![Subscription {
            channel: "c".into(),
            last_id: Some(format!("{epoch}-0")),
            rewind: None,
        }],
        Principal::open(),
    );
    let reason = tokio::time::timeout(Duration::from_secs(60), session)
        .await
        .expect("a stalled write ends the session");
    assert_eq!(reason, "write_stalled");
}

/// Appends one notification to "c" every `every`, `n` times.
fn notify_every(store: Arc<MemoryStore>, every: Duration, n: usize) {
    tokio::spawn(async move {
        for i in 0..n {
            tokio::time::sleep(every).await;
            store.append(vec![note(&format!("n{i}"))]).await.unwrap();
        }
    });
}

fn live_on_c() -> Vec<Subscription> {
    vec![Subscription {
        channel: "c".into(),
        last_id: None,
        rewind: None,
    }]
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_while_notified_is_closed_with_4008() {
    let f = fixture(heartbeat(1_000, 500));
    // The client end is never read: it neither answers the ping nor takes
    // the notifications sent after it.
    let (a, mut raw_client) = tokio::io::duplex(1 << 16);
    let server = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
    notify_every(f.store.clone(), Duration::from_millis(100), 100);
    let started = tokio::time::Instant::now();
    let reason = run(server, f.shared.clone(), live_on_c(), Principal::open()).await;
    assert_eq!(reason, "too_slow");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1_500) && elapsed < Duration::from_millis(1_600),
        "closed at the pong deadline: {elapsed:?}"
    );
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut raw_client, &mut bytes)
        .await
        .unwrap();
    // A close frame (0x88) whose payload starts with 4008 (0x0FA8).
    let close = bytes
        .windows(4)
        .position(|w| w[0] == 0x88 && w[2] == 0x0F && w[3] == 0xA8);
    assert!(close.is_some(), "a close frame with 4008 was sent");
}

#[tokio::test(start_paused = true)]
async fn a_write_still_blocked_when_the_pong_is_due_is_too_slow() {
    let f = fixture(DeliveryConfig {
        // Large enough never to overflow here: the pong deadline decides.
        queue_capacity: 100_000,
        ..heartbeat(1_000, 500)
    });
    let (a, _unread_client_end) = tokio::io::duplex(4096);
    let server = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
    let store = f.store.clone();
    tokio::spawn(async move {
        // After the first ping: more than the pipe holds, so a write blocks.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let batch: Vec<_> = (0..3000).map(|i| note(&i.to_string())).collect();
        store.append(batch).await.unwrap();
    });
    let reason = run(server, f.shared.clone(), live_on_c(), Principal::open()).await;
    // Not `write_stalled` a whole heartbeat period after the write began.
    assert_eq!(reason, "too_slow");
}

/// A client's close frame is a normal end and a connection that just ends
/// is `dropped`; only a frame that breaks the protocol is
/// `protocol_error`. Mutation: mapping `ResetWithoutClosingHandshake` back
/// to a protocol error fails the second case.
#[tokio::test]
async fn close_reasons_tell_a_normal_close_and_a_drop_from_a_protocol_error() {
    let f = fixture(DeliveryConfig::default());
    let closed = r#"herald_sessions_closed_total{reason="client_closed"} 1"#;
    let dropped = r#"herald_sessions_closed_total{reason="dropped"} 1"#;

    let (server, mut client) = pair().await;
    let session = tokio::spawn(run(
        server,
        f.shared.clone(),
        broadcast(),
        Principal::open(),
    ));
    client.next().await.unwrap().unwrap(); // subscribed
    client.close(None).await.unwrap();
    assert_eq!(session.await.unwrap(), "client_closed");

    let (server, mut client) = pair().await;
    let session = tokio::spawn(run(
        server,
        f.shared.clone(),
        broadcast(),
        Principal::open(),
    ));
    client.next().await.unwrap().unwrap();
    drop(client); // the connection ends, no close frame
    assert_eq!(session.await.unwrap(), "dropped");

    // An unmasked frame from a client breaks RFC 6455.
    let (a, mut raw_client) = tokio::io::duplex(1 << 16);
    let server = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
    let session = tokio::spawn(run(
        server,
        f.shared.clone(),
        broadcast(),
        Principal::open(),
    ));
    tokio::io::AsyncWriteExt::write_all(&mut raw_client, &[0x81, 0x02, b'h', b'i'])
        .await
        .unwrap();
    assert_eq!(session.await.unwrap(), "protocol_error");

    let text = f.shared.metrics.render();
    assert!(text.contains(closed), "{text}");
    assert!(text.contains(dropped), "{text}");
}
mod auth;
