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

/// Read from `stream` until herald closes it (or `within` passes); what
/// it answered.
async fn answer(stream: &mut TcpStream, within: Duration) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(within, async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    String::from_utf8_lossy(&answer).to_string()
}

fn stalled_post(port: u16) -> String {
    format!(
        "POST /events/orders HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"type\":"
    )
}

/// Hundreds of uploads that never finish, with herald's open-files limit
/// at 256: each is answered 408 and closed at the request deadline, a
/// trickle of bytes does not extend it, and herald answers `/healthz`
/// afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_get_408_and_herald_stays_reachable_at_a_low_open_files_limit() {
    let herald = common::process::Process::start(
        "[server]\nrequest_timeout_ms = 1500\nhandshake_timeout_ms = 1500\n",
    );
    let port = herald.port;
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &herald.pid().to_string(), "--nofile=256:256"])
        .status()
        .unwrap();
    assert!(limited.success());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // One trickling client: a byte every 200 ms, forever.
    let trickle = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(stalled_post(port).as_bytes())
            .await
            .unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            tokio::select! {
                read = stream.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                },
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if stream.write_all(b" ").await.is_err() {
                        break;
                    }
                }
            }
        }
        String::from_utf8_lossy(&answer).to_string()
    });
    let mut stalled = Vec::new();
    for _ in 0..300 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(stalled_post(port).as_bytes())
            .await
            .unwrap();
        stalled.push(stream);
    }
    let mut timed_out = 0;
    for stream in &mut stalled {
        let text = answer(stream, Duration::from_secs(60)).await;
        if text.starts_with("HTTP/1.1 408") {
            timed_out += 1;
        }
    }
    assert_eq!(timed_out, 300, "every stalled upload is answered 408");
    let trickled = tokio::time::timeout(Duration::from_secs(60), trickle)
        .await
        .expect("the trickle is cut")
        .unwrap();
    assert!(trickled.starts_with("HTTP/1.1 408"), "{trickled}");
    assert!(trickled.contains("server.request_timeout_ms"), "{trickled}");
    // The attack did reach the open-files limit...
    assert!(herald.log().contains("accept failed"), "{}", herald.log());
    // ...and herald serves again.
    let (status, _) = raw(
        addr,
        &format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        herald
            .metric("herald_http_refused_total{reason=\"timeout\"}")
            .await
            >= 301.0
    );
}

/// Shutdown drops an upload that is still being received once
/// `shutdown_timeout_ms` has passed; it does not wait for the request's own
/// deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_stalled_upload() {
    let herald = Herald::start_with(|c| {
        c.server.request_timeout_ms = 600_000;
        c.server.shutdown_timeout_ms = 500;
    })
    .await;
    let addr = herald.local_addr();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(stalled_post(addr.port()).as_bytes())
        .await
        .unwrap();
    herald.wait_metric("herald_http_connections", 1.0).await;
    tokio::time::timeout(Duration::from_secs(30), herald.stop())
        .await
        .expect("shutdown ends long before the request deadline");
    assert_eq!(answer(&mut stream, Duration::from_secs(10)).await, "");
}

/// A client that writes its whole 8 MiB body before reading (Python's
/// http.client) still reads the 413 herald answered on the Content-Length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_answered_413_early_and_the_client_reads_it() {
    let herald = Herald::start().await;
    let addr = herald.local_addr();
    // Announced, never sent: answered at once.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head =
        format!("POST /events/orders HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 2000000\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let text = answer(&mut stream, Duration::from_secs(20)).await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("larger than 1048576 bytes"), "{text}");

    let script = format!(
        "import http.client\n\
         c = http.client.HTTPConnection('127.0.0.1', {port}, timeout=30)\n\
         c.request('POST', '/events/orders', body=b'x' * (8 * 1024 * 1024),\n\
                   headers={{'Content-Type': 'application/json'}})\n\
         r = c.getresponse()\n\
         print(r.status, r.read().decode())\n",
        port = addr.port()
    );
    let out = tokio::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("413 "),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("larger than"), "{stdout}");
    herald.stop().await;
}

/// A TCP connection from `source` (127.0.0.2, ...) to `addr`.
async fn connect_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

/// A WebSocket session from `source`: `Ok` once subscribed, else the
/// close code.
async fn ws_from(source: [u8; 4], addr: SocketAddr) -> Result<common::Client, Option<u16>> {
    let stream = connect_from(source, addr).await;
    let url = format!("ws://{addr}/notifications?channel=broadcast");
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    let mut client = common::Client { ws };
    match client.next().await {
        common::Next::Frame(f) if f["type"] == "subscribed" => Ok(client),
        common::Next::Frame(f) => panic!("unexpected {f}"),
        common::Next::Closed(code, _) => Err(code),
    }
}

