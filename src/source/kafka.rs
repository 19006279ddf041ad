//! The Kafka source: one consumer-group member (rdkafka / librdkafka).
//!
//! How a message travels:
//! 1. A dedicated thread polls the consumer for librdkafka's events
//!    (librdkafka is blocking, and the rebalance callback must be able to
//!    wait for the partitions it takes away). When partitions are assigned
//!    it splits each one's messages into a queue of its own and starts a
//!    worker task on it.
//! 2. Each worker copies its partition's messages into records in offset
//!    order and calls [`Pipeline::submit`]; up to `max_in_flight` appends
//!    stay in flight (a FIFO window) so a store with group commit can batch.
//!    Partitions run concurrently and never wait for each other: a worker
//!    that is behind leaves its messages in librdkafka's queue, whose
//!    per-partition limits then hold back fetching for that partition only.
//! 3. When the head of a partition's window is durable (its notifications
//!    appended, its dead letter acknowledged by the broker), the worker
//!    advances the partition's next offset; the polling thread stores it in
//!    librdkafka (`enable.auto.offset.store=false`), which commits stored
//!    offsets every `auto.commit.interval.ms`. This is rust-rdkafka's
//!    `examples/at_least_once.rs`, per partition.
//!
//! The code: this file holds the configuration, start-up and the polling
//! thread; [`worker`] the per-partition workers and dead letters;
//! [`context`] librdkafka's callbacks (rebalances, offsets, readiness,
//! logs).
//!
//! Invariants:
//! - an offset is stored only after the event at it and every earlier event
//!   of its partition are appended (or dead-lettered); a later offset never
//!   becomes committed before an earlier one;
//! - on revocation and at shutdown the polling thread stops the affected
//!   workers, lets their in-flight appends finish (bounded by
//!   [`DRAIN_TIMEOUT`]), stores their offsets and commits synchronously
//!   before the partitions go to another member;
//! - a poison message (not a JSON object, over `max_message_bytes`, or
//!   failing every rule) is written to `dead_letter_topic` with its key,
//!   value and headers plus `herald-*` reason headers, or logged and counted
//!   when none is set; then its offset is stored like any other;
//! - the default dedupe key starts with `kafka:<topic>:<partition>:<offset>`,
//!   so a redelivered message appends nothing new.
//!
//! Failures: an unavailable store or dead-letter topic is retried with
//! back-off, holding back only that partition's offsets (nothing is skipped).
//! Broker outages are librdkafka's to ride out (it reconnects with
//! `reconnect.backoff.ms` .. `reconnect.backoff.max.ms`); `/readyz` follows
//! the broker and group state (see [`context`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::producer::FutureProducer;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use super::{Build, Settings, Source, SourceContext, SourceError};
use crate::metrics::Labels;
use crate::store::Hints;
use context::{ConsumerCtx, ProducerCtx};
use worker::{DeadLetter, WorkerContext};

mod context;
mod worker;

/// How long a revocation or shutdown waits for a partition's in-flight
/// appends before committing what is done.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the polling thread blocks in librdkafka, which bounds how late
/// it notices shutdown and stores finished offsets.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How often finished offsets are handed to librdkafka's offset store.
const STORE_EVERY: Duration = Duration::from_millis(100);
/// Back-off of a partition whose append or dead letter failed.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Properties herald owns: setting them would break the at-least-once rule
/// or duplicate a dedicated key.
const RESERVED: [(&str, &str); 4] = [
    ("bootstrap.servers", "use `brokers`"),
    ("group.id", "use `group_id`"),
    (
        "enable.auto.offset.store",
        "herald stores each offset itself, after the event is appended",
    ),
    (
        "enable.auto.commit",
        "herald commits stored offsets periodically and on revocation",
    ),
];

/// `[[sources]] kind = "kafka"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Consumer group; every herald node of a deployment uses the same one.
    pub group_id: String,
    /// librdkafka properties, passed unchanged to the consumer and to the
    /// dead-letter producer (SASL/SSL, timeouts, `auto.offset.reset`, ...).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Where poison messages go; without it they are logged, counted and
    /// skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// Largest message value accepted; larger ones are poison (`too_large`).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Events per partition whose appends may be in flight at once;
    /// unset, what the node's store asks for ([`Hints::in_flight`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
}

fn default_max_message_bytes() -> usize {
    1024 * 1024
}

