//! One consume session on one connection: deliveries taken in queue
//! order, settled in delivery-tag order, acknowledged in batches, poison
//! dead-lettered. See the module docs of [`super`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::ready;
use futures_util::{FutureExt, StreamExt};
use lapin::Confirmation;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicPublishOptions, BasicRejectOptions,
};

use super::decode::{dead_letter_copy, meta_of};
use super::link::{CLOSE_TIMEOUT, Link, close};
use super::window::{Verdict, Window, Work, verdict_of};
use super::{AmqpError, AmqpSourceConfig, Counters, Ended};
use crate::event::{Event, SourceKind};
use crate::pipeline::{Rejection, decode_object};
use crate::source::SourceContext;
use crate::store::{Fence, StoreError};

/// What the consume loop waits for. Lives for one loop turn, so the size
/// of a delivery in it costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Step {
    Shutdown,
    Settled(Result<Verdict, StoreError>),
    Delivery(Option<Result<Delivery, lapin::Error>>),
}

/// One consume session on one connection. See the module docs.
pub(super) struct Consume<'a> {
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
    pub(super) fn new(
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

    pub(super) async fn run(mut self) -> Ended {
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
        let meta = meta_of(&delivery, &self.config.queue);
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
