//! WebSocket clients bound to 127.0.0.x source addresses, and the checker
//! that every client runs over what it receives.
//!
//! The checker follows one channel per client: the offsets it receives must
//! go up by exactly one (a jump is a loss, a repeat a duplicate), starting
//! right after the client's `last_id` (replay) or the `position` of its
//! `subscribed` frame (live); a resume must be answered `recovered: true`
//! (else history was lost); and the events received must be the ones sent:
//! the sum of their `data.seq` numbers is compared with what the producer
//! sent to the channel for those offsets (channels are fresh and get events
//! `seq_first + k * seq_stride`, k = 0, 1, ...; concurrent requests may
//! append them in another order, so the sum, not each offset, is checked).
//! Latency is the receive time minus
//! the producer's timestamp in the event's `data.ts`, recorded for live
//! notifications only (replayed ones are old by design).

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::net::TcpSocket;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Microseconds since the Unix epoch (the clock of `data.ts`).
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A latency histogram in microseconds, 1 µs to 60 s, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    #[allow(clippy::expect_used)] // constant, valid bounds
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// The source address of client `i`: 127.0.0.2, 127.0.0.3, ... so that no
/// one address runs out of ephemeral ports.
pub(crate) fn source_ip(i: usize, spread: u8) -> IpAddr {
    let n = (i % usize::from(spread.max(1))) as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + n))
}

/// Where and how a client connects.
#[derive(Debug, Clone)]
pub(crate) struct Dial {
    pub server: SocketAddr,
    pub bind: IpAddr,
    /// Read buffer (tungstenite's and the requested socket receive buffer).
    pub read_buffer: usize,
    /// Socket receive buffer to ask for (the slow consumer asks a small one).
    pub rcvbuf: Option<u32>,
    /// A JWT for the `token` query parameter.
    pub token: Option<std::sync::Arc<str>>,
}

/// A connection's byte stream: TCP, or TLS over it (`herald-wss`).
pub(crate) trait Io:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + std::fmt::Debug
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + std::fmt::Debug> Io for T {}

type Ws = WebSocketStream<Box<dyn Io>>;

/// Open a WebSocket to `/notifications?{query}`.
pub(crate) async fn dial(d: &Dial, query: &str) -> Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(d.bind, 0))
        .with_context(|| format!("bind {}", d.bind))?;
    if let Some(n) = d.rcvbuf {
        socket.set_recv_buffer_size(n)?;
    }
    let stream = socket
        .connect(d.server)
        .await
        .with_context(|| format!("connect {} from {}", d.server, d.bind))?;
    stream.set_nodelay(true)?;
    let (scheme, stream): (&str, Box<dyn Io>) = match crate::tls::connector(d.server) {
        None => ("ws", Box::new(stream)),
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let tls = tls.connect(name, stream).await.context("TLS handshake")?;
            ("wss", Box::new(tls))
        }
    };
    let url = match &d.token {
        Some(t) => format!("{scheme}://{}/notifications?{query}&token={t}", d.server),
        None => format!("{scheme}://{}/notifications?{query}", d.server),
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(d.read_buffer)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20));
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .context("WebSocket handshake")?;
    Ok(ws)
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    replayed: u64,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default, borrow)]
    position: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
struct Data {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    ts: u64,
}

/// What one read produced.
#[derive(Debug)]
pub(crate) enum Got {
    Notification,
    Subscribed {
        replayed: u64,
        recovered: bool,
    },
    /// Closed with this close code (None: no close frame).
    Closed(Option<u16>),
}

/// The per-client checker and counters.
#[derive(Debug, Default, Clone)]
pub(crate) struct Track {
    pub epoch: String,
    /// Highest offset received in order (the client's last id).
    pub last: u64,
    /// The offset the client started after (its first position or the
    /// last id it was given).
    pub start: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub bytes: u64,
    /// Sum of `data.seq` over the notifications received in order.
    pub seq_sum: u128,
    /// The channel's first event and the step between its events' seq
    /// numbers (0 and 1 for a channel that gets every event).
    pub seq_first: u64,
    pub seq_stride: u64,
    /// Resumes answered `recovered: false`.
    pub unrecovered: u64,
    /// A scenario that expects resumes to fail sets this.
    pub allow_unrecovered: bool,
    pub subscribed: bool,
    pub recovered: bool,
    pub replayed: u64,
    /// Reconnections after a 4008 (too slow).
    pub reconnects: u64,
}

