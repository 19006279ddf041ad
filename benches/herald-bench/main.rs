//! herald-bench: the load generator (see BENCHMARKS.md for the scenarios,
//! the targets and the figures).
//!
//! ```text
//! cargo bench --bench herald-bench -- SCENARIO [options]
//! cargo bench --bench herald-bench -- all --quick      # CI smoke test
//! ```
//!
//! It starts herald (the release binary, as a child process, so its CPU time
//! and RSS can be read from `/proc`) and, with `--peer`, the Node.js `ws`
//! peer in `benches/peer/` on the same workload in the same run; produces
//! events carrying a sequence number and a produce timestamp; opens clients
//! bound to several 127.0.0.x source addresses; records HDR histograms;
//! checks that every client saw every expected notification exactly once
//! and in order; prints a table and writes JSON.
//!
//! Every loop is bounded by a count and a deadline, and only loopback
//! addresses are used. A correctness violation (a lost, duplicated or
//! reordered notification, a wrong close code) exits with status 1; timing
//! targets are reported, never asserted.
//!
//! Layout: `server` (child processes, /proc readings), `client` (WebSocket
//! clients and the per-client checker), `produce` (HTTP producer, event
//! encoding, source kinds), `broker` (events pre-produced to Kafka or
//! RabbitMQ), `stores` (the store under test), `tokens` (keys and tokens
//! for `--token` and connect-rate), `sse` (Server-Sent Events clients),
//! `report` (table, JSON, targets),
//! `scenarios/` (one file each).

#![allow(clippy::print_stdout)]

mod broker;
mod client;
mod produce;
mod report;
mod scenarios;
mod server;
mod sse;
mod stores;
mod tls;
mod tokens;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};

use crate::produce::SourceKind;
use crate::report::Report;
use crate::stores::StoreKind;

/// The scenarios, in the order `all` runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    Fanout,
    Latency,
    E2e,
    IdleMemory,
    Replay,
    ReconnectStorm,
    SlowConsumer,
    Ingest,
    ConnectRate,
    SseFanout,
    History,
    All,
}

impl Scenario {
    const EACH: [Scenario; 11] = [
        Scenario::Fanout,
        Scenario::Latency,
        Scenario::E2e,
        Scenario::IdleMemory,
        Scenario::Replay,
        Scenario::ReconnectStorm,
        Scenario::SlowConsumer,
        Scenario::Ingest,
        Scenario::ConnectRate,
        Scenario::SseFanout,
        Scenario::History,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Latency => "latency",
            Scenario::E2e => "e2e",
            Scenario::IdleMemory => "idle-memory",
            Scenario::Replay => "replay",
            Scenario::ReconnectStorm => "reconnect-storm",
            Scenario::SlowConsumer => "slow-consumer",
            Scenario::Ingest => "ingest",
            Scenario::ConnectRate => "connect-rate",
            Scenario::SseFanout => "sse-fanout",
            Scenario::History => "history",
            Scenario::All => "all",
        }
    }
}

/// The recorder setting of the herald under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RecorderSetting {
    On,
    Off,
    Both,
}

