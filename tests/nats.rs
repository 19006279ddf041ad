//! The NATS JetStream source against a real `nats-server -js` that each
//! test starts on its own port and store directory (tests/common/nats.rs;
//! `scripts/test.sh` installs the server when it is missing). Streams and
//! consumers have fresh names and are deleted afterwards.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use common::crash::{Run, Scenario};
use common::nats::{NatsProducer, NatsServer, TestStream, publish, source_toml};
use common::process::Process;
use common::{Client, Herald, WAIT, unique};
use herald::source::SourceConfig;
use herald::source::nats::NatsSourceConfig;
use serde_json::{Value, json};

const RULES: &str = r#"
rules:
  - id: orders
    match: { source: nats }
    when: event.type == "order.created"
    emit:
      channel: "{{ event.channel }}"
      title: "order {{ event.seq }}"
      data:
        seq: "{{ event.seq }}"
        subject: "{{ meta.topic }}"
        sequence: "{{ meta.offset }}"
        message_id: "{{ meta.message_id }}"
        timestamp: "{{ meta.timestamp }}"
        redelivered: "{{ meta.redelivered }}"
        tenant: "{{ meta.headers.tenant | default('none') }}"
  - id: fails
    match: { source: nats }
    when: event.type == "fail"
    emit:
      channel: "{{ event.channel }}"
      title: "{{ event.no_such_field }}"
"#;

fn rules_file(dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, RULES).unwrap();
    path
}

/// herald in this process with `nats` as its only source and the test
/// rules, once consuming, and a client subscribed to a fresh channel.
async fn start(nats: NatsSourceConfig) -> (Herald, String, Client, tempfile::TempDir) {
    let rules = tempfile::tempdir().unwrap();
    let h = Herald::start_with(|c| {
        c.sources = vec![SourceConfig::Nats(nats)];
        c.rules.path = Some(rules_file(&rules));
    })
    .await;
    h.wait_ready(200, WAIT).await.unwrap();
    let channel = unique("c");
    let (client, _) = h.subscribe(&format!("channel={channel}")).await;
    (h, channel, client, rules)
}

fn source(server: &NatsServer, stream: &TestStream, subjects: &[&str]) -> NatsSourceConfig {
    let mut nats = NatsSourceConfig::new(server.url(), stream.name.clone());
    nats.subjects = subjects.iter().map(|s| stream.subject(s)).collect();
    nats.durable = unique("herald");
    nats.reconnect_max_ms = 1000;
    nats
}

fn order(channel: &str, seq: u64) -> Value {
    json!({"type": "order.created", "channel": channel, "seq": seq})
}

fn seqs(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| f["data"]["seq"].as_u64().unwrap())
        .collect()
}

