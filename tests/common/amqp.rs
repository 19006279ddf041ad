//! RabbitMQ helpers: the broker at `AMQP_URL` (`scripts/test.sh` starts a
//! local one when none answers), a test's own connection to it ([`Broker`]:
//! publishes with confirms, inspects queues), cleanup of what a test
//! declared ([`Created`], on drop), `rabbitmqctl`, and a [`Relay`] between
//! herald and the broker that can hold herald's frames or cut its
//! connections.
//!
//! `rabbitmqctl` can be overridden with `RABBITMQCTL` (e.g. `docker exec
//! rabbitmq rabbitmqctl`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use herald::source::amqp::{AmqpBinding, AmqpSourceConfig};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{WAIT, unique};

/// The broker tests use.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A source consuming `queue` at the test broker with `bindings`
/// (exchange, routing key); every other key at its default.
pub fn source(queue: &str, bindings: &[(&str, &str)]) -> AmqpSourceConfig {
    let mut c = AmqpSourceConfig::new(amqp_url(), queue);
    c.bindings = bindings
        .iter()
        .map(|(exchange, key)| AmqpBinding {
            exchange: exchange.to_string(),
            routing_key: key.to_string(),
        })
        .collect();
    c
}

/// A `[[sources]]` table for herald: consume `queue` at `url`, bound to
/// `exchange` with `routing_key`, `prefetch` deliveries in flight.
pub fn source_toml(
    url: &str,
    queue: &str,
    exchange: &str,
    routing_key: &str,
    prefetch: u16,
) -> String {
    format!(
        r#"[[sources]]
kind = "amqp"
url = "{url}"
queue = "{queue}"
prefetch = {prefetch}
bindings = [{{ exchange = "{exchange}", routing_key = "{routing_key}" }}]
"#
    )
}

/// Queues and exchanges a test created; deleted on drop, even on panic.
#[derive(Default)]
pub struct Created {
    pub queues: Vec<String>,
    pub exchanges: Vec<String>,
}

impl Drop for Created {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut self.queues);
        let exchanges = std::mem::take(&mut self.exchanges);
        if queues.is_empty() && exchanges.is_empty() {
            return;
        }
        super::clean_up_detached("queues and exchanges", move || async move {
            let Ok(conn) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await
            else {
                return;
            };
            for q in queues {
                if let Ok(ch) = conn.create_channel().await {
                    let _ = ch
                        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
            }
            for e in exchanges {
                if let Ok(ch) = conn.create_channel().await {
                    let _ = ch
                        .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                        .await;
                }
            }
            let _ = conn.close(200, "cleanup".into()).await;
        });
    }
}

/// A test's own connection to the broker: publishes with confirms,
/// inspects queues.
pub struct Broker {
    pub conn: Connection,
    publisher: Channel,
    pub created: Created,
}

impl Broker {
    pub async fn connect() -> Self {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ answers at AMQP_URL (scripts/test.sh starts one)");
        let publisher = conn.create_channel().await.unwrap();
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self {
            conn,
            publisher,
            created: Created::default(),
        }
    }

    /// A fresh name that is deleted as a queue when the test ends.
    pub fn queue_name(&mut self, prefix: &str) -> String {
        let name = unique(prefix);
        self.created.queues.push(name.clone());
        name
    }

    /// A fresh name that is deleted as an exchange when the test ends.
    pub fn exchange_name(&mut self, prefix: &str) -> String {
        let name = unique(prefix);
        self.created.exchanges.push(name.clone());
        name
    }

    pub async fn declare_exchange(&self, name: &str, kind: ExchangeKind) {
        let ch = self.conn.create_channel().await.unwrap();
        ch.exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    }

    /// Declare `queue` and bind it to `exchange` with `key`.
    pub async fn declare_bound_queue(&self, queue: &str, exchange: &str, key: &str) {
        self.try_declare(queue, FieldTable::default())
            .await
            .unwrap();
        self.bind(queue, exchange, key, FieldTable::default()).await;
    }

    /// Bind `queue` to `exchange` with `key` and `arguments`.
    pub async fn bind(&self, queue: &str, exchange: &str, key: &str, arguments: FieldTable) {
        let ch = self.conn.create_channel().await.unwrap();
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            arguments,
        )
        .await
        .unwrap();
    }

    /// Publish and wait for the broker's confirm; false when the message
    /// was routed to no queue.
    pub async fn publish(
        &self,
        exchange: &str,
        key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> bool {
        let confirm = self
            .publisher
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        matches!(confirm, Confirmation::Ack(None))
    }

    pub async fn publish_json(&self, exchange: &str, key: &str, body: &Value) {
        let routed = self
            .publish(
                exchange,
                key,
                body.to_string().as_bytes(),
                BasicProperties::default(),
            )
            .await;
        assert!(routed, "{key} was routed to a queue");
    }

    /// Ready messages in `queue` (unacknowledged ones are not counted).
    pub async fn ready(&self, queue: &str) -> u32 {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        self.declare(queue, passive, FieldTable::default())
            .await
            .unwrap()
            .message_count()
    }

    /// Declare `queue` (durable) with `arguments`; the broker's answer.
    pub async fn try_declare(
        &self,
        queue: &str,
        arguments: FieldTable,
    ) -> Result<(), lapin::Error> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.declare(queue, durable, arguments).await.map(|_| ())
    }

    /// On a channel of its own: a failed declaration closes its channel.
    pub async fn declare(
        &self,
        queue: &str,
        options: QueueDeclareOptions,
        arguments: FieldTable,
    ) -> Result<lapin::Queue, lapin::Error> {
        let ch = self.conn.create_channel().await.unwrap();
        ch.queue_declare(queue.into(), options, arguments).await
    }

    /// Take up to `n` messages from `queue`, waiting for them.
    pub async fn take(&self, queue: &str, n: usize) -> Vec<lapin::message::BasicGetMessage> {
        let ch = self.conn.create_channel().await.unwrap();
        let deadline = Instant::now() + WAIT;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            match ch
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                Some(m) => out.push(m),
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        out
    }
}

