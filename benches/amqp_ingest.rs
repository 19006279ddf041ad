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
//! 4. stops herald, checks the queue is empty, deletes queue and exchange;
//! 5. the peer: the same EVENTS published again to a fresh queue, consumed
//!    by a bare lapin consumer (same prefetch, one `multiple` ack per batch
//!    of deliveries already received, no parsing, no rules, no store): the
//!    broker's delivery ceiling on this machine, measured in the same run.
//!
//! Prints each run (events/s for herald and the peer and their ratio, the
//! CPU time herald's process and, when the broker runs here, RabbitMQ's
//! `beam.smp` spent per event, and how many deliveries one `basic.ack`
//! covered) and the medians with the spread. The broker, herald and this
//! process share the machine's cores: say so next to the figure.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use herald::config::Config;
use herald::source::SourceConfig;
use herald::source::amqp::{AmqpBinding, AmqpSourceConfig};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
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
    let (mut rates, mut peers, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let r = one_run(&url, events, prefetch).await;
        let peer = peer_run(&url, events, prefetch).await;
        println!(
            "run {run}: herald {:.0} events/s, bare lapin consumer {peer:.0}/s (ratio {:.2}); \
             CPU per event: herald {:.1} µs, broker {}; {:.1} deliveries per ack",
            r.rate,
            r.rate / peer,
            r.herald_cpu_us,
            r.broker_cpu_us
                .map_or("n/a".to_string(), |us| format!("{us:.1} µs")),
            r.per_ack
        );
        rates.push(r.rate);
        peers.push(peer);
        ratios.push(r.rate / peer);
    }
    for (what, values) in [
        ("herald events/s", &mut rates),
        ("peer events/s", &mut peers),
        ("ratio", &mut ratios),
    ] {
        values.sort_by(f64::total_cmp);
        println!(
            "{what}: median {:.2} (min {:.2}, max {:.2}, {} runs)",
            values[values.len() / 2],
            values[0],
            values[values.len() - 1],
            values.len()
        );
    }
}

/// A fresh queue bound to a fresh topic exchange, holding `events` small
/// JSON events; the channel that made it, the queue and the exchange.
async fn prepare(conn: &Connection, events: u64) -> (lapin::Channel, String, String) {
    let tag = format!("{:08x}", fastrand::u32(..));
    let queue = format!("bench-q-{tag}");
    let exchange = format!("bench-x-{tag}");
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
    (ch, queue, exchange)
}

/// Check the queue is empty, then delete it and its exchange.
async fn cleanup(ch: &lapin::Channel, queue: &str, exchange: &str) {
    let left = ch
        .queue_declare(
            queue.into(),
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
    ch.queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    ch.exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
}

/// The broker's ceiling: a lapin consumer that only acknowledges.
async fn peer_run(url: &str, events: u64, prefetch: u16) -> f64 {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let (ch, queue, exchange) = prepare(&conn, events).await;
    let consumer_ch = conn.create_channel().await.unwrap();
    consumer_ch
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consumer_ch
        .basic_consume(
            queue.as_str().into(),
            "peer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (mut seen, mut started) = (0u64, None);
    while seen < events {
        let delivery = consumer.next().await.unwrap().unwrap();
        started.get_or_insert_with(Instant::now);
        let mut last = delivery.delivery_tag;
        seen += 1;
        while let Some(Some(Ok(d))) = consumer.next().now_or_never() {
            last = d.delivery_tag;
            seen += 1;
        }
        consumer_ch
            .basic_ack(last, BasicAckOptions { multiple: true })
            .await
            .unwrap();
    }
    let rate = (seen - 1) as f64 / started.unwrap().elapsed().as_secs_f64();
    consumer_ch.close(200, "done".into()).await.unwrap();
    cleanup(&ch, &queue, &exchange).await;
    let _ = conn.close(200, "done".into()).await;
    rate
}

struct Run {
    rate: f64,
    herald_cpu_us: f64,
    broker_cpu_us: Option<f64>,
    per_ack: f64,
}

/// CPU seconds (user + system) of process `pid` ("self" for this one).
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 12th and 13th of them, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The pid of a local RabbitMQ node, if one runs here.
fn broker_pid() -> Option<String> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().into_string().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == "beam.smp").then_some(pid)
    })
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
}

async fn one_run(url: &str, events: u64, prefetch: u16) -> Run {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ at AMQP_URL");
    let (ch, queue, exchange) = prepare(&conn, events).await;

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
    let broker = broker_pid();
    let mut first: Option<(Instant, u64, Option<f64>, Option<f64>)> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    let run = loop {
        let text = http
            .get(&metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let now = Instant::now();
        let (herald_cpu, broker_cpu) = (cpu_secs("self"), broker.as_deref().and_then(cpu_secs));
        let count = metric(&text, "herald_events_total{source=\"amqp\"}") as u64;
        match first {
            None if count > 0 => first = Some((now, count, herald_cpu, broker_cpu)),
            Some((t0, c0, h0, b0)) if count >= events => {
                let n = (count - c0) as f64;
                let per_event = |a: Option<f64>, b: Option<f64>| Some((b? - a?) * 1e6 / n);
                break Run {
                    rate: n / (now - t0).as_secs_f64(),
                    herald_cpu_us: per_event(h0, herald_cpu).unwrap_or(f64::NAN),
                    broker_cpu_us: per_event(b0, broker_cpu),
                    per_ack: metric(&text, "herald_amqp_settled_total")
                        / metric(&text, "herald_amqp_ack_frames_total").max(1.0),
                };
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
    cleanup(&ch, &queue, &exchange).await;
    let _ = conn.close(200, "done".into()).await;
    run
}
