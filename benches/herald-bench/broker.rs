//! Events pre-produced to a broker, for e2e and ingest with `--source kafka`
//! or `--source amqp`.
//!
//! A [`Backlog`] is filled before the server starts, so the measurement is
//! the server draining it: a fresh Kafka topic with 3 partitions, each
//! event keyed by its user (or channel) so that one channel's events stay
//! in one partition, in order; or a fresh RabbitMQ topic exchange bound to
//! a fresh durable queue (one queue: its order is the log's order). The
//! server gets a configuration that consumes it (Kafka: a new consumer
//! group, from the earliest offset, with the session and poll timeouts that
//! make Tansu's group join quick).
//!
//! [`Backlog::remove`] deletes what was made; call it only after the server
//! stopped, because deleting a topic while a group still consumes it breaks
//! librdkafka (and Tansu).

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::time::Instant;

use crate::produce::{Encoder, SourceKind};
use crate::server::{Kind, Setup};

/// Partitions of a bench topic.
const PARTITIONS: i32 = 3;
/// Produced messages awaiting the broker's acknowledgement, at most.
const IN_FLIGHT: usize = 50_000;

/// The Kafka broker: `KAFKA_BOOTSTRAP` (scripts/kafka.sh), else Tansu's
/// default port.
fn kafka_bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// The RabbitMQ broker: `AMQP_URL` (scripts/rabbitmq.sh), else the local
/// default.
fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Events waiting in a broker.
#[derive(Debug)]
pub(crate) enum Backlog {
    Kafka {
        brokers: String,
        topic: String,
    },
    Amqp {
        url: String,
        exchange: String,
        queue: String,
    },
}

impl Backlog {
    /// Produce events `0..events` (encoded by `encoder`) to a fresh topic or
    /// queue of `source`; None for HTTP, which has no backlog.
    pub(crate) async fn fill(
        source: SourceKind,
        encoder: &Encoder,
        events: u64,
    ) -> Result<Option<Backlog>> {
        let tag = format!("{:08x}", fastrand::u32(..));
        let started = Instant::now();
        let backlog = match source {
            SourceKind::Http => return Ok(None),
            SourceKind::Kafka => {
                let brokers = kafka_bootstrap();
                let topic = format!("herald-bench-{tag}");
                create_topic(&brokers, &topic).await?;
                let backlog = Backlog::Kafka { brokers, topic };
                if let Err(e) = backlog.produce_kafka(encoder, events).await {
                    backlog.remove().await;
                    return Err(e);
                }
                backlog
            }
            SourceKind::Amqp => {
                let backlog = Backlog::Amqp {
                    url: amqp_url(),
                    exchange: format!("herald-bench-x-{tag}"),
                    queue: format!("herald-bench-q-{tag}"),
                };
                if let Err(e) = backlog.publish_amqp(encoder, events).await {
                    backlog.remove().await;
                    return Err(e);
                }
                backlog
            }
        };
        eprintln!(
            "   pre-produced {events} events to {} in {:.1} s",
            backlog.name(),
            started.elapsed().as_secs_f64()
        );
        Ok(Some(backlog))
    }

    fn name(&self) -> String {
        match self {
            Backlog::Kafka { topic, .. } => format!("Kafka topic {topic}"),
            Backlog::Amqp { queue, .. } => format!("RabbitMQ queue {queue}"),
        }
    }

    /// How `kind` consumes the backlog: herald through a configured source,
    /// the peer with its Kafka consumer. None when the peer has no consumer
    /// for this broker.
    pub(crate) fn setup(&self, kind: Kind) -> Option<Setup> {
        // A group no earlier run used, so the server reads from the start.
        let group = format!("herald-bench-{:08x}", fastrand::u32(..));
        match (kind, self) {
            (Kind::Herald | Kind::HeraldTls, Backlog::Kafka { brokers, topic }) => Some(Setup {
                config: Some(format!(
                    "[[sources]]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\n\
                     topics = [\"{topic}\"]\ngroup_id = \"{group}\"\n\
                     [sources.properties]\n\"session.timeout.ms\" = \"6000\"\n\
                     \"max.poll.interval.ms\" = \"10000\"\n\"auto.offset.reset\" = \"earliest\"\n"
                )),
                ..Setup::default()
            }),
            (
                Kind::Herald | Kind::HeraldTls,
                Backlog::Amqp {
                    url,
                    exchange,
                    queue,
                },
            ) => Some(Setup {
                config: Some(format!(
                    "[[sources]]\nkind = \"amqp\"\nurl = \"{url}\"\nqueue = \"{queue}\"\n\
                     [[sources.bindings]]\nexchange = \"{exchange}\"\nrouting_key = \"#\"\n"
                )),
                ..Setup::default()
            }),
            (Kind::Peer, Backlog::Kafka { brokers, topic }) => Some(Setup {
                peer_args: vec![
                    "--kafka-brokers".into(),
                    brokers.clone(),
                    "--kafka-topic".into(),
                    topic.clone(),
                    "--kafka-group".into(),
                    group,
                ],
                ..Setup::default()
            }),
            (Kind::Peer, Backlog::Amqp { .. }) => None,
        }
    }

