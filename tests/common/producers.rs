//! [`Producer`]s for the effectively-once harness that hand events to a
//! broker rather than to herald: herald can then be killed while the
//! producers go on, and the broker redelivers what herald had not
//! acknowledged.

use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

use super::crash::Producer;

/// Produces each event as one Kafka message keyed by its channel. Channel
/// `<prefix>-<i>` goes to partition `i % partitions`, so one channel's
/// events stay on one partition (in order: the producer is idempotent) and
/// every partition gets some.
pub struct KafkaProducer {
    producer: FutureProducer,
    topic: String,
    partitions: i32,
    pause: Duration,
}

impl KafkaProducer {
    pub fn new(brokers: &str, topic: &str, partitions: i32) -> Self {
        Self {
            producer: super::kafka::producer(brokers),
            topic: topic.to_string(),
            partitions,
            pause: Duration::ZERO,
        }
    }

    /// Wait `pause` after each batch. A broker takes events far faster
    /// than herald delivers them; spread over the run, they keep herald
    /// consuming live traffic when it is killed, so there is always an
    /// appended but uncommitted tail for the broker to redeliver.
    pub fn paced(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }

    fn partition(&self, channel: &str) -> i32 {
        let index: i32 = channel
            .rsplit_once('-')
            .and_then(|(_, i)| i.parse().ok())
            .expect("harness channels end with their index");
        index % self.partitions
    }
}

impl Producer for KafkaProducer {
    fn send<'a>(&'a self, channel: &'a str, _: usize, events: Vec<Value>) -> BoxFuture<'a, ()> {
        async move {
            let partition = self.partition(channel);
            // Queue the whole batch, then wait for every acknowledgement.
            let deliveries: Vec<_> = events
                .iter()
                .map(|event| {
                    let payload = event.to_string();
                    let record = FutureRecord::to(&self.topic)
                        .partition(partition)
                        .key(channel)
                        .payload(&payload);
                    self.producer
                        .send_result(record)
                        .map_err(|(e, _)| e)
                        .expect("message queued")
                })
                .collect();
            for delivery in deliveries {
                if let Err((e, _)) = delivery.await.expect("delivery report") {
                    panic!("produce to {}/{partition} failed: {e}", self.topic);
                }
            }
            tokio::time::sleep(self.pause).await;
        }
        .boxed()
    }
}

/// Publishes each event to a topic exchange with publisher confirms and a
/// `message_id` naming its channel and number, so a redelivery is
/// recognised as the same message.
pub struct AmqpProducer {
    _conn: Connection,
    channel: Channel,
    exchange: String,
    routing_key: String,
}

impl AmqpProducer {
    pub async fn connect(url: &str, exchange: &str, routing_key: &str) -> Self {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("RabbitMQ answers at AMQP_URL");
        let channel = conn.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self {
            _conn: conn,
            channel,
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
        }
    }
}

impl Producer for AmqpProducer {
    fn send<'a>(&'a self, channel: &'a str, first: usize, events: Vec<Value>) -> BoxFuture<'a, ()> {
        async move {
            let mut confirms = Vec::with_capacity(events.len());
            for (i, event) in events.iter().enumerate() {
                let props = BasicProperties::default()
                    .with_message_id(format!("{channel}-{}", first + i).into());
                let confirm = self
                    .channel
                    .basic_publish(
                        self.exchange.as_str().into(),
                        self.routing_key.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        event.to_string().as_bytes(),
                        props,
                    )
                    .await
                    .expect("publish");
                confirms.push(confirm);
            }
            for confirm in confirms {
                let confirmation = confirm.await.expect("publisher confirm");
                assert!(
                    matches!(confirmation, Confirmation::Ack(None)),
                    "the broker took the message into the queue: {confirmation:?}"
                );
            }
        }
        .boxed()
    }
}
