//! The RabbitMQ source: consumes one durable queue over AMQP 0-9-1 (lapin).
//!
//! At start, and again after every reconnect, herald declares its topology:
//! each exchange it binds to (and the dead-letter exchange) is checked with
//! a passive declare and used as it is when it exists, or declared as a
//! durable topic exchange when it does not; then the durable queue (with
//! `x-dead-letter-exchange` when one is configured) and its bindings. It
//! never deletes or unbinds anything.
//!
//! Invariants:
//! - deliveries go to [`Pipeline::submit`] in queue order, so the log keeps
//!   the queue's order; up to `prefetch` appends are in flight at once;
//! - a delivery is settled (acknowledged, or rejected as poison) only after
//!   its append resolved, and settlements happen in delivery-tag order. One
//!   `basic.ack` with `multiple` covers every delivery settled since the last
//!   one; it never reaches past a delivery whose append is still pending;
//! - poison (not a JSON object, above `max_message_bytes`, or every matching
//!   rule failed) never blocks the queue: with a dead-letter exchange a copy
//!   carrying `x-herald-reason` is published there with a publisher confirm
//!   and the original is then acknowledged (falling back to `basic.reject`
//!   without requeue when that publish fails); without one it is logged,
//!   counted and acknowledged;
//! - on any connection, channel or store failure the connection is closed,
//!   so the broker requeues every unacknowledged delivery; herald reconnects
//!   with exponential back-off, declares again and resumes. Redelivered
//!   messages map to the same dedupe keys and append nothing new. A
//!   session's appends share one [`Fence`]: after one fails, none of its
//!   later ones commits, so the requeued messages keep the queue's order.
//!   `/readyz` reports the source not ready until it consumes again.
//!
//! The default dedupe key's root ([`Meta::position`]) is the AMQP
//! `message_id` when the producer sets one, else a hash of exchange, routing
//! key and body: without `message_id`, two identical messages are one
//! notification (within the store's dedupe window).
//!
//! Cancel-safety: the consume loop only awaits futures that keep their state
//! when a `select!` drops them (the consumer stream, the head append, which
//! stays in the window); shutdown is a branch of that loop, and after it the
//! in-flight appends are awaited and acknowledged before the connection is
//! closed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::future::{BoxFuture, ready};
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Confirmation, Connection, ConnectionProperties, ErrorKind, ExchangeKind};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Source, SourceContext, SourceError};
use crate::event::{Event, Meta, SourceKind};
use crate::pipeline::{Pipeline, Processed, Rejection, decode_object};
use crate::store::{Fence, StoreError};

/// AMQP names (queues, exchanges, routing keys) are short strings.
const MAX_NAME_BYTES: usize = 255;
/// First delay of the reconnect back-off.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// Time a clean channel or connection close may take before it is abandoned.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The reason detail put in a dead-letter header is cut to this many bytes.
const MAX_DETAIL_BYTES: usize = 1024;

/// `[[sources]] kind = "amqp"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSourceConfig {
    /// `amqp://user:password@host:5672/%2f` (`amqps://` for TLS).
    pub url: String,
    /// The durable queue herald declares and consumes.
    pub queue: String,
    /// Bindings declared at every (re)connect.
    #[serde(default)]
    pub bindings: Vec<AmqpBinding>,
    /// Unacknowledged deliveries in flight (`basic.qos`).
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Exchange that receives poison messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_exchange: Option<String>,
    /// Larger message bodies are poison (`too_large`).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Bound of one connection attempt (TCP, TLS, handshake, declarations).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest pause between reconnection attempts.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
}

/// One queue binding.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpBinding {
    pub exchange: String,
    pub routing_key: String,
}

