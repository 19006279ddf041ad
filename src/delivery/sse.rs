//! Server-Sent Events: `GET /notifications` with `Accept: text/event-stream`
//! and no `Upgrade`, for networks that block WebSockets.
//!
//! The stream is a [`session`] like a WebSocket's — same subscriptions,
//! replay, seam, bounded queue, token expiry, shutdown — run over
//! [`SseSocket`], which turns what the session writes into SSE:
//! - each text frame becomes one event whose `data` is exactly that JSON
//!   frame (default event type `message`), so
//!   `JSON.parse(event.data)` sees what a WebSocket client sees;
//! - notification and `subscribed` events carry an `id:` that resumes the
//!   whole stream: `<epoch>-<offset>` when it has one channel, else the
//!   cursor `c1.` + base64url (no padding) of the JSON object
//!   `{channel: id}` covering every channel with a position. A browser
//!   sends it back as `Last-Event-ID` when it reconnects; a client may pass
//!   it as `last_id`;
//! - the session's pings become `: heartbeat` comments every
//!   `delivery.sse_heartbeat_ms` (answered at once: there is no pong on a
//!   stream, and a stalled write still ends it);
//! - a close becomes `event: close` with `{"code":…,"reason":…}` (4008 too
//!   slow, 4010 token expired, 1001 shutdown), then the stream ends.
//!
//! A refused stream is an HTTP status with a JSON body
//! ([`super::refusal`]): the connection limit (503), the query (400), the
//! token (401) and the channels (403) are checked before the first byte,
//! by the functions the WebSocket gateway uses.
//!
//! Invariant: an `id:` is written only after its notification's data
//! (same event), and covers only notifications written before it, so a
//! resume from any `Last-Event-ID` neither skips nor repeats one.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::PollSender;

use super::protocol::CloseCode;
use super::refusal::{self, Refusal};
use super::session::{self, SessionContext, Subscription};
use super::ws::{ConnectQuery, Gateway};

/// The prefix of a multi-channel cursor.
pub const CURSOR_PREFIX: &str = "c1.";

/// Chunks handed to the HTTP body and not yet taken: with the write
/// buffer, what a stream may hold for a client that stopped reading.
const BODY_CHUNKS: usize = 2;

/// Whether the request asks for an event stream (`Accept:
/// text/event-stream`, with or without parameters).
pub fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| t.split(';').next())
        .any(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// Where a stream resumes: `last_id`, else `Last-Event-ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Every channel from the head (or its rewind).
    Live,
    /// `<epoch>-<offset>` (or anything not a cursor): the first channel.
    Id(String),
    /// A cursor: each channel in it from its id; the others live.
    Cursor(BTreeMap<String, String>),
}

impl Resume {
    /// Parse a `last_id` or `Last-Event-ID`. A plain id is checked by the
    /// session (a malformed one gets `bad_last_id`, as on a WebSocket); a
    /// `c1.` cursor that does not decode is a bad request.
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(Resume::Live);
        };
        let Some(encoded) = value.strip_prefix(CURSOR_PREFIX) else {
            return Ok(Resume::Id(value.to_string()));
        };
        let json = URL_SAFE_NO_PAD
            .decode(encoded.trim_end_matches('='))
            .map_err(|e| format!("last_id: the c1. cursor is not base64url: {e}"))?;
        serde_json::from_slice(&json)
            .map(Resume::Cursor)
            .map_err(|e| format!("last_id: the c1. cursor is not a JSON object of ids: {e}"))
    }

    /// Give each subscription its `last_id`.
    fn apply(self, requests: &mut [Subscription]) {
        match self {
            Resume::Live => {}
            Resume::Id(id) => {
                if let Some(first) = requests.first_mut() {
                    first.last_id = Some(id);
                }
            }
            Resume::Cursor(mut ids) => {
                for r in requests {
                    r.last_id = ids.remove(&r.channel);
                }
            }
        }
    }
}

