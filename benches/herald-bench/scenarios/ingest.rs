//! ingest: events through rules into the store, no clients: events/s and
//! server CPU µs per event, for each source (`--source`) and store
//! (`--store`).
//!
//! HTTP: `--batch` events per request, as fast as the server answers.
//! Kafka and RabbitMQ: the events are pre-produced (see `broker`), the
//! server started on them, and the rate counted from the first event it
//! took to the last (its connection and group join are not counted).
//! `--recorder both` measures herald with its traffic recorder on and off
//! (two cases in one run) and checks the recorder's cost.

use anyhow::Result;

use super::{Fixture, Meter, deadline, drain, latency_figures, runs, source_servers};
use crate::produce::{Encoder, Producer, Route, SourceKind};
use crate::report::{Figures, Limit, Report};
use crate::server::Kind;
use crate::{Opts, RecorderSetting};

const NAME: &str = "ingest";

pub(crate) async fn run(opts: &Opts, report: &mut Report) -> Result<()> {
    if opts.recorder != RecorderSetting::Both {
        return run_one(opts, report).await;
    }
    for setting in [RecorderSetting::On, RecorderSetting::Off] {
        let opts = Opts {
            recorder: setting,
            ..opts.clone()
        };
        run_one(&opts, report).await?;
    }
    let with = |setting| {
        let opts = Opts {
            recorder: setting,
            ..opts.clone()
        };
        let batch = match opts.source {
            SourceKind::Http => opts.batch.unwrap_or(100),
            _ => 0,
        };
        report.median(NAME, &case(&opts, batch), "herald", "events_per_s")
    };
    let ratio = with(RecorderSetting::On)
        .zip(with(RecorderSetting::Off))
        .map(|(on, off)| on / off);
    report.target(
        &format!(
            "ingest: recorder on / off, {} → {} store, events/s ratio",
            opts.source.name(),
            opts.store.name()
        ),
        ratio,
        Limit::AtLeast(0.95),
    );
    Ok(())
}

async fn run_one(opts: &Opts, report: &mut Report) -> Result<()> {
    let batches = match (opts.source, opts.batch) {
        (SourceKind::Http, Some(b)) => vec![b.max(1)],
        (SourceKind::Http, None) => vec![100, 1],
        // A backlog has no requests: one case.
        _ => vec![0],
    };
    let kinds = source_servers(opts, report);
    for &batch in &batches {
        let events = opts.events.unwrap_or(match (opts.quick, batch) {
            (true, 1) => 200,
            (true, _) => 2_000,
            (false, 1) => 20_000,
            (false, _) => 200_000,
        });
        let case = case(opts, batch);
        runs(opts, report, NAME, &case, &kinds, |kind| {
            measure(opts, kind, batch as u64, events)
        })
        .await?;
    }
    if opts.source == SourceKind::Kafka {
        let store = opts.store.name();
        let target = if store == "memory" {
            100_000.0
        } else {
            50_000.0
        };
        report.target(
            &format!("ingest: Kafka → {store} store, events/s"),
            report.median(NAME, &case(opts, 0), "herald", "events_per_s"),
            Limit::AtLeast(target),
        );
    }
    Ok(())
}

fn case(opts: &Opts, batch: usize) -> String {
    let (source, store) = (opts.source.name(), opts.store.name());
    let base = match opts.source {
        SourceKind::Http => format!("source={source} store={store} batch={batch}"),
        _ => format!("source={source} store={store}"),
    };
    match opts.recorder {
        RecorderSetting::Off => format!("{base} recorder=off"),
        _ => base,
    }
}

/// Take `events` to 1000 user channels with nobody listening.
pub(super) async fn measure(opts: &Opts, kind: Kind, batch: u64, events: u64) -> Result<Figures> {
    let route = Route::Users {
        prefix: super::unique("ingest"),
        n: 1000,
    };
    let fixture = Fixture::start(opts, kind, &Encoder::new(route.clone(), 100), events).await?;
    let result = if fixture.backlog() {
        from_backlog(opts, &fixture, kind, events).await
    } else {
        over_http(opts, &fixture, route, batch, events).await
    };
    fixture.stop().await;
    result
}

async fn over_http(
    opts: &Opts,
    fixture: &Fixture,
    route: Route,
    batch: u64,
    events: u64,
) -> Result<Figures> {
    let server = &fixture.server;
    let mut producer = Producer::new(&server.http_base(), "bench", route, 100)?;
    let inflight = if batch == 1 { 16 } else { 4 };
    let meter = Meter::start(server);
    producer
        .flood(0..events, batch, inflight, None, deadline(opts))
        .await?;
    let m = meter.stop(server);
    let mut f = Figures::new();
    f.insert("events_per_s", events as f64 / m.secs);
    m.cpu_figures(&mut f, "cpu_us_per_event", events as f64);
    latency_figures(
        &mut f,
        &producer.acks,
        ["ack_p50_ms", "ack_p99_ms", "ack_p999_ms", "ack_max_ms"],
    );
    Ok(f)
}

async fn from_backlog(opts: &Opts, fixture: &Fixture, kind: Kind, events: u64) -> Result<Figures> {
    fixture.release(kind).await?;
    let (m, counted) = drain(opts, &fixture.server, kind, events).await?;
    let mut f = Figures::new();
    // A run so short that the first poll saw most of it has no rate.
    if counted * 2 >= events {
        f.insert("events_per_s", counted as f64 / m.secs);
        m.cpu_figures(&mut f, "cpu_us_per_event", counted as f64);
    } else {
        eprintln!("   {counted} of {events} events counted: too few for a rate");
    }
    Ok(f)
}
