//! The Redis store: several herald nodes sharing one Redis, Redis restarts
//! and outages, order across appends failed by dropped connections (Kafka
//! and RabbitMQ sources), and a Redis that lost its data. The shared Redis
//! of the machine (nothing on disk) serves tests that only need a Redis,
//! each under its own key prefix; tests that restart Redis or drop its
//! connections start their own.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::amqp::{Created, amqp_url, source_toml};
use common::crash::{HttpProducer, Run, Scenario};
use common::kafka::{self, Kafka};
use common::process::Process;
use common::producers::{AmqpProducer, KafkaProducer};
use common::redis_server::{self, Prefix, RedisServer, SHARED_URL};
use common::{Herald, epoch_of, offsets, unique};
use herald::config::StoreKind;
use serde_json::{Value, json};

async fn node(url: &str, prefix: &str, edit: impl FnOnce(&mut herald::config::Config)) -> Herald {
    let (url, prefix) = (url.to_string(), prefix.to_string());
    Herald::start_with(move |c| {
        c.store.kind = StoreKind::Redis;
        c.store.url = Some(url);
        c.store.key_prefix = Some(prefix);
        c.delivery.queue_capacity = 4096;
        edit(c);
    })
    .await
}

fn event(channel: &str, n: usize) -> Value {
    json!({"channel": channel, "title": format!("n{n}")})
}

