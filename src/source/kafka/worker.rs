//! A partition's worker: turns its records into events in offset order,
//! keeps up to `max_in_flight` appends in flight, and reports the offset
//! of the first record not finished yet; plus dead letters.
//!
//! Each worker runs in a `kafka_partition` span carrying the source,
//! topic and partition, so its log lines name only the offset.
//!
//! Invariants: the worker submits records in the order it reads them, so
//! the log keeps the partition's order; `next` only moves past a record
//! once it and every earlier record finished (appended, or dead-lettered
//! and acknowledged). Cancel-safety: dropping the worker's window (drain,
//! shutdown) drops only the wait for appends already started; their
//! offsets are not reported, so they are consumed again later and
//! deduplicated.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::context::{ConsumerCtx, ProducerCtx};
use super::{BACKOFF_MAX, BACKOFF_MIN};
use crate::event::{Event, Meta, SourceKind};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, Rejection};
use crate::store::{Fence, StoreError};

/// What every partition worker shares.
pub(super) struct WorkerContext {
    pub(super) pipeline: Arc<Pipeline>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) dead_letter: Option<DeadLetter>,
    pub(super) max_message_bytes: usize,
    pub(super) max_in_flight: usize,
}

/// One message, copied out of librdkafka's buffers.
#[derive(Debug)]
pub(super) struct Record {
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
    pub(super) fn new(topic: Arc<str>, m: &BorrowedMessage<'_>) -> Self {
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
    fn decode(&self, max_bytes: usize, stamp: &mut Stamp) -> Result<Event, (Rejection, String)> {
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
        let mut meta = Meta::new(SourceKind::Kafka, &*self.topic, self.position()).with_locator(
            format!("kafka:{}/{}@{}", self.topic, self.partition, self.offset),
        );
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
            .map(|ms| stamp.format(ms));
        Ok(Event { payload, meta })
    }
}

/// The RFC 3339 text of the last message timestamp formatted: a backlog
/// has many messages per millisecond, and formatting is a good part of
/// building `meta`.
#[derive(Debug, Default)]
pub(super) struct Stamp {
    ms: u64,
    text: String,
}

impl Stamp {
    fn format(&mut self, ms: u64) -> String {
        if self.text.is_empty() || self.ms != ms {
            self.ms = ms;
            self.text = crate::clock::rfc3339_ms(ms);
        }
        self.text.clone()
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

impl WorkerContext {
    /// Start processing `rec`: rules run and the append starts now, so the
    /// log keeps the partition's order; the future resolves when the record
    /// may be acknowledged.
    fn start(
        self: &Arc<Self>,
        rec: Arc<Record>,
        drain: &CancellationToken,
        stamp: &mut Stamp,
        fence: &Arc<Fence>,
    ) -> BoxFuture<'static, Outcome> {
        let kind = SourceKind::Kafka.as_str();
        match rec.decode(self.max_message_bytes, stamp) {
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
                let append = self.pipeline.submit(&event, Some(fence));
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

pub(super) struct DeadLetter {
    pub(super) topic: String,
    pub(super) producer: FutureProducer<ProducerCtx>,
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

/// Where a worker reads its records.
pub(super) trait Feed: Send + 'static {
    /// The next record; `None` when nothing is queued.
    fn next(&mut self) -> Option<Record>;
    /// Notified when the feed turns non-empty.
    fn wake(&self) -> &Notify;
}

/// A partition's own librdkafka queue, and a wake-up for when it turns
/// non-empty.
pub(super) struct Input {
    pub(super) queue: PartitionQueue<ConsumerCtx>,
    pub(super) wake: Arc<Notify>,
    pub(super) topic: Arc<str>,
}

impl Feed for Input {
    /// Errors on the queue were already logged by the context's `error`.
    fn next(&mut self) -> Option<Record> {
        loop {
            match self.queue.poll(Duration::ZERO)? {
                Ok(m) => return Some(Record::new(self.topic.clone(), &m)),
                Err(e) => tracing::debug!(error = %e, "partition queue error"),
            }
        }
    }

    fn wake(&self) -> &Notify {
        &self.wake
    }
}

/// A partition's worker: submits its records in order with at most
/// `max_in_flight` in flight, and publishes in `next` the offset of the
/// first record not finished yet. On `drain` it takes no new record,
/// finishes the in-flight ones and returns.
pub(super) async fn partition_worker(
    shared: Arc<WorkerContext>,
    mut input: impl Feed,
    drain: CancellationToken,
    next: Arc<AtomicI64>,
    _finished: Finished,
) {
    let mut window: FuturesOrdered<BoxFuture<'static, Outcome>> = FuturesOrdered::new();
    let mut backoff = BACKOFF_MIN;
    let mut stamp = Stamp::default();
    // Once an append fails, the store fails every later one of this
    // partition until the retry below: none can overtake the failed ones.
    let fence = Arc::new(Fence::default());
    loop {
        // Take what is queued while the window has room. When it is full,
        // the records wait in librdkafka's queue, whose size limits hold
        // back fetching for this partition only.
        while window.len() < shared.max_in_flight && !drain.is_cancelled() && !fence.is_broken() {
            let Some(rec) = input.next() else {
                break;
            };
            if next.load(Ordering::Relaxed) < 0 {
                next.store(rec.offset, Ordering::Release);
            }
            let mut processing = shared.start(Arc::new(rec), &drain, &mut stamp, &fence);
            // With nothing ahead of it, a record whose append is already
            // done (the memory store) is acknowledged without queueing.
            if window.is_empty() {
                match (&mut processing).now_or_never() {
                    Some((rec, Ok(()))) => {
                        next.store(rec.offset + 1, Ordering::Release);
                        tokio::task::coop::consume_budget().await;
                        continue;
                    }
                    // Failures take the usual way, through the window.
                    Some(failed) => processing = futures_util::future::ready(failed).boxed(),
                    None => {}
                }
            }
            window.push_back(processing);
            // Neither librdkafka's queue nor a memory-store append ever
            // makes this task wait: give the runtime back its thread now
            // and then, or sessions and /metrics starve during a backlog.
            tokio::task::coop::consume_budget().await;
        }
        tokio::select! {
            biased;
            () = drain.cancelled() => break,
            Some((rec, result)) = window.next(), if !window.is_empty() => match result {
                Ok(()) => {
                    next.store(rec.offset + 1, Ordering::Release);
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
                    // Nothing of this partition is in flight any more.
                    fence.resume();
                    for r in again {
                        window.push_back(shared.start(r, &drain, &mut stamp, &fence));
                    }
                }
            },
            () = input.wake().notified(), if window.len() < shared.max_in_flight && !fence.is_broken() => {}
        }
    }
    while let Some((rec, result)) = window.next().await {
        if result.is_err() {
            // Later records may be done, but the committed offset must not
            // pass this one: stop here and let them be redelivered.
            return;
        }
        next.store(rec.offset + 1, Ordering::Release);
    }
}

/// Tells the polling thread that a worker has returned (even by panic).
pub(super) struct Finished {
    pub(super) id: u64,
    pub(super) tx: std_mpsc::Sender<u64>,
}

impl Drop for Finished {
    fn drop(&mut self) {
        let _ = self.tx.send(self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::sync::lock;

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
            .decode(100, &mut Stamp::default())
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
        let reason = |p: Option<&[u8]>| {
            record(p)
                .decode(100, &mut Stamp::default())
                .map(|_| ())
                .err()
                .map(|e| e.0)
        };
        assert_eq!(reason(Some(b"{nope")), Some(Rejection::InvalidJson));
        assert_eq!(reason(Some(b"[1,2]")), Some(Rejection::InvalidJson));
        assert_eq!(reason(None), Some(Rejection::InvalidJson));
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(200));
        assert_eq!(reason(Some(big.as_bytes())), Some(Rejection::TooLarge));
        assert_eq!(reason(Some(b"{}")), None);
    }

    /// One append waiting for the fake store's writer.
    type Queued = (
        Vec<crate::store::NewNotification>,
        Arc<Fence>,
        tokio::sync::oneshot::Sender<Result<Vec<crate::store::Appended>, StoreError>>,
    );

    /// A store that behaves like the group-commit ones: one writer answers
    /// appends in call order, each after a while (so several are in flight),
    /// and keeps every key it commits, repeats included. Its first append
    /// fails, and breaks the fence, as a failed group does: every append of
    /// the stream answered after it fails too, until the stream resumes.
    #[derive(Debug)]
    struct Flaky {
        queue: tokio::sync::mpsc::UnboundedSender<Queued>,
        committed: Arc<Mutex<Vec<String>>>,
    }

    impl Flaky {
        fn start() -> Arc<Self> {
            let (queue, mut rx) = tokio::sync::mpsc::unbounded_channel::<Queued>();
            let committed = Arc::new(Mutex::new(Vec::new()));
            let log = committed.clone();
            tokio::spawn(async move {
                let mut first = true;
                while let Some((batch, fence, reply)) = rx.recv().await {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    if std::mem::take(&mut first) || fence.is_broken() {
                        fence.broken.store(true, Ordering::Release);
                        let _ = reply.send(Err(StoreError::Unavailable("disk full".into())));
                        continue;
                    }
                    let mut log = lock(&log);
                    let out = batch
                        .into_iter()
                        .map(|n| {
                            log.push(n.dedupe_key);
                            crate::store::Appended {
                                channel: n.channel.into(),
                                offset: log.len() as u64,
                                duplicate: false,
                            }
                        })
                        .collect();
                    let _ = reply.send(Ok(out));
                }
            });
            Arc::new(Self { queue, committed })
        }
    }

    impl crate::store::Store for Flaky {
        fn append(
            &self,
            _: Vec<crate::store::NewNotification>,
        ) -> BoxFuture<'static, Result<Vec<crate::store::Appended>, StoreError>> {
            unreachable!("a partition's appends are fenced")
        }

        fn append_fenced(
            &self,
            batch: Vec<crate::store::NewNotification>,
            fence: &Arc<Fence>,
        ) -> BoxFuture<'static, Result<Vec<crate::store::Appended>, StoreError>> {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = self.queue.send((batch, fence.clone(), tx));
            async move { rx.await.unwrap_or(Err(StoreError::Closed)) }.boxed()
        }

        fn read_after(
            &self,
            _: &str,
            _: u64,
            _: usize,
        ) -> BoxFuture<'_, Result<crate::store::Page, StoreError>> {
            futures_util::future::ready(Err(StoreError::Closed)).boxed()
        }

        fn trim_expired(&self, _: u64) -> BoxFuture<'_, Result<usize, StoreError>> {
            futures_util::future::ready(Ok(0)).boxed()
        }

        fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
            futures_util::future::ready(Ok(())).boxed()
        }
    }

