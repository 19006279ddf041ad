//! slow-consumer: C clients on one channel at a paced rate; in phase A all
//! read, in phase B one of them (with a small socket receive buffer) stops
//! reading. The others' p99 in A and B, the code the slow one is closed
//! with (herald documents 4008) and how long after it stopped reading
//! herald counted it closed as too slow (`slow_closed_after_s`, polled every
//! 250 ms; it includes the up to 5 s herald gives the close frame), and
//! the server's peak RSS per phase. Afterwards the slow client reconnects with its last id and must
//! end up with every notification, like the others.
//!
//! herald only: the `ws` peer has no bounded queue to overflow.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::time::Instant;

use super::{clients, deadline, join_all, latency_figures, runs, spawn_all, unique, verify_all};
use crate::Opts;
use crate::client::{Got, connect_all, merged};
use crate::produce::{Producer, Route};
use crate::report::{Figures, Limit, Report};
use crate::server::{Kind, Server};

const NAME: &str = "slow-consumer";

pub(crate) async fn run(opts: &Opts, report: &mut Report) -> Result<()> {
    if opts.peer {
        report.note("slow-consumer: herald only; the ws peer has no bounded queue to overflow");
    }
    let counts = opts
        .clients
        .clone()
        .unwrap_or(if opts.quick { vec![50] } else { vec![1000] });
    let rate = opts.rate.unwrap_or(if opts.quick { 200 } else { 50 });
    let secs_a = opts.seconds.unwrap_or(if opts.quick { 2 } else { 10 });
    let secs_b = if opts.quick { 5 } else { 60 };
    // Large frames in the smoke test back up within its short phase B.
    let payloads = opts.payload.clone().unwrap_or(if opts.quick {
        vec![16 * 1024]
    } else {
        vec![100]
    });
    for &c in &counts {
        for &payload in &payloads {
            let case = format!("clients={c} rate={rate}/s payload={payload}B");
            runs(opts, report, NAME, &case, &[Kind::Herald], |_| {
                measure(opts, c, rate, secs_a, secs_b, payload)
            })
            .await?;
        }
    }
    report.target(
        "slow-consumer: seconds until the slow client is closed as too slow",
        report.median(
            NAME,
            &format!("clients=1000 rate={rate}/s payload=100B"),
            "herald",
            "slow_closed_after_s",
        ),
        Limit::AtMost(secs_b as f64),
    );
    report.target(
        "slow-consumer: others' p99 rise, % (1000 clients)",
        // A rise is what the slow client must not cause; a fall is noise.
        report.median(
            NAME,
            &format!("clients=1000 rate={rate}/s payload=100B"),
            "herald",
            "p99_change_pct",
        ),
        Limit::AtMost(10.0),
    );
    Ok(())
}

