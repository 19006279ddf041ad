//! Sources: where events come from.
//!
//! A source turns broker messages (or HTTP requests) into [`Event`]s, hands
//! each to [`Pipeline::submit`] in its order, and acknowledges at the broker
//! only after the returned future resolves. Adding a source kind is one new
//! file implementing [`Source`] plus one arm in [`SourceConfig`].
//!
//! [`Event`]: crate::event::Event

pub mod amqp;
pub mod http;
pub mod kafka;
pub mod nats;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::pipeline::Pipeline;
use crate::store::Hints;

/// One `[[sources]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceConfig {
    /// `POST /events/{topic}` on the main HTTP server.
    Http(http::HttpSourceConfig),
    /// A RabbitMQ queue (AMQP 0-9-1).
    Amqp(amqp::AmqpSourceConfig),
    /// A Kafka consumer-group member.
    Kafka(kafka::KafkaSourceConfig),
    /// A durable pull consumer on a NATS JetStream stream.
    Nats(nats::NatsSourceConfig),
}

impl SourceConfig {
    pub fn default_http() -> Self {
        SourceConfig::Http(http::HttpSourceConfig::default())
    }

    pub fn is_http(&self) -> bool {
        self.http().is_some()
    }

    /// The HTTP source's settings, when this is one.
    pub fn http(&self) -> Option<&http::HttpSourceConfig> {
        if let SourceConfig::Http(c) = self {
            Some(c)
        } else {
            None
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Http(_) => "http",
            SourceConfig::Amqp(_) => "amqp",
            SourceConfig::Kafka(_) => "kafka",
            SourceConfig::Nats(_) => "nats",
        }
    }

    /// Checks serde cannot express: the offending key and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        match self {
            SourceConfig::Http(c) => c.validate(),
            SourceConfig::Amqp(c) => c.validate(),
            SourceConfig::Kafka(c) => c.validate(),
            SourceConfig::Nats(c) => c.validate(),
        }
    }

    /// Build the runnable source named `name`. Fails with
    /// [`SourceError::Config`] when its client rejects the settings.
    /// `hints` are the node's store's (some defaults depend on them).
    pub fn build(&self, name: &str, hints: Hints) -> Result<Box<dyn Source>, SourceError> {
        Ok(match self {
            SourceConfig::Http(_) => Box::new(http::HttpSource),
            SourceConfig::Amqp(c) => Box::new(amqp::AmqpSource::new(c.clone())),
            SourceConfig::Kafka(c) => Box::new(c.build(name, hints)?),
            SourceConfig::Nats(c) => Box::new(nats::NatsSource::new(c.clone())),
        })
    }
}

/// A running source. `run` consumes until `ctx.shutdown` is cancelled, then
/// finishes its in-flight appends, acknowledges them and returns.
pub trait Source: Send + 'static {
    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, Result<(), SourceError>>;
}

/// What a running source gets.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// Unique name, for logs, readiness and metrics.
    pub name: String,
    pub pipeline: Arc<Pipeline>,
    pub shutdown: CancellationToken,
    pub readiness: Readiness,
}

impl SourceContext {
    /// Report whether this source is connected to its broker.
    pub fn set_ready(&self, ready: bool, detail: impl Into<String>) {
        self.readiness.set(&self.name, ready, detail.into());
    }
}

/// A source that cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Its configuration is unusable (a bad property, a bad URL): retrying
    /// cannot help.
    #[error("source {source_name}: configuration: {message}")]
    Config {
        source_name: String,
        message: String,
    },
    /// It failed while running.
    #[error("source {source_name}: {message}")]
    Failed {
        source_name: String,
        message: String,
    },
}

/// Per-source connection state, shown at `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    inner: Arc<Mutex<BTreeMap<String, SourceState>>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceState {
    pub ready: bool,
    pub detail: String,
}

impl Readiness {
    /// Register a source as not yet connected.
    pub fn register(&self, name: &str) {
        self.set(name, false, "starting".into());
    }

    pub fn set(&self, name: &str, ready: bool, detail: String) {
        crate::sync::lock(&self.inner).insert(name.to_string(), SourceState { ready, detail });
    }

    /// Every source's state, and whether all are ready.
    pub fn snapshot(&self) -> (bool, BTreeMap<String, SourceState>) {
        let states = crate::sync::lock(&self.inner).clone();
        (states.values().all(|s| s.ready), states)
    }
}
