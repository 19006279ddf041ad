//! Append throughput per store kind, and HTTP ingest throughput per store.
//!
//!     cargo bench --bench append                  # 3 runs of each
//!     cargo bench --bench append -- --quick       # 1 short run of each
//!     cargo bench --bench append -- --window 512  # appends in flight per source
//!     cargo bench --bench append -- --only disk   # one store kind
//!     cargo bench --bench append -- --channels 10 # channels appended to
//!
//! Append: `SOURCES` tasks each keep a window of appends in flight
//! (as a broker source does) and await them in order; one notification per
//! append, spread over the channels. With group commit the disk and
//! Redis stores commit everything queued per fsync / round trip.
//! Ingest: `CLIENTS` HTTP clients post one event per request to an
//! in-process herald (202 only once durable), through the built-in rule.
//!
//! The disk store lives in a temporary directory; the Redis store uses
//! 127.0.0.1:6379 under a fresh key prefix, removed afterwards (skipped
//! when no Redis answers). Prints a table (median and range of the runs)
//! and writes target/bench/append.json. Everything runs in one process on
//! the machine's cores: the figures include the load generator's own cost.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use herald::config::{Config, StoreConfig, StoreKind};
use herald::delivery::hub::Hub;
use herald::metrics::Metrics;
use herald::store::NewNotification;
use serde_json::json;

#[path = "support/redis_prefix.rs"]
mod support;

const SOURCES: usize = 8;
const DEFAULT_WINDOW: usize = 64;
const DEFAULT_CHANNELS: usize = 1000;
const CLIENTS: usize = 32;
const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// A typical notification's fields (about 120 bytes).
const PROVENANCE: &str =
    r#"{"rule":"order-shipped","rules_version":"0123456789ab","source":"kafka:orders/2@1834"}"#;
const FIELDS: &str = r#""event":"order.shipped","title":"Order 1234 has shipped","body":"Arriving Friday","data":{"order_id":"1234"},"priority":"normal""#;

#[derive(Debug, serde::Serialize)]
struct Row {
    scenario: String,
    store: &'static str,
    events: usize,
    /// Events per second of each run.
    runs: Vec<f64>,
    /// Notifications per durable commit (disk, Redis), over all runs.
    per_commit: Option<f64>,
}

