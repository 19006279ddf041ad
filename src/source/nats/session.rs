//! One connection to the server, from the consumer's creation to its end:
//! the replay, the pull loop, settlement in delivery order, dead letters.
//! See the parent module's docs for the invariants.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use async_nats::jetstream::{self, AckKind};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;

use super::{NatsError, NatsSourceConfig};
use crate::event::{Event, Meta, SourceKind};
use crate::pipeline::{Processed, Rejection, decode_object};
use crate::source::SourceContext;
use crate::store::{Fence, StoreError};

/// The reason detail put in a dead-letter header is cut to this many bytes.
const MAX_DETAIL_BYTES: usize = 1024;
/// Longest a pull request waits on the server before the client renews it.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// Idle heartbeat the server sends on a pull request; two missed ones end
/// the session.
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);

/// What a settled message turned out to be.
#[derive(Debug)]
enum Verdict {
    Appended,
    Poison(Rejection, String),
}

type Settled = (jetstream::Message, Result<Verdict, StoreError>);

/// What the pull loop waits for, besides shutdown and a lost connection.
enum Step {
    Settled(Settled),
    Pulled(jetstream::Message),
}

/// One connection, from the consumer's creation to its end. See the module
/// docs.
pub(super) struct Session<'a> {
    config: &'a NatsSourceConfig,
    ctx: &'a SourceContext,
    /// Kept so the connection lives as long as the session.
    client: async_nats::Client,
    js: jetstream::Context,
    stream: Stream,
    consumer: PullConsumer,
    /// Flips to true when the client reports the connection gone.
    lost: watch::Receiver<bool>,
    /// `nats:<stream>@<created ms>`: the root of every position.
    origin: String,
    /// Messages taken and not yet settled, in delivery order.
    window: FuturesOrdered<BoxFuture<'static, Settled>>,
    /// After one append of this session fails, its later ones fail too.
    fence: Arc<Fence>,
}

impl<'a> Session<'a> {
    /// Connect, find the stream, create the consumer. `None` when shutdown
    /// came first.
    pub(super) async fn open(
        config: &'a NatsSourceConfig,
        ctx: &'a SourceContext,
    ) -> Result<Option<Self>, NatsError> {
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        let opened = tokio::select! {
            () = ctx.shutdown.cancelled() => return Ok(None),
            opened = tokio::time::timeout(timeout, Self::connect(config, ctx)) => opened,
        };
        opened
            .map_err(|_| NatsError::Timeout(config.connect_timeout_ms))?
            .map(Some)
    }