/// POST until 202 (503 while the store is unavailable), within 20 s.
async fn publish_retrying(h: &Herald, channel: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, answer) = h.post("t", &event(channel, n)).await;
        if status == 202 {
            return;
        }
        assert_eq!(status, 503, "{answer}");
        assert!(Instant::now() < deadline, "still 503: {answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn two_nodes_share_one_log_and_a_client_moves_between_them() {
    let prefix = Prefix::shared();
    let a = node(SHARED_URL, &prefix, |_| {}).await;
    let b = node(SHARED_URL, &prefix, |_| {}).await;
    let channel = unique("user");
    let query = format!("channel={channel}");
    let (mut on_a, sub_a) = a.subscribe(&query).await;
    let (mut on_b, sub_b) = b.subscribe(&query).await;
    assert_eq!(
        sub_a["position"], sub_b["position"],
        "one epoch for both nodes"
    );

    // Posted to A, seen on both, exactly once each.
    for n in 0..3 {
        a.publish("t", &event(&channel, n)).await;
    }
    let from_b = on_b.notifications(3).await;
    let from_a = on_a.notifications(3).await;
    assert_eq!(offsets(&from_b), [1, 2, 3]);
    assert_eq!(from_a, from_b, "the same frames on every node");
    on_a.assert_quiet(Duration::from_millis(300)).await;

    // The client on A leaves after 3; 4 more arrive through B; it comes
    // back on B with its last id and gets exactly those, then live.
    let last = from_a[2]["id"].as_str().unwrap().to_string();
    drop(on_a);
    for n in 3..7 {
        b.publish("t", &event(&channel, n)).await;
    }
    let mut moved = b
        .connect(&format!("channel={channel}&last_id={last}"))
        .await;
    let replayed = moved.notifications(4).await;
    assert_eq!(offsets(&replayed), [4, 5, 6, 7]);
    let subscribed = moved.next_of_type("subscribed").await;
    assert_eq!(subscribed["recovered"], true);
    assert_eq!(subscribed["replayed"], 4);
    a.publish("t", &event(&channel, 7)).await;
    assert_eq!(moved.next_of_type("notification").await["offset"], 8);
    assert_eq!(offsets(&on_b.notifications(5).await), [4, 5, 6, 7, 8]);

    // A redelivered event is a duplicate on every node: appended through
    // A, recognised through B. Fails if B appends it again.
    let client = reqwest::Client::new();
    let mut answers = Vec::new();
    for h in [&a, &b] {
        let res = client
            .post(format!("{}/events/t", h.base))
            .header("idempotency-key", "same")
            .json(&event(&channel, 99))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 202);
        answers.push(res.json::<Value>().await.unwrap());
    }
    assert_eq!(
        answers,
        [
            json!({"events": 1, "notifications": 1, "duplicates": 0, "failed_rules": 0,
                   "request_id": "same"}),
            json!({"events": 1, "notifications": 0, "duplicates": 1, "failed_rules": 0,
                   "request_id": "same"}),
        ]
    );
    assert_eq!(
        b.metric("herald_notifications_duplicate_total").await,
        1.0,
        "{}",
        b.metrics().await
    );
    assert_eq!(moved.next_of_type("notification").await["offset"], 9);
    moved.assert_quiet(Duration::from_millis(300)).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_kill_9_one_mid_stream_and_clients_fail_over() {
    let prefix = Prefix::shared();
    let config = format!(
        "[store]\nkind = \"redis\"\nurl = \"{SHARED_URL}\"\nkey_prefix = \"{prefix}\"\n[delivery]\nqueue_capacity = 4096\n"
    );
    let mut a = Process::start(&config);
    let mut b = Process::start(&config);
    let producer = Arc::new(HttpProducer::new(vec![a.base(), b.base()]));
    let scenario = Scenario {
        channels: 4,
        per_channel: 500,
        batch: 5,
        within: Duration::from_secs(120),
    };
    let ws = |p: &Process| format!("ws://127.0.0.1:{}/notifications", p.port);
    let run = Run::start(
        &scenario,
        &unique("user"),
        producer.clone(),
        vec![ws(&a), ws(&b)],
    )
    .await;
    run.wait_produced(0.25).await;
    a.kill9();
    run.wait_produced(0.5).await;
    a.restart();
    run.wait_produced(0.75).await;
    b.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.restart();
    let report = run.finish().await;
    report.assert_exactly_once(&format!("{}\n--- node b ---\n{}", a.log(), b.log()));
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_nothing_acknowledged() {
    let mut redis = RedisServer::start(true);
    let prefix = redis_server::prefix();
    let h = node(&redis.url(), &prefix, |_| {}).await;
    let producer = Arc::new(HttpProducer::new(vec![h.base.clone()]));
    let scenario = Scenario {
        channels: 3,
        per_channel: 400,
        batch: 4,
        within: Duration::from_secs(120),
    };
    let run = Run::start(
        &scenario,
        &unique("user"),
        producer.clone(),
        vec![h.ws_url("").trim_end_matches('?').to_string()],
    )
    .await;
    for fraction in [0.3, 0.7] {
        run.wait_produced(fraction).await;
        redis.kill9();
        tokio::time::sleep(Duration::from_millis(500)).await;
        redis.restart();
    }
    let report = run.finish().await;
    let (_, metrics) = h.get("/metrics").await;
    report.assert_exactly_once(&metrics);
    assert!(
        producer.retries.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the outage was seen by the producer"
    );
    assert!(
        metrics.contains(r#"herald_store_errors_total{op="feed"}"#),
        "{metrics}"
    );
    h.stop().await;
}

/// `CLIENT KILL` every client connection of `redis` (herald's) whenever
/// herald is appending, until the clients received 90 % of `total` or
/// after 40 kills; returns the kills.
async fn drop_connections_while_appending<F: std::future::Future<Output = f64>>(
    redis: &RedisServer,
    run: &Run,
    total: usize,
    appended: impl Fn() -> F,
) -> usize {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut kills = 0;
    while run.received() < total * 9 / 10 && kills < 40 {
        let before = appended().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if appended().await > before {
            redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("normal")
                .arg("SKIPME")
                .arg("yes")
                .query_async::<i64>(&mut conn)
                .await
                .unwrap();
            kills += 1;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    kills
}

/// Finish `run` after `kills` dropped connections: every event of
/// `scenario` produced, received exactly once and in order (`context`,
/// read after the run, explains a failure).
async fn finish_in_order(
    run: Run,
    scenario: &Scenario,
    kills: usize,
    context: impl std::future::Future<Output = String>,
) {
    let report = run.finish().await;
    report.assert_exactly_once(&context.await);
    assert_eq!(report.produced, scenario.total());
    assert!(kills >= 5, "only {kills} connection drops mid-stream");
}

/// Redis drops herald's connections now and then (`CLIENT KILL`) while
/// the Kafka partitions keep many appends in flight: the group on the wire
/// fails, and the connection comes back at once. The partition's appends
/// queued or submitted after the failure, before its worker saw it, must
/// fail too (the partition's fence), or they would commit on the new
/// connection ahead of the failed ones the worker retries: every channel
/// keeps its partition's order, nothing lost or twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dropping_connections_mid_append_keeps_each_partitions_order() {
    const PARTITIONS: i32 = 2;
    let redis = RedisServer::start(false);
    let kafka = Kafka::shared();
    let topic = kafka.topic("dropping", PARTITIONS).await;
    let mut source = kafka::source(&kafka.brokers, &[&topic], &unique("g"));
    source.max_in_flight = Some(256);
    let prefix = redis_server::prefix();
    let h = node(&redis.url(), &prefix, |c| {
        c.sources = vec![kafka::kafka_source(source)];
    })
    .await;
    let scenario = Scenario {
        channels: 6,
        per_channel: 1500,
        batch: 50,
        within: Duration::from_secs(150),
    };
    let producer = Arc::new(KafkaProducer::new(&kafka.brokers, &topic, PARTITIONS));
    let run = Run::start(
        &scenario,
        &unique("user"),
        producer,
        vec![h.ws_url("").trim_end_matches('?').to_string()],
    )
    .await;
    let kills = drop_connections_while_appending(&redis, &run, scenario.total(), || {
        h.metric("herald_notifications_appended_total")
    })
    .await;
    finish_in_order(run, &scenario, kills, async { h.get("/metrics").await.1 }).await;
    let (_, metrics) = h.get("/metrics").await;
    assert!(
        common::metric_value(
            &metrics,
            r#"herald_source_errors_total{source="kafka",error="store"}"#
        ) > 0.0,
        "the partitions retried: {metrics}"
    );
    h.stop().await;
}

/// The same with a RabbitMQ queue (prefetch 300): after a failed append
/// the consume session's later appends fail too, herald closes the
/// connection, and the broker requeues them behind the failed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dropping_connections_keeps_the_queues_order() {
    let mut created = Created::default();
    let exchange = unique("x-dropping");
    let queue = unique("q-dropping");
    created.exchanges.push(exchange.clone());
    created.queues.push(queue.clone());
    let redis = RedisServer::start(false);
    let prefix = redis_server::prefix();
    let mut herald = Process::start(&format!(
        r#"
[store]
kind = "redis"
url = "{}"
key_prefix = "{prefix}"
[delivery]
queue_capacity = 4096
{}"#,
        redis.url(),
        source_toml(&amqp_url(), &queue, &exchange, "dropping.#", 300),
    ));
    assert!(
        herald.wait_ready(200, Duration::from_secs(30)).await,
        "{}",
        herald.log()
    );
    let scenario = Scenario {
        channels: 6,
        per_channel: 1000,
        batch: 50,
        within: Duration::from_secs(150),
    };
    let producer = Arc::new(AmqpProducer::connect(&amqp_url(), &exchange, "dropping.event").await);
    let run = Run::start(
        &scenario,
        &unique("user"),
        producer,
        vec![herald.ws_url("").trim_end_matches('?').to_string()],
    )
    .await;
    let kills = drop_connections_while_appending(&redis, &run, scenario.total(), || {
        herald.metric("herald_notifications_appended_total")
    })
    .await;
    finish_in_order(run, &scenario, kills, async { herald.log() }).await;
    assert!(
        herald
            .metric(r#"herald_store_errors_total{op="append"}"#)
            .await
            > 0.0,
        "appends failed"
    );
    herald.stop();
}

#[tokio::test]
async fn a_redis_that_lost_its_data_gives_a_new_epoch_never_a_silent_gap() {
    let mut redis = RedisServer::start(false);
    let prefix = redis_server::prefix();
    let h = node(&redis.url(), &prefix, |_| {}).await;
    let channel = unique("user");
    let (mut live, _) = h.subscribe(&format!("channel={channel}")).await;
    for n in 0..3 {
        h.publish("t", &event(&channel, n)).await;
    }
    let before = live.notifications(3).await;
    let old_last = before[2]["id"].as_str().unwrap().to_string();

    redis.kill9();
    redis.restart();
    publish_retrying(&h, &channel, 3).await;
    // The live session is told before the first notification of the new
    // history, and its offsets start again at 1.
    let announced = live.next_of_type("subscribed").await;
    assert_eq!(announced["recovered"], false, "{announced}");
    let next = live.next_of_type("notification").await;
    assert_ne!(next["epoch"], before[0]["epoch"]);
    assert_eq!(next["offset"], 1);
    assert_eq!(
        announced["position"],
        format!("{}-0", next["epoch"].as_str().unwrap())
    );
    // A client resuming with an id of the lost history gets no replay and
    // recovered: false, then the new history live.
    let (mut resumed, subscribed) = h
        .subscribe(&format!("channel={channel}&last_id={old_last}"))
        .await;
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    assert_eq!(
        epoch_of(subscribed["position"].as_str().unwrap()),
        next["epoch"].as_str().unwrap()
    );
    h.publish("t", &event(&channel, 4)).await;
    assert_eq!(resumed.next_of_type("notification").await["offset"], 2);
    h.stop().await;
}

#[tokio::test]
async fn while_redis_is_down_appends_fail_and_resume_when_it_is_back() {
    let mut redis = RedisServer::start(true);
    redis.kill9();
    let prefix = redis_server::prefix();
    // Herald starts without Redis and says 503 until Redis is there.
    let h = node(&redis.url(), &prefix, |_| {}).await;
    let channel = unique("user");
    let (status, answer) = h.post("t", &event(&channel, 0)).await;
    assert_eq!(status, 503, "{answer}");
    // What to do, not the store's internals (those are in the log).
    assert_eq!(
        answer["error"], "the log is unavailable; retry later",
        "{answer}"
    );
    redis.restart();
    publish_retrying(&h, &channel, 1).await;
    // Reads wait for the live feed to reconnect too: `unavailable` until then.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut client, subscribed) = loop {
        let mut client = h.connect(&format!("channel={channel}")).await;
        let frame = client.frame().await;
        if frame["type"] == "subscribed" {
            break (client, frame);
        }
        assert_eq!(frame["code"], "unavailable", "{frame}");
        assert!(Instant::now() < deadline, "the feed did not reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(epoch_of(subscribed["position"].as_str().unwrap()).len(), 16);
    assert!(
        subscribed["position"].as_str().unwrap().ends_with("-1"),
        "only the acknowledged event: {subscribed}"
    );
    h.publish("t", &event(&channel, 2)).await;
    assert_eq!(client.next_of_type("notification").await["offset"], 2);
    h.stop().await;
}

/// `/readyz` includes the store: 503 naming Redis while it is down (at
/// start too: herald listens without waiting for Redis and says why it is
/// not ready), 200 once it is back. No bound on the start-up time here (a
/// loaded machine would make it flaky): that herald answers at all with
/// Redis refused is the point.
/// Mutation: `RedisStore::readiness` always `Ok` fails the first 503.
#[tokio::test]
async fn readiness_follows_redis_from_start_through_an_outage() {
    let mut redis = RedisServer::start(true);
    redis.kill9();
    let prefix = redis_server::prefix();
    let h = node(&redis.url(), &prefix, |_| {}).await;
    let (status, body) = h.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["store"]["ready"], false, "{body}");
    let detail = body["store"]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("127.0.0.1:{}", redis.port)),
        "{body}"
    );
    assert_eq!(body["sources"]["http"]["ready"], true, "{body}");

    redis.restart();
    h.wait_ready(200, Duration::from_secs(20)).await.unwrap();
    redis.kill9();
    let body = h.wait_ready(503, Duration::from_secs(20)).await.unwrap();
    assert!(body.contains("\"store\":{\"detail\""), "{body}");
    redis.restart();
    let body = h.wait_ready(200, Duration::from_secs(20)).await.unwrap();
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["store"], json!({"ready": true}));
    h.stop().await;
    redis_server::cleanup(&redis.url(), &prefix).await;
}

