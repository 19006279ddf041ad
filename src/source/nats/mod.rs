//! The NATS JetStream source: one durable pull consumer on one stream
//! (async-nats).
//!
//! At every (re)connect herald looks the stream up (it never creates or
//! changes a stream: retention and storage are the operator's), creates or
//! updates its durable pull consumer (`durable`, explicit acks, `ack_wait`,
//! `max_ack_pending`, filtered by `subjects`), replays what an earlier
//! session left unacknowledged (below), and pulls.
//!
//! Invariants:
//! - messages go to [`Pipeline::submit`] in stream order (the consumer
//!   delivers in stream order), so every subject keeps its order in the
//!   log; up to `max_ack_pending` appends are in flight at once;
//! - a message is settled (acknowledged, or dead-lettered then
//!   acknowledged) only after its append resolved, and settlements happen
//!   in delivery order (a [`FuturesOrdered`] window);
//! - poison (not a JSON object, above `max_message_bytes`, or every matching
//!   rule failed) never blocks the stream: with `dead_letter_subject` a copy
//!   carrying `X-Herald-Reason` is published there and confirmed by the
//!   stream that captures the subject, then the original is acknowledged;
//!   when that publish fails the original is terminated (`+TERM`: never
//!   redelivered, still in the stream); without a dead-letter subject it is
//!   logged, counted and acknowledged;
//! - on a lost connection herald stops pulling, lets the appends in flight
//!   finish (in order) without acknowledging them, closes the connection
//!   and reconnects with exponential back-off; on a store failure the
//!   session's [`Fence`] stops its later appends and the connection is
//!   closed at once. `/readyz` reports the source not ready until it pulls
//!   again.
//!
//! Order across sessions: JetStream redelivers an unacknowledged message
//! only after `ack_wait`, and meanwhile hands newer messages to a new pull,
//! which would put them in the log ahead of older ones. So each session
//! starts with a replay: it reads the consumer's ack floor and its last
//! delivered stream sequence, fetches every message in between that the
//! filter selects straight from the stream, and appends them in order
//! before pulling. They are not acknowledged by the replay; when JetStream
//! redelivers them they map to the same dedupe keys, append nothing and are
//! acknowledged then. Poison met in the replay is left to that redelivery.
//!
//! The default dedupe key's root ([`Meta::position`]) is
//! `nats:<stream>@<created>:<stream sequence>`, where `<created>` is the
//! stream's creation time in milliseconds: a stream deleted and created
//! again under the same name restarts its sequences without colliding with
//! the old ones.
//!
//! Cancel-safety: the pull loop only awaits futures that keep their state
//! when a `select!` drops them (the message stream, the window's next
//! settled append, a watch channel); shutdown is a branch of that loop.

//!
//! Layout: `config.rs` (the `[[sources]]` entry, its checks, connection
//! and consumer options), `session.rs` (one connection: replay, pull,
//! settle, dead-letter), this file (the reconnect loop).

mod config;
mod session;

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;

pub use config::NatsSourceConfig;
use session::Session;

use super::{Source, SourceContext, SourceError};
use crate::store::StoreError;

/// First delay of the reconnect back-off.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// The running source. See the module docs.
#[derive(Debug)]
pub struct NatsSource {
    config: NatsSourceConfig,
}

impl NatsSource {
    pub fn new(config: NatsSourceConfig) -> Self {
        Self { config }
    }
}

/// Why a session ended or could not start. Every variant is worth a retry:
/// configuration mistakes are caught by `validate` before start, and what
/// remains (server down, stream not yet created, credentials not yet
/// accepted) can be fixed while herald waits.
#[derive(Debug, thiserror::Error)]
enum NatsError {
    #[error("cannot read credentials file {0}: {1}")]
    Credentials(String, #[source] std::io::Error),
    #[error("cannot connect: {0}")]
    Connect(#[source] async_nats::ConnectError),
    #[error("no connection within {0} ms")]
    Timeout(u64),
    #[error("stream {0:?}: {1}")]
    Stream(String, String),
    #[error("consumer {0:?}: {1}")]
    Consumer(String, String),
    #[error("several `subjects` need nats-server 2.10 or later (this one is {0})")]
    OldServer(String),
    #[error("connection lost")]
    Lost,
    #[error("pull failed: {0}")]
    Pull(String),
    #[error("acknowledgement failed: {0}")]
    Ack(String),
    #[error("log unavailable: {0}")]
    Store(#[source] StoreError),
}

impl NatsError {
    /// The `error` label of `herald_source_errors_total`.
    fn label(&self) -> &'static str {
        match self {
            NatsError::Credentials(..) | NatsError::Connect(_) | NatsError::Timeout(_) => "connect",
            NatsError::Stream(..) | NatsError::Consumer(..) | NatsError::OldServer(_) => "setup",
            NatsError::Lost | NatsError::Pull(_) => "consume",
            NatsError::Ack(_) => "commit",
            NatsError::Store(_) => "store",
        }
    }
}

impl Source for NatsSource {
    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, Result<(), SourceError>> {
        async move {
            let config = self.config;
            let endpoint = config.endpoint();
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
                let error = match Session::open(&config, &ctx).await {
                    Ok(None) => return Ok(()),
                    Ok(Some(session)) => {
                        delays = backoff();
                        match session.run().await {
                            Ok(()) => return Ok(()),
                            Err(e) => e,
                        }
                    }
                    Err(e) => e,
                };
                ctx.pipeline
                    .metrics()
                    .source_error(&ctx.name, error.label());
                let delay = delays.next().unwrap_or(FIRST_RETRY);
                tracing::warn!(
                    source = %ctx.name,
                    stream = %config.stream,
                    endpoint = %endpoint,
                    error = %error,
                    retry_in_ms = delay.as_millis() as u64,
                    "NATS source disconnected; reconnecting"
                );
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
