//! One connection: the topology declared (exchanges, the durable queue and
//! its bindings) and the consumer started. Nothing is ever deleted or
//! unbound.

use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ErrorKind, ExchangeKind};

use super::{AmqpError, AmqpSourceConfig};

/// Time a clean channel or connection close may take before it is abandoned.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// One connection with its topology declared and the consumer started.
pub(super) struct Link {
    pub(super) connection: Connection,
    pub(super) channel: Channel,
    pub(super) consumer: lapin::Consumer,
    /// Confirm-mode channel for dead-letter copies, opened when first needed
    /// and dropped when it fails.
    pub(super) publisher: Option<Channel>,
}

impl Link {
    pub(super) async fn open(config: &AmqpSourceConfig, uri: AMQPUri) -> Result<Self, AmqpError> {
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
    pub(super) async fn publisher(&mut self) -> Result<Channel, lapin::Error> {
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
pub(super) async fn close(connection: &Connection) {
    let _ = tokio::time::timeout(
        CLOSE_TIMEOUT,
        connection.close(200, "herald: closing".into()),
    )
    .await;
}
