//! The Kafka source: one consumer-group member (rdkafka / librdkafka).
//!
//! How a message travels:
//! 1. A dedicated thread polls the consumer (librdkafka is blocking, and the
//!    rebalance callback must be able to wait for the partitions it takes
//!    away). It copies each message into a [`Record`] and hands it to the
//!    worker of its partition over a bounded channel.
//! 2. One task per assigned partition turns records into events in offset
//!    order and calls [`Pipeline::submit`]; up to `max_in_flight` appends
//!    stay in flight (a FIFO window) so a store with group commit can batch.
//!    Partitions run concurrently and never wait for each other.
//! 3. When the head of a partition's window is durable (its notifications
//!    appended, its dead letter acknowledged by the broker), the worker
//!    advances the partition's done offset; the polling thread stores it in
//!    librdkafka (`enable.auto.offset.store=false`), which commits stored
//!    offsets every `auto.commit.interval.ms`. This is rust-rdkafka's
//!    `examples/at_least_once.rs`, per partition.
//!
//! Invariants:
//! - an offset is stored only after the event at it and every earlier event
//!   of its partition are appended (or dead-lettered); a later offset never
//!   becomes committed before an earlier one;
//! - on revocation and at shutdown the polling thread stops the affected
//!   workers, lets their in-flight appends finish (bounded by
//!   [`DRAIN_TIMEOUT`]), stores their offsets and commits synchronously
//!   before the partitions go to another member;
//! - a partition whose channel is full is paused at the broker and resumed
//!   once its worker catches up, so a slow partition never stalls the others
//!   and memory stays bounded;
//! - a poison message (not JSON, over `max_message_bytes`, or failing every
//!   rule) is written to `dead_letter_topic` with its key, value and headers
//!   plus `herald-*` reason headers, or logged and counted when none is set;
//!   then its offset is stored like any other;
//! - the default dedupe key starts with `kafka:<topic>:<partition>:<offset>`,
//!   so a redelivered message appends nothing new.
//!
//! Failures: an unavailable store or dead-letter topic is retried with
//! back-off, holding back only that partition's offsets (nothing is skipped).
//! Broker outages are librdkafka's to ride out (it reconnects with
//! `reconnect.backoff.ms` .. `reconnect.backoff.max.ms`); `/readyz` follows
//! the broker and group-coordinator state from librdkafka's statistics.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Source, SourceContext, SourceError};
use crate::event::{Event, Meta, SourceKind};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, Rejection};
use crate::store::StoreError;

/// How long a revocation or shutdown waits for a partition's in-flight
/// appends before committing what is done.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the polling thread blocks in librdkafka, which bounds how late
/// it notices shutdown and stores finished offsets.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// Poll timeout while a paused partition waits to hand records over.
const PARKED_POLL_TIMEOUT: Duration = Duration::from_millis(10);
/// How often finished offsets are handed to librdkafka's offset store.
const STORE_EVERY: Duration = Duration::from_millis(100);
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
    /// Events per partition whose appends may be in flight at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
}

fn default_max_message_bytes() -> usize {
    1024 * 1024
}

fn default_max_in_flight() -> usize {
    1024
}

