//! Consumer-only throughput of the RabbitMQ source: RabbitMQ → rules →
//! memory store, no WebSocket clients.
//!
//!   cargo bench --bench amqp_ingest -- [EVENTS] [RUNS] [PREFETCH]
//!
//! Defaults: 100000 events, 3 runs, prefetch 256, broker at `AMQP_URL`
//! (default `amqp://guest:guest@127.0.0.1:5672/%2f`). Each run:
//! 1. declares a fresh durable queue bound to a fresh topic exchange and
//!    publishes EVENTS small JSON events to it (publisher confirms);
//! 2. starts herald in this process on 127.0.0.1:0 with that queue as its
//!    only source, the built-in rule (one notification per event, 100
//!    channels) and the memory store;
//! 3. polls `/metrics` every 20 ms; the rate is counted from the first poll
//!    that sees `herald_events_total{source="amqp"}` above 0 to the first
//!    that sees it at EVENTS (so connecting and declaring are not counted);
//! 4. stops herald, checks the queue is empty, deletes queue and exchange.
//!
//! Prints each run and the median with the spread. The broker, herald and
//! this process share the machine's cores: say so next to the figure.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use herald::config::Config;
use herald::source::SourceConfig;
use herald::source::amqp::{AmqpBinding, AmqpSourceConfig};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .filter(|a| !a.starts_with("--"))
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let events = arg(1, 100_000);
    let runs = arg(2, 3);
    let prefetch = arg(3, 256) as u16;
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    println!("amqp_ingest: {events} events, {runs} runs, prefetch {prefetch}, {url}");
    let mut rates = Vec::new();
    for run in 1..=runs {
        let rate = one_run(&url, events, prefetch).await;
        println!("run {run}: {rate:.0} events/s");
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!(
        "median {median:.0} events/s (min {:.0}, max {:.0}, {} runs)",
        rates[0],
        rates[rates.len() - 1],
        rates.len()
    );
}

async fn one_run(url: &str, events: u64, prefetch: u16) -> f64 {
    let tag = format!("{:08x}", fastrand::u32(..));
    let queue = format!("bench-q-{tag}");
    let exchange = format!("bench-x-{tag}");
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ at AMQP_URL");
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let published = Instant::now();
    for seq in 0..events {
        let body = format!(
            r#"{{"type":"bench.tick","channel":"bench:{}","seq":{seq},"title":"tick {seq}"}}"#,
            seq % 100
        );
        // Confirms are awaited once at the end, so publishing pipelines.
        let _confirm = ch
            .basic_publish(
                exchange.as_str().into(),
                "bench.tick".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap();
    }
    ch.wait_for_confirms().await.unwrap();
    eprintln!(
        "  published {events} in {:.1} s",
        published.elapsed().as_secs_f64()
    );

    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    let mut amqp = AmqpSourceConfig::new(url, queue.as_str());
    amqp.prefetch = prefetch;
    amqp.bindings.push(AmqpBinding {
        exchange: exchange.clone(),
        routing_key: "#".into(),
    });
    config.sources = vec![SourceConfig::Amqp(amqp)];
    let running = herald::app::start(config).await.unwrap();
    let metrics = format!("http://{}/metrics", running.local_addr());
    let http = reqwest::Client::new();
    let mut first: Option<(Instant, u64)> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    let rate = loop {
        let text = http
            .get(&metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let now = Instant::now();
        let count = text
            .lines()
            .find(|l| l.starts_with("herald_events_total{source=\"amqp\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        match first {
            None if count > 0 => first = Some((now, count)),
            Some((t0, c0)) if count >= events => {
                break (count - c0) as f64 / (now - t0).as_secs_f64();
            }
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "herald stalled at {count} events"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    running.shutdown().await;
    let left = ch
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count();
    assert_eq!(left, 0, "every event acknowledged");
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    let _ = conn.close(200, "done".into()).await;
    rate
}
