//! The Kafka source against a real Kafka-protocol broker: the shared one at
//! `KAFKA_BOOTSTRAP` (scripts/test.sh starts Tansu when none answers), and
//! private Tansu brokers for the outage tests. Topic and group names are
//! random per test; topics are deleted once herald has stopped.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use common::kafka::{self, Kafka, Tansu};
use common::port::Reserved;
use common::process::Process;
use common::{Client, Herald, Next, unique};
use serde_json::{Value, json};

/// herald's logs in the test output (shown for failing tests), filtered
/// by `RUST_LOG` (default: herald's info lines).
fn logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Rules in a file next to nothing else; the directory lives as long as the
/// returned guard.
fn rules_file(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, yaml).unwrap();
    (dir, path)
}

/// Notification frames until `n` arrived; panics after `within`.
async fn collect(client: &mut Client, n: usize, within: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_within(left).await {
            Some(Next::Frame(f)) if f["type"] == "notification" => out.push(f),
            Some(Next::Frame(_)) => {}
            Some(Next::Closed(code, reason)) => {
                panic!("closed ({code:?} {reason}) after {} of {n}", out.len())
            }
            None => panic!(
                "{} of {n} notifications within {within:?}: {:?}",
                out.len(),
                out.iter().map(|f| &f["title"]).collect::<Vec<_>>()
            ),
        }
    }
    out
}

/// An event's `seq`: every test event carries it as its title.
fn seq(frame: &Value) -> i64 {
    frame["title"].as_str().unwrap().parse().unwrap()
}

