//! latency: a fixed offered load below saturation (default 1000 clients on
//! one channel, 50 events/s: 50k deliveries/s), open loop; end-to-end
//! latency from the producer's timestamp to the client, and the
//! producer → durable leg (the POST round trip).

use anyhow::Result;

use super::{Meter, clients, deadline, finish, latency_figures, runs, servers, spawn_all, unique};
use crate::Opts;
use crate::client::{connect_all, merged};
use crate::produce::{Producer, Route};
use crate::report::{Figures, Limit, Report};
use crate::server::{Kind, Server};

const NAME: &str = "latency";

pub(crate) async fn run(opts: &Opts, report: &mut Report) -> Result<()> {
    let counts = opts
        .clients
        .clone()
        .unwrap_or(if opts.quick { vec![50] } else { vec![1000] });
    let rate = opts.rate.unwrap_or(50);
    let secs = opts.seconds.unwrap_or(if opts.quick { 2 } else { 10 });
    for &c in &counts {
        let case = format!("clients={c} rate={rate}/s payload=100B");
        runs(opts, report, NAME, &case, &servers(opts), |kind| {
            measure(opts, kind, c, rate, secs)
        })
        .await?;
    }
    let case = format!("clients=1000 rate={rate}/s payload=100B");
    report.target(
        "latency: p99 at 50k deliveries/s, herald/ws-peer",
        report.ratio(NAME, &case, "e2e_p99_ms"),
        Limit::AtMost(2.0 / 3.0),
    );
    Ok(())
}

async fn measure(opts: &Opts, kind: Kind, c: usize, rate: u64, secs: u64) -> Result<Figures> {
    let server = Server::start(kind, opts, &[])?;
    let channel = unique("latency");
    let mut list = clients(c, server.addr, opts, 16 * 1024, |_| channel.clone());
    for cl in &mut list {
        cl.record_latency = true;
    }
    let list = connect_all(list, 256, opts.timeout()).await?;
    let events = rate * secs;
    let to = list[0].track.last + events;
    let mut producer = Producer::new(&server.http_base(), "bench", Route::Channel(channel), 100)?;
    let end = deadline(opts);
    let meter = Meter::start(&server);
    let handles = spawn_all(list, |mut cl| async move {
        tokio::time::timeout_at(end, cl.until_offset(to)).await??;
        Ok(cl)
    });
    producer.paced(0..events, rate, end).await?;
    let (list, m) = finish(handles, end, &meter, &server, kind, to).await?;
    let total = events as f64 * c as f64;
    let mut f = Figures::new();
    f.insert("deliveries_per_s", total / m.secs);
    m.cpu_figures(&mut f, "cpu_us_per_delivery", total);
    latency_figures(
        &mut f,
        &merged(&list, 0),
        ["e2e_p50_ms", "e2e_p99_ms", "e2e_p999_ms", "e2e_max_ms"],
    );
    latency_figures(
        &mut f,
        &producer.acks,
        [
            "ingest_ack_p50_ms",
            "ingest_ack_p99_ms",
            "ingest_ack_p999_ms",
            "ingest_ack_max_ms",
        ],
    );
    drop(list);
    server.stop();
    Ok(f)
}