/// `rabbitmqctl` (or `$RABBITMQCTL`) with `args`; its standard output.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = try_rabbitmqctl(args).unwrap_or_else(|e| panic!("rabbitmqctl {args:?}: {e}"));
    String::from_utf8_lossy(&out).into_owned()
}

/// `rabbitmqctl` with `args`: its standard output, or why it failed.
fn try_rabbitmqctl(args: &[&str]) -> Result<Vec<u8>, String> {
    let command = std::env::var("RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into());
    let mut parts = command.split_whitespace();
    let program = parts.next().unwrap();
    let out = std::process::Command::new(program)
        .args(parts)
        .args(args)
        .output()
        .map_err(|e| format!("{command} does not run: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(out.stdout)
}

/// Close herald's own connection (named `herald:<queue>`) from the broker
/// side, leaving every other client of the broker alone.
pub fn close_herald_connection(queue: &str) {
    let marker = format!("herald:{queue}");
    let deadline = Instant::now() + WAIT;
    loop {
        let list = rabbitmqctl(&["-q", "list_connections", "pid", "client_properties"]);
        if let Some(line) = list.lines().find(|l| l.contains(&marker)) {
            let pid = line.split('\t').next().unwrap();
            rabbitmqctl(&["close_connection", pid, "herald test: forced close"]);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no connection named {marker}:\n{list}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A TCP relay between herald and the broker whose herald → broker
/// direction can be held: acknowledgements then never reach the broker.
pub struct Relay {
    port: u16,
    hold: watch::Sender<bool>,
    /// While set, connections are closed as soon as they are accepted: the
    /// broker is unreachable.
    down: Arc<AtomicBool>,
    links: Arc<tokio::sync::Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start() -> Self {
        let url = url::Url::parse(&amqp_url()).unwrap();
        let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5672));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (hold, held) = watch::channel(false);
        let links = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
        let broker_down = Arc::new(AtomicBool::new(false));
        let accept = tokio::spawn({
            let links = links.clone();
            let broker_down = broker_down.clone();
            async move {
                while let Ok((down, _)) = listener.accept().await {
                    if broker_down.load(Ordering::SeqCst) {
                        continue; // dropped: closed at once
                    }
                    let Ok(up) = TcpStream::connect(&upstream).await else {
                        continue;
                    };
                    let (mut down_r, mut down_w) = down.into_split();
                    let (mut up_r, up_w) = up.into_split();
                    let mut links = links.lock().await;
                    let mut held = held.clone();
                    links.spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut up_w = up_w;
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            while *held.borrow_and_update() {
                                if held.changed().await.is_err() {
                                    return;
                                }
                            }
                            match down_r.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if up_w.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    });
                    links.spawn(async move {
                        let _ = tokio::io::copy(&mut up_r, &mut down_w).await;
                    });
                }
            }
        });
        Self {
            port,
            hold,
            down: broker_down,
            links,
            accept,
        }
    }

    pub fn url(&self) -> String {
        let mut url = url::Url::parse(&amqp_url()).unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(self.port)).unwrap();
        url.to_string()
    }

    /// Stop forwarding herald's frames (its acks) to the broker.
    pub fn hold(&self) {
        self.hold.send_replace(true);
    }

    /// Drop every relayed connection (what was held is never delivered),
    /// then forward again.
    pub async fn sever(&self) {
        self.links.lock().await.abort_all();
        self.hold.send_replace(false);
    }

    /// The broker goes away (every connection dropped, new ones closed at
    /// once) or comes back.
    pub async fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.sever().await;
        }
    }
}

/// A RabbitMQ user of the test's own (`rabbitmqctl add_user`), with every
/// permission on the default vhost; deleted on drop.
pub struct User {
    pub name: String,
}

impl User {
    pub fn create(password: &str) -> Self {
        let name = unique("herald-test");
        rabbitmqctl(&["add_user", &name, password]);
        let user = Self { name };
        rabbitmqctl(&["set_permissions", "-p", "/", &user.name, ".*", ".*", ".*"]);
        user
    }

    pub fn change_password(&self, password: &str) {
        rabbitmqctl(&["change_password", &self.name, password]);
    }

    /// The test broker's URL with this user and `password`.
    pub fn url(&self, base: &str, password: &str) -> String {
        let mut url = url::Url::parse(base).unwrap();
        url.set_username(&self.name).unwrap();
        url.set_password(Some(password)).unwrap();
        url.to_string()
    }
}

impl Drop for User {
    fn drop(&mut self) {
        if let Err(e) = try_rabbitmqctl(&["-q", "delete_user", &self.name]) {
            eprintln!("user {} not deleted: {e}", self.name);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