fn default_prefetch() -> u16 {
    256
}
fn default_max_message_bytes() -> usize {
    1024 * 1024
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_reconnect_max_ms() -> u64 {
    30_000
}

impl AmqpSourceConfig {
    /// A config with every optional key at its default.
    pub fn new(url: impl Into<String>, queue: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            queue: queue.into(),
            bindings: Vec::new(),
            prefetch: default_prefetch(),
            dead_letter_exchange: None,
            max_message_bytes: default_max_message_bytes(),
            connect_timeout_ms: default_connect_timeout_ms(),
            reconnect_max_ms: default_reconnect_max_ms(),
        }
    }

    pub fn validate(&self) -> Result<(), (String, String)> {
        parse_url(&self.url).map_err(|e| ("url".to_string(), e))?;
        check_name("queue", &self.queue)?;
        if self.queue.starts_with("amq.") {
            return Err((
                "queue".into(),
                "names starting with \"amq.\" are reserved by the broker".into(),
            ));
        }
        for (i, b) in self.bindings.iter().enumerate() {
            check_name(&format!("bindings[{i}].exchange"), &b.exchange)?;
            if b.routing_key.len() > MAX_NAME_BYTES {
                return Err((
                    format!("bindings[{i}].routing_key"),
                    format!("at most {MAX_NAME_BYTES} bytes"),
                ));
            }
        }
        if let Some(dlx) = &self.dead_letter_exchange {
            check_name("dead_letter_exchange", dlx)?;
        }
        let positive = [
            ("prefetch", self.prefetch as u64),
            ("max_message_bytes", self.max_message_bytes as u64),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("reconnect_max_ms", self.reconnect_max_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err((key.into(), "must be greater than 0".into()));
            }
        }
        Ok(())
    }

    /// The URL without its password, for logs and `/readyz`.
    pub fn endpoint(&self) -> String {
        match url::Url::parse(&self.url) {
            Ok(mut u) => {
                let _ = u.set_password(None);
                u.to_string()
            }
            Err(_) => "<invalid url>".into(),
        }
    }
}

fn check_name(key: &str, name: &str) -> Result<(), (String, String)> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err((key.into(), format!("must be 1 to {MAX_NAME_BYTES} bytes")));
    }
    Ok(())
}

/// Parse an AMQP URL. The error never repeats the URL (it holds a password).
fn parse_url(raw: &str) -> Result<AMQPUri, String> {
    let mut uri: AMQPUri = raw
        .parse()
        .map_err(|e: String| format!("not an AMQP URL: {}", e.replace(raw, "<url>")))?;
    // amq-protocol-uri only reads domain names and falls back to
    // "localhost" for an IP address; take the host from the URL itself.
    if let Ok(u) = url::Url::parse(raw) {
        match u.host() {
            Some(url::Host::Ipv4(ip)) => uri.authority.host = ip.to_string(),
            Some(url::Host::Ipv6(ip)) => uri.authority.host = ip.to_string(),
            _ => {}
        }
    }
    Ok(uri)
}

/// The running source. See the module docs.
#[derive(Debug)]
pub struct AmqpSource {
    config: AmqpSourceConfig,
}

impl AmqpSource {
    pub fn new(config: AmqpSourceConfig) -> Self {
        Self { config }
    }
}

