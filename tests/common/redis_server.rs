//! Redis for tests: the machine's shared server (nothing on disk; tests
//! keep apart by key prefix, a [`Prefix`] deleting its keys on drop) and
//! private servers a test starts, kills and restarts itself on a
//! [`Reserved`] port, in plain text or TLS only ([`RedisServer::start_tls`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::port::Reserved;

/// The shared Redis `scripts/test.sh` ensures.
pub const SHARED_URL: &str = "redis://127.0.0.1:6379";

/// A key prefix no other test uses.
pub fn prefix() -> String {
    format!("{}:", super::unique("herald-test"))
}

/// A fresh key prefix on the Redis at `url` whose keys are deleted when it
/// is dropped, also when the test fails. Declare it before the herald that
/// writes under it.
#[derive(Debug)]
pub struct Prefix {
    pub url: String,
    pub prefix: String,
}

impl Prefix {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_string(),
            prefix: prefix(),
        }
    }

    /// On the shared Redis.
    pub fn shared() -> Self {
        Self::new(SHARED_URL)
    }
}

impl std::ops::Deref for Prefix {
    type Target = str;

    fn deref(&self) -> &str {
        &self.prefix
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.prefix)
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        super::clean_up_detached(&self.prefix, move || async move {
            cleanup(&url, &prefix).await;
        });
    }
}

/// Delete every key under `prefix` (tests clean up what they create).
pub async fn cleanup(url: &str, prefix: &str) {
    let client = redis::Client::open(url).unwrap();
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let Ok(keys) = scan(&mut conn, prefix).await else {
        return;
    };
    for chunk in keys.chunks(1000) {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await;
    }
}

/// Every key under `prefix` (`SCAN`, so Redis is not blocked), sorted.
pub async fn keys(url: &str, prefix: &str) -> Vec<String> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys = scan(&mut conn, prefix).await.unwrap();
    keys.sort();
    keys
}

async fn scan(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> redis::RedisResult<Vec<String>> {
    let mut all = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        all.extend(keys);
        if next == 0 {
            return Ok(all);
        }
        cursor = next;
    }
}

/// A redis-server of the test's own, on its own port and directory.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    _reserved: Reserved,
    dir: tempfile::TempDir,
    persistent: bool,
    /// More `redis-server` arguments.
    extra: Vec<String>,
    /// TLS only: `--port 0` and the TLS listener on `port`.
    tls: bool,
}

impl RedisServer {
    /// With `persistent`, every write is fsynced to the append-only file
    /// before Redis answers (what herald needs for no loss); without it,
    /// nothing is kept across a restart.
    pub fn start(persistent: bool) -> Self {
        Self::start_with(persistent, &[])
    }

    /// [`Self::start`] with more `redis-server` arguments
    /// (`--rename-command CONFIG ...`).
    pub fn start_with(persistent: bool, extra: &[&str]) -> Self {
        let reserved = Reserved::new();
        let mut s = Self {
            child: None,
            port: reserved.port,
            _reserved: reserved,
            dir: tempfile::tempdir().unwrap(),
            persistent,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls: false,
        };
        s.spawn();
        s
    }

    /// A non-persistent server speaking TLS only, on `port`, with the PEM
    /// certificate chain and key given and `ca_file` for client
    /// certificates (which it does not ask for: `--tls-auth-clients no`).
    pub fn start_tls(cert_file: &Path, key_file: &Path, ca_file: &Path) -> Self {
        let reserved = Reserved::new();
        let path = |p: &Path| p.to_str().unwrap().to_string();
        let mut s = Self {
            child: None,
            port: reserved.port,
            _reserved: reserved,
            dir: tempfile::tempdir().unwrap(),
            persistent: false,
            extra: vec![
                "--tls-cert-file".into(),
                path(cert_file),
                "--tls-key-file".into(),
                path(key_file),
                "--tls-ca-cert-file".into(),
                path(ca_file),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
            tls: true,
        };
        s.spawn();
        s
    }

    /// `rediss://` for a server started with [`Self::start_tls`].
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let (plain, tls) = if self.tls {
            ("0", port.as_str())
        } else {
            (port.as_str(), "0")
        };
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", plain, "--tls-port", tls])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", "", "--daemonize", "no"])
            .arg("--logfile")
            .arg(self.log());
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.args(&self.extra);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        if self.tls {
            // No plain port to PING: Redis logs when it accepts connections.
            while !std::fs::read_to_string(self.log())
                .unwrap_or_default()
                .contains("Ready to accept connections")
            {
                assert!(
                    Instant::now() < deadline,
                    "redis-server (TLS) did not start: {}",
                    std::fs::read_to_string(self.log()).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        let client = redis::Client::open(self.url()).unwrap();
        loop {
            if let Ok(mut conn) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start: {}",
                std::fs::read_to_string(self.log()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGSTOP: Redis keeps its connections but answers nothing (commands
    /// wait, up to herald's 5 s response timeout).
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &child.id().to_string()])
                .status();
        }
    }

    /// SIGKILL: no shutdown, no final save.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same port and directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill first");
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.thaw();
        self.kill9();
    }
}
