//! Connection caps and request deadlines.
//!
//! At accept ([`Limits::admit`]):
//! - over `server.max_http_connections` (every accepted connection, HTTP
//!   and WebSocket, counted until its socket closes) the connection is
//!   closed at once, before a byte is read: the cheapest answer, and the
//!   one that keeps the process under its open-files limit;
//! - over `server.max_connections_per_ip`, or faster than
//!   `server.connect_rate_per_ip` new connections per second (a token
//!   bucket per address, one second of burst), the connection is *limited*:
//!   its request is read and answered 429 (HTTP) or, for a WebSocket
//!   upgrade, 101 then close 1013, so browsers see a reason and back off.
//!
//! Per request ([`guard`]): the body must arrive within
//! `server.request_timeout_ms` of the head (the head itself within
//! `handshake_timeout_ms`, hyper's header timer), else 408 and close; a
//! trickle of one byte a second does not reset it. A route with a body limit
//! answers a larger `Content-Length` with 413 before reading the body
//! ([`content_length_over`]) and marks the connection to *linger*: after
//! the answer, herald reads and discards what the client still sends for
//! up to [`LINGER`] before closing, so a client that writes its whole body
//! before reading sees the 413 instead of a connection reset.
//!
//! Invariants: a [`Ticket`] exists for every open accepted socket (moved
//! into the upgraded WebSocket and into a lingering close with it), so the
//! counts are exact; the per-address table holds only addresses with open
//! connections or an unfilled bucket.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::EdgeMetrics;

/// How long a connection answered early (413) keeps reading and discarding
/// the body its client still sends before herald closes it.
pub const LINGER: Duration = Duration::from_secs(5);

/// The caps of one listener.
#[derive(Debug)]
pub struct Limits {
    max_total: usize,
    /// 0: no per-address cap.
    max_per_ip: usize,
    /// New connections per second per address; 0: no rate limit.
    rate_per_ip: u32,
    state: Mutex<State_>,
    metrics: EdgeMetrics,
}

#[derive(Debug, Default)]
struct State_ {
    open: usize,
    peers: HashMap<IpAddr, Peer>,
}

#[derive(Debug)]
struct Peer {
    open: usize,
    tokens: f64,
    refilled: Instant,
}

/// What to do with an accepted connection.
#[derive(Debug)]
pub enum Admission {
    /// Serve it.
    Admitted(Ticket),
    /// Serve one answer, 429 or close 1013, naming the limit.
    Limited(Ticket, &'static str),
    /// Close it at once (over `max_http_connections`).
    Refused,
}

impl Limits {
    pub fn new(
        max_total: usize,
        max_per_ip: usize,
        rate_per_ip: u32,
        metrics: EdgeMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            rate_per_ip,
            state: Mutex::new(State_::default()),
            metrics,
        })
    }

    pub fn metrics(&self) -> &EdgeMetrics {
        &self.metrics
    }

    /// Admit a connection from `peer`.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Admission {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.open >= self.max_total {
            drop(state);
            self.metrics.refused("connections");
            return Admission::Refused;
        }
        let burst = f64::from(self.rate_per_ip.max(1));
        if state.peers.len() > 4096 {
            // Forget addresses with nothing open whose bucket is full again.
            let rate = f64::from(self.rate_per_ip);
            state.peers.retain(|_, p| {
                p.open > 0 || p.tokens + now.duration_since(p.refilled).as_secs_f64() * rate < burst
            });
        }
        state.open += 1;
        let peer_state = state.peers.entry(peer).or_insert(Peer {
            open: 0,
            tokens: burst,
            refilled: now,
        });
        peer_state.open += 1;
        let mut limited = None;
        if self.rate_per_ip > 0 {
            let elapsed = now.duration_since(peer_state.refilled).as_secs_f64();
            peer_state.tokens =
                (peer_state.tokens + elapsed * f64::from(self.rate_per_ip)).min(burst);
            peer_state.refilled = now;
            if peer_state.tokens >= 1.0 {
                peer_state.tokens -= 1.0;
            } else {
                limited = Some("connect_rate_per_ip");
            }
        }
        if self.max_per_ip > 0 && peer_state.open > self.max_per_ip {
            limited = Some("connections_per_ip");
        }
        drop(state);
        self.metrics.connections.inc();
        let ticket = Ticket {
            limits: self.clone(),
            peer,
        };
        match limited {
            None => Admission::Admitted(ticket),
            Some(reason) => {
                self.metrics.refused(match reason {
                    "connect_rate_per_ip" => "rate",
                    _ => "connections_per_ip",
                });
                Admission::Limited(ticket, reason)
            }
        }
    }

    fn release(&self, peer: IpAddr) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.open = state.open.saturating_sub(1);
        self.metrics.connections.dec();
        let rate_limited = self.rate_per_ip > 0;
        if let Some(p) = state.peers.get_mut(&peer) {
            p.open = p.open.saturating_sub(1);
            // Without a rate the entry is only a count: drop it at zero.
            if p.open == 0 && !rate_limited {
                state.peers.remove(&peer);
            }
        }
    }
}

/// One open accepted connection, counted until dropped.
#[derive(Debug)]
pub struct Ticket {
    limits: Arc<Limits>,
    peer: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.limits.release(self.peer);
    }
}

/// What the edge knows about a request's connection (a request extension).
#[derive(Debug, Clone)]
pub struct Connection {
    pub peer: SocketAddr,
    /// The limit this connection is over, when [`Admission::Limited`].
    pub limited: Option<&'static str>,
    linger: Arc<AtomicBool>,
}

