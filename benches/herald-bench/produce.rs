//! Producing events over HTTP, and encoding them for every source (the
//! Kafka and RabbitMQ pre-producers in `broker` use the same encoding).
//!
//! Every event carries its sequence number and its produce timestamp (µs
//! since the Unix epoch) in `data`, padded to the requested payload size:
//! `{"type":"bench","channel":"…","title":"bench","data":{"seq":N,"ts":T,"pad":"…"}}`.
//! herald's built-in rule routes it to `channel` (or `user:{user_id}`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::ValueEnum;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::client::{Progress, histogram, now_us};

/// Where events enter herald.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SourceKind {
    Http,
    Kafka,
    Amqp,
}

impl SourceKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            SourceKind::Http => "http",
            SourceKind::Kafka => "kafka",
            SourceKind::Amqp => "amqp",
        }
    }
}

/// Where an event goes.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    /// Every event to this channel.
    Channel(String),
    /// Event `seq` to `user:{prefix}{seq % n}` via the rule's `user_id` branch.
    Users { prefix: String, n: u64 },
}

/// Encodes bench events: route, sequence number, timestamp, padding.
#[derive(Debug, Clone)]
pub(crate) struct Encoder {
    pad: String,
    route: Route,
}

impl Encoder {
    /// `payload`: the size of `data` in bytes (≥ 40).
    pub(crate) fn new(route: Route, payload: usize) -> Self {
        // `{"seq":…,"ts":…,"pad":""}` is about 40 bytes with realistic numbers.
        let pad = "x".repeat(payload.saturating_sub(40));
        Self { pad, route }
    }

    /// The key that keeps event `seq`'s channel in one Kafka partition:
    /// its user (or its channel).
    pub(crate) fn key(&self, seq: u64) -> String {
        match &self.route {
            Route::Channel(c) => c.clone(),
            Route::Users { prefix, n } => format!("{prefix}{}", seq % n),
        }
    }

    /// Append event `seq`, stamped now, to `body`.
    pub(crate) fn push(&self, body: &mut String, seq: u64) {
        let ts = now_us();
        body.push_str("{\"type\":\"bench\",");
        match &self.route {
            Route::Channel(c) => {
                let _ = write!(body, "\"channel\":\"{c}\",");
            }
            Route::Users { prefix, n } => {
                let _ = write!(body, "\"user_id\":\"{prefix}{}\",", seq % n);
            }
        }
        let _ = write!(
            body,
            "\"title\":\"bench\",\"data\":{{\"seq\":{seq},\"ts\":{ts},\"pad\":\"{}\"}}}}",
            self.pad
        );
    }

    /// Event `seq` alone.
    pub(crate) fn event(&self, seq: u64) -> String {
        let mut body = String::with_capacity(self.pad.len() + 120);
        self.push(&mut body, seq);
        body
    }

    fn capacity(&self, events: u64) -> usize {
        events as usize * (self.pad.len() + 120) + 2
    }
}

/// What a request needs; cheap to clone into each request's future.
#[derive(Debug, Clone)]
struct Poster {
    http: reqwest::Client,
    url: Arc<str>,
}

/// An HTTP producer for one server.
#[derive(Debug)]
pub(crate) struct Producer {
    poster: Poster,
    encoder: Encoder,
    /// POST round trips (produce → durable in the log → 202), µs.
    pub acks: Histogram<u64>,
}

impl Poster {
    async fn post(self, body: String, events: u64) -> Result<u64> {
        let started = Instant::now();
        let res = self
            .http
            .post(&*self.url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .with_context(|| format!("POST {}", self.url))?;
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        if status != 202 {
            bail!("POST {}: {status} {text}", self.url);
        }
        let answer: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("answer {text}"))?;
        let appended = answer["notifications"].as_u64().unwrap_or(0);
        if appended != events {
            bail!(
                "POST {}: {events} events appended {appended} notifications: {text}",
                self.url
            );
        }
        Ok(started.elapsed().as_micros() as u64)
    }
}

