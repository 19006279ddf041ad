//! Shared helpers for integration tests: an in-process herald on
//! 127.0.0.1:0, an HTTP client for ingest, and a WebSocket client that reads
//! JSON frames with timeouts (a test never hangs on a missing frame).
//!
//! What a test creates at a broker or store (topics, queues, exchanges, key
//! prefixes) is held by a guard that deletes it on drop, also when the test
//! fails; declare the guard before the herald that uses it, so herald is
//! dropped (and, in process, shut down) first.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod amqp;
pub mod auth;
pub mod crash;
pub mod kafka;
pub mod lines;
pub mod nats;
pub mod port;
pub mod process;
pub mod producers;
pub mod redis_server;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald::app::Running;
use herald::config::Config;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for one expected frame.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound of a wait for a condition (readiness, a metric, a broker state).
pub const WAIT: Duration = Duration::from_secs(30);

/// A random name for topics, channels, queues: tests never collide.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff)
}

/// A herald running inside the test process. Dropped without [`Herald::stop`]
/// (a test that failed), it shuts down before the drop returns when the
/// runtime allows blocking (multi-thread), so its sources let go of topics
/// and queues before their guards delete them.
pub struct Herald {
    running: Option<Running>,
    addr: SocketAddr,
    pub base: String,
    http: reqwest::Client,
}

impl Herald {
    /// Built-in defaults, on a random port.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Defaults changed by `edit`, on a random port.
    pub async fn start_with(edit: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.server.shutdown_timeout_ms = 3000;
        edit(&mut config);
        let running = herald::app::start(config).await.expect("herald starts");
        let addr = running.local_addr();
        Self {
            running: Some(running),
            addr,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
        }
    }

    /// The running herald (until [`Herald::stop`]).
    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running until stopped")
    }

    /// The address herald listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn ws_url(&self, query: &str) -> String {
        let addr = self.addr;
        if query.is_empty() {
            format!("ws://{addr}/notifications")
        } else {
            format!("ws://{addr}/notifications?{query}")
        }
    }

    /// POST `body` to `/events/{topic}`; the status and the JSON answer.
    pub async fn post(&self, topic: &str, body: &Value) -> (u16, Value) {
        self.post_raw(topic, serde_json::to_vec(body).unwrap())
            .await
    }

    pub async fn post_raw(&self, topic: &str, body: Vec<u8>) -> (u16, Value) {
        let res = self
            .http
            .post(format!("{}/events/{topic}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST reaches herald");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// POST and insist on 202.
    pub async fn publish(&self, topic: &str, body: &Value) -> Value {
        let (status, answer) = self.post(topic, body).await;
        assert_eq!(status, 202, "POST /events/{topic}: {answer}");
        answer
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET reaches herald");
        (res.status().as_u16(), res.text().await.unwrap_or_default())
    }

    /// Connect a WebSocket client with `query` (without `?`).
    pub async fn connect(&self, query: &str) -> Client {
        Client::connect(&self.ws_url(query)).await
    }

    /// Connect and wait for `subscribed` on the channels asked for.
    pub async fn subscribe(&self, query: &str) -> (Client, Value) {
        let mut client = self.connect(query).await;
        let subscribed = client.next_of_type("subscribed").await;
        (client, subscribed)
    }

    /// Poll `/readyz` until it answers `want` (200 or 503) or `within`
    /// passes; the last body.
    pub async fn wait_ready(&self, want: u16, within: Duration) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (status, body) = self.get("/readyz").await;
            if status == want {
                return Ok(body);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("/readyz stayed {status}: {body}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.1
    }

    /// The value of one metric line (`name{labels}`), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// Poll `series` until it is at least `at_least` (counters move just
    /// after the work they count, which a test may see first) or [`WAIT`]
    /// passes; its last value.
    pub async fn wait_metric(&self, series: &str, at_least: f64) -> f64 {
        wait_metric(|| self.metrics(), series, at_least).await
    }

    /// Shut down in order and wait for it.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        running.stopper().cancel();
        // A current-thread runtime cannot block here; its herald stops with
        // the runtime (no Kafka test runs on one).
        if let Ok(handle) = tokio::runtime::Handle::try_current()
            && handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        {
            tokio::task::block_in_place(|| handle.block_on(running.wait()));
        }
    }
}

/// The value of one metric line (`name{labels}`) in a `/metrics` text, 0
/// when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    metric_present(text, series).unwrap_or(0.0)
}