/// The durable consumer's unacknowledged and undelivered counts.
async fn consumer_backlog(server: &NatsServer, stream: &TestStream, durable: &str) -> (usize, u64) {
    let js = jetstream::new(server.client().await);
    let stream = js.get_stream(&stream.name).await.unwrap();
    let info = stream.consumer_info(durable).await.unwrap();
    (info.num_ack_pending, info.num_pending)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_clients_in_stream_order_with_their_meta() {
    let server = NatsServer::start();
    let stream = TestStream::create(&server).await;
    let mut nats = source(&server, &stream, &["orders.*"]);
    nats.max_ack_pending = 16;
    let durable = nats.durable.clone();
    let (h, channel, mut client, _rules) = start(nats).await;

    let js = jetstream::new(server.client().await);
    let n = 200;
    for seq in 0..n {
        let mut headers = HeaderMap::new();
        headers.insert("tenant", "acme");
        if seq % 2 == 0 {
            headers.insert("Nats-Msg-Id", format!("m-{seq}").as_str());
        }
        let body = order(&channel, seq).to_string();
        publish(
            &js,
            &stream.subject("orders.created"),
            headers,
            body.as_bytes(),
        )
        .await;
        if seq == 100 {
            // In the stream, not selected by the filter: never delivered.
            let body = order(&channel, 999).to_string();
            publish(
                &js,
                &stream.subject("billing.paid"),
                HeaderMap::new(),
                body.as_bytes(),
            )
            .await;
        }
    }
    let frames = client.notifications(n as usize).await;
    assert_eq!(seqs(&frames), (0..n).collect::<Vec<_>>(), "stream order");
    let first = &frames[0]["data"];
    assert_eq!(first["subject"], stream.subject("orders.created"));
    assert_eq!(first["sequence"], 1, "the stream sequence");
    assert_eq!(first["message_id"], "m-0");
    assert_eq!(first["redelivered"], false);
    assert_eq!(first["tenant"], "acme");
    let stored = stream.message(1).await;
    let published = time::OffsetDateTime::parse(
        first["timestamp"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(
        (published - stored.time).abs() < time::Duration::milliseconds(1),
        "meta.timestamp is the stream's time: {published} vs {}",
        stored.time
    );
    assert_eq!(frames[1]["data"]["message_id"], Value::Null);
    // Sequence 102 is the billing message: the next order is 103.
    assert_eq!(frames[101]["data"]["sequence"], 103);
    client.assert_quiet(Duration::from_millis(300)).await;
    h.stop().await;
    assert_eq!(
        consumer_backlog(&server, &stream, &durable).await,
        (0, 0),
        "every message acknowledged, nothing left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_to_the_dead_letter_subject_with_the_reason_and_the_stream_flows() {
    let server = NatsServer::start();
    let stream = TestStream::create(&server).await;
    let dead = TestStream::create(&server).await;
    let mut nats = source(&server, &stream, &[">"]);
    nats.dead_letter_subject = Some(dead.subject("poison"));
    nats.max_message_bytes = 2048;
    let durable = nats.durable.clone();
    let (h, channel, mut client, _rules) = start(nats).await;

    let oversized = json!({"channel": channel, "pad": "x".repeat(3000)}).to_string();
    let failing = json!({"type": "fail", "channel": channel}).to_string();
    let messages: Vec<(&str, Vec<u8>)> = vec![
        ("orders.a", order(&channel, 0).to_string().into_bytes()),
        ("orders.bad", b"{not json".to_vec()),
        ("orders.b", order(&channel, 1).to_string().into_bytes()),
        ("orders.array", b"[1, 2]".to_vec()),
        ("orders.big", oversized.into_bytes()),
        ("other.fail", failing.into_bytes()),
        ("orders.c", order(&channel, 2).to_string().into_bytes()),
    ];
    let js = jetstream::new(server.client().await);
    for (subject, body) in &messages {
        let mut headers = HeaderMap::new();
        headers.insert("trace", *subject);
        publish(&js, &stream.subject(subject), headers, body).await;
    }
    let frames = client.notifications(3).await;
    assert_eq!(seqs(&frames), [0, 1, 2], "poison never blocks the stream");

    let dead_lettered = h
        .wait_metric(
            "herald_dead_lettered_total{source=\"nats\",reason=\"all_rules_failed\"}",
            1.0,
        )
        .await;
    assert_eq!(dead_lettered, 1.0);
    assert_eq!(dead.messages().await, 4, "four poison messages");
    let mut found = Vec::new();
    for seq in 1..=4 {
        let m = dead.message(seq).await;
        let header = |k: &str| m.headers.get(k).map(|v| v.as_str().to_string()).unwrap();
        assert_eq!(m.subject.as_str(), dead.subject("poison"));
        assert_eq!(header("X-Herald-Stream"), stream.name);
        assert!(!header("X-Herald-Detail").is_empty());
        assert_eq!(
            header("trace"),
            header("X-Herald-Subject").split_once('.').unwrap().1,
            "the original headers are kept"
        );
        found.push((
            header("X-Herald-Subject"),
            header("X-Herald-Reason"),
            header("X-Herald-Sequence"),
        ));
        if seq == 1 {
            assert_eq!(&m.payload[..], b"{not json", "the payload is kept");
        }
    }
    let expect = |subject: &str, reason: &str, seq: u64| {
        (stream.subject(subject), reason.to_string(), seq.to_string())
    };
    assert_eq!(
        found,
        [
            expect("orders.bad", "invalid_json", 2),
            expect("orders.array", "invalid_json", 4),
            expect("orders.big", "too_large", 5),
            expect("other.fail", "all_rules_failed", 6),
        ]
    );
    h.stop().await;
    assert_eq!(
        consumer_backlog(&server, &stream, &durable).await,
        (0, 0),
        "poison is acknowledged too"
    );
}

/// The broker killed mid-stream and started again on the same port and
/// store: `/readyz` answers 503 meanwhile, then herald consumes again and
/// every client sees every event exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_is_not_ready_meanwhile_and_loses_nothing() {
    let mut server = NatsServer::start();
    let stream = TestStream::create(&server).await;
    let nats = source(&server, &stream, &[">"]);
    let h = Herald::start_with(|c| c.sources = vec![SourceConfig::Nats(nats)]).await;
    h.wait_ready(200, WAIT).await.unwrap();
    let producer = Arc::new(NatsProducer::connect(&server, &stream).await);
    let scenario = Scenario {
        channels: 4,
        per_channel: 300,
        batch: 10,
        within: Duration::from_secs(120),
    };
    let run = Run::start(&scenario, &unique("user"), producer, vec![h.ws_url("")]).await;
    run.wait_received(0.3).await;
    server.kill9();
    let body = h.wait_ready(503, WAIT).await.unwrap();
    assert!(body.contains("disconnected"), "{body}");
    server.restart();
    h.wait_ready(200, WAIT).await.unwrap();
    let report = run.finish().await;
    report.assert_exactly_once("");
    assert_eq!(report.produced, scenario.total());
    // The lost connection surfaces as a failed pull (`consume`) or, when an
    // acknowledgement was in flight, a failed ack (`commit`): either counts.
    let metrics = h.metrics().await;
    let lost: f64 = common::metric_family(&metrics, "herald_source_errors_total")
        .iter()
        .filter(|(labels, _)| {
            labels.contains(r#"source="nats""#)
                && (labels.contains(r#"error="consume""#) || labels.contains(r#"error="commit""#))
        })
        .map(|(_, v)| v)
        .sum();
    assert!(
        lost >= 1.0,
        "the lost connection was not counted:\n{metrics}"
    );
    h.stop().await;
}

/// herald a separate process with the disk store, killed with SIGKILL
/// mid-stream twice and restarted: the replay and the redeliveries map to
/// the dedupe keys kept on disk, and every client sees every event exactly
/// once, in order (tests/common/crash.rs checks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_herald_mid_stream_loses_nothing_and_duplicates_nothing() {
    let server = NatsServer::start();
    let stream = TestStream::create(&server).await;
    let durable = unique("herald");
    let mut herald = Process::start_with(|dir| {
        format!(
            "[store]\nkind = \"disk\"\npath = {:?}\n[delivery]\nqueue_capacity = 4096\n{}",
            dir.join("log").display().to_string(),
            source_toml(&server.url(), &stream, &durable),
        )
    });
    assert!(
        herald.wait_ready(200, Duration::from_secs(30)).await,
        "{}",
        herald.log()
    );
    let producer = Arc::new(NatsProducer::connect(&server, &stream).await);
    let report =
        common::crash::kill_9_during(&mut herald, &Scenario::brokers(), producer, &[0.25, 0.6])
            .await;
    eprintln!(
        "client reconnects {}, duplicates dropped after the last restart {}",
        report.reconnects(),
        herald.metric("herald_notifications_duplicate_total").await
    );
    // What a session replayed from the stream after a restart stays
    // pending at the consumer until JetStream redelivers it (ack_wait) and
    // herald acknowledges the duplicate: wait for that, bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut backlog = consumer_backlog(&server, &stream, &durable).await;
    while backlog != (0, 0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        backlog = consumer_backlog(&server, &stream, &durable).await;
    }
    herald.stop();
    assert_eq!(backlog, (0, 0), "every message acknowledged in the end");
}
