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
//!
//! Layout: `config.rs` (the `[[sources]]` entry and its checks), `link.rs`
//! (one connection: its topology and the consumer), `consume.rs` (one
//! consume session: take, settle, acknowledge, dead-letter), `window.rs`
//! (the deliveries in flight, settled in order), `decode.rs` (a delivery's
//! `meta`, position and dead-letter copy), this file (the reconnect loop).

mod config;
mod consume;
mod decode;
mod link;
mod window;

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use config::parse_url;
pub use config::{AmqpBinding, AmqpSourceConfig};
use consume::Consume;
use link::Link;

use super::{Source, SourceContext, SourceError};
use crate::metrics::{Labels, Metrics};
use crate::store::StoreError;

/// First delay of the reconnect back-off.
const FIRST_RETRY: Duration = Duration::from_millis(100);

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

/// The source's counters (`herald_amqp_*`, each labelled by source name),
/// resolved once.
struct Counters {
    /// 1 while the source is connected and consuming.
    connected: Gauge,
    /// Failed connection attempts and lost connections or channels.
    connection_failures: Counter,
    /// Deliveries acknowledged (or rejected to the dead-letter exchange).
    settled: Counter,
    /// `basic.ack` frames sent; each may cover many deliveries.
    ack_frames: Counter,
    /// Poison messages by outcome: copy confirmed by the dead-letter
    /// exchange; routed nowhere by it; fallback `basic.reject`; no
    /// dead-letter exchange (acknowledged).
    dead_lettered: Counter,
    unroutable: Counter,
    rejected: Counter,
    dropped: Counter,
}

impl Counters {
    fn new(metrics: &Metrics, source: &str) -> Self {
        let label = || vec![("source", source.to_string())];
        let counter = |name, help| {
            metrics
                .family::<Family<Labels, Counter>>("amqp", name, help)
                .get_or_create_owned(&label())
        };
        let poison = metrics.family::<Family<Labels, Counter>>(
            "amqp",
            "poison",
            "Messages that could not be processed, by source and outcome",
        );
        let poison = |outcome: &str| {
            poison.get_or_create_owned(&vec![
                ("source", source.to_string()),
                ("outcome", outcome.to_string()),
            ])
        };
        Self {
            connected: metrics
                .family::<Family<Labels, Gauge>>(
                    "amqp",
                    "connected",
                    "1 while the source is connected and consuming, by source",
                )
                .get_or_create_owned(&label()),
            connection_failures: counter(
                "connection_failures",
                "Failed connection attempts and lost connections or channels, by source",
            ),
            settled: counter(
                "settled",
                "Deliveries acknowledged or rejected, by source",
            ),
            ack_frames: counter(
                "ack_frames",
                "basic.ack frames sent (each may cover many deliveries), by source",
            ),
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
            let counters = Counters::new(ctx.pipeline.metrics(), &ctx.name);
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
