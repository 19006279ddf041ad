//! A hostile client on the network: each test performs one attack over a
//! real socket against a real herald and checks the answer a user would
//! see (docs/security.md lists them).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Herald, metric_value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Send `request` (a raw HTTP/1.1 head and body) and read the status code
/// and the rest of what herald answered before it closed or went quiet.
async fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // Until the head and some body arrived, the peer closed, or it went
    // quiet (an upgraded socket stays open).
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP status line: {text:?}"));
    (status, text)
}

fn upgrade(host: &str, origin: Option<&str>) -> String {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    format!(
        "GET /notifications?channel=user:42 HTTP/1.1\r\nHost: {host}\r\n{origin}\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

fn post(host: &str, origin: &str) -> String {
    let body = r#"{"type":"x","channel":"user:42"}"#;
    format!(
        "POST /events/orders HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_origins_get_403_before_any_upgrade_loopback_and_no_origin_pass() {
    let herald = Herald::start().await;
    let addr = herald.local_addr();
    let host = addr.to_string();

    // Cross-site WebSocket hijacking: refused before the upgrade.
    let (status, body) = raw(addr, &upgrade(&host, Some("http://evil.example"))).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("server.allowed_origins"), "{body}");
    // SSE and POST from the evil page too.
    let sse = format!(
        "GET /notifications HTTP/1.1\r\nHost: {host}\r\nOrigin: http://evil.example\r\n\
         Accept: text/event-stream\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(raw(addr, &sse).await.0, 403);
    let (status, body) = raw(addr, &post(&host, "https://evil.example")).await;
    assert_eq!(status, 403, "{body}");
    // `Origin: null` (a sandboxed frame on any site) is not loopback.
    assert_eq!(raw(addr, &upgrade(&host, Some("null"))).await.0, 403);

    // The demo page's origin, other loopback dev servers, and clients that
    // send no Origin (curl, services, the seed's snippet in node).
    for origin in [
        Some(format!("http://{host}")),
        Some("http://localhost:3000".to_string()),
        Some("http://[::1]:5173".to_string()),
        None,
    ] {
        let (status, body) = raw(addr, &upgrade(&host, origin.as_deref())).await;
        assert_eq!(status, 101, "{origin:?}: {body}");
    }
    let (status, body) = raw(addr, &post(&host, &format!("http://{host}"))).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        metric_value(
            &herald.metrics().await,
            "herald_http_refused_total{reason=\"origin\"}"
        ),
        4.0
    );
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebound_host_name_is_refused_on_a_loopback_listener() {
    let herald = Herald::start().await;
    let addr = herald.local_addr();
    let port = addr.port();
    // DNS rebinding: evil.example now resolves to 127.0.0.1; the page is
    // its own origin, so only the Host check stops it.
    let (status, body) = raw(
        addr,
        &upgrade(
            &format!("evil.example:{port}"),
            Some(&format!("http://evil.example:{port}")),
        ),
    )
    .await;
    assert_eq!(status, 421, "{body}");
    assert!(body.contains("server.allowed_hosts"), "{body}");
    let metrics =
        format!("GET /metrics HTTP/1.1\r\nHost: evil.example:{port}\r\nConnection: close\r\n\r\n");
    assert_eq!(raw(addr, &metrics).await.0, 421);
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let (status, body) = raw(addr, &upgrade(&host, None)).await;
        assert_eq!(status, 101, "{host}: {body}");
    }
    // Probes name whatever address they use.
    let health =
        format!("GET /healthz HTTP/1.1\r\nHost: 10.1.2.3:{port}\r\nConnection: close\r\n\r\n");
    assert_eq!(raw(addr, &health).await.0, 200);
    herald.stop().await;

    // Configured: only the listed names, any origin explicitly.
    let herald = Herald::start_with(|c| {
        c.server.allowed_hosts = Some(vec!["herald.test".into()]);
        c.server.allowed_origins = Some(vec!["*".into()]);
    })
    .await;
    let addr = herald.local_addr();
    let ok = upgrade("herald.test:1", Some("http://evil.example"));
    assert_eq!(raw(addr, &ok).await.0, 101);
    assert_eq!(raw(addr, &upgrade("localhost", None)).await.0, 421);
    herald.stop().await;
}
