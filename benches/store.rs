//! Criterion: each store's append and read, and the hub's fan-out.
//! `cargo bench --bench store`
//!
//! A store is one entry in `stores()`: the durable stores join the list as
//! they land.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use herald::config::StoreConfig;
use herald::delivery::hub::Hub;
use herald::metrics::Metrics;
use herald::store::{MemoryStore, NewNotification, Store};

fn notification(channel: &str, i: u64) -> NewNotification {
    NewNotification {
        channel: channel.into(),
        dedupe_key: format!("k{i}"),
        fields: format!(
            "\"event\":\"bench\",\"title\":\"bench\",\"body\":\"\",\"data\":{{\"seq\":{i},\"pad\":\"{}\"}},\"priority\":\"normal\"",
            "x".repeat(60)
        ),
    }
}

/// Every store kind to measure, with the hub it publishes to.
fn stores() -> Vec<(&'static str, Arc<dyn Store>, Arc<Hub>)> {
    let hub = Arc::new(Hub::new(Arc::new(Metrics::new())));
    let config = StoreConfig::default();
    vec![(
        "memory",
        Arc::new(MemoryStore::new(&config, hub.clone())),
        hub,
    )]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn append_and_read(c: &mut Criterion) {
    let rt = runtime();
    for (kind, store, _hub) in stores() {
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
    }
}

fn fanout(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("hub");
    for subscribers in [1usize, 100, 1000] {
        let (_, store, hub) = stores().remove(0);
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
