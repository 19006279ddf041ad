//! Criterion: each store's append and read, and the hub's fan-out.
//! `cargo bench --bench store`
//!
//! A store is one entry in `stores()`: memory, disk (in a temporary
//! directory; one append is one durable commit) and Redis at `REDIS_URL`
//! (default 127.0.0.1:6379) under a fresh key prefix whose keys are deleted
//! afterwards. Redis is skipped, with a line saying so, when nothing
//! answers there.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use herald::config::{StoreConfig, StoreKind};
use herald::delivery::hub::Hub;
use herald::metrics::Metrics;
use herald::store::{MemoryStore, NewNotification, Store};
use tokio::runtime::Runtime;

fn notification(channel: &str, i: u64) -> NewNotification {
    NewNotification {
        channel: channel.into(),
        dedupe_key: format!("k{i}"),
        fields: format!(
            "\"event\":\"bench\",\"title\":\"bench\",\"body\":\"\",\"data\":{{\"seq\":{i},\"pad\":\"{}\"}},\"priority\":\"normal\"",
            "x".repeat(60)
        ),
        provenance: Some(format!(
            r#"{{"rule":"bench","rules_version":"0123456789ab","source":"kafka:bench/0@{i}"}}"#
        )),
    }
}

/// The memory store and the hub it publishes to.
fn memory() -> (Arc<dyn Store>, Arc<Hub>) {
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(Hub::new(metrics.clone()));
    let store = Arc::new(MemoryStore::new(
        &StoreConfig::default(),
        hub.clone(),
        metrics,
    ));
    (store, hub)
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Whether a Redis server answers at `url` (host:port URLs only).
fn redis_answers(url: &str) -> bool {
    let addr = url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse::<SocketAddr>();
    addr.is_ok_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
}

/// A store to measure and what to remove after.
struct Measured {
    kind: &'static str,
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    redis_prefix: Option<String>,
}

/// Every store kind to measure.
fn stores(rt: &Runtime) -> Vec<Measured> {
    let (store, _) = memory();
    let mut out = vec![Measured {
        kind: "memory",
        store,
        _dir: None,
        redis_prefix: None,
    }];
    let dir = tempfile::tempdir().unwrap();
    let disk = StoreConfig {
        kind: StoreKind::Disk,
        path: Some(dir.path().to_path_buf()),
        ..StoreConfig::default()
    };
    out.push(Measured {
        kind: "disk",
        store: open(rt, &disk),
        _dir: Some(dir),
        redis_prefix: None,
    });
    let url = redis_url();
    if redis_answers(&url) {
        let prefix = format!("herald-bench-{:08x}:", fastrand::u32(..));
        let redis = StoreConfig {
            kind: StoreKind::Redis,
            url: Some(url),
            key_prefix: Some(prefix.clone()),
            ..StoreConfig::default()
        };
        out.push(Measured {
            kind: "redis",
            store: open(rt, &redis),
            _dir: None,
            redis_prefix: Some(prefix),
        });
    } else {
        println!("store/redis: skipped: nothing answers at {url}");
    }
    out
}

fn open(rt: &Runtime, config: &StoreConfig) -> Arc<dyn Store> {
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(Hub::new(metrics.clone()));
    rt.block_on(herald::store::open(config, hub, metrics))
        .unwrap()
}

/// Close the store and delete what it wrote.
fn remove(rt: &Runtime, m: Measured) {
    rt.block_on(m.store.close()).unwrap();
    let Some(prefix) = m.redis_prefix else {
        return;
    };
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut conn)
        .unwrap();
    if !keys.is_empty() {
        let () = redis::cmd("DEL").arg(&keys).query(&mut conn).unwrap();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn append_and_read(c: &mut Criterion) {
    let rt = runtime();
    for m in stores(&rt) {
        let (kind, store) = (m.kind, m.store.clone());
        let mut group = c.benchmark_group(format!("store/{kind}"));
        group.throughput(Throughput::Elements(1));
        let mut i = 0u64;
        group.bench_function("append 1, no subscriber", |b| {
            b.iter(|| {
                i += 1;
                black_box(
                    rt.block_on(store.append(vec![notification("bench-append", i)]))
                        .unwrap(),
                )
            })
        });
        for n in 0..10_000 {
            rt.block_on(store.append(vec![notification("bench-read", n)]))
                .unwrap();
        }
        for page in [1usize, 100, 1000] {
            group.throughput(Throughput::Elements(page as u64));
            group.bench_with_input(BenchmarkId::new("read_after", page), &page, |b, &page| {
                b.iter(|| {
                    black_box(
                        rt.block_on(store.read_after("bench-read", 5000, page))
                            .unwrap(),
                    )
                })
            });
        }
        group.finish();
        remove(&rt, m);
    }
}

fn fanout(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("hub");
    for subscribers in [1usize, 100, 1000] {
        let (store, hub) = memory();
        let mut receivers = Vec::new();
        for _ in 0..subscribers {
            let (sub, rx) = hub.subscriber(1024);
            hub.subscribe("bench-fanout", &sub);
            receivers.push((sub, rx));
        }
        group.throughput(Throughput::Elements(subscribers as u64));
        let mut i = 0u64;
        group.bench_with_input(
            BenchmarkId::new("append + publish + receive", subscribers),
            &subscribers,
            |b, _| {
                b.iter(|| {
                    i += 1;
                    rt.block_on(store.append(vec![notification("bench-fanout", i)]))
                        .unwrap();
                    for (_, rx) in &mut receivers {
                        black_box(rx.try_recv().unwrap());
                    }
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, append_and_read, fanout);
criterion_main!(benches);
