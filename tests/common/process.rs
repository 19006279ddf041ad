//! herald as a separate process, for tests that stop it (SIGTERM) or kill
//! it (SIGKILL) mid-stream and start it again on the same configuration.
//! Its port is [`Reserved`] for the whole test, so a restart gets the same
//! address back; it counts as started once it logged `herald listening`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::port::Reserved;

/// The line herald logs once it accepts connections.
const LISTENING: &str = "herald listening";

/// A herald child process with its own config file and port.
pub struct Process {
    child: Option<Child>,
    /// `ulimit -S -f` (KiB) for the next start: writes past it fail with
    /// EFBIG (until the limit is raised, see [`Self::pid`]).
    pub file_size_limit_kib: Option<u64>,
    pub port: u16,
    pub config: PathBuf,
    log: PathBuf,
    _reserved: Reserved,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Write `toml` (without `[server] listen`, which is chosen here) and
    /// start herald on it; returns once `/healthz` answers.
    pub fn start(toml: &str) -> Self {
        Self::start_with(|_| toml.to_string())
    }

    /// Like [`Self::start`], with a config that can name files in the
    /// process's own directory (a disk store path, a rules file).
    pub fn start_with(make: impl FnOnce(&std::path::Path) -> String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("herald.toml");
        std::fs::write(&config, make(dir.path())).unwrap();
        let log = dir.path().join("herald.log");
        let reserved = Reserved::new();
        let mut p = Self {
            child: None,
            file_size_limit_kib: None,
            port: reserved.port,
            config,
            log,
            _reserved: reserved,
            _dir: dir,
        };
        p.spawn();
        p
    }

    /// The running process's id (`prlimit --pid` changes its limits).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// A file next to the config (for rules, a disk store, ...).
    pub fn path(&self, name: &str) -> PathBuf {
        self._dir.path().join(name)
    }

    fn spawn(&mut self) {
        let started_before = self.log().matches(LISTENING).count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = match self.file_size_limit_kib {
            None => Command::new(env!("CARGO_BIN_EXE_herald")),
            Some(kib) => {
                // Ignoring SIGXFSZ turns an oversized write into EFBIG.
                let mut c = Command::new("bash");
                c.args([
                    "-c",
                    &format!("trap '' XFSZ; ulimit -S -f {kib}; exec \"$0\" \"$@\""),
                    env!("CARGO_BIN_EXE_herald"),
                ]);
                c
            }
        };
        let child = command
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("HERALD_SERVER__LISTEN", format!("127.0.0.1:{}", self.port))
            .env("RUST_LOG", "info,herald=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log().matches(LISTENING).count() == started_before {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("herald exited with {status} at start:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "herald did not listen:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://127.0.0.1:{}/notifications?{query}", self.port)
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base()))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .unwrap_or_default()
    }

    /// The value of one metric line (`name{labels}`), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        super::metric_value(&self.metrics().await, series)
    }

    /// Poll `series` until it is at least `at_least` or
    /// [`super::WAIT`] passes; its last value.
    pub async fn wait_metric(&self, series: &str, at_least: f64) -> f64 {
        super::wait_metric(|| self.metrics(), series, at_least).await
    }

    /// Everything herald logged so far (across restarts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &child.id().to_string()])
                .status();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        self.terminate();
        self.wait_exit();
    }

    /// SIGTERM, without waiting (see [`Self::wait_exit`]).
    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    /// Wait for the exit that a SIGTERM started, within a minute (each
    /// shutdown step is bounded by `server.shutdown_timeout_ms`); panics
    /// unless the exit status is 0.
    pub fn wait_exit(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("herald did not exit within a minute:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "herald exited with {status}:\n{}",
            self.log()
        );
    }

    /// SIGKILL: no shutdown at all.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same config, port and files.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill first");
        self.spawn();
    }

    /// Poll `/readyz` until it answers `want` (200 or 503) or `within` passes.
    pub async fn wait_ready(&self, want: u16, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let client = reqwest::Client::new();
        while Instant::now() < deadline {
            if let Ok(res) = client.get(format!("{}/readyz", self.base())).send().await
                && res.status().as_u16() == want
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}
