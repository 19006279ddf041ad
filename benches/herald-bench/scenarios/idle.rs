//! idle-memory: N idle connections, each subscribed to its own channel
//! (`user:…`); the server's RSS growth per connection, and the kernel's TCP
//! memory per connection (both ends, machine-wide, from /proc/net/sockstat).
//! Then one notification to the first client proves the server still
//! delivers at that size.

use std::time::Duration;

use anyhow::{Result, bail};

use super::{clients, runs, servers, unique};
use crate::Opts;
use crate::client::connect_all;
use crate::produce::{Producer, Route};
use crate::report::{Figures, Limit, Report};
use crate::server::{Kind, Server, tcp_mem_kib};

const NAME: &str = "idle-memory";

pub(crate) async fn run(opts: &Opts, report: &mut Report) -> Result<()> {
    let counts = opts.clients.clone().unwrap_or(if opts.quick {
        vec![200]
    } else {
        vec![1000, 10000, 19000]
    });
    for &c in &counts {
        let case = format!("connections={c}");
        runs(opts, report, NAME, &case, &servers(opts), |kind| {
            measure(opts, kind, c)
        })
        .await?;
    }
    report.target(
        "idle-memory: KiB RSS per idle subscribed connection at 10k",
        report.median(NAME, "connections=10000", "herald", "rss_kib_per_conn"),
        Limit::AtMost(8.0),
    );
    if opts.tls {
        report.target(
            "idle-memory: KiB RSS per idle subscribed wss connection at 10k",
            report.median(NAME, "connections=10000", "herald-wss", "rss_kib_per_conn"),
            Limit::AtMost(16.0),
        );
    }
    report.target(
        "idle-memory: connections held by one herald process",
        report.median(NAME, "connections=19000", "herald", "connections"),
        Limit::AtLeast(19_000.0),
    );
    Ok(())
}

async fn measure(opts: &Opts, kind: Kind, c: usize) -> Result<Figures> {
    let server = Server::start(kind, opts, &[])?;
    let prefix = unique("idle");
    // Warm up: the first connections allocate what every later one shares.
    let warm = clients(16, server.addr, opts, 4096, |i| {
        format!("{prefix}-warm-{i}")
    });
    drop(connect_all(warm, 16, opts.timeout()).await?);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = server.rss_kib();
    let tcp0 = tcp_mem_kib();
    let list = clients(c, server.addr, opts, 4096, |i| format!("user:{prefix}-{i}"));
    let mut list = connect_all(list, 512, opts.timeout()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = server.rss_kib();
    let tcp1 = tcp_mem_kib();
    // Still delivering at this size.
    let producer = Producer::new(
        &server.http_base(),
        "bench",
        Route::Channel(format!("user:{prefix}-0")),
        100,
    )?;
    producer.post(producer.body(0..1), 1).await?;
    let to = list[0].track.last + 1;
    tokio::time::timeout(opts.timeout(), list[0].until_offset(to)).await??;
    let mut f = Figures::new();
    f.insert("connections", list.len() as f64);
    match (rss0, rss1) {
        (Some(a), Some(b)) => {
            f.insert("rss_mib", b as f64 / 1024.0);
            f.insert("rss_kib_per_conn", b.saturating_sub(a) as f64 / c as f64);
        }
        _ => bail!("cannot read the server's RSS"),
    }
    if let (Some(a), Some(b)) = (tcp0, tcp1) {
        f.insert(
            "kernel_tcp_kib_per_conn",
            b.saturating_sub(a) as f64 / c as f64,
        );
    }
    drop(list);
    server.stop();
    Ok(f)
}
