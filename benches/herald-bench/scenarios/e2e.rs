//! e2e: events produced as fast as they are delivered, through the default
//! rule (`user_id` → `user:{id}`) to C clients each on its own channel, next
//! to the consumer-only ceiling (the same events with no clients) measured
//! in the same run. HTTP today; Kafka and RabbitMQ (`--source`) once their
//! sources are merged, where the events will be pre-produced to the broker.

use anyhow::Result;

use super::{
    Meter, clients, deadline, finish, latency_figures, servers, settle, spawn_all, unique,
};
use crate::Opts;
use crate::client::{Progress, connect_all, merged};
use crate::produce::{Producer, Route};
use crate::report::{Figures, Report};
use crate::server::{Kind, Server};

const NAME: &str = "e2e";

pub(crate) async fn run(opts: &Opts, report: &mut Report) -> Result<()> {
    opts.source.check_available()?;
    let counts = opts
        .clients
        .clone()
        .unwrap_or(if opts.quick { vec![20] } else { vec![1000] });
    let batch = opts.batch.unwrap_or(100).max(1) as u64;
    let events = opts
        .events
        .unwrap_or(if opts.quick { 2_000 } else { 200_000 });
    let source = opts.source.name();
    for &c in &counts {
        let case = format!("source={source} clients={c} batch={batch}");
        let ceiling = format!("source={source} clients=0 batch={batch} (ceiling)");
        for _ in 0..opts.runs() {
            for kind in servers(opts) {
                let f = super::ingest::measure(opts, kind, batch, events).await?;
                report.add(NAME, &ceiling, kind.name(), f);
                settle().await;
                let f = measure(opts, kind, c, batch, events).await?;
                report.add(NAME, &case, kind.name(), f);
                settle().await;
            }
        }
    }
    Ok(())
}

async fn measure(opts: &Opts, kind: Kind, c: usize, batch: u64, events: u64) -> Result<Figures> {
    let server = Server::start(kind, opts, &[])?;
    let prefix = unique("e2e");
    let list = clients(c, server.addr, opts, 16 * 1024, |i| {
        format!("user:{prefix}{i}")
    });
    let list = connect_all(list, 256, opts.timeout()).await?;
    // Event seq goes to client seq % c: each gets events / c of them.
    let events = events / c as u64 * c as u64;
    let per_client = events / c as u64;
    let progress = Progress::new(c);
    let mut producer = Producer::new(
        &server.http_base(),
        "bench",
        Route::Users {
            prefix: prefix.clone(),
            n: c as u64,
        },
        100,
    )?;
    let end = deadline(opts);
    let meter = Meter::start(&server);
    let handles = spawn_all(list, |mut cl| {
        cl.progress = Some((progress.clone(), 0));
        async move {
            tokio::time::timeout_at(end, cl.until_offset(per_client)).await??;
            Ok(cl)
        }
    });
    producer
        .flood(0..events, batch, 4, Some((&progress, c as u64, 400)), end)
        .await?;
    let (list, m) = finish(handles, end, &meter, &server, kind, per_client).await?;
    let mut f = Figures::new();
    f.insert("events_per_s", events as f64 / m.secs);
    f.insert("deliveries_per_s", progress.sum() as f64 / m.secs);
    m.cpu_figures(&mut f, "cpu_us_per_event", events as f64);
    latency_figures(
        &mut f,
        &merged(&list, 0),
        ["e2e_p50_ms", "e2e_p99_ms", "e2e_p999_ms", "e2e_max_ms"],
    );
    drop(list);
    server.stop();
    Ok(f)
}
