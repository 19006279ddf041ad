//! The scenarios of BENCHMARKS.md, one file each, and what they share:
//! starting servers (with their source backlog and store), making clients,
//! measuring CPU over an interval.

mod connect;
mod e2e;
mod fanout;
mod history;
mod idle;
mod ingest;
mod latency;
mod replay;
mod slow;
mod sse;
mod storm;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use hdrhistogram::Histogram;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::broker::Backlog;
use crate::client::{Client, Dial, source_ip};
use crate::produce::{Encoder, SourceKind};
use crate::report::{Figures, Report};
use crate::server::{Kind, Server, Setup, own_cpu_us};
use crate::stores::{StoreKind, StoreUnderTest};
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
        Scenario::ConnectRate => connect::run(opts, report).await,
        Scenario::SseFanout => sse::run(opts, report).await,
        Scenario::History => history::run(opts, report).await,
        Scenario::All => Ok(()),
    }
}

/// The servers a comparing scenario runs in each run: herald, then the peer.
fn servers(opts: &Opts) -> Vec<Kind> {
    let mut kinds = herald_servers(opts);
    if opts.peer {
        kinds.push(Kind::Peer);
    }
    kinds
}

/// herald, and herald with TLS under `--tls`.
fn herald_servers(opts: &Opts) -> Vec<Kind> {
    if opts.tls {
        vec![Kind::Herald, Kind::HeraldTls]
    } else {
        vec![Kind::Herald]
    }
}

/// The servers of a scenario fed from `--source` into `--store`: the peer
/// only where it can take part (it has a Kafka consumer but no RabbitMQ
/// one, and keeps no store).
fn source_servers(opts: &Opts, report: &mut Report) -> Vec<Kind> {
    let skip = match (opts.source, opts.store) {
        (SourceKind::Amqp, _) => Some("the ws peer has no RabbitMQ consumer"),
        (_, StoreKind::Disk | StoreKind::Redis) => Some("the ws peer keeps no store"),
        _ => None,
    };
    match skip {
        Some(why) if opts.peer => {
            report.note(format!(
                "--source {} --store {}: herald only; {why}",
                opts.source.name(),
                opts.store.name()
            ));
            vec![Kind::Herald]
        }
        // Not herald-wss: the fixture reads its counters over plain HTTP.
        _ => servers(opts)
            .into_iter()
            .filter(|k| *k != Kind::HeraldTls)
            .collect(),
    }
}

/// A server with its source backlog (Kafka, RabbitMQ; none for HTTP) and
/// its store, for one measurement. [`Fixture::stop`] stops the server
/// before it deletes the backlog (a topic is never deleted under a
/// consumer group) and the store's data.
struct Fixture {
    server: Server,
    backlog: Option<Backlog>,
    store: StoreUnderTest,
}

impl Fixture {
    /// Pre-produce `events` encoded by `encoder` when the source is a
    /// broker, then start `kind` consuming them into `--store`.
    async fn start(opts: &Opts, kind: Kind, encoder: &Encoder, events: u64) -> Result<Fixture> {
        let store = StoreUnderTest::new(opts.store)?;
        let backlog = Backlog::fill(opts.source, encoder, events).await?;
        let mut setup = match &backlog {
            Some(b) => b.setup(kind).ok_or_else(|| {
                anyhow!("{} cannot consume from {}", kind.name(), opts.source.name())
            }),
            None => Ok(Setup::default()),
        };
        if let Ok(s) = &mut setup {
            s.env.extend(store.env());
            if kind == Kind::Herald && opts.recorder == crate::RecorderSetting::Off {
                s.env.push(("HERALD_RECORDER__CAPACITY", "0".into()));
            }
        }
        match setup.and_then(|s| Server::start_with(kind, opts, &s)) {
            Ok(server) => Ok(Fixture {
                server,
                backlog,
                store,
            }),
            Err(e) => {
                if let Some(b) = &backlog {
                    b.remove().await;
                }
                Err(e)
            }
        }
    }

    /// The events wait in a broker (rather than being posted over HTTP).
    fn backlog(&self) -> bool {
        self.backlog.is_some()
    }

    /// Let the server consume the backlog. herald consumes from the start
    /// (a client that subscribes late resumes from the channel's start);
    /// the peer keeps no history, so its consumer waits for this, sent
    /// once its clients are connected.
    async fn release(&self, kind: Kind) -> Result<()> {
        if kind != Kind::Peer || self.backlog.is_none() {
            return Ok(());
        }
        let url = format!("{}/consume", self.server.http_base());
        let status = reqwest::Client::new().post(&url).send().await?.status();
        if status.as_u16() != 202 {
            bail!("POST {url}: {status}");
        }
        Ok(())
    }

    async fn stop(self) {
        self.server.stop();
        if let Some(b) = &self.backlog {
            b.remove().await;
        }
        if let Err(e) = self.store.remove().await {
            eprintln!("herald-bench: clean up the store: {e:#}");
        }
    }
}

/// Events the server has taken so far: herald's appended notifications
/// (one per bench event under the built-in rule), the peer's published
/// events.
async fn consumed(http: &reqwest::Client, server: &Server, kind: Kind) -> Result<u64> {
    let path = match kind {
        Kind::Herald | Kind::HeraldTls => "/metrics",
        Kind::Peer => "/stats",
    };
    let text = http
        .get(format!("{}{path}", server.http_base()))
        .send()
        .await?
        .text()
        .await?;
    let count = match kind {
        Kind::Herald | Kind::HeraldTls => text
            .lines()
            .find_map(|l| l.strip_prefix("herald_notifications_appended_total "))
            .map(str::to_string),
        Kind::Peer => serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["events"].as_u64())
            .map(|n| n.to_string()),
    };
    count
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no event count at {path}"))
}

/// Wait until the server has taken all `events` of a backlog, timing from
/// the first one it took (so a group join or a connection is not counted).
/// Returns the interval and the events taken in it.
async fn drain(opts: &Opts, server: &Server, kind: Kind, events: u64) -> Result<(Measured, u64)> {
    let http = reqwest::Client::new();
    let end = deadline(opts);
    let mut first: Option<(Meter, u64)> = None;
    loop {
        let n = consumed(&http, server, kind).await?;
        if n > 0 && first.is_none() {
            first = Some((Meter::start(server), n));
        }
        if let Some((meter, before)) = &first
            && n >= events
        {
            return Ok((meter.stop(server), n.saturating_sub(*before)));
        }
        if Instant::now() > end {
            bail!(
                "{} took {n} of {events} events before the deadline",
                kind.name()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
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
    // `--token`: each client presents its own token (herald was started
    // with authentication on for it, in `Server::start_with`).
    let auth = crate::tokens::auth(opts.token).ok().flatten();
    (0..n)
        .map(|i| {
            let dial = Dial {
                server,
                bind: source_ip(i, opts.source_ips),
                read_buffer,
                rcvbuf: None,
                token: auth.as_ref().and_then(|a| a.token(i).ok()),
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
