//! One client session: subscriptions, replay, live delivery, heartbeat.
//!
//! Written against any `Sink<Message> + Stream<Item = Result<Message>>`, so
//! tests drive it over an in-memory pipe with paused time.
//!
//! Replay without gaps or duplicates, per channel:
//! 1. register with the hub first, so everything appended from now on is
//!    queued for this session;
//! 2. read the log after `last_id` up to its head, sending each
//!    notification and remembering the highest offset sent;
//! 3. send `subscribed`, then deliver from the queue, skipping offsets
//!    already sent (they were both in the log and queued).
//!
//! A live notification that arrives with a hole before it (which the stores
//! do not produce, but a reconnecting shared store might) is filled from the
//! log, never skipped. The session owns its socket and runs as one task; the
//! hub only ever `try_send`s into its bounded queue, and an overflow closes
//! the session with 4008 so a stuck client costs at most one queue.
//!
//! A client that stops reading is too slow (4008) as soon as its queue
//! overflows, or when the pong to a ping is overdue and notifications were
//! written to it after that ping (or a write to it is still blocked): it
//! does not read what is sent. A missed pong on a connection that was sent
//! nothing else is a silent connection (4009). The kernel send buffer in
//! front of the socket is bounded (`server.send_buffer_bytes`), so a stopped
//! reader blocks a write within seconds rather than minutes.
//!
//! Authorization (see `refresh.rs`): every subscription, from the connect
//! query or a frame, passes [`Principal::check`] first. A session with a
//! token that expires is closed with 4010 at `exp` plus the leeway unless
//! a `refresh` frame brought a newer token for the same `sub` first; a
//! refreshed token that no longer grants a channel ends that subscription.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use super::hub::{Hub, Subscriber};
use super::protocol::{
    ClientFrame, CloseCode, ErrorCode, NotificationFrame, Provenance, ServerFrame,
};
use crate::auth::{Auth, Principal};
use crate::config::DeliveryConfig;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError, parse_id};

/// Most queued notifications written before one flush.
const COALESCE: usize = 256;
/// Time a close frame may take to reach a client that stopped reading.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
const TOO_SLOW: &str = "too slow: reconnect with your last ids";

// Close reasons (`herald_sessions_closed_total{reason}`) of sessions that
// end without a close code of herald's; the others are `CloseCode::reason`.
/// The client closed the WebSocket with a close frame: a normal end.
const CLIENT_CLOSED: &str = "client_closed";
/// The connection ended without a close frame: the TCP connection was
/// closed or reset, or a read or write on it failed (a client killed or
/// gone off the network). Not the client breaking the protocol.
const DROPPED: &str = "dropped";
/// A write did not complete within a heartbeat period: the client accepts
/// no bytes, so not even a close frame can reach it.
const WRITE_STALLED: &str = "write_stalled";

/// What every session shares.
#[derive(Debug)]
pub struct SessionContext {
    pub hub: Arc<Hub>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub config: DeliveryConfig,
    /// Token checks (`refresh`) and the channel policy.
    pub auth: Arc<Auth>,
    /// Cancelled at shutdown: sessions close with 1001.
    pub shutdown: CancellationToken,
}

/// A subscription asked for at connect time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub channel: String,
    pub last_id: Option<String>,
    /// Without `last_id`: replay the last `rewind` retained notifications.
    pub rewind: Option<u64>,
}

/// Where a session is in one channel.
#[derive(Debug)]
struct Position {
    epoch: Arc<str>,
    /// Highest offset sent (or skipped as already known) in `epoch`.
    offset: u64,
}

/// One step of the session loop.
#[derive(Debug)]
enum Work {
    Subscribe(Vec<Subscription>),
    Deliver(Arc<NotificationFrame>),
    Message(Message),
    Ping,
}