impl Producer {
    /// `payload`: the size of `data` in bytes (≥ 40).
    pub(crate) fn new(base: &str, topic: &str, route: Route, payload: usize) -> Result<Self> {
        let mut builder = reqwest::Client::builder();
        if base.starts_with("https://") {
            let ca = crate::tls::ca_pem().context("https without the run's CA")?;
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes())?);
        }
        let http = builder
            .pool_max_idle_per_host(64)
            // Drop idle connections before a server does (Node closes them
            // after 5 s, herald after its handshake timeout): reusing one the
            // server is closing fails the request with a reset.
            .pool_idle_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .build()
            .context("HTTP client")?;
        Ok(Self {
            poster: Poster {
                http,
                url: format!("{base}/events/{topic}").into(),
            },
            encoder: Encoder::new(route, payload),
            acks: histogram(),
        })
    }

    /// One request body with events `seqs`.
    pub(crate) fn body(&self, seqs: std::ops::Range<u64>) -> String {
        let mut body = String::with_capacity(self.encoder.capacity(seqs.end - seqs.start));
        let single = seqs.end - seqs.start == 1;
        if !single {
            body.push('[');
        }
        for (i, seq) in seqs.enumerate() {
            if i > 0 {
                body.push(',');
            }
            self.encoder.push(&mut body, seq);
        }
        if !single {
            body.push(']');
        }
        body
    }

    /// POST `body` holding `events` events; fails unless 202 with that many
    /// notifications appended. Returns the round trip in µs.
    pub(crate) async fn post(&self, body: String, events: u64) -> Result<u64> {
        self.poster.clone().post(body, events).await
    }

    /// Produce events `seqs` as fast as the server takes them: `batch`
    /// events per request, `inflight` requests at once. With a `window`,
    /// never run more than that many events ahead of the slowest client
    /// (`Progress::min`, counted from `from`), so that no bounded server
    /// queue overflows in a throughput measurement.
    pub(crate) async fn flood(
        &mut self,
        seqs: std::ops::Range<u64>,
        batch: u64,
        inflight: usize,
        window: Option<(&Progress, u64, u64)>,
        deadline: Instant,
    ) -> Result<()> {
        let mut pending = FuturesUnordered::new();
        let mut next = seqs.start;
        while next < seqs.end || !pending.is_empty() {
            let can_send = next < seqs.end
                && pending.len() < inflight
                && window.is_none_or(|(p, per_client_div, w)| {
                    let produced = next - seqs.start;
                    produced / per_client_div < p.min() + w
                });
            if can_send {
                let end = (next + batch).min(seqs.end);
                let body = self.body(next..end);
                pending.push(self.poster.clone().post(body, end - next));
                next = end;
                continue;
            }
            if pending.is_empty() {
                // Waiting for the clients to drain.
                if Instant::now() > deadline {
                    bail!("producer: clients did not keep up before the deadline");
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
                continue;
            }
            let done = tokio::time::timeout_at(deadline, pending.next())
                .await
                .map_err(|_| anyhow!("producer: deadline passed"))?;
            if let Some(r) = done {
                let _ = self.acks.record(r?.max(1));
            }
        }
        Ok(())
    }

    /// Produce one event per request at `rate` events/s for `seqs`, open
    /// loop: requests go at their scheduled times whether or not earlier
    /// ones were answered (at most 256 in flight).
    pub(crate) async fn paced(
        &mut self,
        seqs: std::ops::Range<u64>,
        rate: u64,
        deadline: Instant,
    ) -> Result<()> {
        let every = Duration::from_nanos(1_000_000_000 / rate.max(1));
        let start = Instant::now();
        let mut pending = FuturesUnordered::new();
        for (i, seq) in seqs.enumerate() {
            let at = start + every * i as u32;
            loop {
                if pending.len() >= 256 {
                    if let Some(r) = pending.next().await {
                        let r: Result<u64> = r;
                        let _ = self.acks.record(r?.max(1));
                    }
                    continue;
                }
                tokio::select! {
                    () = tokio::time::sleep_until(at) => break,
                    Some(r) = pending.next(), if !pending.is_empty() => {
                        let _ = self.acks.record(r?.max(1));
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("paced producer: deadline passed");
            }
            let body = self.body(seq..seq + 1);
            pending.push(self.poster.clone().post(body, 1));
        }
        while let Some(r) = pending.next().await {
            let _ = self.acks.record(r?.max(1));
        }
        Ok(())
    }
}
