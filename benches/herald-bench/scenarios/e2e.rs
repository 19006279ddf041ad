//! e2e: events through the default rule (`user_id` → `user:{id}`) to C
//! clients each on its own channel, next to the consumer-only ceiling (the
//! same events with no clients) measured in the same run.
//!
//! HTTP: produced as fast as they are delivered (a window ahead of the
//! slowest client). Kafka and RabbitMQ (`--source`): pre-produced to the
//! broker before the server starts; the clients connect while it joins its
//! consumer group, and the interval runs from the first notification any
//! client receives to the last. Latency is recorded for HTTP only (a
//! pre-produced event is old by design).

use anyhow::{Result, bail};
use tokio::time::Instant;

use super::{
    Fixture, Meter, clients, deadline, finish, latency_figures, settle, source_servers, spawn_all,
    unique,
};
use crate::Opts;
use crate::client::{Client, Progress, connect_all, merged};
use crate::produce::{Encoder, Producer, Route, SourceKind};
use crate::report::{Figures, Report};
use crate::server::Kind;

const NAME: &str = "e2e";

pub(crate) async fn run(opts: &Opts, report: &mut Report) -> Result<()> {
    let counts = opts
        .clients
        .clone()
        .unwrap_or(if opts.quick { vec![20] } else { vec![1000] });
    let batch = opts.batch.unwrap_or(100).max(1) as u64;
    let events = opts
        .events
        .unwrap_or(if opts.quick { 2_000 } else { 200_000 });
    let source = opts.source.name();
    let kinds = source_servers(opts, report);
    for &c in &counts {
        let (case, ceiling) = if opts.source == SourceKind::Http {
            (
                format!("source={source} clients={c} batch={batch}"),
                format!("source={source} clients=0 batch={batch} (ceiling)"),
            )
        } else {
            (
                format!("source={source} clients={c}"),
                format!("source={source} clients=0 (ceiling)"),
            )
        };
        for _ in 0..opts.runs() {
            for &kind in &kinds {
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
    let prefix = unique("e2e");
    let route = Route::Users {
        prefix: prefix.clone(),
        n: c as u64,
    };
    // Event seq goes to client seq % c: each gets events / c of them.
    let events = events / c as u64 * c as u64;
    let fixture = Fixture::start(opts, kind, &Encoder::new(route.clone(), 100), events).await?;
    let result = deliver(opts, &fixture, kind, c, route, batch, events).await;
    fixture.stop().await;
    result
}

async fn deliver(
    opts: &Opts,
    fixture: &Fixture,
    kind: Kind,
    c: usize,
    route: Route,
    batch: u64,
    events: u64,
) -> Result<Figures> {
    let server = &fixture.server;
    let Route::Users { prefix, .. } = &route else {
        bail!("e2e routes by user");
    };
    let mut list = clients(c, server.addr, opts, 16 * 1024, |i| {
        format!("user:{prefix}{i}")
    });
    // Client i's channel gets events i, i + c, i + 2c, ...
    for cl in &mut list {
        cl.track.seq_first = cl.index as u64;
        cl.track.seq_stride = c as u64;
    }
    if fixture.backlog() {
        for cl in &mut list {
            cl.record_latency = false;
        }
    }
    let mut list = connect_all(list, 256, opts.timeout()).await?;
    fixture.release(kind).await?;
    let late = if fixture.backlog() {
        catch_up_late(&mut list, kind).await?
    } else {
        0
    };
    let per_client = events / c as u64;
    let progress = Progress::new(c);
    let end = deadline(opts);
    let mut meter = Meter::start(server);
    let handles = spawn_all(list, |mut cl| {
        cl.progress = Some((progress.clone(), 0));
        async move {
            tokio::time::timeout_at(end, cl.until_offset(per_client)).await??;
            Ok(cl)
        }
    });
    if fixture.backlog() {
        // The interval starts with the first notification delivered.
        while progress.sum() == 0 && Instant::now() < end {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        meter = Meter::start(server);
    } else {
        let mut producer = Producer::new(&server.http_base(), "bench", route, 100)?;
        producer
            .flood(0..events, batch, 4, Some((&progress, c as u64, 400)), end)
            .await?;
    }
    let (list, m) = finish(handles, end, &meter, server, kind, per_client).await?;
    let mut f = Figures::new();
    f.insert("events_per_s", events as f64 / m.secs);
    f.insert("deliveries_per_s", progress.sum() as f64 / m.secs);
    m.cpu_figures(&mut f, "cpu_us_per_event", events as f64);
    if fixture.backlog() {
        f.insert("late_subscribers", late as f64);
    }
    latency_figures(
        &mut f,
        &merged(&list, 0),
        ["e2e_p50_ms", "e2e_p99_ms", "e2e_p999_ms", "e2e_max_ms"],
    );
    Ok(f)
}

/// Clients that subscribed after the server had started on the backlog
/// (their `subscribed` position is past 0) resume from the channel's start,
/// so each still receives every event of its channel. The peer keeps no
/// history: there a late client is an error.
async fn catch_up_late(list: &mut [Client], kind: Kind) -> Result<usize> {
    let mut late = 0;
    for cl in list.iter_mut().filter(|cl| cl.track.last > 0) {
        if kind == Kind::Peer {
            bail!(
                "client {} subscribed after the peer had consumed {} of its events",
                cl.index,
                cl.track.last
            );
        }
        let epoch = cl.track.epoch.clone();
        cl.set_last_id(&epoch, 0);
        cl.drop_connection();
        cl.resume().await?;
        cl.until_subscribed().await?;
        late += 1;
    }
    Ok(late)
}
