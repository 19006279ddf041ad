use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use super::*;
use crate::delivery::protocol::NotificationFrame;
use crate::store::Entry;

fn frame(channel: &str, offset: u64) -> Message {
    Message::Text(NotificationFrame::text(
        &Entry {
            channel: channel.into(),
            epoch: "ep".into(),
            offset,
            at_ms: 0,
            fields: "\"title\":\"t\"".into(),
            provenance: None,
        },
        crate::delivery::protocol::Provenance::Omit,
    ))
}

async fn text(rx: &mut mpsc::Receiver<Bytes>) -> String {
    let chunk = rx.recv().await.expect("a chunk");
    String::from_utf8(chunk.to_vec()).expect("utf-8")
}

#[test]
fn resume_positions_parse() {
    assert_eq!(Resume::parse(None), Ok(Resume::Live));
    assert_eq!(Resume::parse(Some(" ")), Ok(Resume::Live));
    assert_eq!(Resume::parse(Some("ep-4")), Ok(Resume::Id("ep-4".into())));
    let ids = BTreeMap::from([
        ("user:1".to_string(), "ep-4".to_string()),
        ("tëam/x".to_string(), "ep-9".to_string()),
    ]);
    let c = cursor(&ids);
    assert!(c.starts_with("c1.") && !c.contains('=') && !c.contains('+'));
    assert_eq!(Resume::parse(Some(&c)), Ok(Resume::Cursor(ids)));
    for bad in ["c1.%%%", "c1.WzFd", "c1.eyJhIjoxfQ"] {
        let err = Resume::parse(Some(bad)).expect_err(bad);
        assert!(err.contains("c1. cursor"), "{bad}: {err}");
    }
}

#[test]
fn the_client_cursor_decodes() {
    // What clients/js `sseCursor({'user:1': 'ab-3'})` sends.
    let from_client = "c1.eyJ1c2VyOjEiOiJhYi0zIn0";
    let Ok(Resume::Cursor(ids)) = Resume::parse(Some(from_client)) else {
        panic!("a cursor");
    };
    assert_eq!(ids["user:1"], "ab-3");
}

#[test]
fn accept_headers() {
    let mut h = HeaderMap::new();
    assert!(!wants_event_stream(&h));
    h.insert(
        header::ACCEPT,
        "text/html, Text/Event-Stream;q=0.9".parse().expect("value"),
    );
    assert!(wants_event_stream(&h));
    h.insert(header::ACCEPT, "*/*".parse().expect("value"));
    assert!(!wants_event_stream(&h));
}

#[tokio::test]
async fn one_channel_gets_plain_ids_after_the_data() {
    let (tx, mut rx) = mpsc::channel(4);
    let mut s = SseSocket::new(tx, true, 16 * 1024, 3000);
    s.feed(frame("user:1", 7)).await.expect("feed");
    s.flush().await.expect("flush");
    let out = text(&mut rx).await;
    let (retry, event) = out.split_once("\n\n").expect("two blocks");
    assert_eq!(retry, "retry: 3000");
    let lines: Vec<_> = event.lines().collect();
    assert!(
        lines[0].starts_with("data: {\"type\":\"notification\""),
        "{out}"
    );
    assert_eq!(lines[1], "id: ep-7");
    assert!(out.ends_with("\n\n"));
}

#[tokio::test]
async fn several_channels_get_a_cursor_of_every_position() {
    let (tx, mut rx) = mpsc::channel(4);
    let mut s = SseSocket::new(tx, false, 16 * 1024, 3000);
    let subscribed =
        r#"{"type":"subscribed","channel":"b","replayed":0,"recovered":true,"position":"ep-2"}"#;
    s.feed(Message::Text(subscribed.into()))
        .await
        .expect("feed");
    s.feed(frame("a \"q\"", 5)).await.expect("feed");
    s.send(Message::Text(r#"{"type":"pong"}"#.into()))
        .await
        .expect("send");
    let out = text(&mut rx).await;
    let ids: Vec<_> = out.lines().filter_map(|l| l.strip_prefix("id: ")).collect();
    assert_eq!(ids.len(), 2, "{out}");
    let Ok(Resume::Cursor(last)) = Resume::parse(Some(ids[1])) else {
        panic!("a cursor: {out}");
    };
    assert_eq!(
        last,
        BTreeMap::from([
            ("a \"q\"".to_string(), "ep-5".to_string()),
            ("b".to_string(), "ep-2".to_string())
        ])
    );
    assert!(
        out.ends_with("data: {\"type\":\"pong\"}\n\n"),
        "no id on other frames"
    );
}

#[tokio::test]
async fn pings_are_heartbeats_answered_at_once_and_a_close_is_an_event() {
    let (tx, mut rx) = mpsc::channel(4);
    let mut s = SseSocket::new(tx, true, 16 * 1024, 3000);
    s.send(Message::Ping(Default::default()))
        .await
        .expect("ping");
    assert!(matches!(s.next().await, Some(Ok(Message::Pong(_)))));
    assert!(text(&mut rx).await.ends_with(": heartbeat\n\n"));
    let close = CloseFrame {
        code: CloseCode::TooSlow.code().into(),
        reason: "too slow".into(),
    };
    s.send(Message::Close(Some(close))).await.expect("close");
    assert_eq!(
        text(&mut rx).await,
        "event: close\ndata: {\"code\":4008,\"reason\":\"too slow\"}\n\n"
    );
}

#[tokio::test]
async fn a_client_that_went_away_ends_reads_and_fails_writes() {
    let (tx, rx) = mpsc::channel(4);
    let mut s = SseSocket::new(tx, true, 16 * 1024, 3000);
    drop(rx);
    assert!(s.next().await.is_none());
    assert!(s.send(frame("c", 1)).await.is_err());
}

#[tokio::test]
async fn a_body_nobody_reads_holds_the_writer() {
    let (tx, _rx) = mpsc::channel(1);
    let mut s = SseSocket::new(tx, true, 64, 3000);
    s.send(frame("c", 1)).await.expect("the first chunk fits");
    let blocked = tokio::time::timeout(std::time::Duration::from_millis(50), async {
        for i in 2..10 {
            s.send(frame("c", i)).await.expect("send");
        }
    })
    .await;
    assert!(blocked.is_err(), "writes wait for a reader");
}
