//! The Kafka source with the disk store, herald a separate process killed
//! with SIGKILL mid-stream and restarted on the same store and group: the
//! broker redelivers what was not committed, the store's dedupe keys
//! (kept on disk) recognise it, and every client sees every event exactly
//! once (tests/common/crash.rs checks).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::crash::{Scenario, kill_9_during};
use common::kafka::{self, Kafka};
use common::process::Process;
use common::producers::KafkaProducer;
use common::unique;

const PARTITIONS: i32 = 3;
/// After each batch of 10 events per channel: about 15 s of production.
const PACE: Duration = Duration::from_millis(300);

/// A herald process on `topic` with a disk store in its own directory.
fn start(source: &herald::source::kafka::KafkaSourceConfig) -> Process {
    Process::start_with(|dir| {
        format!(
            "[store]\nkind = \"disk\"\npath = {:?}\n[delivery]\nqueue_capacity = 4096\n{}",
            dir.join("log").display().to_string(),
            kafka::source_toml(source)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_twice_mid_stream_loses_nothing_and_duplicates_nothing() {
    let kafka = Kafka::shared();
    let topic = kafka.topic("durable", PARTITIONS).await;
    let mut source = kafka::source(&kafka.brokers, &[&topic], &unique("g"));
    // Commits every second rather than every 5 s: each run commits before
    // it is killed, and what comes back is about the last second's tail.
    source
        .properties
        .insert("auto.commit.interval.ms".into(), "1000".into());
    let mut herald = start(&source);
    assert!(
        herald.wait_ready(200, Duration::from_secs(30)).await,
        "herald joined its group:\n{}",
        herald.log()
    );
    let producer = Arc::new(KafkaProducer::new(&kafka.brokers, &topic, PARTITIONS).paced(PACE));
    let report = kill_9_during(&mut herald, &Scenario::brokers(), producer, &[0.25, 0.6]).await;
    // The last run consumed again what the second kill left uncommitted
    // and appended none of it twice.
    let duplicates = herald.metric("herald_notifications_duplicate_total").await;
    eprintln!(
        "client reconnects {}, duplicates dropped after the last restart {duplicates}",
        report.reconnects()
    );
    assert!(
        duplicates > 0.0,
        "the broker redelivered the uncommitted tail"
    );
    herald.stop();
}
