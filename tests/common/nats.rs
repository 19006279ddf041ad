//! NATS JetStream for tests: a `nats-server -js` of the test's own on a
//! [`Reserved`] port with its own store directory, which a test may kill
//! (SIGKILL) and start again on the same port and directory; streams that
//! are deleted on drop; and a [`Producer`] for the effectively-once
//! harness.
//!
//! The server binary is `NATS_SERVER`, else `/usr/sbin/nats-server`
//! (Debian's package, which `scripts/test.sh` installs), else
//! `nats-server` on `PATH`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::Value;

use super::crash::Producer;
use super::port::Reserved;

fn server_binary() -> String {
    if let Ok(bin) = std::env::var("NATS_SERVER") {
        return bin;
    }
    let debian = "/usr/sbin/nats-server";
    if std::path::Path::new(debian).exists() {
        debian.into()
    } else {
        "nats-server".into()
    }
}

/// A nats-server with JetStream (file storage in its own directory).
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    _reserved: Reserved,
    dir: tempfile::TempDir,
}

impl NatsServer {
    pub fn start() -> Self {
        let reserved = Reserved::new();
        let mut s = Self {
            child: None,
            port: reserved.port,
            _reserved: reserved,
            dir: tempfile::tempdir().unwrap(),
        };
        s.spawn();
        s
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    /// The server's log so far (across restarts).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let child = Command::new(server_binary())
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(self.dir.path().join("store"))
            .arg("-l")
            .arg(self.log())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        // Ready once JetStream answers, not only the port.
        while !self.jetstream_answers() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn jetstream_answers(&self) -> bool {
        let url = self.url();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let connect = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(1))
                    .max_reconnects(1)
                    .connect(url);
                let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(2), connect).await
                else {
                    return false;
                };
                // The raw API answer: JetStream is up when it answers.
                let info = client.request("$JS.API.INFO", "".into());
                match tokio::time::timeout(Duration::from_secs(2), info).await {
                    Ok(Ok(answer)) => answer.payload.starts_with(b"{"),
                    _ => false,
                }
            })
        })
        .join()
        .unwrap_or(false)
    }

    /// A client of this server.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to the test's nats-server")
    }

    /// SIGKILL: no shutdown at all.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same port and store directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill first");
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A file-stored stream with a fresh name capturing `<subject prefix>.>`,
/// deleted on drop (declare it after its server and before herald).
pub struct TestStream {
    url: String,
    pub name: String,
    /// The first token of every subject of the stream.
    pub prefix: String,
}

impl TestStream {
    pub async fn create(server: &NatsServer) -> Self {
        let name = super::unique("S").replace('-', "_");
        let prefix = super::unique("s");
        jetstream::new(server.client().await)
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("{prefix}.>")],
                storage: stream::StorageType::File,
                ..stream::Config::default()
            })
            .await
            .expect("create the test stream");
        Self {
            url: server.url(),
            name,
            prefix,
        }
    }

    /// `<prefix>.<rest>`.
    pub fn subject(&self, rest: &str) -> String {
        format!("{}.{rest}", self.prefix)
    }

    /// Messages stored in the stream.
    pub async fn messages(&self) -> u64 {
        let client = async_nats::connect(self.url.as_str()).await.unwrap();
        let mut stream = jetstream::new(client).get_stream(&self.name).await.unwrap();
        stream.info().await.unwrap().state.messages
    }

    /// The stored message with stream sequence `seq`.
    pub async fn message(&self, seq: u64) -> jetstream::message::StreamMessage {
        let client = async_nats::connect(self.url.as_str()).await.unwrap();
        let stream = jetstream::new(client).get_stream(&self.name).await.unwrap();
        stream.get_raw_message(seq).await.unwrap()
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        super::clean_up_detached(&self.name, move || async move {
            let connect = async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(2))
                .max_reconnects(1)
                .connect(url);
            if let Ok(client) = connect.await {
                let _ = jetstream::new(client).delete_stream(&name).await;
            }
        });
    }
}

/// Publish `payload` to `subject` through JetStream and wait for the
/// stream's acknowledgement.
pub async fn publish(js: &jetstream::Context, subject: &str, headers: HeaderMap, payload: &[u8]) {
    js.publish_with_headers(subject.to_string(), headers, payload.to_vec().into())
        .await
        .expect("publish")
        .await
        .expect("the stream stores it");
}

/// `[[sources]]` TOML for a NATS source on `stream` (all of its subjects).
pub fn source_toml(url: &str, stream: &TestStream, durable: &str) -> String {
    format!(
        "[[sources]]\nkind = \"nats\"\nurl = {url:?}\nstream = {:?}\nsubjects = [{:?}]\n\
         durable = {durable:?}\nack_wait_ms = 2000\nreconnect_max_ms = 1000\n",
        stream.name,
        stream.subject(">"),
    )
}

/// Publishes each event to `<prefix>.<channel>` and waits for the stream's
/// acknowledgements, retrying (with a `Nats-Msg-Id`, so the stream drops a
/// retried copy it already stored) through server restarts.
pub struct NatsProducer {
    js: jetstream::Context,
    prefix: String,
    run: String,
}

impl NatsProducer {
    pub async fn connect(server: &NatsServer, stream: &TestStream) -> Self {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(server.url())
            .await
            .unwrap();
        Self {
            js: jetstream::new(client),
            prefix: stream.prefix.clone(),
            run: super::unique("run"),
        }
    }
}

impl Producer for NatsProducer {
    fn send<'a>(&'a self, channel: &'a str, first: usize, events: Vec<Value>) -> BoxFuture<'a, ()> {
        async move {
            let subject = format!("{}.{channel}", self.prefix);
            for (i, event) in events.iter().enumerate() {
                let mut headers = HeaderMap::new();
                let id = format!("{}-{channel}-{}", self.run, first + i);
                headers.insert("Nats-Msg-Id", id.as_str());
                let payload = event.to_string();
                loop {
                    let sent = async {
                        self.js
                            .publish_with_headers(
                                subject.clone(),
                                headers.clone(),
                                payload.clone().into(),
                            )
                            .await?
                            .await
                    };
                    match tokio::time::timeout(Duration::from_secs(5), sent).await {
                        Ok(Ok(_)) => break,
                        _ => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        }
        .boxed()
    }
}