impl Settings for KafkaSourceConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        let fail = |key: &str, problem: &str| Err((key.to_string(), problem.to_string()));
        if self.brokers.trim().is_empty() {
            return fail("brokers", "must name at least one host:port");
        }
        if self.topics.is_empty() {
            return fail("topics", "must list at least one topic");
        }
        let mut seen = HashSet::new();
        for topic in &self.topics {
            if topic.trim().is_empty() {
                return fail("topics", "a topic name is empty");
            }
            if !seen.insert(topic) {
                return Err(("topics".into(), format!("{topic:?} is listed twice")));
            }
        }
        if self.group_id.trim().is_empty() {
            return fail("group_id", "must not be empty");
        }
        if let Some(dlq) = &self.dead_letter_topic {
            if dlq.trim().is_empty() {
                return fail("dead_letter_topic", "must not be empty");
            }
            if self.topics.contains(dlq) {
                return fail(
                    "dead_letter_topic",
                    "is one of `topics`: poison would loop back into herald",
                );
            }
        }
        if self.max_message_bytes == 0 {
            return fail("max_message_bytes", "must be greater than 0");
        }
        if self.max_in_flight == Some(0) {
            return fail("max_in_flight", "must be greater than 0");
        }
        for (key, why) in RESERVED {
            if self.properties.contains_key(key) {
                return Err((
                    format!("properties.\"{key}\""),
                    format!("set by herald: {why}"),
                ));
            }
        }
        if self
            .properties
            .get("statistics.interval.ms")
            .is_some_and(|v| v.trim() == "0")
        {
            return fail(
                "properties.\"statistics.interval.ms\"",
                "must not be 0: herald derives readiness and lag from librdkafka's statistics",
            );
        }
        Ok(())
    }

    fn build(&self, build: &Build<'_>) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(self.source(build.name, build.hints)?))
    }
}

impl KafkaSourceConfig {
    /// Create the consumer and the dead-letter producer. librdkafka checks
    /// every property here, so a bad one is a start-up error. `hints` are
    /// the node's store's, for the default of `max_in_flight`.
    pub fn source(&self, name: &str, hints: Hints) -> Result<KafkaSource, SourceError> {
        let config_error = |what: &str, e: KafkaError| SourceError::Config {
            source_name: name.to_string(),
            message: format!("{what}: {}", describe_config_error(&e)),
        };
        let mut consumer_config = ClientConfig::new();
        consumer_config
            .set("client.id", "herald")
            .set("statistics.interval.ms", "1000")
            .set("enable.partition.eof", "false");
        for (k, v) in &self.properties {
            consumer_config.set(k, v);
        }
        consumer_config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            .set("enable.auto.offset.store", "false")
            .set("enable.auto.commit", "true")
            .set_log_level(RDKafkaLogLevel::Info);
        let context = ConsumerCtx::new(name, &self.group_id);
        let consumer: BaseConsumer<ConsumerCtx> = consumer_config
            .create_with_context(context)
            .map_err(|e| config_error("consumer", e))?;
        let dead_letter = match &self.dead_letter_topic {
            None => None,
            Some(topic) => {
                let mut producer_config = ClientConfig::new();
                producer_config
                    .set("client.id", "herald-dead-letter")
                    .set("message.timeout.ms", "30000");
                for (k, v) in &self.properties {
                    producer_config.set(k, v);
                }
                producer_config
                    .set("bootstrap.servers", &self.brokers)
                    .set_log_level(RDKafkaLogLevel::Info);
                let producer: FutureProducer<ProducerCtx> = producer_config
                    .create_with_context(ProducerCtx::new(name))
                    .map_err(|e| config_error("dead-letter producer", e))?;
                Some(DeadLetter {
                    topic: topic.clone(),
                    producer,
                })
            }
        };
        Ok(KafkaSource {
            consumer,
            dead_letter,
            config: self.clone(),
            max_in_flight: self.max_in_flight.unwrap_or(hints.in_flight),
        })
    }
}

/// librdkafka's own words, plus the property they are about.
fn describe_config_error(e: &KafkaError) -> String {
    match e {
        KafkaError::ClientConfig(_, description, key, value) if !key.is_empty() => {
            format!("librdkafka rejected property {key:?} = {value:?}: {description}")
        }
        other => other.to_string(),
    }
}