/// Why a connection ended or could not be made. Every variant is worth a
/// retry: configuration mistakes are caught by `validate` before start, and
/// what remains (broker down, credentials or vhost not yet set up, queue
/// declared with other arguments) can be fixed while herald waits.
#[derive(Debug, thiserror::Error)]
enum AmqpError {
    #[error("cannot connect: {0}")]
    Connect(#[source] lapin::Error),
    #[error("no connection within {0} ms")]
    Timeout(u64),
    #[error("cannot declare {what}: {source}")]
    Declare {
        what: String,
        #[source]
        source: lapin::Error,
    },
    #[error("connection or channel lost: {0}")]
    Lost(#[source] lapin::Error),
    #[error("the broker cancelled the consumer (queue deleted?)")]
    Cancelled,
    #[error("log unavailable: {0}")]
    Store(#[source] StoreError),
}

/// How a consume session ended.
enum Ended {
    /// Shutdown was requested; everything in flight was acknowledged.
    Stopped,
    Failed(AmqpError),
}

/// The source's counters, resolved once.
struct Counters {
    connected: Gauge,
    connection_failures: Counter,
    settled: Counter,
    ack_frames: Counter,
    dead_lettered: Counter,
    unroutable: Counter,
    rejected: Counter,
    dropped: Counter,
}

impl Counters {
    fn new(pipeline: &Pipeline, source: &str) -> Self {
        let m = &pipeline.metrics().amqp;
        let label = || vec![("source", source.to_string())];
        let poison = |outcome: &str| {
            m.poison.get_or_create_owned(&vec![
                ("source", source.to_string()),
                ("outcome", outcome.to_string()),
            ])
        };
        Self {
            connected: m.connected.get_or_create_owned(&label()),
            connection_failures: m.connection_failures.get_or_create_owned(&label()),
            settled: m.settled.get_or_create_owned(&label()),
            ack_frames: m.ack_frames.get_or_create_owned(&label()),
            dead_lettered: poison("dead_lettered"),
            unroutable: poison("unroutable"),
            rejected: poison("rejected"),
            dropped: poison("dropped"),
        }
    }
}

impl Source for AmqpSource {
    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, Result<(), SourceError>> {
        async move {
            let config = self.config;
            let uri = parse_url(&config.url).map_err(|message| SourceError::Config {
                source_name: ctx.name.clone(),
                message,
            })?;
            let endpoint = config.endpoint();
            let counters = Counters::new(&ctx.pipeline, &ctx.name);
            let backoff = || {
                ExponentialBuilder::default()
                    .with_min_delay(FIRST_RETRY)
                    .with_max_delay(Duration::from_millis(config.reconnect_max_ms))
                    .with_jitter()
                    .without_max_times()
                    .build()
            };
            let mut delays = backoff();
            ctx.set_ready(false, format!("connecting to {endpoint}"));
            loop {
                let connect = tokio::time::timeout(
                    Duration::from_millis(config.connect_timeout_ms),
                    Link::open(&config, uri.clone()),
                );
                let opened = tokio::select! {
                    () = ctx.shutdown.cancelled() => return Ok(()),
                    opened = connect => opened,
                };
                let error = match opened {
                    Ok(Ok(link)) => {
                        delays = backoff();
                        tracing::info!(
                            source = %ctx.name,
                            queue = %config.queue,
                            endpoint = %endpoint,
                            prefetch = config.prefetch,
                            "consuming"
                        );
                        ctx.set_ready(true, format!("consuming {} from {endpoint}", config.queue));
                        counters.connected.set(1);
                        let ended = Consume::new(&config, &ctx, &counters, link).run().await;
                        counters.connected.set(0);
                        match ended {
                            Ended::Stopped => return Ok(()),
                            Ended::Failed(e) => e,
                        }
                    }
                    Ok(Err(e)) => e,
                    Err(_) => AmqpError::Timeout(config.connect_timeout_ms),
                };
                counters.connection_failures.inc();
                let delay = delays.next().unwrap_or(FIRST_RETRY);
                tracing::warn!(
                    source = %ctx.name,
                    queue = %config.queue,
                    endpoint = %endpoint,
                    error = %error,
                    retry_in_ms = delay.as_millis() as u64,
                    "AMQP source disconnected; reconnecting"
                );
                // Kept while the next attempt runs, so a slow attempt does
                // not hide why the last one failed.
                ctx.set_ready(
                    false,
                    format!("disconnected from {endpoint}: {error}; retrying"),
                );
                tokio::select! {
                    () = ctx.shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
        .boxed()
    }
}

/// One connection with its topology declared and the consumer started.
struct Link {
    connection: Connection,
    channel: Channel,
    consumer: lapin::Consumer,
    /// Confirm-mode channel for dead-letter copies, opened when first needed
    /// and dropped when it fails.
    publisher: Option<Channel>,
}

impl Link {
    async fn open(config: &AmqpSourceConfig, uri: AMQPUri) -> Result<Self, AmqpError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("herald:{}", config.queue).into());
        let connection = Connection::connect_uri(uri, properties)
            .await
            .map_err(AmqpError::Connect)?;
        match Self::declare_and_consume(config, &connection).await {
            Ok((channel, consumer)) => Ok(Self {
                connection,
                channel,
                consumer,
                publisher: None,
            }),
            Err(e) => {
                close(&connection).await;
                Err(e)
            }
        }
    }

    async fn declare_and_consume(
        config: &AmqpSourceConfig,
        connection: &Connection,
    ) -> Result<(Channel, lapin::Consumer), AmqpError> {
        let declare = |what: String| move |source| AmqpError::Declare { what, source };
        let mut channel = connection
            .create_channel()
            .await
            .map_err(declare("a channel".into()))?;
        let mut exchanges: Vec<&str> = config.bindings.iter().map(|b| &*b.exchange).collect();
        exchanges.extend(config.dead_letter_exchange.as_deref());
        exchanges.sort_unstable();
        exchanges.dedup();
        for exchange in exchanges {
            channel = ensure_exchange(connection, channel, exchange)
                .await
                .map_err(declare(format!("exchange {exchange:?}")))?;
        }
        let mut arguments = FieldTable::default();
        if let Some(dlx) = &config.dead_letter_exchange {
            arguments.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(dlx.as_str().into()),
            );
        }
        let queue = ShortString::from(config.queue.as_str());
        channel
            .queue_declare(
                queue.clone(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .map_err(declare(format!("queue {:?}", config.queue)))?;
        for b in &config.bindings {
            channel
                .queue_bind(
                    queue.clone(),
                    b.exchange.as_str().into(),
                    b.routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(declare(format!(
                    "binding {:?} -> {:?} ({:?})",
                    b.exchange, config.queue, b.routing_key
                )))?;
        }
        channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await
            .map_err(declare("prefetch (basic.qos)".into()))?;
        let consumer = channel
            .basic_consume(
                queue,
                "herald".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(declare("consumer (basic.consume)".into()))?;
        Ok((channel, consumer))
    }

    /// The dead-letter channel, opened on first use.
    async fn publisher(&mut self) -> Result<Channel, lapin::Error> {
        if let Some(channel) = &self.publisher {
            return Ok(channel.clone());
        }
        let channel = self.connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        self.publisher = Some(channel.clone());
        Ok(channel)
    }
}

/// Use `name` as it is when it exists; declare it as a durable topic
/// exchange when it does not. A failed passive declare closes the channel,
/// so the returned channel may be a new one.
async fn ensure_exchange(
    connection: &Connection,
    channel: Channel,
    name: &str,
) -> Result<Channel, lapin::Error> {
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    match channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await
    {
        Ok(()) => Ok(channel),
        Err(e) if matches!(e.kind(), ErrorKind::ProtocolError(p) if p.get_id() == 404) => {
            let channel = connection.create_channel().await?;
            let durable = ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            };
            channel
                .exchange_declare(
                    name.into(),
                    ExchangeKind::Topic,
                    durable,
                    FieldTable::default(),
                )
                .await?;
            tracing::info!(
                exchange = name,
                "declared missing exchange as durable topic"
            );
            Ok(channel)
        }
        Err(e) => Err(e),
    }
}

/// Close a connection, bounded: the broker requeues what it has not seen
/// acknowledged. Errors are expected when the connection is already gone.
async fn close(connection: &Connection) {
    let _ = tokio::time::timeout(
        CLOSE_TIMEOUT,
        connection.close(200, "herald: closing".into()),
    )
    .await;
}

/// What a settled delivery turned out to be.
#[derive(Debug)]
enum Verdict {
    Appended,
    Poison(Rejection, String),
}

type Work = BoxFuture<'static, Result<Verdict, StoreError>>;

/// Deliveries taken from the broker and not yet settled, in delivery order.
///
/// Only the head is ever settled, so settlement follows delivery order no
/// matter in which order the appends complete.
struct Window<T> {
    entries: VecDeque<(T, Work)>,
}

impl<T> Window<T> {
    fn new() -> Self {
        Self {
            entries: VecDeque::new(),
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn push(&mut self, item: T, work: Work) {
        self.entries.push_back((item, work));
    }

    /// Wait for the head's append. Cancel-safe: the append stays in the
    /// window when this future is dropped. Pending forever when empty.
    async fn head(&mut self) -> Result<Verdict, StoreError> {
        match self.entries.front_mut() {
            Some((_, work)) => work.await,
            None => std::future::pending().await,
        }
    }

    /// Remove the head after [`Window::head`] resolved.
    fn pop(&mut self) -> Option<T> {
        self.entries.pop_front().map(|(item, _)| item)
    }

    /// The head and its verdict when its append has already resolved.
    fn try_settle(&mut self) -> Option<(T, Result<Verdict, StoreError>)> {
        let verdict = self.entries.front_mut()?.1.as_mut().now_or_never()?;
        self.pop().map(|item| (item, verdict))
    }

    /// Every entry, in order (for shutdown).
    async fn settle_next(&mut self) -> Option<(T, Result<Verdict, StoreError>)> {
        if self.entries.is_empty() {
            return None;
        }
        let verdict = self.head().await;
        self.pop().map(|item| (item, verdict))
    }
}

/// What the consume loop waits for. Lives for one loop turn, so the size
/// of a delivery in it costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Step {
    Shutdown,
    Settled(Result<Verdict, StoreError>),
    Delivery(Option<Result<Delivery, lapin::Error>>),
}

/// One consume session on one connection. See the module docs.
struct Consume<'a> {
    config: &'a AmqpSourceConfig,
    ctx: &'a SourceContext,
    counters: &'a Counters,
    link: Link,
    window: Window<Delivery>,
    /// Highest delivery tag settled (appended, or dead-lettered) in order.
    settled: u64,
    /// Highest delivery tag acknowledged or rejected at the broker.
    acked: u64,
    /// Deliveries settled since the last ack.
    unacked: u64,
    /// Once an append of this session fails, its later ones fail too: the
    /// connection is closed and the broker requeues them behind the failed
    /// one, never committed ahead of it.
    fence: Arc<Fence>,
}

impl<'a> Consume<'a> {
    fn new(
        config: &'a AmqpSourceConfig,
        ctx: &'a SourceContext,
        counters: &'a Counters,
        link: Link,
    ) -> Self {
        Self {
            config,
            ctx,
            counters,
            link,
            window: Window::new(),
            settled: 0,
            acked: 0,
            unacked: 0,
            fence: Arc::new(Fence::default()),
        }
    }

    async fn run(mut self) -> Ended {
        let ended = match self.consume().await {
            Ok(()) => match self.drain().await {
                Ok(()) => Ended::Stopped,
                Err(e) => {
                    tracing::warn!(
                        source = %self.ctx.name,
                        queue = %self.config.queue,
                        error = %e,
                        "AMQP source stopped with deliveries unacknowledged; the broker redelivers them"
                    );
                    Ended::Stopped
                }
            },
            Err(e) => Ended::Failed(e),
        };
        // Closing (rather than dropping) makes the broker requeue at once
        // whatever was not acknowledged.
        close(&self.link.connection).await;
        ended
    }

    /// Consume until shutdown (Ok) or a failure.
    async fn consume(&mut self) -> Result<(), AmqpError> {
        let capacity = usize::from(self.config.prefetch);
        loop {
            let room = self.window.len() < capacity;
            let step = tokio::select! {
                biased;
                () = self.ctx.shutdown.cancelled() => Step::Shutdown,
                verdict = self.window.head() => Step::Settled(verdict),
                next = self.link.consumer.next(), if room => Step::Delivery(next),
            };
            match step {
                Step::Shutdown => return Ok(()),
                Step::Settled(verdict) => {
                    if let Some(delivery) = self.window.pop() {
                        self.settle(delivery, verdict).await?;
                    }
                }
                Step::Delivery(next) => self.take(next)?,
            }
            // Take what has already arrived and settle what is already
            // appended, so one ack covers the whole batch.
            while self.window.len() < capacity {
                match self.link.consumer.next().now_or_never() {
                    Some(next) => self.take(next)?,
                    None => break,
                }
            }
            while let Some((delivery, verdict)) = self.window.try_settle() {
                self.settle(delivery, verdict).await?;
            }
            self.flush_acks().await?;
        }
    }

    /// After shutdown: stop deliveries, settle and acknowledge everything
    /// already taken.
    async fn drain(&mut self) -> Result<(), AmqpError> {
        let tag = self.link.consumer.tag();
        let cancel = self
            .link
            .channel
            .basic_cancel(tag, BasicCancelOptions::default());
        // A broken connection cannot cancel; the close below covers it.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, cancel).await;
        while let Some((delivery, verdict)) = self.window.settle_next().await {
            self.settle(delivery, verdict).await?;
        }
        self.flush_acks().await
    }

    /// A delivery from the consumer: hand it to the pipeline in order.
    fn take(&mut self, next: Option<Result<Delivery, lapin::Error>>) -> Result<(), AmqpError> {
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => return Err(AmqpError::Lost(e)),
            None => return Err(AmqpError::Cancelled),
        };
        let pipeline = &self.ctx.pipeline;
        let meta = meta_of(&delivery);
        let work: Work = match decode_object(&delivery.data, self.config.max_message_bytes) {
            Ok(payload) => pipeline
                .submit(&Event { payload, meta }, Some(&self.fence))
                .map(|r| r.map(verdict_of))
                .boxed(),
            Err((rejection, detail)) => {
                pipeline.reject(
                    SourceKind::Amqp.as_str(),
                    &meta.position,
                    rejection,
                    &detail,
                );
                ready(Ok(Verdict::Poison(rejection, detail))).boxed()
            }
        };
        self.window.push(delivery, work);
        Ok(())
    }

    /// The head of the window resolved.
    async fn settle(
        &mut self,
        delivery: Delivery,
        verdict: Result<Verdict, StoreError>,
    ) -> Result<(), AmqpError> {
        let tag = delivery.delivery_tag;
        match verdict {
            Ok(Verdict::Appended) => {}
            Ok(Verdict::Poison(rejection, detail)) => {
                self.dead_letter(&delivery, rejection, &detail).await?;
                if self.acked >= tag {
                    // Rejected to the broker's own dead-lettering.
                    return Ok(());
                }
            }
            Err(e) => return Err(AmqpError::Store(e)),
        }
        self.settled = tag;
        self.unacked += 1;
        Ok(())
    }

    /// One `basic.ack` for every delivery settled since the last.
    async fn flush_acks(&mut self) -> Result<(), AmqpError> {
        if self.settled <= self.acked {
            return Ok(());
        }
        self.link
            .channel
            .basic_ack(self.settled, BasicAckOptions { multiple: true })
            .await
            .map_err(AmqpError::Lost)?;
        self.acked = self.settled;
        self.counters.ack_frames.inc();
        self.counters.settled.inc_by(self.unacked);
        self.unacked = 0;
        Ok(())
    }

    /// Send a poison delivery to the dead-letter exchange with its reason;
    /// without one, leave it to be acknowledged (it was logged and counted
    /// when it was rejected).
    async fn dead_letter(
        &mut self,
        delivery: &Delivery,
        rejection: Rejection,
        detail: &str,
    ) -> Result<(), AmqpError> {
        let Some(dlx) = self.config.dead_letter_exchange.clone() else {
            self.counters.dropped.inc();
            return Ok(());
        };
        let timeout = Duration::from_millis(self.config.connect_timeout_ms);
        let copy = dead_letter_copy(delivery, &self.config.queue, rejection, detail);
        let published = tokio::time::timeout(timeout, async {
            let channel = self.link.publisher().await?;
            channel
                .basic_publish(
                    dlx.as_str().into(),
                    delivery.routing_key.clone(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &delivery.data,
                    copy,
                )
                .await?
                .await
        })
        .await;
        let failure = match published {
            Ok(Ok(Confirmation::Ack(None))) => {
                self.counters.dead_lettered.inc();
                return Ok(());
            }
            Ok(Ok(Confirmation::Ack(Some(_)))) => {
                self.counters.unroutable.inc();
                tracing::warn!(
                    source = %self.ctx.name,
                    queue = %self.config.queue,
                    dead_letter_exchange = %dlx,
                    routing_key = %delivery.routing_key,
                    reason = rejection.as_str(),
                    "dead-letter exchange routed the message to no queue; bind one to keep poison messages"
                );
                return Ok(());
            }
            Ok(Ok(Confirmation::Nack(_))) => "the broker refused it (nack)".to_string(),
            Ok(Ok(Confirmation::NotRequested)) => "publisher confirms are off".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no confirm within {} ms", timeout.as_millis()),
        };
        // The publish channel is suspect; let the broker dead-letter the
        // original instead (through the queue's x-dead-letter-exchange),
        // without herald's reason headers.
        self.link.publisher = None;
        let tag = delivery.delivery_tag;
        // Everything before this delivery is settled: acknowledge it first,
        // since a reject cannot cover other deliveries.
        self.flush_acks().await?;
        self.link
            .channel
            .basic_reject(tag, BasicRejectOptions { requeue: false })
            .await
            .map_err(AmqpError::Lost)?;
        self.acked = tag;
        self.settled = tag;
        self.counters.rejected.inc();
        self.counters.settled.inc();
        tracing::warn!(
            source = %self.ctx.name,
            queue = %self.config.queue,
            delivery_tag = tag,
            dead_letter_exchange = %dlx,
            reason = rejection.as_str(),
            error = %failure,
            "dead-letter publish failed; message rejected without requeue"
        );
        Ok(())
    }
}

fn verdict_of(processed: Processed) -> Verdict {
    match processed.poison() {
        Some((rejection, detail)) => Verdict::Poison(rejection, detail),
        None => Verdict::Appended,
    }
}

/// What rules see under `meta`, and the event's position (dedupe root).
fn meta_of(delivery: &Delivery) -> Meta {
    let props = &delivery.properties;
    let exchange = delivery.exchange.as_str();
    let routing_key = delivery.routing_key.as_str();
    let message_id = props
        .message_id()
        .as_ref()
        .map(|id| id.as_str())
        .filter(|id| !id.is_empty());
    let mut meta = Meta::new(
        SourceKind::Amqp,
        routing_key,
        position(exchange, routing_key, message_id, &delivery.data),
    );
    meta.exchange = Some(exchange.to_string());
    meta.message_id = message_id.map(str::to_string);
    meta.redelivered = Some(delivery.redelivered);
    meta.timestamp = props
        .timestamp()
        .map(|secs| crate::clock::rfc3339_ms(secs.saturating_mul(1000)));
    if let Some(headers) = props.headers() {
        meta.headers = headers
            .inner()
            .iter()
            .map(|(k, v)| (k.to_string(), header_text(v)))
            .collect();
    }
    meta
}

/// `amqp:<exchange>:id:<message_id>`, or, without a message id,
/// `amqp:<exchange>:<routing key>:xxh3:<hash>` where the 128-bit XXH3 hash
/// covers exchange, routing key and body (length-prefixed, so no two
/// different triples feed it the same bytes). XXH3 is specified and stable
/// across versions and platforms.
fn position(exchange: &str, routing_key: &str, message_id: Option<&str>, body: &[u8]) -> String {
    if let Some(id) = message_id {
        return format!("amqp:{exchange}:id:{id}");
    }
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for part in [exchange.as_bytes(), routing_key.as_bytes(), body] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    format!(
        "amqp:{exchange}:{routing_key}:xxh3:{:032x}",
        hasher.digest128()
    )
}

/// A header value as rules see it: strings as they are, numbers and
/// booleans as text, tables and arrays as JSON.
fn header_text(value: &AMQPValue) -> String {
    match header_json(value) {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn header_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::from(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Timestamp(n) => Value::from(*n),
        AMQPValue::Float(f) => Value::from(*f),
        AMQPValue::Double(f) => Value::from(*f),
        AMQPValue::DecimalValue(d) => {
            Value::from(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => Value::from(s.as_str()),
        AMQPValue::LongString(s) => Value::from(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ByteArray(b) => Value::from(String::from_utf8_lossy(b.as_slice())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(header_json).collect()),
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.to_string(), header_json(v)))
                .collect(),
        ),
        AMQPValue::Void => Value::Null,
    }
}

/// The properties of a dead-letter copy: the original's, persistent, with
/// herald's reason and the message's origin added to the headers.
fn dead_letter_copy(
    delivery: &Delivery,
    queue: &str,
    rejection: Rejection,
    detail: &str,
) -> lapin::BasicProperties {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    let mut cut = detail.len().min(MAX_DETAIL_BYTES);
    while !detail.is_char_boundary(cut) {
        cut -= 1;
    }
    let added: BTreeMap<&str, &str> = BTreeMap::from([
        ("x-herald-reason", rejection.as_str()),
        ("x-herald-detail", &detail[..cut]),
        ("x-herald-queue", queue),
        ("x-herald-exchange", delivery.exchange.as_str()),
        ("x-herald-routing-key", delivery.routing_key.as_str()),
    ]);
    for (key, value) in added {
        headers.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    }
    delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use tokio::sync::oneshot;

    fn config() -> AmqpSourceConfig {
        AmqpSourceConfig::new("amqp://guest:secret@127.0.0.1:5672/%2f", "herald")
    }

    #[test]
    fn validation_names_the_key() {
        assert!(config().validate().is_ok());
        let mut c = config();
        c.url = "http://guest:secret@x/".into();
        let (key, problem) = c.validate().unwrap_err();
        assert_eq!(key, "url");
        assert!(!problem.contains("secret"), "{problem}");
        let mut c = config();
        c.url = "not a url with secret".into();
        let (_, problem) = c.validate().unwrap_err();
        assert!(!problem.contains("secret"), "{problem}");
        let mut c = config();
        c.queue = String::new();
        assert_eq!(c.validate().unwrap_err().0, "queue");
        c.queue = "amq.mine".into();
        assert_eq!(c.validate().unwrap_err().0, "queue");
        let mut c = config();
        c.bindings.push(AmqpBinding {
            exchange: String::new(),
            routing_key: "#".into(),
        });
        assert_eq!(c.validate().unwrap_err().0, "bindings[0].exchange");
        let mut c = config();
        c.prefetch = 0;
        assert_eq!(c.validate().unwrap_err().0, "prefetch");
    }

    #[test]
    fn ip_hosts_are_kept_and_the_endpoint_hides_the_password() {
        let uri = parse_url("amqp://u:p@10.1.2.3:5673/%2f").unwrap();
        assert_eq!(uri.authority.host, "10.1.2.3");
        assert_eq!(uri.authority.port, 5673);
        assert_eq!(parse_url("amqp://[::1]/v").unwrap().authority.host, "::1");
        assert_eq!(
            parse_url("amqp://rabbit/").unwrap().authority.host,
            "rabbit"
        );
        let endpoint = config().endpoint();
        assert!(!endpoint.contains("secret"), "{endpoint}");
        assert!(endpoint.contains("127.0.0.1:5672"), "{endpoint}");
    }

    #[test]
    fn position_prefers_message_id_and_hashes_stably() {
        assert_eq!(position("ex", "a.b", Some("m-1"), b"{}"), "amqp:ex:id:m-1");
        let p = position("ex", "a.b", None, br#"{"n":1}"#);
        assert_eq!(p, position("ex", "a.b", None, br#"{"n":1}"#));
        assert_ne!(p, position("ex", "a.b", None, br#"{"n":2}"#));
        assert_ne!(p, position("ex", "a.c", None, br#"{"n":1}"#));
        // Length prefixes: moving bytes between fields changes the hash.
        assert_ne!(
            position("ab", "c", None, b"x").rsplit(':').next(),
            position("a", "bc", None, b"x").rsplit(':').next()
        );
        // The hash is part of stored dedupe keys: it must never change.
        assert_eq!(
            position("", "k", None, b"{}"),
            format!("amqp::k:xxh3:{}", p_known())
        );
    }

    fn p_known() -> String {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for part in [&b""[..], b"k", b"{}"] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        format!("{:032x}", h.digest128())
    }

    #[test]
    fn headers_become_text() {
        let mut table = FieldTable::default();
        table.insert("n".into(), AMQPValue::LongInt(3));
        assert_eq!(header_text(&AMQPValue::LongString("é".into())), "é");
        assert_eq!(header_text(&AMQPValue::Boolean(true)), "true");
        assert_eq!(header_text(&AMQPValue::LongLongInt(-7)), "-7");
        assert_eq!(header_text(&AMQPValue::Void), "");
        assert_eq!(
            header_text(&AMQPValue::FieldTable(table.clone())),
            r#"{"n":3}"#
        );
        assert_eq!(
            header_text(&AMQPValue::FieldArray(
                vec![
                    AMQPValue::FieldTable(table),
                    AMQPValue::ShortString("s".into())
                ]
                .into()
            )),
            r#"[{"n":3},"s"]"#
        );
    }

    #[test]
    fn dead_letter_copy_carries_the_reason() {
        let delivery = Delivery::mock(4, "ex".into(), "a.b".into(), false, b"x".to_vec());
        let detail = "é".repeat(MAX_DETAIL_BYTES);
        let props = dead_letter_copy(&delivery, "q", Rejection::InvalidJson, &detail);
        let headers = props.headers().clone().unwrap();
        let text = |k: &str| header_text(&headers.inner()[k]);
        assert_eq!(text("x-herald-reason"), "invalid_json");
        assert_eq!(text("x-herald-queue"), "q");
        assert_eq!(text("x-herald-routing-key"), "a.b");
        assert!(text("x-herald-detail").len() <= MAX_DETAIL_BYTES);
        assert_eq!(props.delivery_mode(), &Some(2));
    }

    /// Appends that complete out of order are still settled in delivery
    /// order, and never before they complete.
    #[tokio::test]
    async fn the_window_settles_in_order_only_what_is_appended() {
        let mut window = Window::new();
        let mut senders = Vec::new();
        for tag in 1..=3u64 {
            let (tx, rx) = oneshot::channel::<()>();
            senders.push(tx);
            let work: Work = async move {
                let _ = rx.await;
                Ok(Verdict::Appended)
            }
            .boxed();
            window.push(tag, work);
        }
        let mut senders = senders.into_iter();
        let (s1, s2, s3) = (
            senders.next().unwrap(),
            senders.next().unwrap(),
            senders.next().unwrap(),
        );
        // 3 and 2 complete first: nothing is settled while 1 is pending.
        s3.send(()).unwrap();
        s2.send(()).unwrap();
        tokio::task::yield_now().await;
        assert!(window.try_settle().is_none());
        assert!(window.head().now_or_never().is_none());
        assert_eq!(window.len(), 3);
        s1.send(()).unwrap();
        let order: Vec<u64> = std::iter::from_fn(|| window.try_settle().map(|(t, _)| t)).collect();
        assert_eq!(order, vec![1, 2, 3]);
        assert!(window.settle_next().await.is_none());
    }
}