impl Connection {
    /// Ask for a lingering close of this connection (after an early answer).
    pub fn linger(&self) {
        self.linger.store(true, Ordering::Relaxed);
    }
}

/// An accepted socket with its [`Ticket`]: the ticket is released when the
/// socket closes, wherever it went (hyper, an upgraded WebSocket), after a
/// lingering close when one was asked for.
#[derive(Debug)]
pub struct Tracked {
    stream: Option<TcpStream>,
    ticket: Option<Ticket>,
    linger: Arc<AtomicBool>,
}

impl Tracked {
    /// Wrap `stream`; the [`Connection`] to put on its requests.
    pub fn new(
        stream: TcpStream,
        ticket: Ticket,
        peer: SocketAddr,
        limited: Option<&'static str>,
    ) -> (Self, Connection) {
        let linger = Arc::new(AtomicBool::new(false));
        (
            Self {
                stream: Some(stream),
                ticket: Some(ticket),
                linger: linger.clone(),
            },
            Connection {
                peer,
                limited,
                linger,
            },
        )
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.linger.load(Ordering::Relaxed) {
            return;
        }
        let (Some(mut stream), Some(ticket)) = (self.stream.take(), self.ticket.take()) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Answer sent: stop writing, read and discard until the client
        // stops sending or LINGER passes, then close (no reset of unread
        // data that would destroy the answer in the client's buffer).
        runtime.spawn(async move {
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
            let mut sink = vec![0u8; 16 * 1024];
            let _ = tokio::time::timeout(LINGER, async {
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
            drop(stream);
            drop(ticket);
        });
    }
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// A JSON error answer that closes the connection.
fn closing(status: StatusCode, message: String) -> Response {
    let mut response = (status, axum::Json(json!({ "error": message }))).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Whether `headers` announce a body longer than `max`: the answer is 413
/// before the body is read, with a lingering close asked of `connection`.
pub fn content_length_over(
    headers: &HeaderMap,
    max: usize,
    connection: Option<&Connection>,
) -> bool {
    let over = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > max as u64);
    if over && let Some(c) = connection {
        c.linger();
    }
    over
}

/// The middleware: limited connections get their one answer; request
/// bodies get the deadline.
pub async fn guard(
    State((timeout, metrics)): State<(Duration, EdgeMetrics)>,
    req: Request,
    next: Next,
) -> Response {
    let limited = req.extensions().get::<Connection>().and_then(|c| c.limited);
    if let Some(limit) = limited {
        // A WebSocket upgrade is answered by the gateway: 101, close 1013.
        if !is_websocket_upgrade(req.headers()) {
            let mut response = closing(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many connections from your address; retry later (server.{limit})"),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        return next.run(req).await;
    }
    let has_body = req.headers().contains_key(header::CONTENT_LENGTH)
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    if !has_body {
        return next.run(req).await;
    }
    let fired = Arc::new(AtomicBool::new(false));
    let deadline = tokio::time::Instant::now() + timeout;
    let req = req.map(|body| with_deadline(body, deadline, fired.clone()));
    let response = next.run(req).await;
    if fired.load(Ordering::Relaxed) {
        metrics.refused("timeout");
        return closing(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} ms (server.request_timeout_ms)",
                timeout.as_millis()
            ),
        );
    }
    response
}

/// `body`, ending in an error at `deadline` (and setting `fired`).
fn with_deadline(body: Body, deadline: tokio::time::Instant, fired: Arc<AtomicBool>) -> Body {
    let stream = body.into_data_stream();
    let limited = futures_util::stream::unfold(Some(stream), move |state| {
        let fired = fired.clone();
        async move {
            let mut stream = state?;
            tokio::select! {
                item = stream.next() => item.map(|item| (item, Some(stream))),
                () = tokio::time::sleep_until(deadline) => {
                    fired.store(true, Ordering::Relaxed);
                    Some((Err(axum::Error::new(io::Error::from(io::ErrorKind::TimedOut))), None))
                }
            }
        }
    });
    Body::from_stream(limited)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn kind(a: &Admission) -> &'static str {
        match a {
            Admission::Admitted(_) => "ok",
            Admission::Limited(_, reason) => reason,
            Admission::Refused => "refused",
        }
    }

    #[test]
    fn total_and_per_address_caps_count_open_tickets() {
        let limits = Limits::new(3, 2, 0, EdgeMetrics::default());
        let a1 = limits.admit(ip(2));
        let a2 = limits.admit(ip(2));
        let a3 = limits.admit(ip(2));
        assert_eq!(
            [kind(&a1), kind(&a2), kind(&a3)],
            ["ok", "ok", "connections_per_ip"]
        );
        assert_eq!(kind(&limits.admit(ip(3))), "refused");
        drop(a3);
        let b = limits.admit(ip(3));
        assert_eq!(kind(&b), "ok");
        drop((a1, a2, b));
        assert!(limits.state.lock().expect("lock").peers.is_empty());
        assert_eq!(limits.state.lock().expect("lock").open, 0);
    }

    #[test]
    fn the_rate_per_address_is_a_token_bucket() {
        let limits = Limits::new(100, 0, 2, EdgeMetrics::default());
        let got: Vec<_> = (0..3).map(|_| kind(&limits.admit(ip(2)))).collect();
        assert_eq!(got, ["ok", "ok", "connect_rate_per_ip"]);
        // Another address has its own bucket.
        assert_eq!(kind(&limits.admit(ip(4))), "ok");
    }
}