    /// Records pushed by the test.
    struct TestFeed {
        records: Arc<Mutex<VecDeque<Record>>>,
        wake: Arc<Notify>,
    }

    impl Feed for TestFeed {
        fn next(&mut self) -> Option<Record> {
            lock(&self.records).pop_front()
        }

        fn wake(&self) -> &Notify {
            &self.wake
        }
    }

    /// Four appends in flight when the first fails: the offset stays
    /// before it, and after a pause the whole window is appended again, in
    /// order. The store's log must hold each record exactly once, in
    /// offset order. Fails on: appending again what was already committed
    /// ("append twice on retry"), retrying only the failed record or out of
    /// order, or acknowledging past the failed record.
    #[tokio::test(start_paused = true)]
    async fn a_failed_append_holds_the_offset_back_and_is_retried_in_order() {
        let store = Flaky::start();
        let metrics = Arc::new(Metrics::new());
        let pipeline = Arc::new(Pipeline::new(
            crate::rules::Rules::builtin(),
            store.clone(),
            metrics.clone(),
            crate::config::RulesConfig::default().max_notification_bytes,
        ));
        let shared = Arc::new(WorkerContext {
            pipeline,
            metrics,
            dead_letter: None,
            max_message_bytes: 1024,
            max_in_flight: 4,
        });
        let records = Arc::new(Mutex::new(VecDeque::new()));
        let wake = Arc::new(Notify::new());
        let feed = TestFeed {
            records: records.clone(),
            wake: wake.clone(),
        };
        let drain = CancellationToken::new();
        let next = Arc::new(AtomicI64::new(-1));
        let (finished_tx, finished_rx) = std_mpsc::channel();
        let worker = tokio::spawn(partition_worker(
            shared,
            feed,
            drain.clone(),
            next.clone(),
            Finished {
                id: 7,
                tx: finished_tx,
            },
        ));
        for offset in 0..10 {
            let mut rec = record(Some(br#"{"channel":"c","title":"t"}"#));
            rec.offset = offset;
            lock(&records).push_back(rec);
        }
        wake.notify_one();
        // The first append failed: nothing may be acknowledged yet, even
        // though later events were appended.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(next.load(Ordering::Acquire), 0, "nothing acknowledged yet");
        tokio::time::sleep(BACKOFF_MIN * 2).await;
        assert_eq!(next.load(Ordering::Acquire), 10);
        let keys = lock(&store.committed).clone();
        let positions: Vec<&str> = keys
            .iter()
            .map(|k| k.split('/').next().unwrap_or(""))
            .collect();
        let expected: Vec<String> = (0..10).map(|o| format!("kafka:orders:2:{o}")).collect();
        assert_eq!(positions, expected, "each event appended once, in order");
        drain.cancel();
        worker.await.expect("worker ends");
        assert_eq!(finished_rx.try_recv().ok(), Some(7));
    }
}
