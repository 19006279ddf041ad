//! reconnect-storm: N clients on one channel lose their connections (no
//! close frame, like a network failure), M events arrive, then every client
//! reconnects at once with its last id while live traffic continues. Time
//! until all caught up (each holds the last of the M), lost and duplicated
//! notifications (both must be 0), and the live p99 during the storm.
//!
//! herald only: the `ws` peer keeps no history to resume from.

use std::time::Duration;

use anyhow::Result;
use tokio::time::Instant;

use super::{Meter, clients, deadline, finish, join_all, latency_figures, runs, spawn_all, unique};
use crate::Opts;
use crate::client::{connect_all, merged};
use crate::produce::{Producer, Route};
use crate::report::{Figures, Limit, Report};
use crate::server::{Kind, Server};

const NAME: &str = "reconnect-storm";

pub(crate) async fn run(opts: &Opts, report: &mut Report) -> Result<()> {
    if opts.peer {
        report.note("reconnect-storm: herald only; the ws peer keeps no history to resume from");
    }
    let counts = opts
        .clients
        .clone()
        .unwrap_or(if opts.quick { vec![200] } else { vec![10000] });
    let missed = opts.missed.unwrap_or(if opts.quick { 20 } else { 100 });
    let rate = opts.rate.unwrap_or(10);
    for &c in &counts {
        let case = format!("clients={c} missed={missed} live={rate}/s");
        runs(opts, report, NAME, &case, &[Kind::Herald], |_| {
            measure(opts, c, missed, rate)
        })
        .await?;
    }
    let case = format!("clients=10000 missed=100 live={rate}/s");
    report.target(
        "reconnect-storm: seconds until 10k clients caught up (100 missed)",
        report.median(NAME, &case, "herald", "all_caught_up_s"),
        Limit::AtMost(5.0),
    );
    Ok(())
}

async fn measure(opts: &Opts, c: usize, missed: u64, rate: u64) -> Result<Figures> {
    let server = Server::start(Kind::Herald, opts, &[])?;
    let channel = unique("storm");
    let end = deadline(opts);
    let list = clients(c, server.addr, opts, 4096, |_| channel.clone());
    let list = connect_all(list, 512, opts.timeout()).await?;
    let base = list[0].track.last;
    let mut producer = Producer::new(
        &server.http_base(),
        "bench",
        Route::Channel(channel.clone()),
        100,
    )?;
    // A few events everyone holds: each client has a last id.
    let warm = 5;
    let handles = spawn_all(list, |mut cl| async move {
        tokio::time::timeout_at(end, cl.until_offset(base + warm)).await??;
        cl.drop_connection();
        // Only live latency during the storm counts.
        cl.hist = [None, None];
        Ok(cl)
    });
    producer.flood(0..warm, 5, 1, None, end).await?;
    let list = join_all(handles, end).await?;
    // The server sees the connections go (EOF) before the missed events.
    tokio::time::sleep(Duration::from_millis(500)).await;
    producer
        .flood(warm..warm + missed, 100, 1, None, end)
        .await?;
    let caught_up_at = base + warm + missed;
    let live_secs = if opts.quick { 2 } else { 6 };
    let live = rate * live_secs;
    let to = caught_up_at + live;
    let live_from = warm + missed;
    let mut live_producer =
        Producer::new(&server.http_base(), "bench", Route::Channel(channel), 100)?;
    let live_task = tokio::spawn(async move {
        live_producer
            .paced(live_from..live_from + live, rate, end)
            .await
    });
    let meter = Meter::start(&server);
    let started = Instant::now();
    let handles = spawn_all(list, |mut cl| async move {
        tokio::time::timeout_at(end, async {
            cl.resume_replayed(missed).await?;
            cl.until_offset(caught_up_at).await?;
            cl.mark_us = started.elapsed().as_micros() as u64;
            cl.until_offset(to).await
        })
        .await??;
        Ok(cl)
    });
    let (list, m) = finish(handles, end, &meter, &server, Kind::Herald, to).await?;
    live_task.await??;
    let mut caught: Vec<f64> = list.iter().map(|c| c.mark_us as f64 / 1e6).collect();
    caught.sort_by(f64::total_cmp);
    let lost: u64 = list.iter().map(|c| c.track.lost).sum();
    let dups: u64 = list.iter().map(|c| c.track.duplicates).sum();
    let mut f = Figures::new();
    f.insert(
        "all_caught_up_s",
        caught.last().copied().unwrap_or(f64::NAN),
    );
    f.insert("caught_up_p50_s", caught[caught.len() / 2]);
    f.insert(
        "caught_up_p99_s",
        caught[(caught.len() * 99 / 100).min(caught.len() - 1)],
    );
    // CPU the server spent on the storm (handshakes, replays, live traffic):
    // on a contended machine the wall time above is mostly waiting for it.
    if let Some(cpu) = m.server_cpu_us {
        f.insert("server_cpu_s", cpu / 1e6);
    }
    f.insert("lost", lost as f64);
    f.insert("duplicates", dups as f64);
    f.insert(
        "too_slow_reconnects",
        list.iter().map(|c| c.track.reconnects).sum::<u64>() as f64,
    );
    latency_figures(
        &mut f,
        &merged(&list, 0),
        ["live_p50_ms", "live_p99_ms", "live_p999_ms", "live_max_ms"],
    );
    drop(list);
    server.stop();
    Ok(f)
}