    async fn connect(
        config: &'a NatsSourceConfig,
        ctx: &'a SourceContext,
    ) -> Result<Self, NatsError> {
        let (lost_tx, lost) = watch::channel(false);
        let name = ctx.name.clone();
        let options = config
            .connect_options()
            .await?
            .event_callback(move |event| {
                let lost_tx = lost_tx.clone();
                let name = name.clone();
                async move {
                    match event {
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            lost_tx.send_replace(true);
                        }
                        async_nats::Event::Connected => {}
                        other => {
                            tracing::warn!(source = %name, event = %other, "NATS client event")
                        }
                    }
                }
            });
        let client = options
            .connect(config.url.as_str())
            .await
            .map_err(NatsError::Connect)?;
        if config.subjects.len() > 1 {
            let version = client.server_info().version;
            let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            if (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) < (2, 10) {
                return Err(NatsError::OldServer(version));
            }
        }
        let js = jetstream::new(client.clone());
        let stream_error =
            |e: &dyn std::fmt::Display| NatsError::Stream(config.stream.clone(), e.to_string());
        let stream = js
            .get_stream(&config.stream)
            .await
            .map_err(|e| stream_error(&e))?;
        let created = stream.cached_info().created.unix_timestamp_nanos() / 1_000_000;
        let consumer: PullConsumer = stream
            .create_consumer(config.consumer_config())
            .await
            .map_err(|e| NatsError::Consumer(config.durable.clone(), e.to_string()))?;
        Ok(Self {
            config,
            ctx,
            client,
            js,
            stream,
            consumer,
            lost,
            origin: format!("nats:{}@{created}", config.stream),
            window: FuturesOrdered::new(),
            fence: Arc::new(Fence::default()),
        })
    }

    /// Replay, then pull until shutdown (Ok) or a failure.
    pub(super) async fn run(mut self) -> Result<(), NatsError> {
        let replayed = tokio::select! {
            () = self.ctx.shutdown.cancelled() => return Ok(()),
            replayed = self.replay() => replayed?,
        };
        let mut messages = self
            .consumer
            .stream()
            .max_messages_per_batch(self.config.max_ack_pending.min(1024) as usize)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
            .map_err(|e| NatsError::Pull(e.to_string()))?;
        let endpoint = self.config.endpoint();
        tracing::info!(
            source = %self.ctx.name,
            stream = %self.config.stream,
            durable = %self.config.durable,
            endpoint = %endpoint,
            replayed,
            "consuming"
        );
        self.ctx.set_ready(
            true,
            format!("consuming {} from {endpoint}", self.config.stream),
        );
        let capacity = self.config.max_ack_pending as usize;
        let ended = loop {
            let room = self.window.len() < capacity;
            let step = tokio::select! {
                biased;
                () = self.ctx.shutdown.cancelled() => break Ok(()),
                _ = self.lost.wait_for(|lost| *lost) => break Err(NatsError::Lost),
                Some(settled) = self.window.next() => Step::Settled(settled),
                next = messages.next(), if room => match next {
                    Some(Ok(message)) => Step::Pulled(message),
                    Some(Err(e)) => break Err(NatsError::Pull(e.to_string())),
                    None => break Err(NatsError::Pull("the message stream ended".into())),
                },
            };
            match step {
                Step::Settled((message, verdict)) => {
                    if let Err(e) = self.settle(message, verdict).await {
                        break Err(e);
                    }
                }
                Step::Pulled(message) => self.take(message),
            }
        };
        // No more pulls; what was delivered and not taken is redelivered.
        drop(messages);
        match ended {
            Ok(()) => {
                self.drain(true).await?;
                // The acknowledgements are buffered: send them before the
                // connection closes.
                let _ = self.client.flush().await;
                Ok(())
            }
            Err(NatsError::Store(e)) => Err(NatsError::Store(e)),
            Err(e) => {
                // The appends in flight finish (in order) before the next
                // session replays; their acknowledgements are lost with the
                // connection, and the redeliveries append nothing.
                self.drain(false).await?;
                Err(e)
            }
        }
    }

    /// Settle every message in the window; acknowledge only when `ack`.
    async fn drain(&mut self, ack: bool) -> Result<(), NatsError> {
        while let Some((message, verdict)) = self.window.next().await {
            if ack {
                self.settle(message, verdict).await?;
            } else {
                verdict.map_err(NatsError::Store)?;
            }
        }
        Ok(())
    }

    /// Append, in stream order, what an earlier session was delivered and
    /// did not acknowledge (see the module docs). The number of events.
    async fn replay(&mut self) -> Result<usize, NatsError> {
        let info = self
            .consumer
            .info()
            .await
            .map_err(|e| NatsError::Consumer(self.config.durable.clone(), e.to_string()))?;
        let (floor, delivered) = (
            info.ack_floor.stream_sequence,
            info.delivered.stream_sequence,
        );
        let mut appends = Vec::new();
        for sequence in floor + 1..=delivered {
            let message = match self.stream.get_raw_message(sequence).await {
                Ok(m) => m,
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => continue,
                Err(e) => return Err(NatsError::Stream(self.config.stream.clone(), e.to_string())),
            };
            if !self.config.selects(&message.subject) {
                continue;
            }
            let meta = self.meta_of(&Delivered::Stored(&message));
            if let Ok(payload) = decode_object(&message.payload, self.config.max_message_bytes) {
                appends.push(
                    self.ctx
                        .pipeline
                        .submit(&Event { payload, meta }, Some(&self.fence)),
                );
            }
        }
        let count = appends.len();
        for append in appends {
            append.await.map_err(NatsError::Store)?;
        }
        if count > 0 {
            tracing::info!(
                source = %self.ctx.name,
                stream = %self.config.stream,
                from = floor + 1,
                to = delivered,
                events = count,
                "replayed unacknowledged messages in order before pulling"
            );
        }
        Ok(count)
    }

    /// A pulled message: hand it to the pipeline in order.
    fn take(&mut self, message: jetstream::Message) {
        let meta = self.meta_of(&Delivered::Pulled(&message));
        let work: BoxFuture<'static, Result<Verdict, StoreError>> =
            match decode_object(&message.payload, self.config.max_message_bytes) {
                Ok(payload) => self
                    .ctx
                    .pipeline
                    .submit(&Event { payload, meta }, Some(&self.fence))
                    .map(|r| r.map(verdict_of))
                    .boxed(),
                Err((rejection, detail)) => {
                    self.ctx.pipeline.reject(
                        SourceKind::Nats.as_str(),
                        &meta.position,
                        rejection,
                        &detail,
                    );
                    futures_util::future::ready(Ok(Verdict::Poison(rejection, detail))).boxed()
                }
            };
        self.window
            .push_back(work.map(move |verdict| (message, verdict)).boxed());
    }

    /// The oldest message's append resolved.
    async fn settle(
        &mut self,
        message: jetstream::Message,
        verdict: Result<Verdict, StoreError>,
    ) -> Result<(), NatsError> {
        let kind = match verdict.map_err(NatsError::Store)? {
            Verdict::Appended => AckKind::Ack,
            Verdict::Poison(rejection, detail) => {
                self.dead_letter(&message, rejection, &detail).await
            }
        };
        message
            .ack_with(kind)
            .await
            .map_err(|e| NatsError::Ack(e.to_string()))
    }

    /// Publish a poison message's copy to the dead-letter subject; how to
    /// settle the original (`Ack`, or `Term` when the copy was not stored).
    async fn dead_letter(
        &mut self,
        message: &jetstream::Message,
        rejection: Rejection,
        detail: &str,
    ) -> AckKind {
        let metrics = self.ctx.pipeline.metrics();
        let Some(subject) = &self.config.dead_letter_subject else {
            metrics.source_error(&self.ctx.name, "dropped");
            return AckKind::Ack;
        };
        let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        let headers = dead_letter_headers(
            message.headers.as_ref(),
            &self.config.stream,
            &message.subject,
            sequence,
            rejection,
            detail,
        );
        let timeout = Duration::from_millis(self.config.connect_timeout_ms);
        let published = tokio::time::timeout(timeout, async {
            self.js
                .publish_with_headers(subject.clone(), headers, message.payload.clone())
                .await?
                .await
        })
        .await;
        let failure = match published {
            Ok(Ok(_)) => {
                metrics.dead_lettered(&self.ctx.name, rejection.as_str());
                return AckKind::Ack;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!(
                "no stream acknowledged it within {} ms",
                timeout.as_millis()
            ),
        };
        metrics.source_error(&self.ctx.name, "dead_letter");
        tracing::warn!(
            source = %self.ctx.name,
            stream = %self.config.stream,
            sequence,
            dead_letter_subject = %subject,
            reason = rejection.as_str(),
            error = %failure,
            "dead-letter publish failed; message terminated (kept in the stream, not redelivered)"
        );
        AckKind::Term
    }

    /// What rules see under `meta`, and the event's position (dedupe root).
    fn meta_of(&self, delivered: &Delivered<'_>) -> Meta {
        let (subject, sequence, headers, published, redelivered) = match delivered {
            Delivered::Pulled(m) => {
                let info = m.info().ok();
                (
                    m.subject.as_str(),
                    info.as_ref().map_or(0, |i| i.stream_sequence),
                    m.headers.as_ref(),
                    info.as_ref().map(|i| i.published),
                    info.map(|i| i.delivered > 1),
                )
            }
            Delivered::Stored(m) => (
                m.subject.as_str(),
                m.sequence,
                Some(&m.headers),
                Some(m.time),
                Some(true),
            ),
        };
        let mut meta = Meta::new(
            SourceKind::Nats,
            subject,
            format!("{}:{sequence}", self.origin),
        )
        .with_locator(format!("nats:{}/{sequence}", self.config.stream));
        meta.offset = i64::try_from(sequence).ok();
        meta.redelivered = redelivered;
        meta.timestamp = published.map(|t| {
            crate::clock::rfc3339_ms((t.unix_timestamp_nanos() / 1_000_000).max(0) as u64)
        });
        if let Some(headers) = headers {
            meta.headers = headers
                .iter()
                .map(|(k, v)| {
                    let values: Vec<&str> = v.iter().map(|v| v.as_str()).collect();
                    (k.to_string(), values.join(", "))
                })
                .collect();
        }
        // Looked up by text: a parsed header name and one built from a
        // `&str` do not compare equal in async-nats.
        meta.message_id = meta.headers.get("Nats-Msg-Id").cloned();
        meta
    }
}

