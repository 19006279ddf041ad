//! The servers under test: herald or the Node.js `ws` peer as child
//! processes (optionally pinned to CPU 0), and what /proc says about them.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::Opts;

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Herald,
    /// herald with `[server.tls]` (`--tls`).
    HeraldTls,
    Peer,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Herald => "herald",
            Kind::HeraldTls => "herald-wss",
            Kind::Peer => "ws-peer",
        }
    }
}

/// How a server is started beyond the defaults.
#[derive(Debug, Default, Clone)]
pub(crate) struct Setup {
    /// Environment (herald: `HERALD_*` settings).
    pub env: Vec<(&'static str, String)>,
    /// herald: a configuration file's text (its sources), given with
    /// `--config`; `HERALD_*` variables still apply on top.
    pub config: Option<String>,
    /// The peer: extra command-line arguments.
    pub peer_args: Vec<String>,
}

/// A running server under test.
#[derive(Debug)]
pub(crate) struct Server {
    pub addr: SocketAddr,
    pid: Option<u32>,
    child: Option<Child>,
    log: Option<PathBuf>,
}

/// Pin this process (every thread it starts from now on) to `cpu`.
pub(crate) fn pin_self(cpu: u32) -> Result<()> {
    let status = Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .context("taskset (util-linux) is needed for --pin")?;
    if !status.success() {
        bail!("taskset -p failed: {status}");
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(l.local_addr()?.port())
}

fn log_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/herald-bench"))
}

impl Server {
    /// Start `kind` with `env` (herald: `HERALD_*` settings) and wait until
    /// it accepts connections.
    pub(crate) fn start(kind: Kind, opts: &Opts, env: &[(&'static str, String)]) -> Result<Server> {
        let setup = Setup {
            env: env.to_vec(),
            ..Setup::default()
        };
        Self::start_with(kind, opts, &setup)
    }

    /// Start `kind` as `setup` says and wait until it accepts connections.
    pub(crate) fn start_with(kind: Kind, opts: &Opts, setup: &Setup) -> Result<Server> {
        if let (Kind::Herald, Some(addr)) = (kind, opts.connect) {
            return Ok(Server {
                addr,
                pid: opts.pid,
                child: None,
                log: None,
            });
        }
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        std::fs::create_dir_all(log_dir())?;
        let log = log_dir().join(format!("{}-{port}.log", kind.name()));
        let mut cmd = if opts.pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]);
            c
        } else {
            Command::new("env")
        };
        match kind {
            Kind::Herald | Kind::HeraldTls => {
                cmd.arg(&opts.herald).arg("serve");
                if let Some(text) = &setup.config {
                    let path = log_dir().join(format!("herald-{port}.toml"));
                    std::fs::write(&path, text)
                        .with_context(|| format!("write {}", path.display()))?;
                    cmd.arg("--config").arg(path);
                }
                cmd.env("HERALD_SERVER__LISTEN", addr.to_string());
                // The process holds at most 20000 open files here.
                cmd.env("HERALD_SERVER__MAX_CONNECTIONS", "19900");
                cmd.env("HERALD_SERVER__MAX_HTTP_CONNECTIONS", "19950");
                // Every simulated client comes from 127.0.0.1.
                cmd.env("HERALD_SERVER__MAX_CONNECTIONS_PER_IP", "0");
                cmd.env_remove("RUST_LOG");
                cmd.env("HERALD_LOG__LEVEL", "warn");
            }
            Kind::Peer => {
                if !opts.peer_dir.join("node_modules/ws").exists() {
                    bail!(
                        "the peer needs its packages: (cd {} && npm ci)",
                        opts.peer_dir.display()
                    );
                }
                cmd.arg("node")
                    .arg(opts.peer_dir.join("server.mjs"))
                    .args(["--port", &port.to_string()])
                    .args(&setup.peer_args);
            }
        }
        let own_auth = setup.env.iter().any(|(k, _)| *k == "HERALD_AUTH__MODE");
        if kind == Kind::HeraldTls {
            for (k, v) in crate::tls::herald_env(&log_dir())? {
                cmd.env(k, v);
            }
            crate::tls::mark(addr);
        }
        if kind != Kind::Peer && !own_auth {
            // `--token`: authentication on, for the clients' token.
            if let Some(a) = crate::tokens::auth(opts.token)? {
                for (k, v) in &a.env {
                    cmd.env(k, v);
                }
            }
        }
        for (k, v) in &setup.env {
            cmd.env(k, v);
        }
        let file = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("start {}", kind.name()))?;
        let mut server = Server {
            addr,
            pid: Some(child.id()),
            child: Some(child),
            log: Some(log),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "{} exited at start ({status}):\n{}",
                    kind.name(),
                    server.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not listen within 20 s:\n{}",
                    kind.name(),
                    server.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    pub(crate) fn http_base(&self) -> String {
        if crate::tls::connector(self.addr).is_some() {
            return format!("https://localhost:{}", self.addr.port());
        }
        format!("http://{}", self.addr)
    }

    pub(crate) fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// CPU time (user + system, all threads) in microseconds.
    pub(crate) fn cpu_us(&self) -> Option<u64> {
        self.pid.and_then(|p| cpu_us_of(&format!("/proc/{p}/stat")))
    }

    /// Resident set size in KiB.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        rss_kib_of(self.pid?)
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub(crate) fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Resident set size of `pid` in KiB.
pub(crate) fn rss_kib_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Clock ticks per second, from `getconf CLK_TCK` (100 on Linux).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// utime + stime of a `/proc/<pid>/stat` file, in microseconds.
pub(crate) fn cpu_us_of(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which may contain spaces: `) S ppid ...`.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1_000_000 / clock_ticks())
}

/// This generator's own CPU time in microseconds.
pub(crate) fn own_cpu_us() -> Option<u64> {
    cpu_us_of("/proc/self/stat")
}

/// Kernel TCP memory (all sockets on the machine), in KiB, from
/// /proc/net/sockstat (`mem` is in pages).
pub(crate) fn tcp_mem_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "mem" {
            return it.next()?.parse::<u64>().ok().map(|p| p * 4);
        }
    }
    None
}