impl Track {
    pub(crate) fn last_id(&self) -> String {
        format!("{}-{}", self.epoch, self.last)
    }

    /// The seq of the `offset`-th event sent to the channel.
    fn expected_seq(&self, offset: u64) -> u64 {
        self.seq_first + self.seq_stride.max(1) * offset.saturating_sub(1)
    }

    fn on_notification(&mut self, offset: u64, seq: u64) {
        self.received += 1;
        if offset == self.last + 1 {
            self.last = offset;
            self.seq_sum += u128::from(seq);
        } else if offset <= self.last {
            self.duplicates += 1;
        } else {
            self.lost += offset - self.last - 1;
            self.last = offset;
            self.seq_sum += u128::from(seq);
        }
    }

    /// Check the client received exactly `start + 1 ..= to` in order, the
    /// events sent for those offsets, and that every resume recovered.
    pub(crate) fn verify(&self, who: &str, to: u64) -> Result<()> {
        if self.lost > 0 || self.duplicates > 0 || self.last != to {
            bail!(
                "{who}: last offset {} (expected {to}), {} lost, {} duplicated",
                self.last,
                self.lost,
                self.duplicates
            );
        }
        if self.unrecovered > 0 && !self.allow_unrecovered {
            bail!(
                "{who}: {} resume(s) answered recovered: false (history lost)",
                self.unrecovered
            );
        }
        let sent: u128 = (self.start + 1..=to)
            .map(|o| u128::from(self.expected_seq(o)))
            .sum();
        if self.seq_sum != sent {
            bail!(
                "{who}: not the events sent: their seq numbers sum to {}, {sent} expected",
                self.seq_sum
            );
        }
        Ok(())
    }
}

/// Per-client progress the producer reads to keep its window (so no
/// client's bounded server queue overflows in a throughput measurement).
#[derive(Debug)]
pub(crate) struct Progress {
    slots: Vec<AtomicU64>,
}

impl Progress {
    pub(crate) fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    pub(crate) fn set(&self, i: usize, received: u64) {
        if let Some(s) = self.slots.get(i) {
            s.store(received, Ordering::Relaxed);
        }
    }

    /// The fewest notifications any client has received.
    pub(crate) fn min(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }

    pub(crate) fn sum(&self) -> u64 {
        self.slots.iter().map(|s| s.load(Ordering::Relaxed)).sum()
    }
}

/// One client: its socket, checker and latency histograms.
#[derive(Debug)]
pub(crate) struct Client {
    pub index: usize,
    pub dial: Dial,
    pub channel: String,
    ws: Option<Ws>,
    /// Read Server-Sent Events instead of a WebSocket.
    pub sse: bool,
    stream: Option<crate::sse::SseStream>,
    /// The current connection asked to resume after a last id.
    resuming: bool,
    pub track: Track,
    /// Live latency, by phase (`split` decides: seq below it is phase 0).
    pub hist: [Option<Histogram<u64>>; 2],
    pub split: Option<Arc<AtomicU64>>,
    pub record_latency: bool,
    pub progress: Option<(Arc<Progress>, u64)>,
    /// A time (µs) a scenario notes for this client.
    pub mark_us: u64,
}

impl Client {
    pub(crate) fn new(index: usize, dial: Dial, channel: String) -> Self {
        Self {
            index,
            dial,
            channel,
            ws: None,
            sse: false,
            stream: None,
            resuming: false,
            track: Track::default(),
            hist: [None, None],
            split: None,
            record_latency: false,
            progress: None,
            mark_us: 0,
        }
    }

    fn query(&self, last_id: Option<&str>) -> String {
        let channel = urlencode(&self.channel);
        match last_id {
            Some(id) => format!("channel={channel}&last_id={}", urlencode(id)),
            None => format!("channel={channel}"),
        }
    }

