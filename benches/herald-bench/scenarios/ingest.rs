//! ingest: events through rules into the store, no clients: events/s and
//! server CPU µs per event. HTTP today (`--batch` events per request);
//! Kafka and RabbitMQ once their sources are merged (`--source`), and each
//! store kind as the stores land (`HERALD_STORE__KIND`).

use anyhow::Result;

use super::{Meter, deadline, latency_figures, runs, servers};
use crate::Opts;
use crate::produce::{Producer, Route};
use crate::report::{Figures, Report};
use crate::server::{Kind, Server};

const NAME: &str = "ingest";

pub(crate) async fn run(opts: &Opts, report: &mut Report) -> Result<()> {
    opts.source.check_available()?;
    let batches = match opts.batch {
        Some(b) => vec![b.max(1)],
        None => vec![100, 1],
    };
    for &batch in &batches {
        let events = opts.events.unwrap_or(match (opts.quick, batch) {
            (true, 1) => 200,
            (true, _) => 2_000,
            (false, 1) => 20_000,
            (false, _) => 200_000,
        });
        let case = format!("source={} store=memory batch={batch}", opts.source.name());
        runs(opts, report, NAME, &case, &servers(opts), |kind| {
            measure(opts, kind, batch as u64, events)
        })
        .await?;
    }
    Ok(())
}

/// Produce `events` to 1000 user channels with nobody listening.
pub(super) async fn measure(opts: &Opts, kind: Kind, batch: u64, events: u64) -> Result<Figures> {
    let server = Server::start(kind, opts, &[])?;
    let route = Route::Users {
        prefix: super::unique("ingest"),
        n: 1000,
    };
    let mut producer = Producer::new(&server.http_base(), "bench", route, 100)?;
    let inflight = if batch == 1 { 16 } else { 4 };
    let meter = Meter::start(&server);
    producer
        .flood(0..events, batch, inflight, None, deadline(opts))
        .await?;
    let m = meter.stop(&server);
    let mut f = Figures::new();
    f.insert("events_per_s", events as f64 / m.secs);
    m.cpu_figures(&mut f, "cpu_us_per_event", events as f64);
    latency_figures(
        &mut f,
        &producer.acks,
        ["ack_p50_ms", "ack_p99_ms", "ack_p999_ms", "ack_max_ms"],
    );
    server.stop();
    Ok(f)
}