/// The `c1.` cursor of `ids`.
pub fn cursor(ids: &BTreeMap<String, String>) -> String {
    let json = serde_json::to_vec(ids).unwrap_or_default();
    format!("{CURSOR_PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
}

/// Check the connection limit, the query, the token and the channels;
/// the stream's subscriptions and principal, or the refusal.
async fn admit(
    gw: &Gateway,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<(crate::auth::Principal, Vec<Subscription>), Refusal> {
    let shared = &gw.shared;
    let config = &shared.config;
    let metrics = &shared.metrics;
    tracing::debug!(
        query = %query.map(crate::auth::redact_query).unwrap_or_default(),
        "event stream request"
    );
    let mut connect =
        ConnectQuery::parse(query, config.max_subscriptions).map_err(Refusal::bad_request)?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let resume = Resume::parse(connect.last_id.take().or(last_event_id).as_deref())
        .map_err(Refusal::bad_request)?;
    let principal = refusal::authenticate(&shared.auth, metrics, "sse", query, headers).await?;
    let mut requests = connect
        .subscriptions(&principal, &config.default_channels)
        .map_err(|why| {
            metrics.auth_rejected("sse", "forbidden");
            Refusal {
                status: StatusCode::FORBIDDEN,
                code: CloseCode::Forbidden,
                error: why,
            }
        })?;
    resume.apply(&mut requests);
    Ok((principal, requests))
}

/// `GET /notifications` with `Accept: text/event-stream`.
pub async fn serve(gw: Arc<Gateway>, req: Request) -> Response {
    let Ok(permit) = gw.connections.clone().try_acquire_owned() else {
        gw.shared
            .metrics
            .session_closed(CloseCode::Overloaded.reason());
        return Refusal::unavailable("too many connections; retry later").into_response();
    };
    let (principal, requests) = match admit(&gw, req.uri().query(), req.headers()).await {
        Ok(admitted) => admitted,
        Err(refusal) => {
            gw.shared.metrics.session_closed(refusal.label());
            tracing::info!(code = refusal.code.code(), reason = %refusal.error, "event stream refused");
            return refusal.into_response();
        }
    };
    let base = &gw.shared;
    let mut config = base.config.clone();
    // The session's ping becomes the heartbeat comment.
    config.ping_interval_ms = config.sse_heartbeat_ms;
    let shared = Arc::new(SessionContext {
        hub: base.hub.clone(),
        store: base.store.clone(),
        metrics: base.metrics.clone(),
        config,
        auth: base.auth.clone(),
        shutdown: gw.streams_stop.clone(),
    });
    let (tx, rx) = mpsc::channel(BODY_CHUNKS);
    let socket = SseSocket::new(
        tx,
        requests.len() == 1,
        shared.config.write_buffer_bytes,
        shared.config.sse_retry_ms,
    );
    gw.sessions.spawn(async move {
        session::run(socket, shared, requests, principal).await;
        drop(permit);
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// The start of every notification frame ([`super::protocol::NotificationFrame`]).
const NOTIFICATION: &str = "{\"type\":\"notification\",\"id\":\"";
const SUBSCRIBED: &str = "{\"type\":\"subscribed\"";

/// A session's socket that writes Server-Sent Events into an HTTP body.
///
/// Writes go to a buffer; a flush (or a full buffer) hands it to the body
/// through a channel of [`BODY_CHUNKS`], which waits while the client does
/// not read: the session's bounded write and queue policies then apply as
/// on a WebSocket. Reading yields a pong for every ping written, and ends
/// when the client has gone (the body was dropped).
pub struct SseSocket {
    tx: PollSender<Bytes>,
    /// Resolves when the body is dropped (the client went away).
    gone: Pin<Box<dyn Future<Output = ()> + Send + Sync>>,
    is_gone: bool,
    buf: BytesMut,
    limit: usize,
    /// One channel: ids are plain; several: `c1.` cursors.
    single: bool,
    positions: BTreeMap<String, String>,
    /// Pings written and not yet answered.
    pongs: usize,
    waker: Option<Waker>,
}

impl fmt::Debug for SseSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseSocket")
            .field("buffered", &self.buf.len())
            .field("positions", &self.positions)
            .finish_non_exhaustive()
    }
}

impl SseSocket {
    pub fn new(tx: mpsc::Sender<Bytes>, single: bool, limit: usize, retry_ms: u64) -> Self {
        let probe = tx.clone();
        let mut buf = BytesMut::with_capacity(limit.min(64 * 1024));
        buf.put_slice(format!("retry: {retry_ms}\n\n").as_bytes());
        Self {
            tx: PollSender::new(tx),
            gone: Box::pin(async move { probe.closed().await }),
            is_gone: false,
            buf,
            limit,
            single,
            positions: BTreeMap::new(),
            pongs: 0,
            waker: None,
        }
    }

    /// Note the position a frame gives its channel; the event's `id:`.
    fn track(&mut self, frame: &str) -> Option<String> {
        let (channel, id) = if let Some(rest) = frame.strip_prefix(NOTIFICATION) {
            let (id, rest) = rest.split_once('"')?;
            let rest = rest.strip_prefix(",\"channel\":")?;
            let channel = serde_json::Deserializer::from_str(rest)
                .into_iter::<String>()
                .next()?
                .ok()?;
            (channel, id.to_string())
        } else if frame.starts_with(SUBSCRIBED) {
            #[derive(serde::Deserialize)]
            struct Subscribed {
                channel: String,
                position: String,
            }
            let s: Subscribed = serde_json::from_str(frame).ok()?;
            (s.channel, s.position)
        } else {
            return None;
        };
        if self.single {
            self.positions.clear();
            self.positions.insert(channel, id.clone());
            return Some(id);
        }
        self.positions.insert(channel, id);
        Some(cursor(&self.positions))
    }

    fn write(&mut self, msg: Message) {
        match msg {
            Message::Text(text) => {
                let id = self.track(&text);
                // A JSON frame has no raw line breaks; split anyway, so no
                // frame can ever end an event early.
                for line in text.split('\n') {
                    self.buf.put_slice(b"data: ");
                    self.buf.put_slice(line.as_bytes());
                    self.buf.put_u8(b'\n');
                }
                if let Some(id) = id {
                    self.buf.put_slice(b"id: ");
                    self.buf.put_slice(id.as_bytes());
                    self.buf.put_u8(b'\n');
                }
                self.buf.put_u8(b'\n');
            }
            Message::Ping(_) => {
                self.buf.put_slice(b": heartbeat\n\n");
                self.pongs += 1;
                if let Some(w) = self.waker.take() {
                    w.wake();
                }
            }
            Message::Close(frame) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((CloseCode::Normal.code(), String::new()));
                let data = serde_json::json!({ "code": code, "reason": reason });
                self.buf.put_slice(b"event: close\ndata: ");
                self.buf.put_slice(data.to_string().as_bytes());
                self.buf.put_slice(b"\n\n");
            }
            Message::Binary(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }

    /// Hand the buffer to the body, waiting while the body is full.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), tungstenite::Error>> {
        if self.buf.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if ready!(self.tx.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(tungstenite::Error::ConnectionClosed));
        }
        let chunk = self.buf.split().freeze();
        Poll::Ready(
            self.tx
                .send_item(chunk)
                .map_err(|_| tungstenite::Error::ConnectionClosed),
        )
    }
}

impl Sink<Message> for SseSocket {
    type Error = tungstenite::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        if this.buf.len() >= this.limit {
            ready!(this.poll_send(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.get_mut().write(item);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_send(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        this.tx.close();
        Poll::Ready(Ok(()))
    }
}

impl Stream for SseSocket {
    type Item = Result<Message, tungstenite::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.pongs > 0 {
            this.pongs -= 1;
            return Poll::Ready(Some(Ok(Message::Pong(Default::default()))));
        }
        if this.is_gone || this.gone.as_mut().poll(cx).is_ready() {
            this.is_gone = true;
            return Poll::Ready(None);
        }
        this.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests;
