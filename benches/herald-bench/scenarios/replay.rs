//! replay: K clients reconnect at once with a `last_id` M notifications
//! behind while live traffic continues; replay rate (notifications before
//! `subscribed`, over the time from connect to `subscribed`) and the seam:
//! every client must then hold every offset after its `last_id` exactly
//! once, in order, through the end of the live traffic.
//!
//! herald only: the `ws` peer keeps no history.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, bail};
use tokio::time::Instant;

use super::{Meter, clients, deadline, finish, runs, spawn_all, unique};
use crate::Opts;
use crate::client::connect_all;
use crate::produce::{Producer, Route};
use crate::report::{Figures, Limit, Report};
use crate::server::{Kind, Server};

const NAME: &str = "replay";

pub(crate) async fn run(opts: &Opts, report: &mut Report) -> Result<()> {
    if opts.peer {
        report.note("replay: herald only; the ws peer keeps no history to replay");
    }
    let counts = opts
        .clients
        .clone()
        .unwrap_or(if opts.quick { vec![1, 5] } else { vec![1, 100] });
    let missed = opts.missed.unwrap_or(if opts.quick { 500 } else { 10_000 });
    let rate = opts.rate.unwrap_or(if opts.quick { 50 } else { 100 });
    for &k in &counts {
        let case = format!("clients={k} missed={missed} live={rate}/s");
        runs(opts, report, NAME, &case, &[Kind::Herald], |_| {
            measure(opts, k, missed, rate)
        })
        .await?;
    }
    report.target(
        "replay: notifications/s to one reconnecting client",
        report.median(
            NAME,
            &format!("clients=1 missed={missed} live={rate}/s"),
            "herald",
            "replayed_per_s_per_client",
        ),
        Limit::AtLeast(300_000.0),
    );
    Ok(())
}

async fn measure(opts: &Opts, k: usize, missed: u64, rate: u64) -> Result<Figures> {
    // Retain more than the backlog plus the live traffic of the measurement.
    let env = [("HERALD_STORE__MAX_PER_CHANNEL", "1000000".to_string())];
    let server = Server::start(Kind::Herald, opts, &env)?;
    let channel = unique("replay");
    let end = deadline(opts);
    let mut producer = Producer::new(
        &server.http_base(),
        "bench",
        Route::Channel(channel.clone()),
        100,
    )?;
    // One request at a time: event `seq` is at offset `seq + 1`, so the
    // checker knows which events a resume after `from` must bring.
    producer.flood(0..missed + 1, 100, 1, None, end).await?;
    // Learn the epoch and head from a fresh subscription.
    let probe = clients(1, server.addr, opts, 4096, |_| channel.clone());
    let probe = connect_all(probe, 1, opts.timeout()).await?;
    let epoch = probe[0].track.epoch.clone();
    let head = probe[0].track.last;
    drop(probe);
    if head != missed + 1 {
        bail!("head {head} after {} events", missed + 1);
    }
    // Live traffic during the replay and for a while after it.
    let live = rate * 3;
    let mut live_producer = Producer::new(
        &server.http_base(),
        "bench",
        Route::Channel(channel.clone()),
        100,
    )?;
    let live_task = tokio::spawn(async move {
        live_producer
            .paced(missed + 1..missed + 1 + live, rate, end)
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let to = head + live;
    let from = head - missed;
    let meter = Meter::start(&server);
    let started = Instant::now();
    let last_subscribed = Arc::new(AtomicU64::new(0));
    let list = clients(k, server.addr, opts, 64 * 1024, |_| channel.clone());
    let handles = spawn_all(list, |mut c| {
        let epoch = epoch.clone();
        let last_subscribed = last_subscribed.clone();
        async move {
            tokio::time::timeout_at(end, async {
                c.set_last_id(&epoch, from);
                c.resume_replayed(missed).await?;
                let us = started.elapsed().as_micros() as u64;
                last_subscribed.fetch_max(us, Ordering::Relaxed);
                c.mark_us = us.max(1);
                c.until_offset(to).await
            })
            .await??;
            Ok(c)
        }
    });
    let (list, m) = finish(handles, end, &meter, &server, Kind::Herald, to).await?;
    live_task.await??;
    let replayed: u64 = list.iter().map(|c| c.track.replayed).sum();
    let reconnects: u64 = list.iter().map(|c| c.track.reconnects).sum();
    let mut per_client: Vec<f64> = list
        .iter()
        .map(|c| c.track.replayed as f64 / (c.mark_us as f64 / 1e6))
        .collect();
    per_client.sort_by(f64::total_cmp);
    let all_secs = last_subscribed.load(Ordering::Relaxed) as f64 / 1e6;
    let mut f = Figures::new();
    f.insert(
        "replayed_per_s_per_client",
        crate::report::median(&per_client),
    );
    f.insert("replayed_per_s_total", replayed as f64 / all_secs);
    f.insert("all_subscribed_ms", all_secs * 1000.0);
    f.insert("too_slow_reconnects", reconnects as f64);
    m.cpu_figures(&mut f, "cpu_us_per_replayed", replayed as f64);
    drop(list);
    server.stop();
    Ok(f)
}