/// A built Kafka source, its clients created and checked.
pub struct KafkaSource {
    consumer: BaseConsumer<ConsumerCtx>,
    dead_letter: Option<DeadLetter>,
    config: KafkaSourceConfig,
    /// `config.max_in_flight` or its default for the node's store.
    max_in_flight: usize,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Source for KafkaSource {
    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, Result<(), SourceError>> {
        async move {
            let KafkaSource {
                consumer,
                dead_letter,
                config,
                max_in_flight,
            } = *self;
            ctx.set_ready(false, format!("connecting to {}", config.brokers));
            let shared = Arc::new(WorkerContext {
                pipeline: ctx.pipeline.clone(),
                metrics: ctx.pipeline.metrics().clone(),
                dead_letter,
                max_message_bytes: config.max_message_bytes,
                max_in_flight,
            });
            let run = Run {
                source: ctx.clone(),
                runtime: Handle::current(),
                shared,
                lag: ctx.pipeline.metrics().family(
                    "kafka",
                    "consumer_lag",
                    "Messages between the consumer's position and the partition's end, \
                     by group, topic and partition",
                ),
            };
            if consumer.context().run.set(run).is_err() {
                return Err(failed(&ctx.name, "the source was started twice"));
            }
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let name = ctx.name.clone();
            std::thread::Builder::new()
                .name(format!("herald-{name}"))
                .spawn(move || {
                    let result = poll_loop(consumer, &config.topics);
                    let _ = done_tx.send(result);
                })
                .map_err(|e| failed(&name, &format!("cannot start the consumer thread: {e}")))?;
            done_rx
                .await
                .unwrap_or_else(|_| Err(failed(&name, "the consumer thread panicked")))
        }
        .boxed()
    }
}

fn failed(name: &str, message: &str) -> SourceError {
    SourceError::Failed {
        source_name: name.to_string(),
        message: message.to_string(),
    }
}

/// The polling thread: subscribe, serve librdkafka's events (rebalances
/// start and stop partition workers), store finished offsets; at shutdown
/// drain, commit and leave the group.
fn poll_loop(consumer: BaseConsumer<ConsumerCtx>, topics: &[String]) -> Result<(), SourceError> {
    let consumer = Arc::new(consumer);
    let ctx = consumer.context().clone();
    let _ = ctx.consumer.set(Arc::downgrade(&consumer));
    let Some(run) = ctx.run.get() else {
        return Err(failed(&ctx.name, "not started"));
    };
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs).map_err(|e| {
        let topics = topic_refs.join(", ");
        failed(&ctx.name, &format!("cannot subscribe to {topics}: {e}"))
    })?;
    let topics = topic_refs.join(",");
    tracing::info!(source = %ctx.name, group = %ctx.group, topics, "kafka consumer subscribed");
    let mut last_store = Instant::now();
    while !run.source.shutdown.is_cancelled() {
        match consumer.poll(POLL_TIMEOUT) {
            None => {}
            Some(Ok(message)) => ctx.stray(&consumer, &message),
            Some(Err(e)) => ctx.consume_error(&e),
        }
        if last_store.elapsed() >= STORE_EVERY {
            ctx.reap(&consumer);
            ctx.store_offsets(&consumer);
            last_store = Instant::now();
        }
    }
    tracing::info!(source = %ctx.name, "kafka source stopping: finishing in-flight events");
    ctx.stop_partitions(&consumer, None, true);
    // Close here, not wherever the last reference drops: closing leaves
    // the group (the final revocation finds nothing left to drain) so the
    // partitions move on at once instead of after a session timeout.
    // Dropping the only reference closes it; a worker that did not finish
    // in time may still hold one, so then close explicitly.
    match Arc::try_unwrap(consumer) {
        Ok(consumer) => drop(consumer),
        Err(consumer) => match consumer.close_queue() {
            Ok(()) => {
                while !consumer.closed() {
                    consumer.poll(POLL_TIMEOUT);
                }
            }
            Err(e) => tracing::warn!(source = %ctx.name, error = %e, "cannot close the consumer"),
        },
    }
    tracing::info!(source = %ctx.name, "kafka source stopped");
    Ok(())
}

/// Set once `run` starts: what the callbacks need to reach herald.
struct Run {
    source: SourceContext,
    /// Where partition workers are spawned from the polling thread.
    runtime: Handle,
    shared: Arc<WorkerContext>,
    /// `herald_kafka_consumer_lag`: messages behind each held partition's
    /// end, by group, topic and partition.
    lag: Family<Labels, Gauge>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> KafkaSourceConfig {
        KafkaSourceConfig {
            brokers: "127.0.0.1:9".into(),
            topics: vec!["orders".into()],
            group_id: "g".into(),
            properties: BTreeMap::new(),
            dead_letter_topic: None,
            max_message_bytes: 100,
            max_in_flight: Some(4),
        }
    }

    #[test]
    fn the_window_defaults_to_the_stores_hint_and_a_set_one_wins() {
        let mut c = config();
        c.max_in_flight = None;
        let window = |c: &KafkaSourceConfig, in_flight| {
            c.source("k", Hints { in_flight })
                .expect("build")
                .max_in_flight
        };
        assert_eq!(window(&c, 8192), 8192);
        assert_eq!(window(&c, 1024), 1024);
        c.max_in_flight = Some(7);
        assert_eq!(window(&c, 8192), 7);
    }

    #[test]
    fn validation_names_the_key() {
        let key = |c: KafkaSourceConfig| c.validate().err().map(|e| e.0);
        assert_eq!(key(config()), None);
        let mut c = config();
        c.topics.clear();
        assert_eq!(key(c).as_deref(), Some("topics"));
        let mut c = config();
        c.dead_letter_topic = Some("orders".into());
        assert_eq!(key(c).as_deref(), Some("dead_letter_topic"));
        let mut c = config();
        c.properties
            .insert("enable.auto.offset.store".into(), "true".into());
        assert_eq!(
            key(c).as_deref(),
            Some("properties.\"enable.auto.offset.store\"")
        );
        let mut c = config();
        c.max_in_flight = Some(0);
        assert_eq!(key(c).as_deref(), Some("max_in_flight"));
    }

    #[test]
    fn a_bad_property_is_a_configuration_error_naming_it() {
        let mut c = config();
        c.properties.insert("no.such.property".into(), "1".into());
        let err = c
            .source("kafka", Hints::default())
            .expect_err("librdkafka rejects it");
        assert!(matches!(err, SourceError::Config { .. }), "{err}");
        assert!(err.to_string().contains("no.such.property"), "{err}");
    }
}
