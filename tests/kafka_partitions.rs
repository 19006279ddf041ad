//! The Kafka source's per-partition promises against the broker at
//! `KAFKA_BOOTSTRAP`: offsets committed when partitions are revoked (two
//! nodes, each with a disk store of its own, so no shared dedupe can hide
//! a partition consumed twice), and a partition held back by a dead letter
//! that cannot be written: its offset stays before the poison message,
//! while the other partitions go on.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::kafka::{self, Kafka};
use common::{Client, Herald, WAIT, unique};
use herald::config::StoreKind;
use herald::source::kafka::KafkaSourceConfig;
use serde_json::json;

/// A node consuming `source` into a disk store under `dir`.
async fn node(source: &KafkaSourceConfig, dir: &Path) -> Herald {
    let source = source.clone();
    let path = dir.join("log");
    Herald::start_with(move |c| {
        c.store.kind = StoreKind::Disk;
        c.store.path = Some(path);
        c.sources = vec![kafka::kafka_source(source)];
    })
    .await
}

/// Produce `title` for `channel` to `partition`, acknowledged.
async fn send(kafka: &Kafka, topic: &str, partition: i32, channel: &str, title: &str) {
    let event = json!({"channel": channel, "title": title}).to_string();
    kafka
        .send(topic, partition, None, event.as_bytes(), &[])
        .await;
}

/// Titles of the notifications `client` receives until `done` holds for
/// them all.
async fn titles_until(
    client: &mut Client,
    done: impl Fn(&BTreeSet<String>) -> bool,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    while !done(&seen) {
        let frame = client.next_of_type("notification").await;
        assert!(
            seen.insert(frame["title"].as_str().unwrap().to_string()),
            "twice: {frame}"
        );
    }
    seen
}

/// How many partitions `node`'s source holds, from its `/readyz` detail
/// ("group g: 1 partitions assigned"); 0 while it has none.
async fn assigned(node: &Herald) -> u64 {
    let (_, body) = node.get("/readyz").await;
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    let detail = state["sources"]["kafka"]["detail"].as_str().unwrap_or("");
    detail
        .strip_suffix(" partitions assigned")
        .and_then(|d| d.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

const EVENTS_TOTAL: &str = r#"herald_events_total{source="kafka"}"#;

/// Node A consumes both partitions; node B joins the group and the
/// partitions are split: A commits what it appended when they are revoked
/// (automatic commits are off here, every 10 minutes), so B starts each
/// partition it gets after what A appended, and consumes only the events
/// produced after the split. librdkafka also commits stored offsets at a
/// revocation while automatic commits are on (herald keeps them on); with
/// them off, herald's own commit passes this test, and removing it fails
/// it (B consumes its partition again from the start; both tried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_partitions_are_committed_before_another_node_takes_them() {
    let kafka = Kafka::shared();
    let topic = kafka.topic("revoke", 2).await;
    let mut source = kafka::source(&kafka.brokers, &[&topic], &unique("g"));
    source
        .properties
        .insert("auto.commit.interval.ms".into(), "600000".into());
    let channel = unique("c");
    let query = format!("channel={channel}");
    for i in 0..20 {
        send(&kafka, &topic, i % 2, &channel, &format!("old-{i}")).await;
    }
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(&source, dir_a.path()).await;
    assert_eq!(
        a.wait_metric(EVENTS_TOTAL, 20.0).await,
        20.0,
        "A consumed both partitions"
    );

    let b = node(&source, dir_b.path()).await;
    // Split: each node holds one partition.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let held = (assigned(&a).await, assigned(&b).await);
        if held == (1, 1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the partitions were not split: {held:?} held"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (mut on_a, _) = a.subscribe(&query).await;
    let (mut on_b, _) = b.subscribe(&query).await;
    for i in 0..20 {
        send(&kafka, &topic, i % 2, &channel, &format!("new-{i}")).await;
    }
    let new: BTreeSet<String> = (0..20).map(|i| format!("new-{i}")).collect();
    let from_a = titles_until(&mut on_a, |s| s.len() == 10).await;
    let from_b = titles_until(&mut on_b, |s| s.len() == 10).await;
    let all: BTreeSet<String> = from_a.union(&from_b).cloned().collect();
    assert_eq!(all, new, "each new event on one node, no old one again");
    assert_eq!(a.metric(EVENTS_TOTAL).await, 30.0);
    assert_eq!(
        b.metric(EVENTS_TOTAL).await,
        10.0,
        "B consumed nothing A had"
    );
    a.stop().await;
    b.stop().await;
}

/// A poison message whose dead letter cannot be written (the dead-letter
/// topic's name is invalid, so every produce fails) holds its partition:
/// the worker retries, at most `max_in_flight` (2) records of the
/// partition are in flight, and its committed offset stays at the poison
/// message. The other partition goes on meanwhile. Fails with "store the
/// offset although the dead letter failed" and with "one window shared by
/// all partitions" (both tried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_that_cannot_be_written_holds_only_its_partition() {
    let kafka = Kafka::shared();
    let topic = kafka.topic("held", 2).await;
    let group = unique("g");
    let mut source = kafka::source(&kafka.brokers, &[&topic], &group);
    source.dead_letter_topic = Some("herald dead letters (an invalid name)".into());
    source.max_in_flight = Some(2);
    let h = Herald::start_with(|c| c.sources = vec![kafka::kafka_source(source)]).await;
    h.wait_ready(200, WAIT).await.unwrap();
    let channel = unique("c");
    let (mut client, _) = h.subscribe(&format!("channel={channel}")).await;

    send(&kafka, &topic, 0, &channel, "p0-0").await;
    kafka.send(&topic, 0, None, b"{not json", &[]).await;
    for i in 2..6 {
        send(&kafka, &topic, 0, &channel, &format!("p0-{i}")).await;
    }
    let dead_letter = r#"herald_source_errors_total{source="kafka",error="dead_letter"}"#;
    assert!(
        h.wait_metric(dead_letter, 1.0).await >= 1.0,
        "{}",
        h.metrics().await
    );
    for i in 0..20 {
        send(&kafka, &topic, 1, &channel, &format!("p1-{i}")).await;
    }
    let p1: BTreeSet<String> = (0..20).map(|i| format!("p1-{i}")).collect();
    let seen = titles_until(&mut client, |s| p1.is_subset(s)).await;
    // Of partition 0: what came before the poison message, and the one
    // record after it that the window of 2 let in.
    let p0: Vec<&String> = seen.iter().filter(|t| t.starts_with("p0-")).collect();
    assert!(
        p0.iter().all(|t| ["p0-0", "p0-2"].contains(&t.as_str())),
        "{p0:?}"
    );
    assert!(h.wait_metric(dead_letter, 2.0).await >= 2.0, "retried");
    h.stop().await;
    // Committed at shutdown: partition 0 up to the poison message (offset
    // 1), partition 1 all of it.
    assert_eq!(
        kafka.committed(&group, &topic, 2).await,
        [Some(1), Some(20)]
    );
}