    /// Connect and subscribe to the channel, live from its head.
    pub(crate) async fn connect(&mut self) -> Result<()> {
        let q = self.query(None);
        self.open(&q).await?;
        self.resuming = false;
        self.track.subscribed = false;
        Ok(())
    }

    /// Connect with `last_id` = the last offset received: the missed
    /// notifications come first, then `subscribed`.
    pub(crate) async fn resume(&mut self) -> Result<()> {
        let q = self.query(Some(&self.track.last_id()));
        self.open(&q).await?;
        self.resuming = true;
        self.track.subscribed = false;
        Ok(())
    }

    /// Take `<epoch>-<offset>` as the last id (for a client that has not
    /// connected yet, or read nothing yet): it expects everything after it.
    pub(crate) fn set_last_id(&mut self, epoch: &str, offset: u64) {
        self.track.epoch = epoch.to_string();
        self.track.last = offset;
        self.track.start = offset;
        self.track.seq_sum = 0;
    }

    async fn open(&mut self, query: &str) -> Result<()> {
        if self.sse {
            self.stream = Some(crate::sse::dial(&self.dial, query).await?);
        } else {
            self.ws = Some(dial(&self.dial, query).await?);
        }
        Ok(())
    }

    /// Drop the connection without a close frame (a network failure).
    pub(crate) fn drop_connection(&mut self) {
        self.ws = None;
        self.stream = None;
    }