/// herald reads `appendonly` / `appendfsync` at start and warns once when
/// Redis can lose what herald acknowledged, naming the settings; it starts
/// either way, also against a Redis that refuses CONFIG.
#[tokio::test]
async fn redis_persistence_settings_are_checked_at_start() {
    let warning = "redis may lose notifications herald acknowledged";
    let cases = [
        (RedisServer::start(false), Some("appendonly=\"no\"")),
        (RedisServer::start(true), None),
        (
            RedisServer::start_with(true, &["--rename-command", "CONFIG", "hidden-config"]),
            None,
        ),
    ];
    for (i, (redis, warned)) in cases.iter().enumerate() {
        let prefix = redis_server::prefix();
        let mut p = Process::start(&format!(
            "[store]\nkind = \"redis\"\nurl = \"{}\"\nkey_prefix = \"{prefix}\"\n",
            redis.url()
        ));
        // Ready only after the check (it runs before the feed follows).
        assert!(
            p.wait_ready(200, Duration::from_secs(20)).await,
            "{}",
            p.log()
        );
        let log = p.log();
        let warnings = log.lines().filter(|l| l.contains(warning)).count();
        match warned {
            Some(setting) => {
                assert_eq!(warnings, 1, "case {i}: {log}");
                let line = log.lines().find(|l| l.contains(warning)).unwrap();
                assert!(line.contains(setting), "{line}");
                assert!(line.contains("appendfsync="), "{line}");
                assert!(line.contains("at_risk="), "{line}");
            }
            None => assert_eq!(warnings, 0, "case {i}: {log}"),
        }
        if i == 2 {
            assert!(
                log.contains("cannot read the redis persistence settings"),
                "{log}"
            );
        }
        p.stop();
        redis_server::cleanup(&redis.url(), &prefix).await;
    }
}

