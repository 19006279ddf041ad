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

use common::amqp::{Created, amqp_url, source_toml};
use common::crash::{Scenario, kill_9_during};
use common::process::Process;
use common::producers::AmqpProducer;
use common::unique;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};

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
            source_toml(&amqp_url(), &queue, &exchange, "crash.#", 300),
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
    let report = kill_9_during(&mut herald, &Scenario::brokers(), producer, &[0.25, 0.6]).await;
    eprintln!(
        "client reconnects {}, duplicates dropped after the last restart {}",
        report.reconnects(),
        herald.metric("herald_notifications_duplicate_total").await
    );
    herald.stop();
    let _ = conn.close(200, "done".into()).await;
}
