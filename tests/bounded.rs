//! Bounded channel state: a flood of distinct channels does not stay in
//! memory, `store.max_channels` holds the count, and a client resuming on a
//! channel dropped meanwhile is told `recovered: false`, never given a gap.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Herald, metric_value, process::Process};
use serde_json::{Value, json};

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Poll the metrics text `read` returns until `series` is at most `at_most`
/// or `within` passes; its last value.
async fn wait_at_most<F, Fut>(read: F, series: &str, at_most: f64, within: Duration) -> f64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let value = metric_value(&read().await, series);
        if value <= at_most || tokio::time::Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post_events(base: &str, events: &[Value]) {
    let res = reqwest::Client::new()
        .post(format!("{base}/events/flood"))
        .json(events)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        202,
        "{}",
        res.text().await.unwrap_or_default()
    );
}

/// `count` events, each to a channel of its own under `prefix`.
async fn flood(base: &str, prefix: &str, count: usize) {
    for batch in 0..count / 10_000 {
        let events: Vec<Value> = (0..10_000)
            .map(|i| json!({"type": "x", "channel": format!("{prefix}:{batch}:{i}")}))
            .collect();
        post_events(base, &events).await;
    }
}

/// The attack of docs/security.md: 100 000 distinct channels, then quiet,
/// twice. Catches a store that keeps idle channels (or their dedupe keys)
/// forever: the channel gauge would stay up, and the second flood would
/// add as much memory again as the first.
///
/// What it does not check: that the process's resident memory falls back
/// to where it started. The allocator (mimalloc) keeps the freed pages for
/// reuse rather than handing them back to the kernel, so the resident size
/// after a flood stays near its peak and the next flood reuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_quiet_channels_are_dropped_and_memory_is_reused() {
    let herald = Process::start("[store]\nmax_age_secs = 2\n");
    let base = herald.base();
    let channels = "herald_store_channels";
    // Warm up every path once, then let that channel go: the baseline.
    post_events(&base, &[json!({"type": "x", "channel": "warm"})]).await;
    let settled = wait_at_most(|| herald.metrics(), channels, 0.0, common::WAIT).await;
    assert_eq!(settled, 0.0, "the warm-up channel is dropped");
    let baseline = rss_kib(herald.pid());

    let mut peaks = Vec::new();
    for round in 0..2 {
        flood(&base, &common::unique(&format!("flood{round}")), 100_000).await;
        peaks.push(rss_kib(herald.pid()));
        let left = wait_at_most(|| herald.metrics(), channels, 0.0, Duration::from_secs(60)).await;
        assert_eq!(
            left,
            0.0,
            "every quiet channel is dropped:\n{}",
            herald.log()
        );
    }
    let text = herald.metrics().await;
    assert_eq!(
        metric_value(&text, "herald_notifications_appended_total"),
        200_001.0
    );
    assert_eq!(
        metric_value(
            &text,
            r#"herald_store_channels_dropped_total{reason="idle"}"#
        ),
        200_001.0
    );
    let after = rss_kib(herald.pid());
    eprintln!("RSS KiB: baseline {baseline}, peaks {peaks:?}, after retention {after}");
    let grown = peaks[0].saturating_sub(baseline);
    assert!(
        peaks[1] <= peaks[0] + grown / 4,
        "the second flood reuses the first one's memory: {baseline} KiB at the start, \
         peaks {peaks:?} KiB"
    );
}

/// Catches a recreated channel reusing the epoch of the dropped one: the
/// old `last_id` would then resume into a different history (offset 3 of
/// the old channel taken as offset 3 of the new) with a silent gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_on_a_dropped_channel_is_not_recovered() {
    let h = Herald::start_with(|c| c.store.max_age_secs = 1).await;
    let channel = common::unique("dropped");
    let (mut client, _) = h.subscribe(&format!("channel={channel}")).await;
    for i in 0..3 {
        h.publish("t", &json!({"type": "x", "channel": channel, "title": i}))
            .await;
    }
    let seen = client.notifications(3).await;
    let last_id = seen[2]["id"].as_str().unwrap().to_string();
    assert!(last_id.ends_with("-3"), "{last_id}");
    // Subscribed, the channel stays however quiet.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(h.metric("herald_store_channels").await, 1.0);
    drop(client);
    let left = wait_at_most(|| h.metrics(), "herald_store_channels", 0.0, common::WAIT).await;
    assert_eq!(left, 0.0, "dropped once nobody subscribes");

    // The channel is created again: 4 notifications, so offset 3 exists.
    for i in 0..4 {
        h.publish("t", &json!({"type": "x", "channel": channel, "title": i}))
            .await;
    }
    let query = format!("channel={channel}&last_id={last_id}");
    let (mut client, subscribed) = h.subscribe(&query).await;
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    assert_eq!(subscribed["replayed"], 0, "{subscribed}");
    let position = subscribed["position"].as_str().unwrap();
    let old_epoch = last_id.rsplit_once('-').unwrap().0;
    assert!(!position.starts_with(old_epoch), "a new epoch: {position}");
    assert!(position.ends_with("-4"), "live from the head: {position}");
    // And it is live: the next one arrives with the new epoch.
    h.publish(
        "t",
        &json!({"type": "x", "channel": channel, "title": "next"}),
    )
    .await;
    let next = client.notifications(1).await;
    assert_eq!(
        next[0]["id"],
        format!("{}-5", position.rsplit_once('-').unwrap().0)
    );
}

/// Catches `max_channels` not enforced, or enforced by dropping a channel
/// a client is subscribed to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_channels_holds_the_count_and_spares_subscribed_channels() {
    let h = Herald::start_with(|c| c.store.max_channels = 10).await;
    let watched = common::unique("watched");
    let (mut client, _) = h.subscribe(&format!("channel={watched}")).await;
    h.publish("t", &json!({"type": "x", "channel": watched}))
        .await;
    let events: Vec<Value> = (0..100)
        .map(|i| json!({"type": "x", "channel": format!("{watched}-other-{i}")}))
        .collect();
    let (status, _) = h.post("t", &Value::Array(events)).await;
    assert_eq!(status, 202);
    let text = h.metrics().await;
    assert_eq!(metric_value(&text, "herald_store_channels"), 10.0);
    assert_eq!(
        metric_value(
            &text,
            r#"herald_store_channels_dropped_total{reason="max_channels"}"#
        ),
        91.0
    );
    // The subscribed channel kept its history.
    client.notifications(1).await;
    let (status, body) = h.get(&format!("/channels/{watched}/notifications")).await;
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["notifications"].as_array().unwrap().len(), 1, "{page}");
}