/// The value of one metric line (`name{labels}`), `None` when absent.
pub fn metric_present(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The values of every series of metric `name`, by their label text
/// (`{reason="too_slow"}`); for checks that no other label moved.
pub fn metric_family(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = rest.rsplit_once(' ')?;
            if !(labels.is_empty() || labels.starts_with('{')) {
                return None; // another metric whose name starts with `name`
            }
            Some((labels.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Poll the metrics text `read` returns until `series` is at least
/// `at_least` or [`WAIT`] passes; its last value.
pub async fn wait_metric<F, Fut>(read: F, series: &str, at_least: f64) -> f64
where
    F: Fn() -> Fut,
    Fut: Future<Output = String>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let value = metric_value(&read().await, series);
        if value >= at_least || tokio::time::Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A WebSocket client reading one JSON object per text frame.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What the next read produced.
#[derive(Debug)]
pub enum Next {
    Frame(Value),
    Closed(Option<u16>, String),
}

impl Client {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("WebSocket handshake");
        Self { ws }
    }

    /// The next JSON frame or the close, skipping control frames.
    pub async fn next(&mut self) -> Next {
        loop {
            let msg = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .expect("a frame within the timeout");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).expect("every text frame is JSON");
                    assert!(v.is_object(), "every frame is a JSON object: {v}");
                    return Next::Frame(v);
                }
                Some(Ok(Message::Close(frame))) => {
                    return match frame {
                        Some(f) => Next::Closed(Some(f.code.into()), f.reason.to_string()),
                        None => Next::Closed(None, String::new()),
                    };
                }
                Some(Ok(Message::Binary(_))) => panic!("herald sends text frames only"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Next::Closed(None, e.to_string()),
                None => return Next::Closed(None, "stream ended".into()),
            }
        }
    }

    /// Like `next`, waiting at most `wait`; `None` when nothing came.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Next> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Some(Next::Frame(
                        serde_json::from_str(&t).expect("every text frame is JSON"),
                    ));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Some(match frame {
                        Some(f) => Next::Closed(Some(f.code.into()), f.reason.to_string()),
                        None => Next::Closed(None, String::new()),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Some(Next::Closed(None, e.to_string())),
                None => return Some(Next::Closed(None, "stream ended".into())),
            }
        }
    }

    /// The next JSON frame; panics on close.
    pub async fn frame(&mut self) -> Value {
        match self.next().await {
            Next::Frame(v) => v,
            Next::Closed(code, reason) => {
                panic!("closed ({code:?}: {reason}) while a frame was expected")
            }
        }
    }

    /// The next frame, which must have `type` = `ty`.
    pub async fn next_of_type(&mut self, ty: &str) -> Value {
        let v = self.frame().await;
        assert_eq!(v["type"], ty, "expected a {ty} frame, got {v}");
        v
    }

    /// `n` notification frames.
    pub async fn notifications(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next_of_type("notification").await);
        }
        out
    }

    /// The notifications that arrive until the close, and its code; any
    /// other frame fails.
    pub async fn notifications_until_close(&mut self) -> (Vec<Value>, Option<u16>) {
        let mut out = Vec::new();
        loop {
            match self.next().await {
                Next::Frame(f) if f["type"] == "notification" => out.push(f),
                Next::Frame(f) => panic!("unexpected frame {f}"),
                Next::Closed(code, _) => return (out, code),
            }
        }
    }

    /// Read until closed; the close code.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            if let Next::Closed(code, _) = self.next().await {
                return code;
            }
        }
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_string().into()))
            .await
            .expect("send");
    }

    /// No frame arrives within `wait`, and the connection stays open: a
    /// close or a socket error is not quiet.
    pub async fn assert_quiet(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                Ok(Some(Ok(msg))) => panic!("expected no frame, got {msg:?}"),
                Ok(Some(Err(e))) => panic!("expected an open, quiet connection: {e}"),
                Ok(None) => panic!("expected an open, quiet connection: it ended"),
            }
        }
    }
}

/// Run `cleanup` to its end (bounded by [`WAIT`]) on a runtime of its own,
/// in a thread of its own: guards call it from `drop`, which may run while
/// a test's runtime unwinds and cannot be blocked on.
pub fn clean_up_detached<F, Fut>(what: &str, cleanup: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let joined = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { tokio::time::timeout(WAIT, cleanup()).await })
            .is_ok()
    })
    .join();
    if !matches!(joined, Ok(true)) {
        eprintln!("cleanup of {what} did not finish");
    }
}

/// The `id` strings of notification frames.
pub fn ids(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect()
}

/// The `offset` numbers of notification frames.
pub fn offsets(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| f["offset"].as_u64().unwrap())
        .collect()
}

/// The epoch of a notification id or `position` (`<epoch>-<offset>`).
pub fn epoch_of(id: &str) -> String {
    id.rsplit_once('-').unwrap().0.to_string()
}
