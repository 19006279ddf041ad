//! The RabbitMQ source with the disk store, herald a separate process
//! killed with SIGKILL mid-stream and restarted on the same store: the
//! broker requeues every unacknowledged delivery, the store's dedupe keys
//! (kept on disk, rooted in `message_id`) recognise what was already
//! appended, and every client sees every event exactly once
//! (tests/common/crash.rs checks).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::amqp::{Created, Relay, amqp_url, source_toml};
use common::crash::{Run, Scenario};
use common::process::Process;
use common::producers::AmqpProducer;
use common::unique;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};

/// Appends herald makes after its acknowledgements are held, before each
/// kill: they are in the log but unacknowledged at the broker.
const HELD: f64 = 20.0;

/// Before each kill, herald's acknowledgements are held in a relay and
/// herald appends at least [`HELD`] more deliveries: the broker redelivers
/// them after the restart, and the last run must find every one of them
/// in the log (`herald_notifications_duplicate_total`). Fails when a
/// redelivery is appended again (a dedupe key not rooted in `message_id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_twice_mid_stream_loses_nothing_and_duplicates_nothing() {
    // Declared first so it is dropped last: herald is killed before the
    // queue and exchange are deleted.
    let mut created = Created::default();
    let exchange = unique("x-crash");
    let queue = unique("q-crash");
    created.exchanges.push(exchange.clone());
    created.queues.push(queue.clone());
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ answers at AMQP_URL (scripts/test.sh starts one)");
    conn.create_channel()
        .await
        .unwrap()
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let relay = Relay::start().await;
    let mut herald = Process::start_with(|dir| {
        format!(
            r#"
[store]
kind = "disk"
path = {:?}
[delivery]
queue_capacity = 4096
{}"#,
            dir.join("log").display().to_string(),
            source_toml(&relay.url(), &queue, &exchange, "crash.#", 300),
        )
    });
    // Ready once the queue is declared and bound: nothing published from
    // now on is unroutable.
    assert!(
        herald.wait_ready(200, Duration::from_secs(30)).await,
        "{}",
        herald.log()
    );
    let producer = Arc::new(AmqpProducer::connect(&amqp_url(), &exchange, "crash.event").await);
    let scenario = Scenario::brokers();
    let ws = format!("ws://127.0.0.1:{}/notifications", herald.port);
    let run = Run::start(&scenario, &unique("user"), producer, vec![ws]).await;
    let appended = "herald_notifications_appended_total";
    for fraction in [0.25, 0.6] {
        run.wait_received(fraction).await;
        // Read before the hold: herald appends a whole prefetch window in a
        // few milliseconds, faster than a scrape that follows the hold.
        let before = herald.metric(appended).await;
        relay.hold();
        // From now on the broker sees no acknowledgement: it delivers until
        // `prefetch` deliveries are outstanding, herald appends them, and
        // then nothing moves. Those are the held appends.
        let now = wait_steady(&herald, appended, before + HELD).await;
        assert!(
            now >= before + HELD,
            "herald appended {} events after its acknowledgements were held, \
             fewer than {HELD}:\n{}",
            now - before,
            herald.log()
        );
        herald.kill9();
        relay.sever().await;
        herald.restart();
    }
    let report = run.finish().await;
    report.assert_exactly_once(&herald.log());
    assert_eq!(report.produced, scenario.total());
    let duplicates = herald.metric("herald_notifications_duplicate_total").await;
    eprintln!(
        "client reconnects {}, duplicates dropped after the last restart {duplicates}",
        report.reconnects(),
    );
    assert!(
        duplicates >= HELD,
        "every appended but unacknowledged delivery came back and was recognised"
    );
    herald.stop();
    let _ = conn.close(200, "done".into()).await;
}

/// The value of `series` once it is at least `floor` and has not moved for
/// half a second (bounded at 30 s).
async fn wait_steady(herald: &Process, series: &str, floor: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = herald.metric(series).await;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = herald.metric(series).await;
        if (now == last && now >= floor) || tokio::time::Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}