#[derive(Debug)]
enum End {
    Close(CloseCode, &'static str),
    /// A close whose reason is built at run time (an auth refusal).
    Refuse(CloseCode, String),
    /// The client went away or the socket failed; no close frame possible.
    Gone(&'static str),
}

type SendResult = Result<(), End>;

struct Session<S> {
    socket: S,
    shared: Arc<SessionContext>,
    sub: Arc<Subscriber>,
    rx: mpsc::Receiver<Arc<NotificationFrame>>,
    channels: HashMap<Arc<str>, Position>,
    /// Notifications written since the last metrics update.
    written: u64,
    /// When the oldest unanswered ping was sent.
    ping_sent: Option<Instant>,
    /// A notification was written after that ping.
    fed_since_ping: bool,
    pong_timeout: Duration,
    /// Longest a single socket write may wait.
    write_timeout: Duration,
    /// Who the client is; asked before every subscription.
    principal: Principal,
    /// When the token expires (plus the leeway): the session closes with
    /// 4010 then, unless a refresh moved it.
    expires: Option<Instant>,
}

/// Run a session for `principal` until it ends; returns the close reason
/// label. `subscriptions` were checked against the principal by the gateway.
pub async fn run<S>(
    socket: S,
    shared: Arc<SessionContext>,
    subscriptions: Vec<Subscription>,
    principal: Principal,
) -> &'static str
where
    S: Sink<Message, Error = tungstenite::Error>
        + Stream<Item = Result<Message, tungstenite::Error>>
        + Unpin,
{
    let (sub, rx) = shared.hub.subscriber(shared.config.queue_capacity);
    shared.metrics.sessions.inc();
    let mut session = Session {
        socket,
        shared: shared.clone(),
        sub,
        rx,
        channels: HashMap::new(),
        written: 0,
        ping_sent: None,
        fed_since_ping: false,
        pong_timeout: Duration::from_millis(shared.config.pong_timeout_ms),
        write_timeout: Duration::from_millis(
            shared.config.ping_interval_ms + shared.config.pong_timeout_ms,
        ),
        expires: refresh::deadline(&principal),
        principal,
    };
    let end = session.serve(subscriptions).await;
    let reason = match end {
        End::Close(code, text) => {
            session.close(code, Utf8Bytes::from_static(text)).await;
            code.reason()
        }
        End::Refuse(code, text) => {
            let reason = super::protocol::close_reason(text);
            session.close(code, Utf8Bytes::from(reason)).await;
            code.reason()
        }
        End::Gone(reason) => reason,
    };
    session.flush_metrics();
    shared.metrics.sessions.dec();
    shared.metrics.session_closed(reason);
    tracing::debug!(reason, "session ended");
    reason
}

impl<S> Drop for Session<S> {
    fn drop(&mut self) {
        for channel in self.channels.keys() {
            self.shared.hub.unsubscribe(channel, self.sub.id());
        }
    }
}

impl<S> Session<S>
where
    S: Sink<Message, Error = tungstenite::Error>
        + Stream<Item = Result<Message, tungstenite::Error>>
        + Unpin,
{
    async fn serve(&mut self, subscriptions: Vec<Subscription>) -> End {
        let config = &self.shared.config;
        let ping_every = Duration::from_millis(config.ping_interval_ms);
        let pong_timeout = self.pong_timeout;
        if let Err(end) = self.guarded(Work::Subscribe(subscriptions)).await {
            return end;
        }
        let mut pings = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let shutdown = self.shared.shutdown.clone();
        let sub = self.sub.clone();
        loop {
            let pong_deadline = self.ping_sent.map(|t| t + pong_timeout);
            let missed = if self.fed_since_ping {
                End::Close(CloseCode::TooSlow, TOO_SLOW)
            } else {
                End::Close(CloseCode::HeartbeatMissed, "no pong to ping")
            };
            // Order matters: what the client sent (a pong, a close) is read
            // before the pong deadline is judged, and the queue comes last so
            // steady traffic cannot starve the client's frames or the pings.
            let work = tokio::select! {
                biased;
                () = shutdown.cancelled() => return End::Close(CloseCode::GoingAway, "server shutting down"),
                () = sub.overflowed() => return End::Close(CloseCode::TooSlow, TOO_SLOW),
                msg = self.socket.next() => match msg {
                    Some(Ok(msg)) => Work::Message(msg),
                    Some(Err(e)) => return read_error(e),
                    None => return End::Gone(CLIENT_CLOSED),
                },
                _ = pings.tick() => Work::Ping,
                () = sleep_until(pong_deadline) => return missed,
                () = sleep_until(self.expires) => return refresh::expired(),
                item = self.rx.recv() => match item {
                    Some(first) => Work::Deliver(first),
                    // The session holds a sender (in `sub`): never closed.
                    None => return End::Gone("hub_closed"),
                },
            };
            if let Err(end) = self.guarded(work).await {
                return end;
            }
        }
    }

    /// Do `work`, which writes to the socket, but give up when the session
    /// overflows, the pong is overdue, or the server shuts down meanwhile: a
    /// client that stopped reading blocks the write, and must not block its
    /// own eviction.
    async fn guarded(&mut self, work: Work) -> SendResult {
        let shutdown = self.shared.shutdown.clone();
        let sub = self.sub.clone();
        let pong_deadline = self.ping_sent.map(|t| t + self.pong_timeout);
        // `work` is polled before the deadline: work that completes at once
        // is never cut, and an overdue pong without a blocked write is left
        // to the loop in `serve` (4009).
        tokio::select! {
            biased;
            () = shutdown.cancelled() => Err(End::Close(CloseCode::GoingAway, "server shutting down")),
            () = sub.overflowed() => Err(End::Close(CloseCode::TooSlow, TOO_SLOW)),
            done = self.perform(work) => done,
            () = sleep_until(pong_deadline) => Err(End::Close(CloseCode::TooSlow, TOO_SLOW)),
        }
    }

    async fn perform(&mut self, work: Work) -> SendResult {
        match work {
            Work::Subscribe(subscriptions) => {
                for r in subscriptions {
                    self.subscribe(&r.channel, r.last_id.as_deref(), r.rewind)
                        .await?;
                }
                self.flush().await
            }
            Work::Deliver(first) => self.deliver_queued(first).await,
            Work::Message(msg) => self.on_message(msg).await,
            Work::Ping => self.ping().await,
        }
    }

    async fn ping(&mut self) -> SendResult {
        if self.ping_sent.is_none() {
            self.ping_sent = Some(Instant::now());
            self.fed_since_ping = false;
        }
        self.write(Message::Ping(Default::default())).await?;
        self.flush().await
    }

    async fn on_message(&mut self, msg: Message) -> SendResult {
        match msg {
            Message::Text(text) => {
                match serde_json::from_str::<ClientFrame>(&text) {
                    Ok(ClientFrame::Ping) => self.send_frame(&ServerFrame::Pong).await?,
                    Ok(ClientFrame::Subscribe {
                        channel,
                        last_id,
                        rewind,
                    }) => {
                        self.subscribe(&channel, last_id.as_deref(), rewind).await?;
                    }
                    Ok(ClientFrame::Unsubscribe { channel }) => self.unsubscribe(&channel).await?,
                    Ok(ClientFrame::Refresh { token }) => self.refresh(token.expose()).await?,
                    Err(e) => {
                        let message = format!("invalid frame: {e}");
                        self.error(ErrorCode::BadFrame, &message, None).await?;
                    }
                }
                self.flush().await
            }
            Message::Binary(_) => {
                self.error(
                    ErrorCode::BadFrame,
                    "binary frames are not supported; send JSON text",
                    None,
                )
                .await?;
                self.flush().await
            }
            Message::Pong(_) => {
                self.ping_sent = None;
                Ok(())
            }
            // tungstenite queued the pong; flushing sends it now.
            Message::Ping(_) => self.flush().await,
            Message::Close(_) => {
                // tungstenite queued the close reply; send it so the client
                // sees a clean close.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.socket.flush()).await;
                Err(End::Gone(CLIENT_CLOSED))
            }
            Message::Frame(_) => Ok(()),
        }
    }

    async fn subscribe(
        &mut self,
        channel: &str,
        last_id: Option<&str>,
        rewind: Option<u64>,
    ) -> SendResult {
        if let Err(problem) = crate::channel::check(channel) {
            return self
                .error(ErrorCode::BadChannel, problem, Some(channel))
                .await;
        }
        if let Err(why) = self.principal.check(channel) {
            self.shared.metrics.auth_rejected("subscribe", "forbidden");
            let message = format!("channel {why}");
            return self
                .error(ErrorCode::Forbidden, &message, Some(channel))
                .await;
        }
        let known = self.channels.contains_key(channel);
        if !known && self.channels.len() >= self.shared.config.max_subscriptions {
            let message = format!(
                "at most {} subscriptions per session",
                self.shared.config.max_subscriptions
            );
            return self
                .error(ErrorCode::TooManySubscriptions, &message, Some(channel))
                .await;
        }
        // A malformed last_id cannot be resumed from: say so, then subscribe
        // live with recovered: false rather than leave the client with nothing.
        let mut wanted = None;
        let mut malformed = false;
        if let Some(id) = last_id {
            match parse_id(id) {
                Some((epoch, offset)) => wanted = Some((epoch.to_string(), offset)),
                None => {
                    malformed = true;
                    self.error(
                        ErrorCode::BadLastId,
                        "last_id must be a notification id, <epoch>-<offset>",
                        Some(channel),
                    )
                    .await?;
                }
            }
        }
        // Register before reading the log: nothing appended from here on can
        // fall between the two. The channel is recorded at once (with a
        // placeholder position; nothing is delivered from the queue until
        // the catch-up below is done), so that a session ending mid-replay
        // still unsubscribes it when dropped.
        self.shared.hub.subscribe(channel, &self.sub);
        if !known {
            self.channels.insert(
                Arc::from(channel),
                Position {
                    epoch: Arc::from(""),
                    offset: 0,
                },
            );
        }
        // `last_id` wins; a malformed one is not replaced by the rewind.
        let rewind = rewind.filter(|_| last_id.is_none());
        match self.catch_up(channel, wanted, rewind, malformed).await {
            Ok(()) => Ok(()),
            Err(Failure::End(end)) => Err(end),
            Err(Failure::Store(e)) => {
                if !known {
                    self.channels.remove(channel);
                    self.shared.hub.unsubscribe(channel, self.sub.id());
                }
                tracing::warn!(channel, error = %e, "subscription failed: store unavailable");
                self.error(
                    ErrorCode::Unavailable,
                    "the log is unavailable; retry",
                    Some(channel),
                )
                .await
            }
        }
    }

    /// Replay after `wanted` (or the last `rewind`) when the log still
    /// holds it, record the position, and confirm with `subscribed`.
    async fn catch_up(
        &mut self,
        channel: &str,
        mut wanted: Option<(String, u64)>,
        rewind: Option<u64>,
        malformed: bool,
    ) -> Result<(), Failure> {
        let store = self.shared.store.clone();
        let page_size = self.shared.config.replay_page;
        if let Some(n) = rewind.filter(|n| *n > 0 && wanted.is_none()) {
            // A rewind is a resume from `n` before the head, or from the
            // oldest retained when the history is shorter: all of it, and
            // still `recovered`, since nothing asked for is missing.
            let head = store.read_after(channel, 0, 0).await?;
            let after = head
                .last
                .saturating_sub(n)
                .max(head.first.saturating_sub(1));
            wanted = Some((head.epoch.to_string(), after));
        }
        let after = wanted.as_ref().map_or(0, |w| w.1);
        let limit = if wanted.is_some() { page_size } else { 0 };
        let mut page = store.read_after(channel, after, limit).await?;
        let resumable = wanted.as_ref().is_some_and(|(epoch, offset)| {
            **epoch == *page.epoch && *offset <= page.last && offset + 1 >= page.first
        });
        let mut replayed = 0u64;
        let mut recovered = !malformed && (wanted.is_none() || resumable);
        let position = if resumable {
            let mut sent = after;
            loop {
                let head = page.last;
                for d in &page.entries {
                    if d.offset != sent + 1 {
                        // Trimmed while we were replaying: an honest gap.
                        recovered = false;
                    }
                    self.feed(NotificationFrame::text(d, self.provenance()))
                        .await?;
                    sent = d.offset;
                    replayed += 1;
                }
                if sent >= head || page.entries.is_empty() {
                    break;
                }
                page = store.read_after(channel, sent, page_size).await?;
            }
            sent
        } else {
            // Live from the head; but a channel this session already follows
            // in this epoch keeps its place, so notifications queued and not
            // yet written are not skipped.
            match self.channels.get(channel) {
                Some(p) if *p.epoch == *page.epoch => p.offset.min(page.last),
                _ => page.last,
            }
        };
        self.channels.insert(
            Arc::from(channel),
            Position {
                epoch: page.epoch.clone(),
                offset: position,
            },
        );
        self.shared.metrics.replayed.inc_by(replayed);
        self.shared.metrics.subscribed(recovered);
        let frame = ServerFrame::Subscribed {
            channel,
            replayed,
            recovered,
            position: format!("{}-{position}", page.epoch),
        };
        self.send_frame(&frame).await?;
        Ok(())
    }

    async fn unsubscribe(&mut self, channel: &str) -> SendResult {
        if self.channels.remove(channel).is_some() {
            self.shared.hub.unsubscribe(channel, self.sub.id());
            Ok(())
        } else {
            self.error(ErrorCode::NotSubscribed, "not subscribed", Some(channel))
                .await
        }
    }

    /// Write `first` and whatever else is queued, then flush once.
    async fn deliver_queued(&mut self, first: Arc<NotificationFrame>) -> SendResult {
        let mut next = Some(first);
        let mut n = 0;
        while let Some(d) = next {
            match self.deliver(&d).await {
                Ok(()) => {}
                Err(Failure::End(end)) => return Err(end),
                Err(Failure::Store(e)) => {
                    // Cannot fill a hole now; the client resumes from its
                    // last id after reconnecting, rather than seeing a gap.
                    tracing::warn!(channel = %d.channel, error = %e, "gap fill failed");
                    return Err(End::Close(CloseCode::InternalError, "log unavailable"));
                }
            }
            n += 1;
            next = if n < COALESCE {
                self.rx.try_recv().ok()
            } else {
                None
            };
        }
        self.flush().await
    }

    async fn deliver(&mut self, d: &Arc<NotificationFrame>) -> Result<(), Failure> {
        let Some(pos) = self.channels.get(&d.channel) else {
            return Ok(()); // unsubscribed since it was queued
        };
        if pos.epoch != d.epoch && pos.offset == 0 && d.offset == 1 {
            // Nothing was sent of the old epoch and this is the first of
            // the new one: nothing is missing (the memory store gives a
            // channel created after the subscription another epoch than
            // the one an absent channel reads in, when a drop intervened).
            self.channels.insert(
                d.channel.clone(),
                Position {
                    epoch: d.epoch.clone(),
                    offset: 0,
                },
            );
        } else if pos.epoch != d.epoch {
            // The channel's history started afresh under us (a shared store
            // lost it): say so before the first notification of the new epoch.
            let position = format!("{}-{}", d.epoch, d.offset.saturating_sub(1));
            self.channels.insert(
                d.channel.clone(),
                Position {
                    epoch: d.epoch.clone(),
                    offset: d.offset.saturating_sub(1),
                },
            );
            self.shared.metrics.subscribed(false);
            let frame = ServerFrame::Subscribed {
                channel: &d.channel,
                replayed: 0,
                recovered: false,
                position,
            };
            self.send_frame(&frame).await?;
        }
        let sent = self.channels.get(&d.channel).map_or(0, |p| p.offset);
        if d.offset <= sent {
            return Ok(()); // already sent by the replay
        }
        if d.offset > sent + 1 {
            self.fill(&d.channel, sent, d.offset).await?;
        }
        self.feed(d.text.clone()).await?;
        if let Some(p) = self.channels.get_mut(&d.channel) {
            p.offset = d.offset;
        }
        Ok(())
    }

    /// Send the log's notifications of `channel` after `sent`, before `until`.
    async fn fill(&mut self, channel: &Arc<str>, mut sent: u64, until: u64) -> Result<(), Failure> {
        let store = self.shared.store.clone();
        while sent + 1 < until {
            let want = usize::try_from(until - sent - 1).unwrap_or(usize::MAX);
            let page = store
                .read_after(channel, sent, want.min(self.shared.config.replay_page))
                .await?;
            let before = sent;
            for d in page.entries.iter().take_while(|d| d.offset < until) {
                self.feed(NotificationFrame::text(d, self.provenance()))
                    .await?;
                sent = d.offset;
            }
            if sent == before {
                break; // trimmed: nothing older to send
            }
        }
        if sent + 1 < until {
            // The hole cannot be filled from the log: say so, never skip
            // silently.
            let epoch = self.channels.get(channel).map(|p| p.epoch.clone());
            if let Some(epoch) = epoch {
                self.shared.metrics.subscribed(false);
                let frame = ServerFrame::Subscribed {
                    channel,
                    replayed: 0,
                    recovered: false,
                    position: format!("{epoch}-{}", until - 1),
                };
                self.send_frame(&frame).await?;
            }
            sent = until - 1;
        }
        if let Some(p) = self.channels.get_mut(channel) {
            p.offset = sent;
        }
        Ok(())
    }

    async fn error(&mut self, code: ErrorCode, message: &str, channel: Option<&str>) -> SendResult {
        self.shared.metrics.client_error(code.as_str());
        self.send_frame(&ServerFrame::Error {
            code,
            message,
            channel,
        })
        .await
    }

    async fn send_frame(&mut self, frame: &ServerFrame<'_>) -> SendResult {
        self.write(Message::Text(Utf8Bytes::from(frame.to_json())))
            .await
    }

    /// Whether replayed frames carry provenance (as the hub's live ones).
    fn provenance(&self) -> Provenance {
        Provenance::when(self.shared.config.provenance)
    }

    /// Queue one notification frame for the next flush.
    async fn feed(&mut self, frame: Utf8Bytes) -> SendResult {
        self.written += 1;
        self.fed_since_ping |= self.ping_sent.is_some();
        self.write(Message::Text(frame)).await
    }

    /// Every socket write is bounded: a client that accepts no bytes for a
    /// whole heartbeat period (ping interval + pong timeout) is gone, even
    /// on a channel too quiet to overflow its queue.
    async fn write(&mut self, msg: Message) -> SendResult {
        match tokio::time::timeout(self.write_timeout, self.socket.feed(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone(DROPPED)),
            Err(_) => Err(End::Gone(WRITE_STALLED)),
        }
    }

    async fn flush(&mut self) -> SendResult {
        if self.written >= 64 {
            self.flush_metrics();
        }
        match tokio::time::timeout(self.write_timeout, self.socket.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone(DROPPED)),
            Err(_) => Err(End::Gone(WRITE_STALLED)),
        }
    }

    fn flush_metrics(&mut self) {
        self.shared.metrics.deliveries.inc_by(self.written);
        self.written = 0;
    }

    async fn close(&mut self, code: CloseCode, reason: Utf8Bytes) {
        let frame = CloseFrame {
            code: code.code().into(),
            reason,
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.socket.send(Message::Close(Some(frame))))
            .await;
    }
}

/// A step that failed either at the socket or at the store.
#[derive(Debug)]
enum Failure {
    End(End),
    Store(StoreError),
}

impl From<End> for Failure {
    fn from(e: End) -> Self {
        Failure::End(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn read_error(e: tungstenite::Error) -> End {
    use tungstenite::error::ProtocolError;
    match e {
        tungstenite::Error::Capacity(_) => End::Close(CloseCode::TooBig, "message too big"),
        // The TCP connection ended without a close frame: tungstenite calls
        // it a protocol error, but it is a client that went away.
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            End::Gone(DROPPED)
        }
        tungstenite::Error::Protocol(_) | tungstenite::Error::Utf8(_) => {
            End::Close(CloseCode::ProtocolError, "protocol error")
        }
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            End::Gone(CLIENT_CLOSED)
        }
        _ => End::Gone(DROPPED),
    }
}

mod refresh;
#[cfg(test)]
mod tests;