/// Options shared by every scenario; `None` means the scenario's default
/// (a smaller one under `--quick`).
#[derive(Debug, Clone, Parser)]
#[command(name = "herald-bench", about = "Load generator for herald")]
pub(crate) struct Opts {
    /// What to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Small scale, correctness only: the CI smoke test.
    #[arg(long)]
    pub quick: bool,
    /// Measurements per case (each on a freshly started server).
    #[arg(long)]
    pub runs: Option<usize>,
    /// The herald binary to start.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/herald"))]
    pub herald: PathBuf,
    /// Use a herald that is already running at this address instead of
    /// starting one (no CPU or memory figures unless --pid is given).
    #[arg(long)]
    pub connect: Option<std::net::SocketAddr>,
    /// The pid of the herald given with --connect, for CPU and RSS readings.
    #[arg(long, requires = "connect")]
    pub pid: Option<u32>,
    /// Also run the Node.js `ws` peer (benches/peer) on the same workload in
    /// the same run, where the scenario compares (fanout, latency,
    /// idle-memory, e2e, ingest).
    #[arg(long)]
    pub peer: bool,
    /// Also run herald with TLS (`herald-wss`: wss clients, https ingest,
    /// a certificate generated for the run) beside plain herald, where the
    /// scenario compares (fanout, idle-memory, connect-rate).
    #[arg(long)]
    pub tls: bool,
    /// Folder of the peer (with node_modules installed by `npm ci`).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peer"))]
    pub peer_dir: PathBuf,
    /// Pin the server to CPU 0 and the generator to CPU 1 (taskset).
    #[arg(long)]
    pub pin: bool,
    /// Where the source events come from (e2e, ingest): posted over HTTP,
    /// or pre-produced to a fresh Kafka topic (`KAFKA_BOOTSTRAP`) or
    /// RabbitMQ queue (`AMQP_URL`) that the server then drains.
    #[arg(long, value_enum, default_value = "http")]
    pub source: SourceKind,
    /// herald's store (e2e, ingest): disk in a temporary directory, Redis
    /// at `REDIS_URL` (default 127.0.0.1:6379) under a fresh key prefix.
    #[arg(long, value_enum, default_value = "memory")]
    pub store: StoreKind,
    /// herald's traffic recorder (ingest): on (herald's default), off
    /// (`recorder.capacity = 0`), or both, one case each in the same run,
    /// with their ratio checked against the ≤ 5 % cost target.
    #[arg(long, value_enum, default_value = "on")]
    pub recorder: RecorderSetting,
    /// Client counts (comma-separated) for fanout, latency, e2e,
    /// idle-memory, reconnect-storm, slow-consumer.
    #[arg(long, value_delimiter = ',')]
    pub clients: Option<Vec<usize>>,
    /// `data` payload sizes in bytes (comma-separated) for fanout.
    #[arg(long, value_delimiter = ',')]
    pub payload: Option<Vec<usize>>,
    /// Deliveries per fanout measurement (events = deliveries / clients).
    #[arg(long)]
    pub deliveries: Option<u64>,
    /// Events per ingest / e2e measurement.
    #[arg(long)]
    pub events: Option<u64>,
    /// Events per second for paced producers (latency, slow-consumer).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Seconds of paced load (latency, slow-consumer phases).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Notifications each replaying / reconnecting client missed.
    #[arg(long)]
    pub missed: Option<u64>,
    /// Events per HTTP request (ingest, e2e; 0: the scenario's choice).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Source addresses 127.0.0.2 .. 127.0.0.(N+1) for clients.
    #[arg(long, default_value_t = 32)]
    pub source_ips: u8,
    /// Clients present a token of this algorithm to a herald started with
    /// authentication on (every scenario but connect-rate, which tries
    /// each): none, hs256, rs256, es256, eddsa.
    #[arg(long, value_enum, default_value = "none")]
    pub token: tokens::Alg,
    /// Upper bound of any one measurement, in seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// JSON output (default: target/herald-bench/<scenario>-<time>.json).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl Opts {
    pub(crate) fn runs(&self) -> usize {
        self.runs.unwrap_or(if self.quick { 1 } else { 3 })
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

fn main() -> ExitCode {
    // `cargo bench` appends `--bench`; it means nothing here.
    let args = std::env::args().filter(|a| a != "--bench");
    let opts = Opts::parse_from(args);
    match run(opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("herald-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(opts: Opts) -> Result<bool> {
    if opts.pin {
        // Before the runtime starts, so every thread it spawns inherits it.
        server::pin_self(1)?;
    }
    if opts.connect.is_none() && !opts.herald.exists() {
        bail!(
            "{} not found: build it first (cargo build --release) or pass --herald / --connect",
            opts.herald.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async {
        let mut report = Report::new(&opts);
        let list: Vec<Scenario> = if opts.scenario == Scenario::All {
            Scenario::EACH.to_vec()
        } else {
            vec![opts.scenario]
        };
        let (mut passed, mut failed) = (0, 0);
        for scenario in list {
            eprintln!("== {}", scenario.name());
            match scenarios::run(scenario, &opts, &mut report).await {
                Ok(()) => passed += 1,
                Err(e) => {
                    eprintln!("herald-bench: {}: {e:#}", scenario.name());
                    report.failure(scenario.name(), format!("{e:#}"));
                    failed += 1;
                }
            }
        }
        report.finish();
        let path = report.write_json(&opts)?;
        report.print(&opts);
        eprintln!("JSON: {}", path.display());
        // The closing line CI reads: scenarios, not timing targets.
        println!("herald-bench: {passed} passed, {failed} failed");
        Ok(failed == 0 && report.correct())
    })
}
