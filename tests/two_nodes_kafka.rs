//! Two herald processes sharing one Redis log (the machine's server, under
//! a key prefix of the test's own) and one Kafka consumer group. Events
//! consumed on one node reach clients of the other; when a node is killed
//! with SIGKILL the other takes over its partitions, consumes again what it
//! had not committed, and appends none of it twice; clients move to the
//! surviving node with their last id and resume exactly
//! (tests/common/crash.rs checks). Each node exports consumer-lag gauges
//! for the partitions it holds, and only for those.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::crash::{Run, Scenario};
use common::kafka::{self, Kafka};
use common::process::Process;
use common::producers::KafkaProducer;
use common::redis_server::{Prefix, SHARED_URL};
use common::unique;

const PARTITIONS: i32 = 3;
/// After each batch of 10 events per channel: about 15 s of production.
const PACE: Duration = Duration::from_millis(300);

/// Partitions of `topic` with a consumer-lag gauge on `node`.
async fn lag_partitions(node: &Process, topic: &str) -> BTreeSet<i32> {
    let topic_label = format!("topic=\"{topic}\"");
    node.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("herald_kafka_consumer_lag{") && l.contains(&topic_label))
        .filter_map(|l| {
            let (_, rest) = l.split_once("partition=\"")?;
            rest.split_once('"')?.0.parse().ok()
        })
        .collect()
}

/// Wait until the lag gauges of `nodes` (in order) satisfy `want`.
async fn wait_lag(
    nodes: &[&Process],
    topic: &str,
    what: &str,
    want: impl Fn(&[BTreeSet<i32>]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = Vec::new();
        for node in nodes {
            seen.push(lag_partitions(node, topic).await);
        }
        if want(&seen) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "lag gauges never showed {what}: partitions per node {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each partition's gauge on exactly one node, every partition on some.
fn split(seen: &[BTreeSet<i32>]) -> bool {
    let all: BTreeSet<i32> = (0..PARTITIONS).collect();
    let union: BTreeSet<i32> = seen.iter().flatten().copied().collect();
    let total: usize = seen.iter().map(BTreeSet::len).sum();
    union == all && total == all.len() && seen.iter().all(|s| !s.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_hands_its_partitions_over_without_loss_or_duplicate() {
    let kafka = Kafka::shared();
    let topic = kafka.topic("two-nodes", PARTITIONS).await;
    let mut source = kafka::source(&kafka.brokers, &[&topic], &unique("g"));
    // Commits every second rather than every 5 s: each run commits before
    // it is killed, and what comes back is about the last second's tail.
    source
        .properties
        .insert("auto.commit.interval.ms".into(), "1000".into());
    let prefix = Prefix::shared();
    let config = format!(
        "[store]\nkind = \"redis\"\nurl = \"{SHARED_URL}\"\nkey_prefix = \"{prefix}\"\n[delivery]\nqueue_capacity = 4096\n{}",
        kafka::source_toml(&source)
    );
    let mut a = Process::start(&config);
    let mut b = Process::start(&config);
    for node in [&a, &b] {
        assert!(
            node.wait_ready(200, Duration::from_secs(30)).await,
            "joined the group:\n{}",
            node.log()
        );
    }
    let scenario = Scenario::brokers();
    let producer = Arc::new(KafkaProducer::new(&kafka.brokers, &topic, PARTITIONS).paced(PACE));
    let ws = |p: &Process| format!("ws://127.0.0.1:{}/notifications", p.port);
    // Half the clients start on each node.
    let run = Run::start(&scenario, &unique("user"), producer, vec![ws(&a), ws(&b)]).await;

    run.wait_received(0.2).await;
    wait_lag(
        &[&a, &b],
        &topic,
        "the partitions split between the nodes",
        split,
    )
    .await;
    for node in [&a, &b] {
        let events = node.metric(r#"herald_events_total{source="kafka"}"#).await;
        assert!(events > 0.0, "both nodes consume:\n{}", node.log());
    }

    run.wait_received(0.35).await;
    a.kill9();
    // b takes every partition once the group gives up on a.
    wait_lag(
        &[&b],
        &topic,
        "every partition on the surviving node",
        |seen| seen[0].len() == PARTITIONS as usize,
    )
    .await;

    // a comes back: the rebalance takes some partitions away from b, and
    // their gauges with them.
    run.wait_received(0.6).await;
    a.restart();
    wait_lag(&[&a, &b], &topic, "the partitions split again", split).await;

    let report = run.finish().await;
    report.assert_exactly_once(&format!("{}\n--- node b ---\n{}", a.log(), b.log()));
    assert_eq!(report.produced, scenario.total());
    let duplicates = b.metric("herald_notifications_duplicate_total").await;
    eprintln!(
        "client reconnects {}, duplicates dropped on b {duplicates}",
        report.reconnects()
    );
    assert!(
        duplicates > 0.0,
        "b consumed again what a had appended but not committed"
    );
    a.stop();
    b.stop();
}
