//! The RabbitMQ source against a real broker (`AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`; `scripts/test.sh` starts a local
//! RabbitMQ when none answers). Every test uses its own queue and exchange
//! names and deletes them afterwards, even when it fails.
//!
//! The forced-close test runs `rabbitmqctl` (override the command with
//! `RABBITMQCTL`, e.g. `docker exec rabbitmq rabbitmqctl`).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::amqp::{Broker, Relay, amqp_url, close_herald_connection, source};
use common::port::Reserved;
use common::process::Process;
use common::{Client, Herald, WAIT, unique};
use futures_util::StreamExt;
use herald::source::SourceConfig;
use herald::source::amqp::AmqpSourceConfig;
use lapin::options::QueueDeleteOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use serde_json::{Value, json};

const RULES: &str = r#"
rules:
  - id: orders
    match: { source: amqp, topic: "orders.*" }
    emit:
      channel: "{{ event.channel }}"
      title: "order {{ event.seq }}"
      data:
        seq: "{{ event.seq }}"
        topic: "{{ meta.topic }}"
        exchange: "{{ meta.exchange }}"
        message_id: "{{ meta.message_id }}"
        timestamp: "{{ meta.timestamp }}"
        redelivered: "{{ meta.redelivered }}"
        tenant: "{{ meta.headers.tenant | default('none') }}"
  - id: fails
    match: { source: amqp }
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

/// herald in this process with `amqp` as its only source and the test
/// rules (in the returned directory), once consuming, and a client
/// subscribed to a fresh channel.
async fn start(amqp: AmqpSourceConfig) -> (Herald, String, Client, tempfile::TempDir) {
    let rules = tempfile::tempdir().unwrap();
    let h = Herald::start_with(|c| {
        c.sources = vec![SourceConfig::Amqp(amqp)];
        c.rules.path = Some(rules_file(&rules));
    })
    .await;
    h.wait_ready(200, WAIT).await.unwrap();
    let channel = unique("c");
    let (client, _) = h.subscribe(&format!("channel={channel}")).await;
    (h, channel, client, rules)
}

fn seqs(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| f["data"]["seq"].as_u64().unwrap())
        .collect()
}

