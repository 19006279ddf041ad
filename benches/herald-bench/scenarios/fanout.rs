//! fanout: C clients on one channel, events produced as fast as the slowest
//! client takes them (a window keeps every bounded server queue from
//! overflowing). Deliveries/s and server CPU µs per delivery.

use anyhow::Result;

use super::{
    Meter, clients, deadline, finish, latency_figures, mean_frame_bytes, runs, servers, spawn_all,
    unique,
};
use crate::Opts;
use crate::client::{Progress, connect_all, merged};
use crate::produce::{Producer, Route};
use crate::report::{Figures, Limit, Report};
use crate::server::{Kind, Server};

const NAME: &str = "fanout";

pub(crate) async fn run(opts: &Opts, report: &mut Report) -> Result<()> {
    let counts = opts.clients.clone().unwrap_or(if opts.quick {
        vec![1, 20]
    } else {
        vec![1, 100, 1000, 10000]
    });
    let payloads = opts.payload.clone().unwrap_or(if opts.quick {
        vec![100]
    } else {
        vec![100, 1024]
    });
    let deliveries = opts
        .deliveries
        .unwrap_or(if opts.quick { 2_000 } else { 2_000_000 });
    for &c in &counts {
        for &payload in &payloads {
            let case = format!("clients={c} payload={payload}B");
            runs(opts, report, NAME, &case, &servers(opts), |kind| {
                measure(opts, kind, c, payload, deliveries, false)
            })
            .await?;
        }
    }
    let case = "clients=1000 payload=100B";
    report.target(
        "fanout: deliveries/s at 1000 clients, 100 B",
        report.median(NAME, case, "herald", "deliveries_per_s"),
        Limit::AtLeast(400_000.0),
    );
    report.target(
        "fanout: server CPU per delivery, herald/ws-peer",
        report.ratio(NAME, case, "cpu_us_per_delivery"),
        Limit::AtMost(1.0 / 1.8),
    );
    if opts.tls {
        let cpu = |server| report.median(NAME, case, server, "cpu_us_per_delivery");
        report.target(
            "fanout: server CPU per delivery, herald-wss/herald (wss at most 2x ws)",
            cpu("herald-wss")
                .zip(cpu("herald"))
                .map(|(tls, plain)| tls / plain),
            Limit::AtMost(2.0),
        );
    }
    Ok(())
}

/// One measurement; `sse`: the clients read Server-Sent Events.
pub(super) async fn measure(
    opts: &Opts,
    kind: Kind,
    c: usize,
    payload: usize,
    deliveries: u64,
    sse: bool,
) -> Result<Figures> {
    let server = Server::start(kind, opts, &[])?;
    let channel = unique("fanout");
    let mut list = clients(c, server.addr, opts, 64 * 1024, |_| channel.clone());
    for cl in &mut list {
        cl.sse = sse;
    }
    let list = connect_all(list, 256, opts.timeout()).await?;
    let events = (deliveries / c as u64).max(1);
    let base = list[0].track.last;
    let progress = Progress::new(c);
    let mut producer = Producer::new(
        &server.http_base(),
        "bench",
        Route::Channel(channel),
        payload,
    )?;
    // Enough events in flight that the server never waits for the
    // producer (a request's round trip grows with the fan-out it triggers),
    // while the window keeps every session's queue (1024 frames) from
    // overflowing.
    let (batch, inflight, window) = match c {
        1..=9 => (100, 4, 700),
        10..=999 => (10, 8, 600),
        _ => (5, 8, 400),
    };
    let to = base + events;
    let end = deadline(opts);
    let meter = Meter::start(&server);
    let handles = spawn_all(list, |mut cl| {
        cl.progress = Some((progress.clone(), base));
        async move {
            tokio::time::timeout_at(end, cl.until_offset(to)).await??;
            Ok(cl)
        }
    });
    producer
        .flood(
            0..events,
            batch,
            inflight,
            Some((&progress, 1, window)),
            end,
        )
        .await?;
    let (list, m) = finish(handles, end, &meter, &server, kind, to).await?;
    let total = events as f64 * c as f64;
    let mut f = Figures::new();
    f.insert("deliveries_per_s", total / m.secs);
    f.insert("events_per_s", events as f64 / m.secs);
    m.cpu_figures(&mut f, "cpu_us_per_delivery", total);
    f.insert("frame_bytes", mean_frame_bytes(&list));
    latency_figures(
        &mut f,
        &merged(&list, 0),
        [
            "latency_p50_ms",
            "latency_p99_ms",
            "latency_p999_ms",
            "latency_max_ms",
        ],
    );
    f.insert("seconds", m.secs);
    drop(list);
    server.stop();
    Ok(f)
}
