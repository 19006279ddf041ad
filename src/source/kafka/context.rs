//! The consumer's context: what librdkafka calls back, on the polling
//! thread (rebalances, commit results, statistics, errors, from inside
//! `poll`) and from its own threads (logs). It owns the partition workers'
//! handles, so the polling thread and the rebalance callback share them.
//!
//! Each assigned partition's messages are split off into their own
//! librdkafka queue (`split_partition_queue`) before the assignment takes
//! effect, and that queue is read by the partition's worker alone: the
//! polling thread only serves events, and librdkafka's per-partition fetch
//! limits (`queued.min.messages`, `queued.max.messages.kbytes`) hold back
//! a partition whose worker is behind without touching the others.
//!
//! Invariant: a revocation returns only after the revoked partitions'
//! workers stopped (or [`DRAIN_TIMEOUT`] passed) and their final offsets
//! were stored and, unless the assignment was lost, committed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::worker::{Finished, Input, partition_worker};
use super::{DRAIN_TIMEOUT, Run};
use crate::event::SourceKind;
use crate::metrics::Labels;
use crate::sync::lock;

/// The polling thread's handle on one partition worker.
struct Worker {
    id: u64,
    topic: Arc<str>,
    partition: i32,
    drain: CancellationToken,
    /// Offset of the partition's first unfinished record (-1 until the
    /// worker read one): what may be committed.
    next: Arc<AtomicI64>,
    /// The last `next` handed to librdkafka's offset store.
    stored: i64,
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
pub(super) struct ConsumerCtx {
    pub(super) name: String,
    pub(super) group: String,
    pub(super) run: OnceLock<Run>,
    /// The consumer this is the context of, to split partition queues
    /// from inside the rebalance callback.
    pub(super) consumer: OnceLock<Weak<BaseConsumer<ConsumerCtx>>>,
    partitions: Mutex<Partitions>,
    next_worker: AtomicU64,
    /// Workers report here when they return.
    finished_tx: std_mpsc::Sender<u64>,
    finished_rx: Mutex<std_mpsc::Receiver<u64>>,
    /// Lag gauges set, to remove those of partitions no longer assigned.
    /// Invariant: only partitions with a live worker (held by this member)
    /// have a gauge.
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

impl ConsumerCtx {
    pub(super) fn new(name: &str, group: &str) -> Self {
        let (finished_tx, finished_rx) = std_mpsc::channel();
        Self {
            name: name.to_string(),
            group: group.to_string(),
            run: OnceLock::new(),
            consumer: OnceLock::new(),
            partitions: Mutex::new(Partitions::default()),
            next_worker: AtomicU64::new(0),
            finished_tx,
            finished_rx: Mutex::new(finished_rx),
            lag: Mutex::new(HashSet::new()),
            health: Mutex::new(Health {
                brokers: Err("connecting".into()),
                coordinator: Err("looking for the group coordinator".into()),
                assigned: None,
                reported: None,
            }),
        }
    }

    /// Start a worker for each partition of `tpl`, reading the partition's
    /// own queue. Called before the assignment takes effect, so no message
    /// of these partitions reaches the consumer's main queue.
    fn start_partitions(&self, tpl: &TopicPartitionList) {
        let (Some(run), Some(consumer)) =
            (self.run.get(), self.consumer.get().and_then(Weak::upgrade))
        else {
            return;
        };
        let mut parts = lock(&self.partitions);
        for e in tpl.elements() {
            let (topic, partition) = (e.topic(), e.partition());
            // One reader per partition queue, or order is lost.
            if parts
                .by_topic
                .get(topic)
                .is_some_and(|ws| ws.contains_key(&partition))
            {
                continue;
            }
            if let Some(worker) = self.spawn_worker(run, &consumer, topic, partition) {
                parts
                    .by_topic
                    .entry(topic.to_string())
                    .or_default()
                    .insert(partition, worker);
            }
        }
    }

