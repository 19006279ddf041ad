//! The scenarios of BENCHMARKS.md, one file each, and what they share:
//! starting servers, making clients, measuring CPU over an interval.

mod e2e;
mod fanout;
mod idle;
mod ingest;
mod latency;
mod replay;
mod slow;
mod storm;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, anyhow};
use hdrhistogram::Histogram;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{Client, Dial, source_ip};
use crate::report::{Figures, Report};
use crate::server::{Kind, Server, own_cpu_us};
use crate::{Opts, Scenario};

pub(crate) async fn run(scenario: Scenario, opts: &Opts, report: &mut Report) -> Result<()> {
    match scenario {
        Scenario::Fanout => fanout::run(opts, report).await,
        Scenario::Latency => latency::run(opts, report).await,
        Scenario::E2e => e2e::run(opts, report).await,
        Scenario::IdleMemory => idle::run(opts, report).await,
        Scenario::Replay => replay::run(opts, report).await,
        Scenario::ReconnectStorm => storm::run(opts, report).await,
        Scenario::SlowConsumer => slow::run(opts, report).await,
        Scenario::Ingest => ingest::run(opts, report).await,
        Scenario::All => Ok(()),
    }
}

/// The servers a comparing scenario runs in each run: herald, then the peer.
fn servers(opts: &Opts) -> Vec<Kind> {
    if opts.peer {
        vec![Kind::Herald, Kind::Peer]
    } else {
        vec![Kind::Herald]
    }
}

/// Measure `case` `--runs` times, on each server in `kinds` in turn (a
/// fresh server per measurement, herald and the peer interleaved so both
/// see the same machine), and record the figures.
async fn runs<F, Fut>(
    opts: &Opts,
    report: &mut Report,
    scenario: &str,
    case: &str,
    kinds: &[Kind],
    mut measure: F,
) -> Result<()>
where
    F: FnMut(Kind) -> Fut,
    Fut: std::future::Future<Output = Result<Figures>>,
{
    for _ in 0..opts.runs() {
        for &kind in kinds {
            let f = measure(kind).await?;
            report.add(scenario, case, kind.name(), f);
            settle().await;
        }
    }
    Ok(())
}

/// A name no earlier run used.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", fastrand::u32(..))
}

/// `n` clients of `server`, client `i` on `channel(i)`, spread over the
/// source addresses; latency recorded on at most ~1000 of them (each
/// histogram is ~140 KB).
fn clients(
    n: usize,
    server: SocketAddr,
    opts: &Opts,
    read_buffer: usize,
    channel: impl Fn(usize) -> String,
) -> Vec<Client> {
    let sample = (n / 1000).max(1);
    (0..n)
        .map(|i| {
            let dial = Dial {
                server,
                bind: source_ip(i, opts.source_ips),
                read_buffer,
                rcvbuf: None,
            };
            let mut c = Client::new(i, dial, channel(i));
            c.record_latency = i % sample == 0;
            c
        })
        .collect()
}

/// Start a task per client running `f`.
fn spawn_all<F, Fut>(clients: Vec<Client>, f: F) -> Vec<JoinHandle<Result<Client>>>
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = Result<Client>> + Send + 'static,
{
    clients.into_iter().map(|c| tokio::spawn(f(c))).collect()
}

/// Wait for the tasks of `spawn_all`, each until `deadline`.
async fn join_all(
    handles: Vec<JoinHandle<Result<Client>>>,
    deadline: Instant,
) -> Result<Vec<Client>> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        let c = tokio::time::timeout_at(deadline, h)
            .await
            .map_err(|_| anyhow!("clients did not finish before the deadline"))?
            .map_err(|e| anyhow!("client task: {e}"))??;
        out.push(c);
    }
    out.sort_by_key(|c| c.index);
    Ok(out)
}

/// End a measurement: wait for the clients' tasks, stop the meter, and
/// check every client got exactly up to offset `to`.
async fn finish(
    handles: Vec<JoinHandle<Result<Client>>>,
    deadline: Instant,
    meter: &Meter,
    server: &Server,
    kind: Kind,
    to: u64,
) -> Result<(Vec<Client>, Measured)> {
    let list = join_all(handles, deadline).await?;
    let m = meter.stop(server);
    verify_all(&list, kind, to)?;
    Ok((list, m))
}

/// Wall time and CPU time (server and generator) over an interval.
struct Meter {
    at: Instant,
    server_cpu: Option<u64>,
    own_cpu: Option<u64>,
}

/// What a `Meter` measured.
struct Measured {
    secs: f64,
    /// Server CPU time, µs.
    server_cpu_us: Option<f64>,
    own_cpu_us: Option<f64>,
}

impl Meter {
    fn start(server: &Server) -> Self {
        Self {
            at: Instant::now(),
            server_cpu: server.cpu_us(),
            own_cpu: own_cpu_us(),
        }
    }

    fn stop(&self, server: &Server) -> Measured {
        let secs = self.at.elapsed().as_secs_f64();
        let diff = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?) as f64);
        Measured {
            secs,
            server_cpu_us: diff(self.server_cpu, server.cpu_us()),
            own_cpu_us: diff(self.own_cpu, own_cpu_us()),
        }
    }
}

impl Measured {
    /// Standard figures: server CPU per unit (µs) and both processes' CPU
    /// use (1.0 = one core busy).
    fn cpu_figures(&self, f: &mut Figures, per: &'static str, units: f64) {
        if let Some(cpu) = self.server_cpu_us {
            if units > 0.0 {
                f.insert(per, cpu / units);
            }
            f.insert("server_cpu_cores", cpu / 1e6 / self.secs);
        }
        if let Some(cpu) = self.own_cpu_us {
            f.insert("generator_cpu_cores", cpu / 1e6 / self.secs);
        }
    }
}

/// p50 / p99 / p99.9 / max in milliseconds, under `prefix`.
fn latency_figures(f: &mut Figures, h: &Histogram<u64>, keys: [&'static str; 4]) {
    if h.is_empty() {
        return;
    }
    f.insert(keys[0], h.value_at_quantile(0.50) as f64 / 1000.0);
    f.insert(keys[1], h.value_at_quantile(0.99) as f64 / 1000.0);
    f.insert(keys[2], h.value_at_quantile(0.999) as f64 / 1000.0);
    f.insert(keys[3], h.max() as f64 / 1000.0);
}

/// Every client got exactly `from+1 ..= to`, once each, in order.
fn verify_all(clients: &[Client], server: Kind, to: u64) -> Result<()> {
    for c in clients {
        c.track
            .verify(&format!("{} client {}", server.name(), c.index), to)?;
    }
    Ok(())
}

/// Sum of the notification bytes all clients received, per notification.
fn mean_frame_bytes(clients: &[Client]) -> f64 {
    let bytes: u64 = clients.iter().map(|c| c.track.bytes).sum();
    let n: u64 = clients.iter().map(|c| c.track.received).sum();
    if n == 0 { 0.0 } else { bytes as f64 / n as f64 }
}

/// Deadline of one measurement.
fn deadline(opts: &Opts) -> Instant {
    Instant::now() + opts.timeout()
}

/// Give sockets closed by the last measurement time to go.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}