fn order(channel: &str, seq: u64) -> Value {
    json!({"type": "order.created", "channel": channel, "seq": seq})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_clients_in_queue_order_with_their_meta() {
    let mut broker = Broker::connect().await;
    let queue = broker.queue_name("q");
    let topic = broker.exchange_name("x-topic");
    let direct = broker.exchange_name("x-direct");
    // An existing exchange of another type is used as it is: declaring it
    // as topic would fail and herald would never become ready.
    broker.declare_exchange(&direct, ExchangeKind::Direct).await;
    let mut amqp = source(
        &queue,
        &[
            (&topic, "orders.*"),
            (&topic, "billing.#"),
            (&direct, "orders.direct"),
        ],
    );
    amqp.prefetch = 16;
    let (h, channel, mut client, _rules) = start(amqp).await;

    let n = 200;
    for seq in 0..n {
        let mut headers = FieldTable::default();
        headers.insert("tenant".into(), AMQPValue::LongString("acme".into()));
        let mut props = BasicProperties::default()
            .with_headers(headers)
            .with_timestamp(1_700_000_000);
        if seq % 2 == 0 {
            props = props.with_message_id(format!("m-{seq}").into());
        }
        let routed = broker
            .publish(
                &topic,
                "orders.created",
                order(&channel, seq).to_string().as_bytes(),
                props,
            )
            .await;
        assert!(routed);
    }
    // Bound, but no rule matches `billing.*`: consumed, nothing emitted.
    broker
        .publish_json(&topic, "billing.paid", &order(&channel, 999))
        .await;
    broker
        .publish_json(&direct, "orders.direct", &order(&channel, n))
        .await;

    let frames = client.notifications(n as usize + 1).await;
    assert_eq!(seqs(&frames), (0..=n).collect::<Vec<_>>(), "queue order");
    let first = &frames[0]["data"];
    assert_eq!(first["topic"], "orders.created");
    assert_eq!(first["exchange"], topic.as_str());
    assert_eq!(first["message_id"], "m-0");
    assert_eq!(first["timestamp"], "2023-11-14T22:13:20Z");
    assert_eq!(first["redelivered"], false);
    assert_eq!(first["tenant"], "acme");
    assert_eq!(frames[1]["data"]["message_id"], Value::Null);
    assert_eq!(frames[n as usize]["data"]["exchange"], direct.as_str());
    client.assert_quiet(Duration::from_millis(300)).await;

    let settled = h
        .wait_metric("herald_amqp_settled_total{source=\"amqp\"}", (n + 2) as f64)
        .await;
    assert_eq!(settled, (n + 2) as f64, "every delivery acknowledged");
    h.stop().await;
    assert_eq!(broker.ready(&queue).await, 0, "nothing left unacknowledged");
    // herald declared the missing exchange: binding to it works.
    let probe = broker.queue_name("probe");
    broker.declare_bound_queue(&probe, &topic, "#").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_go_to_the_dead_letter_exchange_with_the_reason() {
    let mut broker = Broker::connect().await;
    let queue = broker.queue_name("q");
    let exchange = broker.exchange_name("x");
    let dlx = broker.exchange_name("dlx");
    let dlq = broker.queue_name("dlq");
    // An existing fanout dead-letter exchange is used as it is.
    broker.declare_exchange(&dlx, ExchangeKind::Fanout).await;
    broker.declare_bound_queue(&dlq, &dlx, "").await;
    let mut amqp = source(&queue, &[(&exchange, "#")]);
    amqp.dead_letter_exchange = Some(dlx.clone());
    amqp.max_message_bytes = 2048;
    let (h, channel, mut client, _rules) = start(amqp).await;

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
    for (key, body) in &messages {
        assert!(
            broker
                .publish(&exchange, key, body, BasicProperties::default())
                .await
        );
    }
    let frames = client.notifications(3).await;
    assert_eq!(seqs(&frames), [0, 1, 2], "poison never blocks the queue");

    let dead = broker.take(&dlq, 4).await;
    let reasons: Vec<(String, String, String)> = dead
        .iter()
        .map(|m| {
            let headers = m.delivery.properties.headers().clone().unwrap();
            let text = |k: &str| match headers.inner().get(k) {
                Some(AMQPValue::LongString(s)) => s.to_string(),
                other => panic!("{k}: {other:?}"),
            };
            assert_eq!(text("x-herald-queue"), queue);
            assert_eq!(text("x-herald-exchange"), exchange);
            assert!(!text("x-herald-detail").is_empty());
            (
                m.delivery.routing_key.to_string(),
                text("x-herald-reason"),
                text("x-herald-routing-key"),
            )
        })
        .collect();
    let expect = |key: &str, reason: &str| (key.to_string(), reason.to_string(), key.to_string());
    assert_eq!(
        reasons,
        [
            expect("orders.bad", "invalid_json"),
            expect("orders.array", "invalid_json"),
            expect("orders.big", "too_large"),
            expect("other.fail", "all_rules_failed"),
        ]
    );
    assert_eq!(dead[0].delivery.data, b"{not json", "the body is kept");
    let dead_lettered = h
        .wait_metric(
            "herald_amqp_poison_total{source=\"amqp\",outcome=\"dead_lettered\"}",
            4.0,
        )
        .await;
    assert_eq!(dead_lettered, 4.0);
    h.stop().await;
    assert_eq!(broker.ready(&queue).await, 0, "poison is acknowledged too");
    // The queue carries x-dead-letter-exchange: re-declaring it with the
    // same argument is accepted, without it refused.
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(dlx.as_str().into()),
    );
    broker.try_declare(&queue, args).await.unwrap();
    assert!(
        broker
            .try_declare(&queue, FieldTable::default())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dead_letter_exchange_poison_is_counted_and_acknowledged() {
    let mut broker = Broker::connect().await;
    let queue = broker.queue_name("q");
    let exchange = broker.exchange_name("x");
    let (h, channel, mut client, _rules) = start(source(&queue, &[(&exchange, "#")])).await;
    assert!(
        broker
            .publish(&exchange, "orders.x", b"nope", BasicProperties::default())
            .await
    );
    broker
        .publish_json(&exchange, "orders.y", &order(&channel, 7))
        .await;
    let frames = client.notifications(1).await;
    assert_eq!(seqs(&frames), [7]);
    let rejected = h
        .wait_metric(
            "herald_events_rejected_total{source=\"amqp\",reason=\"invalid_json\"}",
            1.0,
        )
        .await;
    assert_eq!(rejected, 1.0);
    let dropped = h
        .wait_metric(
            "herald_amqp_poison_total{source=\"amqp\",outcome=\"dropped\"}",
            1.0,
        )
        .await;
    assert_eq!(dropped, 1.0);
    h.stop().await;
    assert_eq!(broker.ready(&queue).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_by_the_broker_is_reopened_and_nothing_is_lost() {
    let mut broker = Broker::connect().await;
    let queue = broker.queue_name("q");
    let exchange = broker.exchange_name("x");
    let relay = Relay::start().await;
    let mut amqp = source(&queue, &[(&exchange, "orders.*")]);
    amqp.url = relay.url();
    amqp.prefetch = 32;
    let (h, channel, mut client, _rules) = start(amqp).await;

    // Events keep flowing through the close (and 300 more after it). No
    // message id: redeliveries are recognised by the hash of exchange,
    // routing key and body.
    let closed = Arc::new(AtomicBool::new(false));
    let mut publisher = tokio::spawn({
        let (exchange, channel, closed) = (exchange.clone(), channel.clone(), closed.clone());
        async move {
            let broker = Broker::connect().await;
            let mut end = None;
            let mut seq = 0u64;
            while Some(seq) != end && seq < 20_000 {
                broker
                    .publish_json(&exchange, "orders.created", &order(&channel, seq))
                    .await;
                seq += 1;
                if seq.is_multiple_of(10) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                if end.is_none() && closed.load(Ordering::SeqCst) {
                    end = Some(seq + 300);
                }
            }
            seq
        }
    });
    let mut frames = client.notifications(100).await;
    // Hold herald's acks in the relay: what herald appends from now on is
    // still unacknowledged at the broker when it closes the connection, so
    // it comes back redelivered.
    relay.hold();
    frames.extend(read_until_quiet(&mut client, Duration::from_millis(500)).await);
    let queue_name = queue.clone();
    tokio::task::spawn_blocking(move || close_herald_connection(&queue_name))
        .await
        .unwrap();
    relay.sever().await;
    closed.store(true, Ordering::SeqCst);
    let mut n = None;
    while n != Some(frames.len() as u64) {
        tokio::select! {
            frame = client.next_of_type("notification") => frames.push(frame),
            published = &mut publisher, if n.is_none() => n = Some(published.unwrap()),
        }
    }
    let n = n.unwrap();
    assert_eq!(
        seqs(&frames),
        (0..n).collect::<Vec<_>>(),
        "every event exactly once, in order"
    );
    client.assert_quiet(Duration::from_millis(500)).await;
    let failures = h
        .wait_metric(
            "herald_amqp_connection_failures_total{source=\"amqp\"}",
            1.0,
        )
        .await;
    assert!(failures >= 1.0, "the close was noticed");
    let duplicates = h
        .wait_metric("herald_notifications_duplicate_total", 1.0)
        .await;
    assert!(
        duplicates >= 1.0,
        "the unacknowledged window came back and was deduplicated"
    );
    h.wait_ready(200, WAIT).await.unwrap();
    h.stop().await;
    assert_eq!(broker.ready(&queue).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_queue_is_declared_and_bound_again() {
    let mut broker = Broker::connect().await;
    let queue = broker.queue_name("q");
    let exchange = broker.exchange_name("x");
    let (h, channel, mut client, _rules) = start(source(&queue, &[(&exchange, "orders.*")])).await;
    broker
        .publish_json(&exchange, "orders.a", &order(&channel, 1))
        .await;
    assert_eq!(seqs(&client.notifications(1).await), [1]);

    let ch = broker.conn.create_channel().await.unwrap();
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    // Unroutable until herald has declared and bound the queue again.
    let body = order(&channel, 2).to_string();
    let deadline = Instant::now() + WAIT;
    while !broker
        .publish(
            &exchange,
            "orders.b",
            body.as_bytes(),
            BasicProperties::default(),
        )
        .await
    {
        assert!(
            Instant::now() < deadline,
            "the queue was never declared again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seqs(&client.notifications(1).await), [2]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_or_bad_credentials_is_not_ready_and_not_a_crash() {
    // Held, never listened on: connections are refused for the whole test.
    let closed = Reserved::new();
    let unreachable = AmqpSourceConfig::new(
        format!("amqp://guest:guest@{}/%2f", closed.addr()),
        unique("q"),
    );
    let mut bad_password = AmqpSourceConfig::new(amqp_url(), unique("q"));
    let mut url = url::Url::parse(&amqp_url()).unwrap();
    url.set_password(Some("not-the-password")).unwrap();
    bad_password.url = url.to_string();
    let h = Herald::start_with(|c| {
        c.sources = vec![
            SourceConfig::default_http(),
            SourceConfig::Amqp(unreachable),
            SourceConfig::Amqp(bad_password),
        ];
    })
    .await;
    let deadline = Instant::now() + WAIT;
    let body = loop {
        let (status, body) = h.get("/readyz").await;
        assert_eq!(status, 503, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        let failed = |name: &str| {
            body["sources"][name]["detail"]
                .as_str()
                .unwrap()
                .starts_with("disconnected")
        };
        if failed("amqp-1") && failed("amqp-2") {
            break body;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["sources"]["http"]["ready"], true, "{body}");
    assert!(!body.to_string().contains("not-the-password"), "{body}");
    // The rest of herald works: HTTP ingest, health.
    let channel = unique("c");
    let (mut client, _) = h.subscribe(&format!("channel={channel}")).await;
    h.publish("t", &json!({"channel": channel})).await;
    client.next_of_type("notification").await;
    assert_eq!(h.get("/healthz").await.0, 200);
    let failures = h
        .wait_metric(
            "herald_amqp_connection_failures_total{source=\"amqp-1\"}",
            1.0,
        )
        .await;
    assert!(failures >= 1.0);
    h.stop().await;
}

#[test]
fn a_malformed_url_is_a_configuration_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        "[[sources]]\nkind = \"amqp\"\nurl = \"http://guest:s3cret@127.0.0.1:5672/\"\nqueue = \"q\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("HERALD_SERVER__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("sources[0].url"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

/// Read notifications until none arrives for `quiet`.
async fn read_until_quiet(client: &mut Client, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(quiet, client.ws.next()).await {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "notification" {
                out.push(v);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_a_full_window_then_restart_delivers_every_event() {
    let mut broker = Broker::connect().await;
    let queue = broker.queue_name("q");
    let exchange = broker.exchange_name("x");
    let relay = Relay::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_file(&dir);
    let mut herald = Process::start(&format!(
        r#"
[rules]
path = "{}"
[[sources]]
kind = "amqp"
url = "{}"
queue = "{queue}"
prefetch = 64
bindings = [{{ exchange = "{exchange}", routing_key = "orders.*" }}]
"#,
        rules.display(),
        relay.url(),
    ));
    assert!(herald.wait_ready(200, WAIT).await, "{}", herald.log());
    let channel = unique("c");
    let mut first = Client::connect(&herald.ws_url(&format!("channel={channel}"))).await;
    first.next_of_type("subscribed").await;

    let n = 600u64;
    let publish = |range: std::ops::Range<u64>| {
        let broker = &broker;
        let (exchange, channel) = (&exchange, &channel);
        async move {
            for seq in range {
                let props = BasicProperties::default().with_message_id(format!("m-{seq}").into());
                let body = order(channel, seq).to_string();
                assert!(
                    broker
                        .publish(exchange, "orders.created", body.as_bytes(), props)
                        .await
                );
            }
        }
    };
    publish(0..300).await;
    let mut seen = first.notifications(50).await;
    // From now on herald's acks stay in the relay: the broker keeps up to
    // `prefetch` deliveries unacknowledged and sends nothing more.
    relay.hold();
    publish(300..n).await;
    seen.extend(read_until_quiet(&mut first, Duration::from_secs(1)).await);
    assert!(
        seen.len() < n as usize,
        "killed mid-stream ({} seen)",
        seen.len()
    );
    herald.kill9();
    relay.sever().await;

    herald.restart();
    // The memory store starts a new epoch: learn it, then replay from its
    // start so nothing appended before the subscription is missed.
    let (mut probe, position) = {
        let mut c = Client::connect(&herald.ws_url(&format!("channel={channel}"))).await;
        let s = c.next_of_type("subscribed").await;
        (c, s["position"].as_str().unwrap().to_string())
    };
    probe.ws.close(None).await.ok();
    let epoch = position.rsplit_once('-').unwrap().0;
    let mut second =
        Client::connect(&herald.ws_url(&format!("channel={channel}&last_id={epoch}-0"))).await;
    let mut all: BTreeSet<u64> = seqs(&seen).into_iter().collect();
    let mut redelivered = 0;
    let deadline = Instant::now() + WAIT;
    while all.len() < n as usize {
        assert!(
            Instant::now() < deadline,
            "missing after restart: {:?}",
            (0..n)
                .filter(|s| !all.contains(s))
                .take(20)
                .collect::<Vec<_>>()
        );
        let frame = second.frame().await;
        if frame["type"] == "notification" {
            all.insert(frame["data"]["seq"].as_u64().unwrap());
            redelivered += usize::from(frame["data"]["redelivered"] == true);
        }
    }
    assert!(redelivered > 0, "the unacknowledged window came back");
    assert!(herald.wait_ready(200, WAIT).await);
    herald.stop();
    assert_eq!(broker.ready(&queue).await, 0, "nothing left unacknowledged");
}