    fn spawn_worker(
        &self,
        run: &Run,
        consumer: &Arc<BaseConsumer<Self>>,
        topic: &str,
        partition: i32,
    ) -> Option<Worker> {
        let Some(mut queue) = consumer.split_partition_queue(topic, partition) else {
            self.count_error("client");
            tracing::error!(source = %self.name, topic, partition, "cannot get the partition's queue; its messages go to the main queue");
            return None;
        };
        let wake = Arc::new(Notify::new());
        queue.set_nonempty_callback({
            let wake = wake.clone();
            move || wake.notify_one()
        });
        let id = self.next_worker.fetch_add(1, Ordering::Relaxed);
        let topic: Arc<str> = topic.into();
        let drain = CancellationToken::new();
        let next = Arc::new(AtomicI64::new(-1));
        let input = Input {
            queue,
            wake,
            topic: topic.clone(),
        };
        let finished = Finished {
            id,
            tx: self.finished_tx.clone(),
        };
        let span =
            tracing::info_span!("kafka_partition", source = %self.name, topic = %topic, partition);
        run.runtime.spawn(
            partition_worker(
                run.shared.clone(),
                input,
                drain.clone(),
                next.clone(),
                finished,
            )
            .instrument(span),
        );
        tracing::debug!(source = %self.name, topic = %topic, partition, "partition worker started");
        Some(Worker {
            id,
            topic,
            partition,
            drain,
            next,
            stored: -1,
        })
    }

    /// A message on the main queue: its partition has no queue of its own
    /// (splitting failed). It cannot be processed in order here, so the
    /// partition is rewound to it and its worker (started now) reads it.
    pub(super) fn stray(&self, consumer: &BaseConsumer<Self>, m: &BorrowedMessage<'_>) {
        let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
        tracing::warn!(source = %self.name, topic, partition, offset, "message outside its partition queue; rewinding the partition");
        let mut tpl = TopicPartitionList::with_capacity(1);
        tpl.add_partition(topic, partition);
        self.start_partitions(&tpl);
        if let Err(e) = consumer.seek(
            topic,
            partition,
            Offset::Offset(offset),
            Duration::from_secs(1),
        ) {
            tracing::error!(source = %self.name, topic, partition, error = %e, "cannot rewind partition");
        }
    }

    /// Replace workers that returned on their own (a bug: they only return
    /// when drained), rewinding their partitions to the first unfinished
    /// record.
    pub(super) fn reap(&self, consumer: &BaseConsumer<Self>) {
        let finished: Vec<u64> = lock(&self.finished_rx).try_iter().collect();
        if finished.is_empty() {
            return;
        }
        let dead: Vec<Worker> = {
            let mut parts = lock(&self.partitions);
            let keys: Vec<(String, i32)> = parts
                .by_topic
                .iter()
                .flat_map(|(topic, workers)| {
                    workers
                        .iter()
                        .filter(|(_, w)| finished.contains(&w.id))
                        .map(move |(p, _)| (topic.clone(), *p))
                })
                .collect();
            keys.into_iter()
                .filter_map(|(topic, p)| parts.by_topic.get_mut(&topic)?.remove(&p))
                .collect()
        };
        for w in dead {
            let next = w.next.load(Ordering::Acquire);
            tracing::error!(source = %self.name, topic = %w.topic, partition = w.partition, offset = next, "partition worker stopped unexpectedly; restarting it");
            let mut tpl = TopicPartitionList::with_capacity(1);
            tpl.add_partition(&w.topic, w.partition);
            self.start_partitions(&tpl);
            if next >= 0
                && let Err(e) = consumer.seek(
                    &w.topic,
                    w.partition,
                    Offset::Offset(next),
                    Duration::from_secs(1),
                )
            {
                tracing::error!(source = %self.name, topic = %w.topic, partition = w.partition, error = %e, "cannot rewind partition");
            }
        }
    }