    /// Delete the topic, or the queue and its exchange. Only once no server
    /// consumes them any more. Failures are reported, not fatal: the
    /// figures are already taken.
    pub(crate) async fn remove(&self) {
        let result = match self {
            Backlog::Kafka { brokers, topic } => delete_topic(brokers, topic).await,
            Backlog::Amqp {
                url,
                exchange,
                queue,
            } => delete_queue(url, exchange, queue).await,
        };
        if let Err(e) = result {
            eprintln!("herald-bench: clean up {}: {e:#}", self.name());
        }
    }

    async fn produce_kafka(&self, encoder: &Encoder, events: u64) -> Result<()> {
        let Backlog::Kafka { brokers, topic } = self else {
            bail!("not a Kafka backlog");
        };
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "20")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .context("Kafka producer")?;
        let mut pending = FuturesUnordered::new();
        for seq in 0..events {
            let key = encoder.key(seq);
            let value = encoder.event(seq);
            let record = FutureRecord::to(topic)
                .key(key.as_str())
                .payload(value.as_str());
            let delivery = producer
                .send_result(record)
                .map_err(|(e, _)| anyhow!("produce to {topic}: {e}"))?;
            pending.push(delivery);
            while pending.len() >= IN_FLIGHT {
                acknowledged(pending.next().await)?;
            }
        }
        while !pending.is_empty() {
            acknowledged(pending.next().await)?;
        }
        Ok(())
    }

    async fn publish_amqp(&self, encoder: &Encoder, events: u64) -> Result<()> {
        let Backlog::Amqp {
            url,
            exchange,
            queue,
        } = self
        else {
            bail!("not a RabbitMQ backlog");
        };
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .with_context(|| format!("connect to RabbitMQ at {url}"))?;
        let ch = conn.create_channel().await?;
        ch.exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("declare the exchange")?;
        // Durable, without arguments: what herald declares for a source
        // without a dead-letter exchange, so its declaration matches.
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .context("declare the queue")?;
        ch.queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("bind the queue")?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        for seq in 0..events {
            let key = encoder.key(seq);
            // The confirmations are awaited at the end: publishing pipelines.
            let _confirm = ch
                .basic_publish(
                    exchange.as_str().into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    encoder.event(seq).as_bytes(),
                    BasicProperties::default(),
                )
                .await
                .context("publish")?;
        }
        let returned = ch.wait_for_confirms().await.context("publisher confirms")?;
        if !returned.is_empty() {
            bail!("{} messages were returned unroutable", returned.len());
        }
        let _ = conn.close(200, "published".into()).await;
        Ok(())
    }
}

/// The outcome of one Kafka delivery future.
fn acknowledged<E>(next: Option<Result<OwnedDeliveryResult, E>>) -> Result<()> {
    match next {
        Some(Ok(Ok(_))) | None => Ok(()),
        Some(Ok(Err((e, _)))) => Err(anyhow!("produce: {e}")),
        Some(Err(_)) => Err(anyhow!("produce: the producer dropped a delivery report")),
    }
}

fn admin(brokers: &str) -> Result<AdminClient<DefaultClientContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("Kafka admin client")
}

async fn create_topic(brokers: &str, topic: &str) -> Result<()> {
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let new = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1));
    for r in admin(brokers)?
        .create_topics(&[new], &options)
        .await
        .with_context(|| format!("create topic {topic} at {brokers}"))?
    {
        r.map_err(|(t, e)| anyhow!("create topic {t}: {e}"))?;
    }
    Ok(())
}

async fn delete_topic(brokers: &str, topic: &str) -> Result<()> {
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin(brokers)?.delete_topics(&[topic], &options).await? {
        r.map_err(|(t, e)| anyhow!("delete topic {t}: {e}"))?;
    }
    Ok(())
}

async fn delete_queue(url: &str, exchange: &str, queue: &str) -> Result<()> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .context("delete the queue")?;
    ch.exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await
        .context("delete the exchange")?;
    let _ = conn.close(200, "cleaned up".into()).await;
    Ok(())
}