/// Wait until herald has `n` connections open besides the one asking.
async fn wait_open(addr: SocketAddr, n: f64) {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        // Refused (an empty answer) while herald is still at its total cap.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await;
        let text = answer(&mut stream, Duration::from_secs(10)).await;
        let open =
            match common::metric_present(&text.replace("\r\n", "\n"), "herald_http_connections") {
                Some(n) => n - 1.0,
                None => f64::NAN,
            };
        if open == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{open} connections open, want {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_address_and_in_total() {
    let herald = Herald::start_with(|c| {
        c.server.max_connections_per_ip = 2;
        c.server.max_http_connections = 5;
    })
    .await;
    let addr = herald.local_addr();
    let a1 = ws_from([127, 0, 0, 2], addr).await.expect("first from .2");
    let a2 = ws_from([127, 0, 0, 2], addr).await.expect("second from .2");
    let b1 = ws_from([127, 0, 0, 3], addr).await.expect("first from .3");
    let b2 = ws_from([127, 0, 0, 3], addr).await.expect("second from .3");
    let c1 = ws_from([127, 0, 0, 4], addr).await.expect("first from .4");
    // Over the total: closed before a byte is read.
    let mut over = connect_from([127, 0, 0, 6], addr).await;
    let _ = over
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    assert_eq!(answer(&mut over, Duration::from_secs(10)).await, "");
    drop((b2, c1));
    wait_open(addr, 3.0).await;

    // Over the per-address cap: WebSocket closed with 1013, HTTP 429.
    assert_eq!(ws_from([127, 0, 0, 2], addr).await.err(), Some(Some(1013)));
    let mut http = connect_from([127, 0, 0, 2], addr).await;
    http.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let text = answer(&mut http, Duration::from_secs(10)).await;
    assert!(text.starts_with("HTTP/1.1 429"), "{text}");
    assert!(text.contains("server.connections_per_ip"), "{text}");
    // Another address is not affected; closed sessions give room back.
    wait_open(addr, 3.0).await;
    let b3 = ws_from([127, 0, 0, 3], addr).await.expect("again from .3");
    drop((a1, a2, b1, b3));
    wait_open(addr, 0.0).await;
    let metrics = herald.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "herald_http_refused_total{reason=\"connections_per_ip\"}"
        ),
        2.0
    );
    // The one above, and any probe of `wait_open` that found herald full.
    assert!(
        metric_value(
            &metrics,
            "herald_http_refused_total{reason=\"connections\"}"
        ) >= 1.0
    );
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_faster_than_the_rate_per_address_gets_429() {
    let herald = Herald::start_with(|c| c.server.connect_rate_per_ip = 1).await;
    let addr = herald.local_addr();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let mut s = connect_from([127, 0, 0, 5], addr).await;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let text = answer(&mut s, Duration::from_secs(10)).await;
        statuses.push(text.get(9..12).unwrap_or_default().to_string());
    }
    assert_eq!(statuses[0], "200", "{statuses:?}");
    assert!(statuses.iter().any(|s| s == "429"), "{statuses:?}");
    // Another address has its own bucket.
    let (status, _) = raw(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    herald.stop().await;
}

/// One POST of 10,000 events that all fail the same rule (a channel name
/// with a space): a handful of log lines, the counter exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_failing_events_write_a_handful_of_log_lines() {
    let herald = common::process::Process::start("");
    let events: Vec<_> = (0..10_000)
        .map(|i| serde_json::json!({"type": "x", "channel": format!("bad channel {i}")}))
        .collect();
    let res = reqwest::Client::new()
        .post(format!("{}/events/orders", herald.base()))
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let answer: serde_json::Value = res.json().await.unwrap();
    assert_eq!(answer["failed_rules"], 10_000, "{answer}");
    assert_eq!(
        herald
            .metric("herald_rule_failures_total{rule=\"default\"}")
            .await,
        10_000.0
    );
    let log = herald.log();
    let details = log.lines().filter(|l| l.contains("rule failed")).count();
    let summaries = log
        .lines()
        .filter(|l| l.contains("ingest request: rules failed"))
        .count();
    assert!((1..=5).contains(&details), "{details} detail lines:\n{log}");
    assert_eq!(summaries, 1, "{log}");
    let summary = log.lines().find(|l| l.contains("ingest request")).unwrap();
    assert!(summary.contains("failed_rules=10000"), "{summary}");
    assert!(summary.contains("rule=default"), "{summary}");
    assert!(log.len() < 20_000, "{} bytes of log", log.len());
}

/// Kafka over TLS is built in: sources with `security.protocol` SSL (with a
/// private CA file) and SASL_SSL (SCRAM) start; librdkafka checks these
/// properties, and its CA file, when herald creates the consumer at start
/// (without TLS support it refused them: "OpenSSL not available at build
/// time"). No broker here speaks Kafka over TLS (Tansu does not), so this
/// is a configuration-level check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_ssl_and_sasl_ssl_sources_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("kafka-ca.pem");
    std::fs::write(&ca, common::tls::Ca::new("kafka test CA").pem()).unwrap();
    let ca = ca.display().to_string();
    let cases: [&[(&str, &str)]; 2] = [
        &[("security.protocol", "SSL"), ("ssl.ca.location", &ca)],
        &[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "herald"),
            ("sasl.password", "secret"),
            ("ssl.ca.location", &ca),
        ],
    ];
    for properties in cases {
        let mut source = common::kafka::source("127.0.0.1:1", &["orders"], &common::unique("g"));
        source.dead_letter_topic = Some("dead".into());
        for (k, v) in properties {
            source.properties.insert((*k).to_string(), (*v).to_string());
        }
        let built = source.source("kafka", herald::store::Hints::default());
        assert!(built.is_ok(), "{properties:?}: {:?}", built.err());
    }
}