impl KafkaSourceConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
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
        if self.max_in_flight == 0 {
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

    /// Create the consumer and the dead-letter producer. librdkafka checks
    /// every property here, so a bad one is a start-up error.
    pub fn build(&self, name: &str) -> Result<KafkaSource, SourceError> {
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
        let context = ConsumerCtx {
            name: name.to_string(),
            group: self.group_id.clone(),
            run: OnceLock::new(),
            partitions: Mutex::new(Partitions::default()),
            next_worker: AtomicU64::new(0),
            finished: Mutex::new(std_mpsc::channel()),
            lag: Mutex::new(HashSet::new()),
            health: Mutex::new(Health {
                brokers: Err("connecting".into()),
                coordinator: Err("looking for the group coordinator".into()),
                assigned: None,
                reported: None,
            }),
        };
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
                    .create_with_context(ProducerCtx {
                        name: name.to_string(),
                    })
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
            } = *self;
            ctx.set_ready(false, format!("connecting to {}", config.brokers));
            let shared = Arc::new(Shared {
                name: ctx.name.clone(),
                pipeline: ctx.pipeline.clone(),
                metrics: ctx.pipeline.metrics().clone(),
                dead_letter,
                max_message_bytes: config.max_message_bytes,
                max_in_flight: config.max_in_flight,
            });
            let run = Run {
                source: ctx.clone(),
                runtime: Handle::current(),
                shared,
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

/// The polling thread: subscribe, dispatch messages to partition workers,
/// store finished offsets; at shutdown drain, commit and leave the group.
fn poll_loop(consumer: BaseConsumer<ConsumerCtx>, topics: &[String]) -> Result<(), SourceError> {
    let ctx = consumer.context().clone();
    let Some(run) = ctx.run.get() else {
        return Err(failed(&ctx.name, "not started"));
    };
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topic_refs)
        .map_err(|e| failed(&ctx.name, &format!("cannot subscribe to {topics:?}: {e}")))?;
    tracing::info!(source = %ctx.name, group = %ctx.group, ?topics, "kafka consumer subscribed");
    let mut last_store = Instant::now();
    let mut parked = false;
    while !run.source.shutdown.is_cancelled() {
        let timeout = if parked {
            PARKED_POLL_TIMEOUT
        } else {
            POLL_TIMEOUT
        };
        match consumer.poll(timeout) {
            None => {}
            Some(Ok(message)) => parked = ctx.dispatch(&consumer, &message),
            Some(Err(e)) => ctx.consume_error(&e),
        }
        if parked {
            parked = ctx.unpark(&consumer);
        }
        if last_store.elapsed() >= STORE_EVERY {
            ctx.store_offsets(&consumer);
            last_store = Instant::now();
        }
    }
    tracing::info!(source = %ctx.name, "kafka source stopping: finishing in-flight events");
    ctx.stop_partitions(&consumer, None, true);
    // Dropping the consumer closes it: it leaves the group (the final
    // revocation finds nothing left to drain) so the partitions move on at
    // once instead of after a session timeout.
    drop(consumer);
    tracing::info!(source = %ctx.name, "kafka source stopped");
    Ok(())
}

/// What every partition worker shares.
struct Shared {
    name: String,
    pipeline: Arc<Pipeline>,
    metrics: Arc<Metrics>,
    dead_letter: Option<DeadLetter>,
    max_message_bytes: usize,
    max_in_flight: usize,
}

/// Set once `run` starts: what the callbacks need to reach herald.
struct Run {
    source: SourceContext,
    runtime: Handle,
    shared: Arc<Shared>,
}

/// One message, copied out of librdkafka's buffers.
#[derive(Debug)]
struct Record {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    /// In order, repeats and null values kept (for the dead letter).
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp_ms: Option<i64>,
}

impl Record {
    fn new(topic: Arc<str>, m: &BorrowedMessage<'_>) -> Self {
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: m.timestamp().to_millis(),
        }
    }

    /// The event's identity at its source: the root of its dedupe keys.
    fn position(&self) -> String {
        format!("kafka:{}:{}:{}", self.topic, self.partition, self.offset)
    }

    /// The event rules see, or why there is none.
    fn decode(&self, max_bytes: usize) -> Result<Event, (Rejection, String)> {
        let Some(payload) = self.payload.as_deref() else {
            return Err((Rejection::InvalidJson, "message has no value".into()));
        };
        if payload.len() > max_bytes {
            return Err((
                Rejection::TooLarge,
                format!(
                    "value of {} bytes is over max_message_bytes ({max_bytes})",
                    payload.len()
                ),
            ));
        }
        let payload = match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(o)) => Value::Object(o),
            Ok(_) => return Err((Rejection::InvalidJson, "expected a JSON object".into())),
            Err(e) => return Err((Rejection::InvalidJson, format!("invalid JSON: {e}"))),
        };
        let mut meta = Meta::new(SourceKind::Kafka, &*self.topic, self.position());
        meta.partition = Some(self.partition);
        meta.offset = Some(self.offset);
        meta.key = self
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned());
        // Rules see one value per header name: the last, as most clients
        // treat a repeated header as an override.
        meta.headers = self
            .headers
            .iter()
            .map(|(k, v)| {
                let v = v
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                (k.clone(), v.into_owned())
            })
            .collect();
        meta.timestamp = self
            .timestamp_ms
            .and_then(|ms| u64::try_from(ms).ok())
            .map(crate::clock::rfc3339_ms);
        Ok(Event { payload, meta })
    }
}

/// Why a record could not finish.
#[derive(Debug)]
enum Failure {
    /// The store refused the append; retry from this record.
    Store(StoreError),
    /// The partition is draining and this record gave up (its dead letter
    /// could not be written in time); its offset must not be stored.
    Stopped,
}

type Outcome = (Arc<Record>, Result<(), Failure>);