/// Per partition (events go to partition `seq % 3`), the `seq` values in
/// arrival order.
fn by_partition(frames: &[Value]) -> BTreeMap<i64, Vec<i64>> {
    let mut out: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for f in frames {
        out.entry(seq(f) % 3).or_default().push(seq(f));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_three_partitions_reach_clients_in_partition_order() {
    logs();
    let kafka = Kafka::shared();
    let topic = kafka.topic("orders", 3).await;
    let (_dir, rules) = rules_file(&format!(
        r#"
rules:
  - id: kafka-meta
    match: {{ source: kafka, topic: "{topic}" }}
    emit:
      channel: "{{{{ event.channel }}}}"
      title: "{{{{ event.seq }}}}"
      data:
        p: "{{{{ event.p }}}}"
        seq: "{{{{ event.seq }}}}"
        partition: "{{{{ meta.partition }}}}"
        offset: "{{{{ meta.offset }}}}"
        key: "{{{{ meta.key }}}}"
        tenant: "{{{{ meta.headers.tenant }}}}"
        timestamp: "{{{{ meta.timestamp }}}}"
        source: "{{{{ meta.source }}}}"
  - id: not-for-kafka
    match: {{ source: http }}
    emit: {{ channel: "{{{{ event.channel }}}}", title: "http" }}
"#
    ));
    let mut source = kafka::source(&kafka.brokers, &[&topic], &unique("g"));
    // A tiny window: each worker keeps stopping and resuming its reads.
    source.max_in_flight = Some(2);
    let h = Herald::start_with(|c| {
        c.rules.path = Some(rules);
        c.sources = vec![kafka::kafka_source(source)];
    })
    .await;
    let body = h.wait_ready(503, Duration::from_secs(1)).await.unwrap();
    assert!(body.contains("\"kafka\""), "{body}");
    let channel = unique("user");
    let (mut client, _) = h.subscribe(&format!("channel={channel}")).await;
    const TOTAL: i64 = 120;
    let mut acks = Vec::new();
    for seq in 0..TOTAL {
        let p = seq % 3;
        let event = json!({"channel": channel, "p": p, "seq": seq});
        acks.push(kafka.send(
            &topic,
            p as i32,
            Some(&format!("key-{p}")),
            event.to_string().as_bytes(),
            &[("tenant", &format!("t{p}"))],
        ));
    }
    for ack in acks {
        ack.await;
    }
    let frames = collect(&mut client, TOTAL as usize, Duration::from_secs(40)).await;
    for (p, seqs) in by_partition(&frames) {
        let sent: Vec<i64> = (p..TOTAL).step_by(3).collect();
        assert_eq!(seqs, sent, "partition {p} in order");
    }
    let mut last_offset = BTreeMap::new();
    for f in &frames {
        let d = &f["data"];
        let p = d["p"].as_i64().unwrap();
        assert_eq!(d["partition"], p, "{f}");
        assert_eq!(d["key"], format!("key-{p}"), "{f}");
        assert_eq!(d["tenant"], format!("t{p}"), "{f}");
        assert_eq!(d["source"], "kafka", "{f}");
        assert!(d["timestamp"].as_str().unwrap().starts_with("20"), "{f}");
        let offset = d["offset"].as_i64().unwrap();
        let last = last_offset.insert(p, offset).unwrap_or(-1);
        assert!(offset > last, "offsets increase per partition: {f}");
    }
    client.assert_quiet(Duration::from_millis(500)).await;
    h.wait_ready(200, Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        h.metric(r#"herald_events_total{source="kafka"}"#).await,
        TOTAL as f64
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_message_appends_nothing_new() {
    logs();
    // Two sources in two groups read every message twice; the default
    // dedupe key (topic, partition, offset, rule) makes the second a no-op.
    let kafka = Kafka::shared();
    let topic = kafka.topic("twice", 1).await;
    let h = Herald::start_with(|c| {
        c.sources = vec![
            kafka::kafka_source(kafka::source(&kafka.brokers, &[&topic], &unique("g1"))),
            kafka::kafka_source(kafka::source(&kafka.brokers, &[&topic], &unique("g2"))),
        ];
    })
    .await;
    let channel = unique("c");
    let (mut client, _) = h.subscribe(&format!("channel={channel}")).await;
    for seq in 0..20 {
        let event = json!({"channel": channel, "title": format!("n{seq}")});
        kafka
            .send(&topic, 0, None, event.to_string().as_bytes(), &[])
            .await;
    }
    let frames = collect(&mut client, 20, Duration::from_secs(30)).await;
    let titles: Vec<String> = frames
        .iter()
        .map(|f| f["title"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(titles, (0..20).map(|i| format!("n{i}")).collect::<Vec<_>>());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while h.metric("herald_notifications_duplicate_total").await < 20.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second group's copies were not deduplicated"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.assert_quiet(Duration::from_millis(500)).await;
    assert_eq!(h.metric("herald_notifications_appended_total").await, 20.0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_to_the_dead_letter_topic_and_later_events_flow() {
    logs();
    let kafka = Kafka::shared();
    let topic = kafka.topic("mixed", 1).await;
    let dlq = kafka.topic("dead", 1).await;
    let (_dir, rules) = rules_file(
        r#"
rules:
  - id: strict
    match: { source: kafka }
    emit: { channel: "{{ event.channel }}", title: "{{ event.title }}" }
"#,
    );
    let mut source = kafka::source(&kafka.brokers, &[&topic], &unique("g"));
    source.dead_letter_topic = Some(dlq.to_string());
    source.max_message_bytes = 512;
    let h = Herald::start_with(|c| {
        c.rules.path = Some(rules);
        c.sources = vec![kafka::kafka_source(source)];
    })
    .await;
    let channel = unique("c");
    let (mut client, _) = h.subscribe(&format!("channel={channel}")).await;
    let good = |title: &str| json!({"channel": channel, "title": title}).to_string();
    let oversized = json!({"channel": channel, "title": "big", "pad": "x".repeat(600)}).to_string();
    let no_title = json!({"channel": channel}).to_string();
    let sent: Vec<(&str, Vec<u8>)> = vec![
        ("good", good("first").into_bytes()),
        ("bad-json", b"{not json".to_vec()),
        ("too-big", oversized.into_bytes()),
        ("rule-fails", no_title.into_bytes()),
        ("not-object", b"[1,2]".to_vec()),
        ("good", good("second").into_bytes()),
    ];
    for (key, value) in &sent {
        kafka
            .send(&topic, 0, Some(key), value, &[("x-trace", key)])
            .await;
    }
    let frames = collect(&mut client, 2, Duration::from_secs(30)).await;
    assert_eq!(frames[0]["title"], "first");
    assert_eq!(frames[1]["title"], "second");
    let dead = kafka.read(&dlq, 4, Duration::from_secs(20)).await;
    let expected = [
        (1, "bad-json", "invalid_json"),
        (2, "too-big", "too_large"),
        (3, "rule-fails", "all_rules_failed"),
        (4, "not-object", "invalid_json"),
    ];
    for (record, (offset, key, reason)) in dead.iter().zip(expected) {
        assert_eq!(record.key.as_deref(), Some(key.as_bytes()), "{record:?}");
        assert_eq!(
            record.value.as_deref(),
            Some(&sent[offset as usize].1[..]),
            "original value"
        );
        assert_eq!(
            record.header("x-trace").as_deref(),
            Some(key),
            "original headers kept"
        );
        assert_eq!(record.header("herald-reason").as_deref(), Some(reason));
        assert_eq!(
            record.header("herald-source-topic"),
            Some(topic.to_string())
        );
        assert_eq!(
            record.header("herald-source-partition").as_deref(),
            Some("0")
        );
        assert_eq!(
            record.header("herald-source-offset"),
            Some(offset.to_string())
        );
        assert!(
            !record.header("herald-error").unwrap().is_empty(),
            "{record:?}"
        );
    }
    assert_eq!(dead[2].header("herald-rule").as_deref(), Some("strict"));
    assert!(
        dead[2]
            .header("herald-error")
            .unwrap()
            .contains("emit.title"),
        "{:?}",
        dead[2]
    );
    assert!(
        dead[1].header("herald-error").unwrap().contains("512"),
        "{:?}",
        dead[1]
    );
    // Counted once herald has the producer's acknowledgement, which may
    // come after the reader above saw the records.
    for (reason, n) in [
        ("invalid_json", 2.0),
        ("too_large", 1.0),
        ("all_rules_failed", 1.0),
    ] {
        let series = format!(r#"herald_dead_lettered_total{{source="kafka",reason="{reason}"}}"#);
        assert_eq!(h.wait_metric(&series, n).await, n, "{reason}");
    }
    h.stop().await;
}

/// Poison without a dead-letter topic is counted and skipped, and its
/// offset is stored like any other: the last message here is poison, and
/// the offset committed at shutdown is past it. Fails when poison offsets
/// are not stored (the commit stops at 2; tried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dead_letter_topic_poison_is_counted_and_skipped() {
    logs();
    let kafka = Kafka::shared();
    let topic = kafka.topic("skip", 1).await;
    let group = unique("g");
    let h = Herald::start_with(|c| {
        c.sources = vec![kafka::kafka_source(kafka::source(
            &kafka.brokers,
            &[&topic],
            &group,
        ))];
    })
    .await;
    let channel = unique("c");
    let (mut client, _) = h.subscribe(&format!("channel={channel}")).await;
    kafka.send(&topic, 0, None, b"\xff\xfe binary", &[]).await;
    let after = json!({"channel": channel, "title": "after"}).to_string();
    kafka.send(&topic, 0, None, after.as_bytes(), &[]).await;
    kafka.send(&topic, 0, None, b"[1, 2]", &[]).await;
    let frames = collect(&mut client, 1, Duration::from_secs(30)).await;
    assert_eq!(frames[0]["title"], "after");
    let invalid = r#"herald_events_rejected_total{source="kafka",reason="invalid_json"}"#;
    assert_eq!(h.wait_metric(invalid, 2.0).await, 2.0);
    h.stop().await;
    assert_eq!(kafka.committed(&group, &topic, 1).await, [Some(3)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_then_restart_resumes_from_committed_offsets() {
    logs();
    let kafka = Kafka::shared();
    let topic = kafka.topic("resume", 3).await;
    let source = kafka::source(&kafka.brokers, &[&topic], &unique("g"));
    let mut herald = Process::start(&kafka::source_toml(&source));
    let channel = unique("c");
    let mut client = Client::connect(&herald.ws_url(&format!("channel={channel}"))).await;
    client.next_of_type("subscribed").await;
    assert!(
        herald.wait_ready(200, Duration::from_secs(30)).await,
        "herald joined its group:\n{}",
        herald.log()
    );

    const TOTAL: i64 = 300;
    let producer = {
        let kafka = Kafka::new(&kafka.brokers);
        let topic = topic.to_string();
        let channel = channel.clone();
        tokio::spawn(async move {
            for seq in 0..TOTAL {
                let p = (seq % 3) as i32;
                let event =
                    json!({"channel": channel, "p": p, "seq": seq, "title": format!("{seq}")});
                kafka
                    .send(&topic, p, None, event.to_string().as_bytes(), &[])
                    .await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut first = collect(&mut client, 60, Duration::from_secs(30)).await;
    herald.stop();
    // Sessions close only after the sources have stopped, so everything
    // appended in this run reaches the client before the close frame, which
    // says 1001 (going away). Fails without 1001 on SIGTERM.
    let (rest, code) = client.notifications_until_close().await;
    first.extend(rest);
    assert_eq!(code, Some(1001), "sessions are closed with going away");
    let seen_first: BTreeSet<i64> = first.iter().map(seq).collect();
    assert_eq!(seen_first.len(), first.len(), "no duplicate within a run");
    assert!(
        seen_first.len() < TOTAL as usize,
        "stopped mid-stream (the producer was still running)"
    );

    herald.restart();
    let mut client = Client::connect(&herald.ws_url(&format!("channel={channel}"))).await;
    client.next_of_type("subscribed").await;
    let rest = TOTAL as usize - seen_first.len();
    let second = collect(&mut client, rest, Duration::from_secs(60)).await;
    producer.await.unwrap();
    let seen_second: BTreeSet<i64> = second.iter().map(seq).collect();
    assert!(
        seen_first.is_disjoint(&seen_second),
        "offsets committed at SIGTERM: nothing redelivered, got {:?} again",
        seen_first.intersection(&seen_second).collect::<Vec<_>>()
    );
    let all: BTreeSet<i64> = seen_first.union(&seen_second).copied().collect();
    assert_eq!(all, (0..TOTAL).collect(), "nothing lost");
    for (p, seqs) in by_partition(&second) {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "partition {p} in order: {seqs:?}"
        );
    }
    client.assert_quiet(Duration::from_millis(500)).await;
    assert!(
        herald.log().contains("offsets committed"),
        "{}",
        herald.log()
    );
    herald.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_start_then_up_makes_the_source_ready() {
    logs();
    // Held for the broker started below: nothing else takes the port
    // meanwhile, and nothing answers on it until then.
    let port = Reserved::new();
    let brokers = port.addr();
    let topic = unique("late");
    let mut source = kafka::source(&brokers, &[&topic], &unique("g"));
    // The topic may be created just after herald first asks for it.
    source
        .properties
        .insert("topic.metadata.refresh.interval.ms".into(), "2000".into());
    let h = Herald::start_with(|c| c.sources = vec![kafka::kafka_source(source)]).await;
    let body = h.wait_ready(503, Duration::from_secs(1)).await.unwrap();
    let state: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["sources"]["kafka"]["ready"], false, "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = h.get("/readyz").await;
    assert_eq!(status, 503, "still not ready without a broker: {body}");

    let tansu = Tansu::start_on(port);
    let kafka = Kafka::new(&tansu.brokers());
    kafka.create_topic(&topic, 1).await;
    let channel = unique("c");
    let (mut client, _) = h.subscribe(&format!("channel={channel}")).await;
    let event = json!({"channel": channel, "title": "late"}).to_string();
    kafka.send(&topic, 0, None, event.as_bytes(), &[]).await;
    let frames = collect(&mut client, 1, Duration::from_secs(40)).await;
    assert_eq!(frames[0]["title"], "late");
    h.wait_ready(200, Duration::from_secs(10)).await.unwrap();
    h.stop().await;
    drop(tansu);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_longer_than_the_session_timeout_loses_nothing() {
    logs();
    let tansu = Tansu::start();
    let kafka = Kafka::new(&tansu.brokers());
    let topic = kafka.topic("outage", 3).await;
    let h = Herald::start_with(|c| {
        c.sources = vec![kafka::kafka_source(kafka::source(
            &kafka.brokers,
            &[&topic],
            &unique("g"),
        ))];
    })
    .await;
    let channel = unique("c");
    let (mut client, _) = h.subscribe(&format!("channel={channel}")).await;

    // Produce every 50 ms across the outage; acknowledgements are awaited
    // at the end, so production goes on while the broker is frozen.
    let stop = tokio_util::sync::CancellationToken::new();
    let producer = {
        let stop = stop.clone();
        let topic = topic.to_string();
        let channel = channel.clone();
        tokio::spawn(async move {
            let mut acks = Vec::new();
            let mut seq = 0i64;
            while !stop.is_cancelled() {
                let p = (seq % 3) as i32;
                let event =
                    json!({"channel": channel, "p": p, "seq": seq, "title": format!("{seq}")});
                acks.push(kafka.send(&topic, p, None, event.to_string().as_bytes(), &[]));
                seq += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            for ack in acks {
                ack.await;
            }
            seq
        })
    };
    let mut frames = collect(&mut client, 20, Duration::from_secs(30)).await;
    h.wait_ready(200, Duration::from_secs(10)).await.unwrap();

    // Frozen until herald says so (however long a loaded machine takes),
    // and for longer than the session timeout (6 s) in any case.
    tansu.freeze();
    let frozen = tokio::time::Instant::now();
    let not_ready = h.wait_ready(503, Duration::from_secs(60)).await;
    tokio::time::sleep_until(frozen + Duration::from_secs(8)).await;
    tansu.thaw();
    not_ready.expect("/readyz turns 503 while the broker is frozen");

    h.wait_ready(200, Duration::from_secs(40)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let total = producer.await.unwrap();
    let rest = total as usize - frames.len();
    frames.extend(collect(&mut client, rest, Duration::from_secs(40)).await);
    client.assert_quiet(Duration::from_millis(500)).await;
    let seqs: BTreeSet<i64> = frames.iter().map(seq).collect();
    assert_eq!(seqs.len(), frames.len(), "no duplicate notification");
    assert_eq!(seqs, (0..total).collect(), "nothing lost");
    for (p, seqs) in by_partition(&frames) {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "partition {p} in order: {seqs:?}"
        );
    }
    h.stop().await;
    drop(tansu);
}

/// Run `herald serve` on `toml` and expect it to refuse to start.
fn refused_start(toml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(&config, toml).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("HERALD_SERVER__LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            return (status.code().unwrap_or(-1), stderr);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("herald kept running on a bad configuration");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_bad_property_is_a_clear_start_up_error() {
    for (key, value) in [
        ("session.timeout.mss", "6000"),
        ("session.timeout.ms", "not a number"),
        ("enable.auto.offset.store", "true"),
    ] {
        let mut source = kafka::source("127.0.0.1:9", &["t"], "g");
        source.properties.insert(key.into(), value.into());
        let (code, stderr) = refused_start(&kafka::source_toml(&source));
        assert_eq!(code, 2, "{key}: {stderr}");
        assert!(stderr.contains(key), "{key}: {stderr}");
    }
}