    /// Hand finished offsets to librdkafka's offset store (auto-commit
    /// sends them to the broker).
    pub(super) fn store_offsets(&self, consumer: &BaseConsumer<Self>) {
        let mut tpl = TopicPartitionList::new();
        {
            let mut parts = lock(&self.partitions);
            for w in parts.iter_mut() {
                let next = w.next.load(Ordering::Acquire);
                if next > w.stored {
                    // The same offset needs no second attempt: a refusal means
                    // the partition is no longer ours.
                    w.stored = next;
                    let _ = tpl.add_partition_offset(&w.topic, w.partition, Offset::Offset(next));
                }
            }
        }
        if tpl.count() > 0
            && let Err(e) = consumer.store_offsets(&tpl)
        {
            tracing::debug!(source = %self.name, error = %e, "offsets not stored (partition no longer assigned?)");
        }
    }

    /// Stop the workers of `which` (all when `None`): they take no new
    /// record and finish their in-flight ones. Then store their offsets and,
    /// when `commit`, commit them synchronously.
    pub(super) fn stop_partitions(
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
        }
        // Their lag is another member's to report from now on.
        self.forget_lag(stopped.iter().map(|w| (&*w.topic, w.partition)));
        let mut waiting: HashSet<u64> = stopped.iter().map(|w| w.id).collect();
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        {
            let finished = lock(&self.finished_rx);
            while !waiting.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                match finished.recv_timeout(left) {
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
            let next = w.next.load(Ordering::Acquire);
            if next >= 0 {
                let _ = tpl.add_partition_offset(&w.topic, w.partition, Offset::Offset(next));
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
    pub(super) fn consume_error(&self, e: &KafkaError) {
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
        // Going unready while shutting down is expected, not news.
        if h.reported != Some(ready) && !run.source.shutdown.is_cancelled() {
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
        // librdkafka keeps reporting a lag for partitions it no longer
        // fetches (computed from stale offsets): only held ones count.
        let parts = lock(&self.partitions);
        let mut now = HashSet::new();
        for (topic, t) in &stats.topics {
            let held = parts.by_topic.get(topic);
            for p in t.partitions.values() {
                if p.partition >= 0
                    && p.consumer_lag >= 0
                    && held.is_some_and(|ws| ws.contains_key(&p.partition))
                {
                    run.lag
                        .get_or_create(&lag_labels(&self.group, topic, p.partition))
                        .set(p.consumer_lag);
                    now.insert((topic.clone(), p.partition));
                }
            }
        }
        drop(parts);
        let mut lag = lock(&self.lag);
        for (topic, partition) in lag.difference(&now) {
            run.lag
                .remove(&lag_labels(&self.group, topic, *partition));
        }
        *lag = now;
    }

    /// Remove the lag gauges of `partitions`.
    fn forget_lag<'a>(&self, partitions: impl Iterator<Item = (&'a str, i32)>) {
        let Some(run) = self.run.get() else {
            return;
        };
        let mut lag = lock(&self.lag);
        for (topic, partition) in partitions {
            if lag.remove(&(topic.to_string(), partition)) {
                run.lag.remove(&lag_labels(&self.group, topic, partition));
            }
        }
    }
}

/// The labels of a partition's `herald_kafka_consumer_lag`.
fn lag_labels(group: &str, topic: &str, partition: i32) -> Labels {
    vec![
        ("group", group.to_string()),
        ("topic", topic.to_string()),
        ("partition", partition.to_string()),
    ]
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
                if lost {
                    self.health(|h| h.assigned = None);
                }
                // A lost assignment may already belong to another member:
                // committing would fail, and its events are redelivered.
                self.stop_partitions(consumer, Some(tpl), !lost);
            }
            Rebalance::Assign(tpl) => {
                tracing::info!(source = %self.name, group = %self.group, partitions = %describe(tpl), "partitions assigned");
                self.start_partitions(tpl);
            }
            Rebalance::Error(e) => {
                self.count_error("rebalance");
                tracing::warn!(source = %self.name, group = %self.group, error = %e, "rebalance error");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(_) = rebalance {
            // The whole assignment, also under incremental (cooperative)
            // rebalancing where `Assign` lists only the additions.
            let assigned = consumer.assignment().map_or(0, |a| a.count());
            self.health(|h| h.assigned = Some(assigned));
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
pub(super) struct ProducerCtx {
    name: String,
}

impl ProducerCtx {
    pub(super) fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
        }
    }
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