/// A message as pulled from the consumer, or as read from the stream by the
/// replay.
enum Delivered<'m> {
    Pulled(&'m jetstream::Message),
    Stored(&'m StreamMessage),
}

fn verdict_of(processed: Processed) -> Verdict {
    match processed.poison() {
        Some((rejection, detail)) => Verdict::Poison(rejection, detail),
        None => Verdict::Appended,
    }
}

/// The headers of a dead-letter copy: the original's (without the
/// `Nats-*` publish expectations, which would make the copy's publish
/// fail), plus herald's reason and the message's origin.
fn dead_letter_headers(
    original: Option<&HeaderMap>,
    stream: &str,
    subject: &str,
    sequence: u64,
    rejection: Rejection,
    detail: &str,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, values) in original.into_iter().flat_map(HeaderMap::iter) {
        let name: &str = name.as_ref();
        if name.starts_with("Nats-") && name != "Nats-Msg-Id" {
            continue;
        }
        for value in values {
            headers.append(name, value.as_str());
        }
    }
    let mut cut = detail.len().min(MAX_DETAIL_BYTES);
    while !detail.is_char_boundary(cut) {
        cut -= 1;
    }
    // Header values end at a line break.
    let detail = detail[..cut].replace(['\r', '\n'], " ");
    headers.insert("X-Herald-Reason", rejection.as_str());
    headers.insert("X-Herald-Detail", detail.as_str());
    headers.insert("X-Herald-Stream", stream);
    headers.insert("X-Herald-Subject", subject);
    headers.insert("X-Herald-Sequence", sequence.to_string().as_str());
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_headers_carry_the_reason_and_drop_expectations() {
        let mut original = HeaderMap::new();
        original.insert("trace", "t-1");
        original.insert("Nats-Msg-Id", "m-1");
        original.insert("Nats-Expected-Last-Sequence", "3");
        let detail = format!("{}\nline two", "é".repeat(MAX_DETAIL_BYTES));
        let h = dead_letter_headers(
            Some(&original),
            "EVENTS",
            "orders.new",
            7,
            Rejection::InvalidJson,
            &detail,
        );
        let get = |k: &str| h.get(k).map(|v| v.as_str().to_string());
        assert_eq!(get("X-Herald-Reason").as_deref(), Some("invalid_json"));
        assert_eq!(get("X-Herald-Sequence").as_deref(), Some("7"));
        assert_eq!(get("X-Herald-Subject").as_deref(), Some("orders.new"));
        assert_eq!(get("trace").as_deref(), Some("t-1"));
        assert_eq!(get("Nats-Msg-Id").as_deref(), Some("m-1"));
        assert_eq!(get("Nats-Expected-Last-Sequence"), None);
        let detail = get("X-Herald-Detail").unwrap_or_default();
        assert!(detail.len() <= MAX_DETAIL_BYTES && !detail.contains('\n'));
    }
}