async fn measure(
    opts: &Opts,
    c: usize,
    rate: u64,
    secs_a: u64,
    secs_b: u64,
    payload: usize,
) -> Result<Figures> {
    let mut env = Vec::new();
    if opts.quick {
        // A small queue so the slow client overflows within the short
        // phase, before its first ping is due.
        env.push(("HERALD_DELIVERY__QUEUE_CAPACITY", "64".to_string()));
    }
    let server = Server::start(Kind::Herald, opts, &env)?;
    let channel = unique("slow");
    let split = Arc::new(AtomicU64::new(u64::MAX));
    let mut list = clients(c.max(2), server.addr, opts, 16 * 1024, |_| channel.clone());
    for cl in &mut list {
        cl.record_latency = cl.index != 0;
        cl.split = Some(split.clone());
    }
    list[0].dial.rcvbuf = Some(4096);
    let list = connect_all(list, 256, opts.timeout()).await?;
    let base = list[0].track.last;
    let events_a = rate * secs_a;
    let events = events_a + rate * secs_b;
    let to = base + events;
    split.store(events_a, Ordering::Relaxed);
    let end = deadline(opts);
    let started = Instant::now();
    let phase_b_at = started + Duration::from_secs(secs_a);
    let phase_b_end = started + Duration::from_secs(secs_a + secs_b);

    // RSS peaks per phase, and when herald counts a too-slow close.
    let rss = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let evicted_ms = Arc::new(AtomicU64::new(0));
    let pid_server = server.pid();
    let metrics_url = format!("{}/metrics", server.http_base());
    let watcher = {
        let rss = rss.clone();
        let evicted_ms = evicted_ms.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            while Instant::now() < phase_b_end + Duration::from_secs(2) {
                let phase = usize::from(Instant::now() >= phase_b_at);
                if let Some(kib) = pid_server.and_then(crate::server::rss_kib_of) {
                    rss[phase].fetch_max(kib, Ordering::Relaxed);
                }
                if evicted_ms.load(Ordering::Relaxed) == 0
                    && let Ok(r) = http.get(&metrics_url).send().await
                {
                    let text = r.text().await.unwrap_or_default();
                    if text.lines().any(|l| {
                        l.starts_with("herald_sessions_closed_total{reason=\"too_slow\"}")
                            && !l.ends_with(" 0")
                    }) {
                        // From the start of phase B (0 if it came earlier).
                        let ms = Instant::now()
                            .saturating_duration_since(phase_b_at)
                            .as_millis() as u64;
                        // +1: 0 means "not yet".
                        evicted_ms.store(ms + 1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let close_code = Arc::new(AtomicU64::new(0));
    let handles = spawn_all(list, |mut cl| {
        let close_code = close_code.clone();
        async move {
            tokio::time::timeout_at(end, async {
                if cl.index != 0 {
                    return cl.until_offset(to).await;
                }
                // The slow one: reads through phase A, then stops reading.
                cl.until_offset(base + events_a).await?;
                tokio::time::sleep_until(phase_b_end).await;
                // Read what the socket holds: notifications in order, then
                // the close (or everything, if the server never closed it).
                let code = loop {
                    if cl.track.last >= to {
                        match tokio::time::timeout(Duration::from_secs(1), cl.next()).await {
                            Ok(Ok(Got::Closed(code))) => break code,
                            Ok(Ok(_)) => continue,
                            Ok(Err(e)) => return Err(e),
                            Err(_) => break None,
                        }
                    }
                    if let Got::Closed(code) = cl.next().await? {
                        break code;
                    }
                };
                close_code.store(u64::from(code.unwrap_or(0)), Ordering::Relaxed);
                if cl.track.last < to {
                    // Resume like a real client: nothing may be missing.
                    cl.resume().await?;
                    cl.until_offset(to).await?;
                }
                Ok(())
            })
            .await??;
            Ok(cl)
        }
    });
    let mut producer = Producer::new(
        &server.http_base(),
        "bench",
        Route::Channel(channel),
        payload,
    )?;
    producer.paced(0..events, rate, end).await?;
    let list = join_all(handles, end).await?;
    let _ = watcher.await;
    verify_all(&list, Kind::Herald, to)?;
    let code = close_code.load(Ordering::Relaxed);
    if code != 4008 && code != 0 {
        bail!("the slow client was closed with {code}, not 4008");
    }
    // herald must close it within phase B (its queue overflows, or its
    // ping goes unanswered behind notifications). The client sees 4008, or
    // only the end of the connection when its socket was too full for the
    // close frame within herald's 5 s; herald counts the session as closed
    // too slow either way.
    let evicted = evicted_ms.load(Ordering::Relaxed) > 0;
    if !evicted {
        bail!("herald did not close the slow client as too slow (close code {code})");
    }
    let mut f = Figures::new();
    let a = merged(&list, 0);
    let b = merged(&list, 1);
    latency_figures(
        &mut f,
        &a,
        ["a_p50_ms", "a_p99_ms", "a_p999_ms", "a_max_ms"],
    );
    latency_figures(
        &mut f,
        &b,
        ["b_p50_ms", "b_p99_ms", "b_p999_ms", "b_max_ms"],
    );
    if let (Some(pa), Some(pb)) = (f.get("a_p99_ms").copied(), f.get("b_p99_ms").copied()) {
        f.insert("p99_change_pct", (pb - pa) / pa * 100.0);
    }
    f.insert("slow_close_code", code as f64);
    if evicted {
        let ms = evicted_ms.load(Ordering::Relaxed).saturating_sub(1);
        f.insert("slow_closed_after_s", ms as f64 / 1000.0);
    }
    f.insert(
        "rss_peak_a_mib",
        rss[0].load(Ordering::Relaxed) as f64 / 1024.0,
    );
    f.insert(
        "rss_peak_b_mib",
        rss[1].load(Ordering::Relaxed) as f64 / 1024.0,
    );
    drop(list);
    server.stop();
    Ok(f)
}