#[tokio::test]
async fn retention_by_count_in_redis() {
    let prefix = Prefix::shared();
    // No retention by age: it cannot trim anything while the count is
    // checked.
    let h = node(SHARED_URL, &prefix, |c| {
        c.store.max_per_channel = 5;
        c.store.max_age_secs = 0;
    })
    .await;
    let channel = unique("user");
    for n in 0..8 {
        h.publish("t", &event(&channel, n)).await;
    }
    let (_, head) = h.subscribe(&format!("channel={channel}")).await;
    let epoch = epoch_of(head["position"].as_str().unwrap());
    let mut exact = h
        .connect(&format!("channel={channel}&last_id={epoch}-3"))
        .await;
    assert_eq!(offsets(&exact.notifications(5).await), [4, 5, 6, 7, 8]);
    assert_eq!(exact.next_of_type("subscribed").await["recovered"], true);
    let (_, gap) = h
        .subscribe(&format!("channel={channel}&last_id={epoch}-2"))
        .await;
    assert_eq!(gap["recovered"], false, "offset 3 was trimmed by count");
    assert_eq!(gap["position"], format!("{epoch}-8"));
    h.stop().await;
}

/// Retention by age trims in the background (every second with a 1 s
/// limit): within a few passes nothing is left to replay, and the trimmed
/// notifications are counted. Fails if the pass never runs or does not
/// count what it removes.
#[tokio::test]
async fn retention_by_age_in_redis() {
    let prefix = Prefix::shared();
    let h = node(SHARED_URL, &prefix, |c| c.store.max_age_secs = 1).await;
    let channel = unique("user");
    for n in 0..3 {
        h.publish("t", &event(&channel, n)).await;
    }
    let (_, head) = h.subscribe(&format!("channel={channel}")).await;
    let epoch = epoch_of(head["position"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut c = h
            .connect(&format!("channel={channel}&last_id={epoch}-0"))
            .await;
        let first = c.frame().await;
        if first["type"] == "subscribed" && first["recovered"] == false {
            assert_eq!(first["position"], format!("{epoch}-3"));
            break;
        }
        assert!(Instant::now() < deadline, "nothing expired: {first}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(h.wait_metric("herald_store_trimmed_total", 3.0).await, 3.0);
    h.stop().await;
}

/// A live notification with a hole before it (the live feed missed one)
/// is filled from the log; when the log cannot be read either, the session
/// is closed with 1011 so the client resumes later with its last id,
/// rather than skipping the hole. Both faults are made in a Redis of the
/// test's own: with the feed's XREAD denied (ACL) and its connections
/// dropped, a notification is appended and its feed entry removed; then
/// XREAD is allowed again and XRANGE (what reads use) denied, and the next
/// notification arrives with the hole. Fails if herald skips the hole, or
/// closes with another code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_the_log_cannot_fill_closes_the_session_with_1011() {
    let redis = RedisServer::start(false);
    let prefix = redis_server::prefix();
    let h = node(&redis.url(), &prefix, |_| {}).await;
    let channel = unique("user");
    let (mut client, _) = h.subscribe(&format!("channel={channel}")).await;
    h.publish("t", &event(&channel, 0)).await;
    assert_eq!(client.next_of_type("notification").await["offset"], 1);

    let admin = redis::Client::open(redis.url()).unwrap();
    let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
    let acl = |rule: &'static str| {
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg(rule)
            .clone()
    };
    let _: () = acl("-xread").query_async(&mut admin).await.unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"][..])
        .query_async(&mut admin)
        .await
        .unwrap();
    // Appended (the command connection comes back by itself), never read
    // by the feed: its entry is gone before the feed may read again.
    publish_retrying(&h, &channel, 1).await;
    let _: i64 = redis::cmd("XTRIM")
        .arg(format!("{prefix}notify"))
        .arg(&["MAXLEN", "0"][..])
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: () = acl("+xread").query_async(&mut admin).await.unwrap();
    let _: () = acl("-xrange").query_async(&mut admin).await.unwrap();
    h.publish("t", &event(&channel, 2)).await;

    assert_eq!(client.close_code().await, Some(1011));
    assert_eq!(
        h.wait_metric(
            r#"herald_sessions_closed_total{reason="internal_error"}"#,
            1.0
        )
        .await,
        1.0
    );
    assert!(h.metric(r#"herald_store_errors_total{op="read"}"#).await >= 1.0);
    h.stop().await;
}

/// The attack of docs/security.md: subscribing to (and reading the history
/// of) channels nobody writes to, to fill Redis. Catches a read script that
/// creates a channel's keys: the scan would list a `ch:` key per channel.
/// A position read from such a channel still resumes once the channel is
/// created (its epoch is the fresh one the read answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_and_subscribing_to_missing_channels_writes_no_keys() {
    let prefix = Prefix::shared();
    let h = node(SHARED_URL, &prefix, |_| {}).await;
    let before = redis_server::keys(SHARED_URL, &prefix).await;
    assert!(!before.iter().any(|k| k.contains(":ch:")), "{before:?}");
    let mut positions = Vec::new();
    for i in 0..50 {
        let channel = format!("{}-{i}", unique("nobody"));
        let (client, subscribed) = h.subscribe(&format!("channel={channel}")).await;
        drop(client);
        let (status, body) = h.get(&format!("/channels/{channel}/notifications")).await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = h
            .get(&format!(
                "/channels/{channel}/notifications?before={}",
                subscribed["position"].as_str().unwrap()
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        positions.push((
            channel,
            subscribed["position"].as_str().unwrap().to_string(),
        ));
    }
    let after = redis_server::keys(SHARED_URL, &prefix).await;
    assert_eq!(after, before, "reads wrote keys");

    // A channel takes the epoch its reads answered, whichever is created
    // first: a client that saw `<epoch>-0` resumes with everything.
    let (channel, position) = &positions[7];
    h.publish("t", &event(&positions[3].0, 0)).await;
    h.publish("t", &event(channel, 0)).await;
    h.publish("t", &event(channel, 1)).await;
    let mut resumed = h
        .connect(&format!("channel={channel}&last_id={position}"))
        .await;
    assert_eq!(offsets(&resumed.notifications(2).await), [1, 2]);
    let subscribed = resumed.next_of_type("subscribed").await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    assert_eq!(subscribed["replayed"], 2, "{subscribed}");
    let keys = redis_server::keys(SHARED_URL, &prefix).await;
    let channel_keys: Vec<_> = keys.iter().filter(|k| k.contains(":ch:")).collect();
    assert_eq!(
        channel_keys.len(),
        6,
        "meta, log, dedupe of two channels: {keys:?}"
    );
    h.stop().await;
}