impl Row {
    fn median(&self) -> f64 {
        let mut v = self.runs.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test` runs bench targets too; the figures need `cargo bench`.
        println!("append benchmark: run it with `cargo bench --bench append`");
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let window = args
        .iter()
        .position(|a| a == "--window")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(DEFAULT_WINDOW);
    let channels = args
        .iter()
        .position(|a| a == "--channels")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(DEFAULT_CHANNELS);
    let runs = if quick { 1 } else { 3 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let redis = redis_up().await;
        let mut rows = Vec::new();
        let only = args
            .iter()
            .position(|a| a == "--only")
            .and_then(|i| args.get(i + 1).cloned());
        let kinds: Vec<StoreKind> = [StoreKind::Memory, StoreKind::Disk, StoreKind::Redis]
            .into_iter()
            .filter(|k| only.as_deref().is_none_or(|o| o == k.as_str()))
            .collect();
        for &kind in &kinds {
            if kind == StoreKind::Redis && !redis {
                println!("redis: nothing answers at {REDIS_URL}; skipped");
                continue;
            }
            let events = match (kind, quick) {
                (StoreKind::Memory, false) => 1_000_000,
                (_, false) => 200_000,
                (_, true) => 20_000,
            };
            rows.push(append_bench(kind, events, runs, window, channels).await);
        }
        for &kind in &kinds {
            if kind == StoreKind::Redis && !redis {
                continue;
            }
            let events = if quick { 5_000 } else { 50_000 };
            rows.push(ingest_bench(kind, events, runs, channels).await);
        }
        report(&rows);
    });
}

async fn redis_up() -> bool {
    let Ok(client) = redis::Client::open(REDIS_URL) else {
        return false;
    };
    match client.get_multiplexed_async_connection().await {
        Ok(mut c) => redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .is_ok(),
        Err(_) => false,
    }
}

/// A fresh store of `kind` (its own directory or key prefix).
fn store_config(kind: StoreKind, dir: &tempfile::TempDir, prefix: &str) -> StoreConfig {
    StoreConfig {
        kind,
        path: (kind == StoreKind::Disk).then(|| dir.path().to_path_buf()),
        url: (kind == StoreKind::Redis).then(|| REDIS_URL.to_string()),
        key_prefix: (kind == StoreKind::Redis).then(|| prefix.to_string()),
        ..StoreConfig::default()
    }
}

fn prefix() -> String {
    format!("herald-bench-{:08x}:", fastrand::u32(..))
}

async fn append_bench(
    kind: StoreKind,
    events: usize,
    runs: usize,
    window: usize,
    channels: usize,
) -> Row {
    let mut row = Row {
        scenario: format!("append ({SOURCES} x {window} in flight, {channels} channels)"),
        store: kind.as_str(),
        events,
        runs: Vec::new(),
        per_commit: None,
    };
    let (mut commits, mut committed) = (0u64, 0f64);
    for run in 0..runs {
        let dir = tempfile::tempdir().expect("tempdir");
        let prefix = prefix();
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(metrics.clone()));
        let store = herald::store::open(&store_config(kind, &dir, &prefix), hub, metrics.clone())
            .await
            .expect("store opens");
        let started = Instant::now();
        let per = events / SOURCES;
        let tasks: Vec<_> = (0..SOURCES)
            .map(|s| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut inflight = VecDeque::with_capacity(window);
                    for i in 0..per {
                        let n = NewNotification {
                            channel: format!("user:{}", (s * per + i) % channels),
                            dedupe_key: format!("{run}-{s}-{i}"),
                            fields: FIELDS.to_string(),
                            provenance: Some(PROVENANCE.to_string()),
                        };
                        inflight.push_back(store.append(vec![n]));
                        if inflight.len() >= window
                            && let Some(first) = inflight.pop_front()
                        {
                            first.await.expect("append");
                        }
                    }
                    while let Some(f) = inflight.pop_front() {
                        f.await.expect("append");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("source task");
        }
        let secs = started.elapsed().as_secs_f64();
        row.runs.push((per * SOURCES) as f64 / secs);
        commits += metrics.store_commits.get();
        committed += (per * SOURCES) as f64;
        store.close().await.expect("close");
        if kind == StoreKind::Redis {
            cleanup(&prefix).await;
        }
    }
    if commits > 0 {
        row.per_commit = Some(committed / commits as f64);
    }
    row
}

async fn ingest_bench(kind: StoreKind, events: usize, runs: usize, channels: usize) -> Row {
    let mut row = Row {
        scenario: format!("HTTP ingest ({CLIENTS} clients, 1 event per request)"),
        store: kind.as_str(),
        events,
        runs: Vec::new(),
        per_commit: None,
    };
    for _ in 0..runs {
        let dir = tempfile::tempdir().expect("tempdir");
        let prefix = prefix();
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".parse().expect("address");
        config.store = store_config(kind, &dir, &prefix);
        config.log.level = "warn".into();
        let running = herald::app::start(config).await.expect("herald starts");
        let url = format!("http://{}/events/orders", running.local_addr());
        let client = reqwest::Client::new();
        let per = events / CLIENTS;
        let started = Instant::now();
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move {
                    for i in 0..per {
                        let event = json!({
                            "type": "order.shipped",
                            "user_id": (c * per + i) % channels,
                            "title": "Order 1234 has shipped",
                            "body": "Arriving Friday",
                        });
                        let res = client.post(&url).json(&event).send().await.expect("POST");
                        assert_eq!(res.status().as_u16(), 202);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("client task");
        }
        row.runs
            .push((per * CLIENTS) as f64 / started.elapsed().as_secs_f64());
        running.shutdown().await;
        if kind == StoreKind::Redis {
            cleanup(&prefix).await;
        }
    }
    row
}

async fn cleanup(prefix: &str) {
    support::delete_prefix(REDIS_URL, prefix).await;
}

fn report(rows: &[Row]) {
    println!();
    println!(
        "{:<52} {:<7} {:>9} {:>14} {:>24} {:>11}",
        "scenario", "store", "events", "events/s", "range", "per commit"
    );
    for r in rows {
        let min = r.runs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = r.runs.iter().copied().fold(0.0, f64::max);
        println!(
            "{:<52} {:<7} {:>9} {:>14.0} {:>24} {:>11}",
            r.scenario,
            r.store,
            r.events,
            r.median(),
            format!("{min:.0} - {max:.0}"),
            r.per_commit.map_or("-".into(), |c| format!("{c:.1}")),
        );
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&out);
    let file = out.join("append.json");
    match serde_json::to_string_pretty(rows) {
        Ok(text) if std::fs::write(&file, &text).is_ok() => {
            println!("\nwritten: {}", file.display());
        }
        _ => println!("\ncould not write {}", file.display()),
    }
}