impl Shared {
    /// Start processing `rec`: rules run and the append starts now, so the
    /// log keeps the partition's order; the future resolves when the record
    /// may be acknowledged.
    fn start(
        self: &Arc<Self>,
        rec: Arc<Record>,
        drain: &CancellationToken,
    ) -> BoxFuture<'static, Outcome> {
        let kind = SourceKind::Kafka.as_str();
        match rec.decode(self.max_message_bytes) {
            Err((rejection, detail)) => {
                self.pipeline
                    .reject(kind, &rec.position(), rejection, &detail);
                let this = self.clone();
                let drain = drain.clone();
                async move {
                    let why = Why {
                        reason: rejection,
                        rules: None,
                        error: detail,
                    };
                    let r = this.dead_letter(&rec, why, &drain).await;
                    (rec, r)
                }
                .boxed()
            }
            Ok(event) => {
                let append = self.pipeline.submit(&event);
                let this = self.clone();
                let drain = drain.clone();
                async move {
                    let result = async {
                        let processed = append.await.map_err(Failure::Store)?;
                        if let Some(reason @ Rejection::AllRulesFailed) = processed.rejection {
                            let rules: Vec<&str> =
                                processed.failures.iter().map(|f| &*f.rule).collect();
                            let error = processed
                                .failures
                                .iter()
                                .map(|f| {
                                    format!("rule `{}` field `{}`: {}", f.rule, f.field, f.message)
                                })
                                .collect::<Vec<_>>()
                                .join("; ");
                            let why = Why {
                                reason,
                                rules: Some(rules.join(",")),
                                error,
                            };
                            this.dead_letter(&rec, why, &drain).await?;
                        }
                        Ok(())
                    }
                    .await;
                    (rec, result)
                }
                .boxed()
            }
        }
    }

    /// Write `rec` to the dead-letter topic, retrying with back-off until
    /// the broker acknowledges it (or the partition drains). Without a
    /// dead-letter topic the rejection was already logged and counted.
    async fn dead_letter(
        &self,
        rec: &Record,
        why: Why,
        drain: &CancellationToken,
    ) -> Result<(), Failure> {
        let Some(dlq) = &self.dead_letter else {
            return Ok(());
        };
        let mut backoff = BACKOFF_MIN;
        let mut drop_value = false;
        loop {
            match dlq.send(rec, &why, drop_value).await {
                Ok(()) => {
                    self.metrics
                        .dead_lettered(SourceKind::Kafka.as_str(), why.reason.as_str());
                    tracing::debug!(
                        source = %self.name,
                        topic = %rec.topic,
                        partition = rec.partition,
                        offset = rec.offset,
                        dead_letter_topic = %dlq.topic,
                        reason = why.reason.as_str(),
                        "event dead-lettered"
                    );
                    return Ok(());
                }
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge))
                    if !drop_value =>
                {
                    tracing::warn!(
                        source = %self.name,
                        topic = %rec.topic,
                        partition = rec.partition,
                        offset = rec.offset,
                        dead_letter_topic = %dlq.topic,
                        "dead letter too large for the broker; sending it without its value"
                    );
                    drop_value = true;
                }
                Err(e) => {
                    self.metrics
                        .source_error(SourceKind::Kafka.as_str(), "dead_letter");
                    tracing::warn!(
                        source = %self.name,
                        topic = %rec.topic,
                        partition = rec.partition,
                        offset = rec.offset,
                        dead_letter_topic = %dlq.topic,
                        error = %e,
                        retry_in_ms = backoff.as_millis() as u64,
                        "cannot write to the dead-letter topic; the partition waits"
                    );
                    tokio::select! {
                        () = drain.cancelled() => return Err(Failure::Stopped),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// Why a record is dead-lettered.
#[derive(Debug)]
struct Why {
    reason: Rejection,
    /// The failing rule ids, comma-separated.
    rules: Option<String>,
    error: String,
}

struct DeadLetter {
    topic: String,
    producer: FutureProducer<ProducerCtx>,
}

impl DeadLetter {
    /// The original key, value and headers, plus `herald-*` headers saying
    /// why and where from.
    async fn send(&self, rec: &Record, why: &Why, drop_value: bool) -> KafkaResult<()> {
        let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len() + 7);
        for (key, value) in &rec.headers {
            headers = headers.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        let partition = rec.partition.to_string();
        let offset = rec.offset.to_string();
        let mut ours = vec![
            ("herald-reason", why.reason.as_str()),
            ("herald-source-topic", &*rec.topic),
            ("herald-source-partition", &partition),
            ("herald-source-offset", &offset),
            ("herald-error", &why.error),
        ];
        if let Some(rules) = &why.rules {
            ours.push(("herald-rule", rules));
        }
        let size;
        if drop_value {
            size = rec.payload.as_ref().map_or(0, Vec::len).to_string();
            ours.push(("herald-value-omitted-bytes", &size));
        }
        for (key, value) in ours {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
        if let Some(key) = &rec.key {
            record = record.key(key.as_slice());
        }
        if let (Some(value), false) = (&rec.payload, drop_value) {
            record = record.payload(value.as_slice());
        }
        self.producer
            .send(record, Duration::from_secs(5))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}

/// A partition's worker: submits its records in order with at most
/// `max_in_flight` in flight, and publishes the offset after the last
/// finished one in `done`. On `drain` it takes no new record, finishes the
/// in-flight ones and returns.
async fn partition_worker(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Arc<Record>>,
    drain: CancellationToken,
    done: Arc<AtomicI64>,
    _finished: Finished,
) {
    let mut window: FuturesOrdered<BoxFuture<'static, Outcome>> = FuturesOrdered::new();
    let mut backoff = BACKOFF_MIN;
    loop {
        tokio::select! {
            biased;
            () = drain.cancelled() => break,
            Some((rec, result)) = window.next(), if !window.is_empty() => match result {
                Ok(()) => {
                    done.store(rec.offset + 1, Ordering::Release);
                    backoff = BACKOFF_MIN;
                }
                Err(Failure::Stopped) => return,
                Err(Failure::Store(e)) => {
                    // Everything after `rec` waits for it: collect the
                    // window and submit it again, in order, after a pause.
                    // Dedupe keys make the second attempt idempotent.
                    let mut again = vec![rec];
                    while let Some((r, _)) = window.next().await {
                        again.push(r);
                    }
                    shared.metrics.source_error(SourceKind::Kafka.as_str(), "store");
                    tracing::warn!(
                        source = %shared.name,
                        topic = %again[0].topic,
                        partition = again[0].partition,
                        offset = again[0].offset,
                        error = %e,
                        retry_in_ms = backoff.as_millis() as u64,
                        "append failed; the partition retries from this offset"
                    );
                    tokio::select! {
                        () = drain.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    for r in again {
                        window.push_back(shared.start(r, &drain));
                    }
                }
            },
            rec = rx.recv(), if window.len() < shared.max_in_flight => match rec {
                Some(rec) => window.push_back(shared.start(rec, &drain)),
                None => break,
            },
        }
    }
    while let Some((rec, result)) = window.next().await {
        if result.is_err() {
            // Later records may be done, but their offsets must not pass
            // this one: stop here and let them be redelivered.
            return;
        }
        done.store(rec.offset + 1, Ordering::Release);
    }
}

/// Tells the polling thread that a worker has returned (even by panic).
struct Finished {
    id: u64,
    tx: std_mpsc::Sender<u64>,
}

impl Drop for Finished {
    fn drop(&mut self) {
        let _ = self.tx.send(self.id);
    }
}

/// The polling thread's handle on one partition worker.
struct Worker {
    id: u64,
    topic: Arc<str>,
    partition: i32,
    tx: mpsc::Sender<Arc<Record>>,
    drain: CancellationToken,
    /// Offset after the last finished record (-1: none yet).
    done: Arc<AtomicI64>,
    /// The last `done` handed to librdkafka's offset store.
    stored: i64,
    /// Offset of the first record handed to this worker.
    first: i64,
    /// Records waiting while the channel is full (the partition is paused).
    parked: VecDeque<Arc<Record>>,
}

impl Worker {
    fn tpl(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::with_capacity(1);
        tpl.add_partition(&self.topic, self.partition);
        tpl
    }
}

/// Live workers by topic and partition.
#[derive(Default)]
struct Partitions {
    by_topic: HashMap<String, HashMap<i32, Worker>>,
}

impl Partitions {
    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Worker> {
        self.by_topic.values_mut().flat_map(HashMap::values_mut)
    }
}

/// The consumer's context: librdkafka calls it on the polling thread
/// (rebalances, commits, statistics, errors) and from its own threads
/// (logs).
struct ConsumerCtx {
    name: String,
    group: String,
    run: OnceLock<Run>,
    partitions: Mutex<Partitions>,
    next_worker: AtomicU64,
    finished: Mutex<(std_mpsc::Sender<u64>, std_mpsc::Receiver<u64>)>,
    /// Lag gauges set, to remove those of partitions no longer assigned.
    lag: Mutex<HashSet<(String, i32)>>,
    health: Mutex<Health>,
}

/// What `/readyz` shows for this source: ready while a broker connection
/// is up, the group coordinator is reachable and this member holds a
/// current assignment (possibly empty). A rebalance does not make it
/// unready; losing the session (a broker that stopped answering for
/// `session.timeout.ms`) does, until the group assigns partitions again.
#[derive(Debug)]
struct Health {
    /// A broker connection is up; otherwise why not.
    brokers: Result<(), String>,
    /// The group coordinator's state is `up`; otherwise which it is.
    coordinator: Result<(), String>,
    /// Partitions assigned (since the last assignment); `None` while
    /// joining or after the session was lost.
    assigned: Option<usize>,
    /// Last readiness reported, to log only changes.
    reported: Option<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ConsumerCtx {
    /// Hand `m` to its partition's worker (starting one if needed). Returns
    /// whether any partition has parked records.
    fn dispatch(&self, consumer: &BaseConsumer<Self>, m: &BorrowedMessage<'_>) -> bool {
        let Some(run) = self.run.get() else {
            return false;
        };
        let mut parts = lock(&self.partitions);
        let topic_workers = parts.by_topic.entry(m.topic().to_string()).or_default();
        let worker = topic_workers
            .entry(m.partition())
            .or_insert_with(|| self.spawn_worker(run, m.topic(), m.partition(), m.offset()));
        let rec = Arc::new(Record::new(worker.topic.clone(), m));
        if worker.parked.is_empty() {
            match worker.tx.try_send(rec) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(rec)) => {
                    worker.parked.push_back(rec);
                    if let Err(e) = consumer.pause(&worker.tpl()) {
                        tracing::warn!(source = %self.name, topic = %worker.topic, partition = worker.partition, error = %e, "cannot pause partition");
                    }
                }
                Err(mpsc::error::TrySendError::Closed(rec)) => {
                    // The worker is gone (a bug): rewind so nothing after
                    // its last finished offset is skipped.
                    let done = worker.done.load(Ordering::Acquire);
                    let from = if done >= 0 { done } else { worker.first };
                    drop(rec);
                    tracing::error!(source = %self.name, topic = %worker.topic, partition = worker.partition, offset = from, "partition worker stopped unexpectedly; rewinding");
                    let topic = worker.topic.clone();
                    let partition = worker.partition;
                    topic_workers.remove(&partition);
                    if let Err(e) = consumer.seek(
                        &topic,
                        partition,
                        Offset::Offset(from),
                        Duration::from_secs(1),
                    ) {
                        tracing::error!(source = %self.name, topic = %topic, partition, error = %e, "cannot rewind partition");
                    }
                }
            }
        } else {
            worker.parked.push_back(rec);
        }
        parts.iter_mut().any(|w| !w.parked.is_empty())
    }

    fn spawn_worker(&self, run: &Run, topic: &str, partition: i32, first: i64) -> Worker {
        let id = self.next_worker.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(run.shared.max_in_flight);
        let drain = CancellationToken::new();
        let done = Arc::new(AtomicI64::new(-1));
        let finished = Finished {
            id,
            tx: lock(&self.finished).0.clone(),
        };
        run.runtime.spawn(partition_worker(
            run.shared.clone(),
            rx,
            drain.clone(),
            done.clone(),
            finished,
        ));
        tracing::debug!(source = %self.name, topic, partition, "partition worker started");
        Worker {
            id,
            topic: topic.into(),
            partition,
            tx,
            drain,
            done,
            stored: -1,
            first,
            parked: VecDeque::new(),
        }
    }

    /// Move parked records into their channels; resume partitions whose
    /// backlog is gone. Returns whether any are still parked.
    fn unpark(&self, consumer: &BaseConsumer<Self>) -> bool {
        let mut parts = lock(&self.partitions);
        let mut still = false;
        for w in parts.iter_mut().filter(|w| !w.parked.is_empty()) {
            while let Some(rec) = w.parked.pop_front() {
                match w.tx.try_send(rec) {
                    Ok(()) => {}
                    Err(
                        mpsc::error::TrySendError::Full(rec)
                        | mpsc::error::TrySendError::Closed(rec),
                    ) => {
                        w.parked.push_front(rec);
                        break;
                    }
                }
            }
            if w.parked.is_empty() {
                if let Err(e) = consumer.resume(&w.tpl()) {
                    tracing::warn!(source = %self.name, topic = %w.topic, partition = w.partition, error = %e, "cannot resume partition");
                }
            } else {
                still = true;
            }
        }
        still
    }

    /// Hand finished offsets to librdkafka's offset store (auto-commit
    /// sends them to the broker).
    fn store_offsets(&self, consumer: &BaseConsumer<Self>) {
        let mut tpl = TopicPartitionList::new();
        {
            let mut parts = lock(&self.partitions);
            for w in parts.iter_mut() {
                let done = w.done.load(Ordering::Acquire);
                if done > w.stored {
                    // The same offset needs no second attempt: a refusal means
                    // the partition is no longer ours.
                    w.stored = done;
                    let _ = tpl.add_partition_offset(&w.topic, w.partition, Offset::Offset(done));
                }
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.store_offsets(&tpl) {
                tracing::debug!(source = %self.name, error = %e, "offsets not stored (partition no longer assigned?)");
            }
        }
    }

    /// Stop the workers of `which` (all when `None`): they take no new
    /// record and finish their in-flight ones. Then store their offsets and,
    /// when `commit`, commit them synchronously.
    fn stop_partitions(
        &self,
        consumer: &BaseConsumer<Self>,
        which: Option<&TopicPartitionList>,
        commit: bool,
    ) {
        let stopped: Vec<Worker> = {
            let mut parts = lock(&self.partitions);
            match which {
                None => parts
                    .by_topic
                    .drain()
                    .flat_map(|(_, ws)| ws.into_values())
                    .collect(),
                Some(tpl) => tpl
                    .elements()
                    .iter()
                    .filter_map(|e| parts.by_topic.get_mut(e.topic())?.remove(&e.partition()))
                    .collect(),
            }
        };
        if stopped.is_empty() {
            return;
        }
        for w in &stopped {
            w.drain.cancel();
            if !w.parked.is_empty() {
                // Paused: resume so the next owner (maybe us) fetches it.
                let _ = consumer.resume(&w.tpl());
            }
        }
        let mut waiting: HashSet<u64> = stopped.iter().map(|w| w.id).collect();
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        {
            let finished = lock(&self.finished);
            while !waiting.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                match finished.1.recv_timeout(left) {
                    Ok(id) => {
                        waiting.remove(&id);
                    }
                    Err(_) => {
                        tracing::warn!(source = %self.name, partitions = waiting.len(), "in-flight events not finished in time; they will be redelivered");
                        break;
                    }
                }
            }
        }
        let mut tpl = TopicPartitionList::new();
        for w in &stopped {
            let done = w.done.load(Ordering::Acquire);
            if done >= 0 {
                let _ = tpl.add_partition_offset(&w.topic, w.partition, Offset::Offset(done));
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = consumer.store_offsets(&tpl) {
            tracing::debug!(source = %self.name, error = %e, "final offsets not stored");
        }
        if !commit {
            return;
        }
        let started = Instant::now();
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => tracing::info!(
                source = %self.name,
                group = %self.group,
                offsets = %describe(&tpl),
                took_ms = started.elapsed().as_millis() as u64,
                "offsets committed"
            ),
            Err(e) => {
                self.count_error("commit");
                tracing::warn!(source = %self.name, group = %self.group, offsets = %describe(&tpl), error = %e, "commit failed; these events will be redelivered (and deduplicated)");
            }
        }
    }

    /// Every error event reaches [`ClientContext::error`] first, which logs
    /// and counts it; poll returns it again.
    fn consume_error(&self, e: &KafkaError) {
        tracing::trace!(source = %self.name, error = %e, "consumer poll returned an error");
    }

    fn count_error(&self, what: &'static str) {
        if let Some(run) = self.run.get() {
            run.shared
                .metrics
                .source_error(SourceKind::Kafka.as_str(), what);
        }
    }

    /// Change the health and report readiness (logging transitions).
    fn health(&self, change: impl FnOnce(&mut Health)) {
        let Some(run) = self.run.get() else {
            return;
        };
        let mut h = lock(&self.health);
        change(&mut h);
        let (ready, detail) = match (&h.brokers, &h.coordinator, h.assigned) {
            (Err(why), _, _) => (false, why.clone()),
            (Ok(()), Err(state), _) => {
                (false, format!("group {}: coordinator {state}", self.group))
            }
            (Ok(()), Ok(()), None) => (false, format!("group {}: joining", self.group)),
            (Ok(()), Ok(()), Some(n)) => (
                true,
                format!("group {}: {n} partitions assigned", self.group),
            ),
        };
        if h.reported != Some(ready) {
            if ready {
                tracing::info!(source = %self.name, detail, "kafka source ready");
            } else if h.reported.is_some() {
                tracing::warn!(source = %self.name, detail, "kafka source not ready");
            }
            h.reported = Some(ready);
        }
        run.source.set_ready(ready, detail);
    }

    /// Readiness and lag from librdkafka's statistics (every
    /// `statistics.interval.ms`).
    fn statistics(&self, stats: Stats) {
        let brokers = if stats.brokers.values().any(|b| b.state == "UP") {
            Ok(())
        } else {
            let states: Vec<String> = stats
                .brokers
                .iter()
                .map(|(name, b)| format!("{name} {}", b.state))
                .collect();
            Err(format!("no broker connection ({})", states.join(", ")))
        };
        let coordinator = match &stats.cgrp {
            Some(g) if g.state == "up" => Ok(()),
            Some(g) => Err(g.state.clone()),
            None => Err("unknown".into()),
        };
        self.health(|h| {
            h.brokers = brokers;
            h.coordinator = coordinator;
        });
        let Some(run) = self.run.get() else {
            return;
        };
        let mut now = HashSet::new();
        for (topic, t) in &stats.topics {
            for p in t.partitions.values() {
                if p.partition >= 0 && p.consumer_lag >= 0 {
                    run.shared
                        .metrics
                        .kafka_lag(&self.group, topic, p.partition, p.consumer_lag);
                    now.insert((topic.clone(), p.partition));
                }
            }
        }
        let mut lag = lock(&self.lag);
        for (topic, partition) in lag.difference(&now) {
            run.shared
                .metrics
                .kafka_lag_remove(&self.group, topic, *partition);
        }
        *lag = now;
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => format!("{}/{}@{o}", e.topic(), e.partition()),
            _ => format!("{}/{}", e.topic(), e.partition()),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The part of librdkafka's statistics JSON herald reads.
#[derive(Debug, Deserialize)]
struct Stats {
    #[serde(default)]
    brokers: HashMap<String, BrokerStats>,
    #[serde(default)]
    topics: HashMap<String, TopicStats>,
    cgrp: Option<GroupStats>,
}

#[derive(Debug, Deserialize)]
struct BrokerStats {
    state: String,
}

#[derive(Debug, Deserialize)]
struct TopicStats {
    #[serde(default)]
    partitions: HashMap<String, PartitionStats>,
}

#[derive(Debug, Deserialize)]
struct PartitionStats {
    partition: i32,
    #[serde(default = "minus_one")]
    consumer_lag: i64,
}

fn minus_one() -> i64 {
    -1
}

#[derive(Debug, Deserialize)]
struct GroupStats {
    state: String,
}

/// librdkafka's log line as a tracing event. Warnings that a property
/// applies only to the other client kind are expected (the same
/// `properties` configure the consumer and the dead-letter producer), so
/// they are debug lines.
fn log(name: &str, level: RDKafkaLogLevel, fac: &str, message: &str) {
    // Connection failures (FAIL) also arrive as error events, logged once
    // by the context's `error`.
    if fac == "FAIL" || (fac == "CONFWARN" && message.contains("will be ignored by this")) {
        tracing::debug!(source = name, facility = fac, "librdkafka: {message}");
        return;
    }
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(source = name, facility = fac, "librdkafka: {message}")
        }
        RDKafkaLogLevel::Warning => {
            tracing::warn!(source = name, facility = fac, "librdkafka: {message}")
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(source = name, facility = fac, "librdkafka: {message}")
        }
        RDKafkaLogLevel::Debug => {
            tracing::debug!(source = name, facility = fac, "librdkafka: {message}")
        }
    }
}

impl ClientContext for ConsumerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log(&self.name, level, fac, message);
    }

    fn stats(&self, _: rdkafka::Statistics) {}

    fn stats_raw(&self, statistics: &[u8]) {
        match serde_json::from_slice::<Stats>(statistics) {
            Ok(stats) => self.statistics(stats),
            Err(e) => {
                tracing::debug!(source = %self.name, error = %e, "unreadable librdkafka statistics")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.count_error("client");
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health(|h| h.brokers = Err(format!("all brokers down: {reason}")));
        }
        tracing::warn!(source = %self.name, group = %self.group, error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for ConsumerCtx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let lost = consumer.assignment_lost();
                tracing::info!(source = %self.name, group = %self.group, partitions = %describe(tpl), lost, "partitions revoked");
                // A lost assignment may already belong to another member:
                // committing would fail, and its events are redelivered.
                if lost {
                    self.health(|h| h.assigned = None);
                }
                self.stop_partitions(consumer, Some(tpl), !lost);
            }
            Rebalance::Assign(tpl) => {
                tracing::info!(source = %self.name, group = %self.group, partitions = %describe(tpl), "partitions assigned");
                self.health(|h| h.assigned = Some(tpl.count()));
            }
            Rebalance::Error(e) => {
                self.count_error("rebalance");
                tracing::warn!(source = %self.name, group = %self.group, error = %e, "rebalance error");
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                tracing::debug!(source = %self.name, offsets = %describe(offsets), "offsets committed")
            }
            // Nothing stored since the last commit: not a failure.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                self.count_error("commit");
                tracing::warn!(source = %self.name, group = %self.group, error = %e, "commit failed; uncommitted events will be redelivered (and deduplicated)");
            }
        }
    }
}

/// The dead-letter producer's context: logs only.
struct ProducerCtx {
    name: String,
}

impl ClientContext for ProducerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log(&self.name, level, fac, message);
    }

    fn stats(&self, _: rdkafka::Statistics) {}

    fn stats_raw(&self, _: &[u8]) {}

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(source = %self.name, error = %error, reason, "kafka dead-letter producer error");
    }
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
            max_in_flight: 4,
        }
    }

    fn record(payload: Option<&[u8]>) -> Record {
        Record {
            topic: "orders".into(),
            partition: 2,
            offset: 41,
            key: Some(b"k1".to_vec()),
            payload: payload.map(<[u8]>::to_vec),
            headers: vec![
                ("h".into(), Some(b"one".to_vec())),
                ("h".into(), Some(b"two".to_vec())),
                ("none".into(), None),
            ],
            timestamp_ms: Some(1_700_000_000_123),
        }
    }

    #[test]
    fn a_record_becomes_an_event_with_kafka_meta() {
        let event = record(Some(br#"{"type":"x"}"#))
            .decode(100)
            .expect("decodes");
        assert_eq!(event.meta.position, "kafka:orders:2:41");
        assert_eq!(event.meta.source, SourceKind::Kafka);
        assert_eq!(event.meta.partition, Some(2));
        assert_eq!(event.meta.offset, Some(41));
        assert_eq!(event.meta.key.as_deref(), Some("k1"));
        assert_eq!(event.meta.headers["h"], "two", "the last repeat wins");
        assert_eq!(event.meta.headers["none"], "");
        assert_eq!(
            event.meta.timestamp.as_deref(),
            Some("2023-11-14T22:13:20.123Z")
        );
    }

    #[test]
    fn poison_is_classified() {
        let reason = |p: Option<&[u8]>| record(p).decode(100).map(|_| ()).err().map(|e| e.0);
        assert_eq!(reason(Some(b"{nope")), Some(Rejection::InvalidJson));
        assert_eq!(reason(Some(b"[1,2]")), Some(Rejection::InvalidJson));
        assert_eq!(reason(None), Some(Rejection::InvalidJson));
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(200));
        assert_eq!(reason(Some(big.as_bytes())), Some(Rejection::TooLarge));
        assert_eq!(reason(Some(b"{}")), None);
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
        c.max_in_flight = 0;
        assert_eq!(key(c).as_deref(), Some("max_in_flight"));
    }

    #[test]
    fn a_bad_property_is_a_configuration_error_naming_it() {
        let mut c = config();
        c.properties.insert("no.such.property".into(), "1".into());
        let err = c.build("kafka").expect_err("librdkafka rejects it");
        assert!(matches!(err, SourceError::Config { .. }), "{err}");
        assert!(err.to_string().contains("no.such.property"), "{err}");
    }

    #[test]
    fn statistics_parse() {
        let raw = br#"{"name":"x","brokers":{"127.0.0.1:9092/111":{"state":"UP","nodeid":111}},
            "topics":{"t":{"partitions":{"0":{"partition":0,"consumer_lag":5},"-1":{"partition":-1,"consumer_lag":-1}}}},
            "cgrp":{"state":"up","join_state":"steady"}}"#;
        let stats: Stats = serde_json::from_slice(raw).expect("parses");
        assert_eq!(stats.brokers["127.0.0.1:9092/111"].state, "UP");
        assert_eq!(stats.topics["t"].partitions["0"].consumer_lag, 5);
        assert_eq!(stats.cgrp.expect("group").state, "up");
    }
}