    /// Read one application frame and account for it.
    pub(crate) async fn next(&mut self) -> Result<Got> {
        if self.sse {
            return self.next_event().await;
        }
        loop {
            let ws = self.ws.as_mut().ok_or_else(|| anyhow!("not connected"))?;
            let msg = match ws.next().await {
                Some(Ok(m)) => m,
                // The server dropped the connection without a close frame.
                Some(Err(
                    WsError::ConnectionClosed
                    | WsError::AlreadyClosed
                    | WsError::Io(_)
                    | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake),
                )) => return Ok(Got::Closed(None)),
                Some(Err(e)) => return Err(anyhow!("client {}: read: {e}", self.index)),
                None => return Ok(Got::Closed(None)),
            };
            let text = match msg {
                Message::Text(t) => t,
                Message::Close(f) => return Ok(Got::Closed(f.map(|f| u16::from(f.code)))),
                Message::Binary(_) => bail!("client {}: a binary frame", self.index),
                _ => continue,
            };
            if let Some(got) = self.on_text(&text)? {
                return Ok(got);
            }
        }
    }

    /// [`Client::next`] on an event stream.
    async fn next_event(&mut self) -> Result<Got> {
        loop {
            let stream = self
                .stream
                .as_mut()
                .ok_or_else(|| anyhow!("not connected"))?;
            match stream.read().await? {
                crate::sse::SseRead::Data(text) => {
                    if let Some(got) = self.on_text(&text)? {
                        return Ok(got);
                    }
                }
                crate::sse::SseRead::Closed(code) => return Ok(Got::Closed(code)),
            }
        }
    }

    /// Account for one JSON frame; None for frames that are not the
    /// client's business (pong, later protocol versions).
    fn on_text(&mut self, text: &str) -> Result<Option<Got>> {
        self.track.bytes += text.len() as u64;
        let frame: Frame<'_> = serde_json::from_str(text)
            .with_context(|| format!("client {}: not a JSON frame: {text}", self.index))?;
        match &*frame.ty {
            "notification" => {
                let data = frame.data.unwrap_or_default();
                self.track.on_notification(frame.offset, data.seq);
                if self.record_latency && self.track.subscribed && data.ts > 0 {
                    let phase = match &self.split {
                        Some(s) if data.seq >= s.load(Ordering::Relaxed) => 1,
                        _ => 0,
                    };
                    let h = self.hist[phase].get_or_insert_with(histogram);
                    let _ = h.record(now_us().saturating_sub(data.ts).max(1));
                }
                if let Some((p, base)) = &self.progress {
                    p.set(self.index, self.track.last.saturating_sub(*base));
                }
                return Ok(Some(Got::Notification));
            }
            "subscribed" => {
                let recovered = frame.recovered.unwrap_or(false);
                if let Some(pos) = frame.position.as_deref() {
                    let (epoch, offset) = pos
                        .rsplit_once('-')
                        .and_then(|(e, o)| Some((e, o.parse::<u64>().ok()?)))
                        .ok_or_else(|| anyhow!("bad position {pos}"))?;
                    if self.resuming && !recovered {
                        // The server could not replay what the client
                        // missed: a loss, unless the scenario expects it.
                        self.track.unrecovered += 1;
                    }
                    if self.track.epoch.is_empty() {
                        // Live from the head: nothing before it is expected.
                        self.track.epoch = epoch.to_string();
                        self.track.last = offset;
                        self.track.start = offset;
                    } else if !recovered {
                        self.track.epoch = epoch.to_string();
                        self.track.last = offset;
                    } else if offset != self.track.last {
                        bail!(
                            "client {}: subscribed at {offset} after replaying up to {}",
                            self.index,
                            self.track.last
                        );
                    }
                }
                self.track.subscribed = true;
                self.track.recovered = recovered;
                self.track.replayed += frame.replayed;
                return Ok(Some(Got::Subscribed {
                    replayed: frame.replayed,
                    recovered,
                }));
            }
            "error" => bail!(
                "client {}: error frame {}: {text}",
                self.index,
                frame.code.as_deref().unwrap_or("?")
            ),
            _ => {} // pong and frames of later protocol versions
        }
        Ok(None)
    }

    /// Read until `subscribed`; notifications before it are replay.
    pub(crate) async fn until_subscribed(&mut self) -> Result<(u64, bool)> {
        loop {
            match self.next().await? {
                Got::Subscribed {
                    replayed,
                    recovered,
                } => return Ok((replayed, recovered)),
                Got::Notification => {}
                Got::Closed(code) => {
                    bail!("client {}: closed ({code:?}) before subscribed", self.index)
                }
            }
        }
    }

    /// Connect with the last id and read the replay up to `subscribed`,
    /// which must say `recovered` after at least `missed` notifications.
    pub(crate) async fn resume_replayed(&mut self, missed: u64) -> Result<u64> {
        self.resume().await?;
        let (replayed, recovered) = self.until_subscribed().await?;
        if !recovered || replayed < missed {
            bail!(
                "client {}: replayed {replayed} of {missed} missed, recovered {recovered}",
                self.index
            );
        }
        Ok(replayed)
    }

    /// Read until the client has offset `to`. A 4008 (too slow) close is
    /// answered the way a real client does: resume from the last id. So is
    /// a connection dropped without a close frame, which is how a 4008
    /// arrives when the client's socket is too full to take the close frame
    /// (herald then drops the connection after 5 s); a server that is gone
    /// fails the reconnection.
    pub(crate) async fn until_offset(&mut self, to: u64) -> Result<()> {
        while self.track.last < to {
            match self.next().await? {
                Got::Closed(Some(4008) | None) => {
                    self.track.reconnects += 1;
                    if self.track.reconnects > 100 {
                        bail!("client {}: closed as too slow 100 times", self.index);
                    }
                    self.resume().await?;
                }
                Got::Closed(code) => bail!(
                    "client {}: closed ({code:?}) at offset {} before {to}",
                    self.index,
                    self.track.last
                ),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Connect `clients` with at most `parallel` handshakes at once, each within
/// `within`; wait for every `subscribed`.
pub(crate) async fn connect_all(
    clients: Vec<Client>,
    parallel: usize,
    within: Duration,
) -> Result<Vec<Client>> {
    let deadline = Instant::now() + within;
    let results: Vec<Result<Client>> = futures_util::stream::iter(clients)
        .map(|mut c| async move {
            tokio::time::timeout_at(deadline, async {
                c.connect().await?;
                c.until_subscribed().await?;
                Ok::<_, anyhow::Error>(c)
            })
            .await
            .map_err(|_| anyhow!("connect timed out"))?
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        out.push(r?);
    }
    out.sort_by_key(|c| c.index);
    Ok(out)
}

/// Merge the phase-`phase` histograms of `clients`.
pub(crate) fn merged(clients: &[Client], phase: usize) -> Histogram<u64> {
    let mut h = histogram();
    for c in clients {
        if let Some(x) = &c.hist[phase] {
            let _ = h.add(x);
        }
    }
    h
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
