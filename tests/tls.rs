//! TLS on the listeners: wss and https with a CA the test generates,
//! certificate rotation while sessions stay up, a bad pair rejected with
//! the previous one kept, TLS on the admin listener.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::tls::{Ca, Leaf};
use common::{Herald, WAIT, metric_value, unique};
use futures_util::StreamExt;
use herald::tls::TlsConfig;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// GET `path` over TLS; the status line and body.
async fn https_get(ca: &Ca, addr: SocketAddr, path: &str) -> String {
    let (mut tls, _) = ca.connect(addr).await;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

/// POST one event over TLS; the status line.
async fn https_post(ca: &Ca, addr: SocketAddr, channel: &str, seq: u64) -> String {
    let (mut tls, _) = ca.connect(addr).await;
    let body = json!({"type": "t", "channel": channel, "seq": seq}).to_string();
    let request = format!(
        "POST /events/orders HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_string(&mut out)).await;
    out.lines().next().unwrap_or_default().to_string()
}

type Wss =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A wss session on `channel`, once subscribed; and the certificate it saw.
async fn wss(
    ca: &Ca,
    addr: SocketAddr,
    channel: &str,
) -> (Wss, rustls::pki_types::CertificateDer<'static>) {
    let (tls, cert) = ca.connect(addr).await;
    let url = format!(
        "wss://localhost:{}/notifications?channel={channel}",
        addr.port()
    );
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    assert_eq!(next_frame(&mut ws).await["type"], "subscribed");
    (ws, cert)
}

async fn next_frame(ws: &mut Wss) -> Value {
    loop {
        let msg = tokio::time::timeout(common::FRAME_TIMEOUT, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("a frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

async fn start(dir: &std::path::Path, leaf: &Leaf, admin: bool) -> Herald {
    let (cert_file, key_file) = leaf.install(dir);
    let tls = TlsConfig {
        cert_file,
        key_file,
    };
    Herald::start_with(|c| {
        c.server.tls = Some(tls.clone());
        if admin {
            c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
            c.admin.tls = Some(tls);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_and_https_with_a_private_ca_and_plain_http_gets_no_answer() {
    let ca = Ca::new("herald test CA");
    let leaf = ca.leaf("first");
    let dir = tempfile::tempdir().unwrap();
    let herald = start(dir.path(), &leaf, true).await;
    let addr = herald.local_addr();

    assert!(
        https_get(&ca, addr, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let channel = unique("user");
    let (mut ws, cert) = wss(&ca, addr, &channel).await;
    assert_eq!(cert, leaf.der);
    assert!(https_post(&ca, addr, &channel, 1).await.contains("202"));
    let n = next_frame(&mut ws).await;
    assert_eq!(
        (n["type"].as_str(), n["channel"].as_str()),
        (Some("notification"), Some(channel.as_str()))
    );

    // The admin listener speaks TLS too.
    let admin = herald.running().admin_addr().unwrap();
    let metrics = https_get(&ca, admin, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");

    // Plain HTTP on the TLS port: no HTTP answer, a failed handshake.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    let metrics = https_get(&ca, admin, "/metrics").await;
    assert!(
        metric_value(
            &metrics.replace("\r\n", "\n"),
            "herald_tls_handshake_failures_total"
        ) >= 1.0
    );
    drop(ws);
    herald.stop().await;
}

/// Wait until herald counted `n` rejected certificate reloads.
async fn wait_rejected(ca: &Ca, addr: SocketAddr, n: f64) {
    let read = || async { https_get(ca, addr, "/metrics").await.replace("\r\n", "\n") };
    let got = common::wait_metric(read, "herald_tls_reloads_total{result=\"rejected\"}", n).await;
    assert_eq!(got, n);
}

/// Wait until a new connection sees `want`.
async fn wait_certificate(ca: &Ca, addr: SocketAddr, want: &Leaf) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, cert) = ca.connect(addr).await;
        if cert == want.der {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate never went live"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_keeps_sessions_and_a_bad_pair_keeps_the_old_one() {
    let ca = Ca::new("herald test CA");
    let first = ca.leaf("first");
    let dir = tempfile::tempdir().unwrap();
    let herald = start(dir.path(), &first, false).await;
    let addr = herald.local_addr();
    let channel = unique("user");
    let (mut before, cert) = wss(&ca, addr, &channel).await;
    assert_eq!(cert, first.der);

    // Rotation: new sessions see the new certificate...
    let second = ca.leaf("second");
    second.install(dir.path());
    wait_certificate(&ca, addr, &second).await;
    let (mut after, cert) = wss(&ca, addr, &channel).await;
    assert_eq!(cert, second.der);
    // ...and the session opened before it still receives.
    assert!(https_post(&ca, addr, &channel, 1).await.contains("202"));
    assert_eq!(next_frame(&mut before).await["type"], "notification");
    assert_eq!(next_frame(&mut after).await["type"], "notification");

    // A key that does not match the certificate: rejected, counted, the
    // second certificate stays.
    let stranger = ca.leaf("stranger");
    common::tls::replace(&dir.path().join("key.pem"), &stranger.key_pem);
    wait_rejected(&ca, addr, 1.0).await;
    let (_, cert) = ca.connect(addr).await;
    assert_eq!(cert, second.der);
    // A garbage certificate file: the same.
    common::tls::replace(&dir.path().join("cert.pem"), "not a certificate");
    wait_rejected(&ca, addr, 2.0).await;
    let (_, cert) = ca.connect(addr).await;
    assert_eq!(cert, second.der);
    // Fixed: live again.
    let third = ca.leaf("third");
    third.install(dir.path());
    wait_certificate(&ca, addr, &third).await;
    assert!(https_post(&ca, addr, &channel, 2).await.contains("202"));
    assert_eq!(next_frame(&mut before).await["type"], "notification");
    herald.stop().await;
}
