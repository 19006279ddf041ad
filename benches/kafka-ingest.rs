//! Consumer-only ingest throughput: Kafka → rules → store, no clients
//! (BENCHMARKS.md scenario "ingest", Kafka leg).
//!
//!   source scripts/kafka.sh          # a broker at KAFKA_BOOTSTRAP
//!   cargo bench --bench kafka-ingest -- [EVENTS] [RUNS] [PARTITIONS]
//!       [--store memory|disk|redis] [--channels N] [--in-flight N]
//!
//! Pre-produces EVENTS (default 200000) small JSON events to a fresh topic
//! with PARTITIONS (default 3) partitions, their `user_id` spread over N
//! users (default 1000, the load generator's ingest scenario), so the
//! built-in rule appends to N channels `user:{id}`. Then RUNS (default 3)
//! times starts the release `herald` binary with one Kafka source (a new
//! consumer group, reading from the beginning, built-in rule) and a fresh
//! store: memory (default), disk (in a temporary directory, removed
//! afterwards) or redis (127.0.0.1:6379 or REDIS_URL, under a fresh key
//! prefix, removed afterwards), and polls
//! `herald_notifications_appended_total` at /metrics every 50 ms (one
//! notification per event, counted once durable): the rate is the count
//! between the first non-zero answer and the answer reaching EVENTS, over
//! that time, so the group join is not counted. Prints events/s per run,
//! the median and the spread, herald's CPU time (all its threads,
//! librdkafka's included) per event and, for disk and Redis, notifications
//! per commit. `--random-keys` gives every event a random `event_id` and
//! runs the built-in rule with `dedupe_key: "{{ event.event_id }}"`
//! (keys that do not grow with the offset, unlike the default Kafka key:
//! the disk store's worst case once dedupe windows fill). `--in-flight N`
//! sets the source's `max_in_flight` (appends
//! in flight per partition; herald's default otherwise), the group-commit
//! lever for the disk store. HERALD_BIN runs another build of herald (say, the one
//! before a change) with this harness. Not part of the test suite.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

#[path = "support/redis_prefix.rs"]
mod support;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let mut args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let store = match take_flag(&mut args, "--store")?.as_deref() {
        None | Some("memory") => StoreChoice::Memory,
        Some("disk") => StoreChoice::Disk,
        Some("redis") => StoreChoice::Redis(
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        ),
        Some(other) => return Err(format!("--store {other}: memory, disk or redis").into()),
    };
    let channels: u64 = take_flag(&mut args, "--channels")?.map_or(Ok(1000), |a| a.parse())?;
    let random_keys = match args.iter().position(|a| a == "--random-keys") {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    };
    let in_flight = match take_flag(&mut args, "--in-flight")? {
        Some(n) => format!("max_in_flight = {}\n", n.parse::<usize>()?),
        None => String::new(),
    };
    let events: u64 = args.first().map_or(Ok(200_000), |a| a.parse())?;
    let runs: usize = args.get(1).map_or(Ok(3), |a| a.parse())?;
    let partitions: i32 = args.get(2).map_or(Ok(3), |a| a.parse())?;
    let brokers = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let topic = format!("ingest-bench-{:08x}", fastrand::u32(..));
    let runtime = tokio::runtime::Runtime::new()?;

    runtime.block_on(create_topic(&brokers, &topic, partitions))?;
    let started = Instant::now();
    produce(
        &brokers,
        &topic,
        partitions,
        events,
        channels.max(1),
        random_keys,
    )?;
    let extra = Extra {
        in_flight,
        rules: random_keys.then(|| {
            include_str!("../src/rules/default.yaml").replacen(
                "    emit:\n",
                "    emit:\n      dedupe_key: \"{{ event.event_id }}\"\n",
                1,
            )
        }),
    };
    println!(
        "produced {events} events for {channels} channels to {topic} ({partitions} partitions) in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut rates = Vec::new();
    for run in 1..=runs {
        let prefix = format!("{topic}-run{run}:");
        let result = runtime.block_on(consume_once(
            &brokers, &topic, events, run, &store, &prefix, &extra,
        ));
        if let StoreChoice::Redis(url) = &store {
            runtime.block_on(support::delete_prefix(url, &prefix));
        }
        let r = result?;
        let group = r.per_commit.map_or(String::new(), |g| {
            format!(", {g:.0} notifications per commit")
        });
        println!(
            "run {run}: {:.0} events/s, herald CPU {:.2} µs/event{group}",
            r.rate, r.cpu_us
        );
        rates.push(r.rate);
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!(
        "median {median:.0} events/s (min {:.0}, max {:.0}) over {runs} runs, {events} events, {partitions} partitions, {channels} channels, {} store",
        rates[0],
        rates[rates.len() - 1],
        store.name()
    );
    runtime.block_on(async {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()?;
        admin.delete_topics(&[&topic], &AdminOptions::new()).await?;
        Ok::<_, Error>(())
    })?;
    Ok(())
}

/// Where the runs keep their notifications.
enum StoreChoice {
    Memory,
    Disk,
    Redis(String),
}

impl StoreChoice {
    fn name(&self) -> &'static str {
        match self {
            StoreChoice::Memory => "memory",
            StoreChoice::Disk => "disk",
            StoreChoice::Redis(_) => "redis",
        }
    }

    /// The `[store]` section of one run's configuration.
    fn section(&self, dir: &std::path::Path, prefix: &str) -> String {
        match self {
            StoreChoice::Memory => String::new(),
            StoreChoice::Disk => {
                format!("[store]\nkind = \"disk\"\npath = {:?}\n", dir.join("store"))
            }
            StoreChoice::Redis(url) => {
                format!("[store]\nkind = \"redis\"\nurl = {url:?}\nkey_prefix = {prefix:?}\n")
            }
        }
    }
}

/// Remove `--name VALUE` from `args` and return VALUE.
fn take_flag(args: &mut Vec<String>, name: &str) -> Result<Option<String>, Error> {
    let Some(i) = args.iter().position(|a| a == name) else {
        return Ok(None);
    };
    if i + 1 >= args.len() {
        return Err(format!("{name} needs a value").into());
    }
    let value = args.remove(i + 1);
    args.remove(i);
    Ok(Some(value))
}

async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<(), Error> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for r in admin.create_topics(&[new], &AdminOptions::new()).await? {
        r.map_err(|(t, e)| format!("create {t}: {e}"))?;
    }
    Ok(())
}

fn produce(
    brokers: &str,
    topic: &str,
    partitions: i32,
    events: u64,
    channels: u64,
    random_keys: bool,
) -> Result<(), Error> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    for i in 0..events {
        let id = if random_keys {
            format!(r#""event_id":"{:032x}","#, fastrand::u128(..))
        } else {
            String::new()
        };
        let payload = format!(
            r#"{{{id}"type":"order.shipped","user_id":{},"title":"Order {i} shipped","body":"Arriving Friday"}}"#,
            i % channels
        );
        let mut record = BaseRecord::<(), String>::to(topic)
            .payload(&payload)
            .partition((i % partitions as u64) as i32);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) => {
                    if e.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::QueueFull) {
                        return Err(e.into());
                    }
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(())
}

/// Settings beyond the store: the source's window, a rules file.
struct Extra {
    /// A `max_in_flight = N` line, or nothing for herald's default.
    in_flight: String,
    /// The rules to run instead of the built-in rule.
    rules: Option<String>,
}

/// What one herald run measured.
struct Run {
    /// Events durable per second.
    rate: f64,
    /// herald's CPU time per event, µs.
    cpu_us: f64,
    /// Notifications per store commit (disk, Redis).
    per_commit: Option<f64>,
}

/// One herald run: events/s from the first appended notification to the
/// last (the built-in rule makes one per event), herald's CPU time per
/// event, and the group size.
async fn consume_once(
    brokers: &str,
    topic: &str,
    events: u64,
    run: usize,
    store: &StoreChoice,
    prefix: &str,
    extra: &Extra,
) -> Result<Run, Error> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("herald.toml");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let rules = match &extra.rules {
        Some(yaml) => {
            let path = dir.path().join("rules.yaml");
            std::fs::write(&path, yaml)?;
            format!("[rules]\npath = {:?}\n", path)
        }
        None => String::new(),
    };
    let in_flight = &extra.in_flight;
    let mut f = std::fs::File::create(&config)?;
    write!(
        f,
        r#"[server]
listen = "127.0.0.1:{port}"
[log]
level = "warn"
[[sources]]
kind = "kafka"
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "{topic}-run{run}"
{in_flight}[sources.properties]
"auto.offset.reset" = "earliest"
"session.timeout.ms" = "6000"
"max.poll.interval.ms" = "10000"
{}{rules}"#,
        store.section(dir.path(), prefix)
    )?;
    let mut herald = Guard(
        Command::new(
            std::env::var_os("HERALD_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_herald").into()),
        )
        .args(["serve", "--config"])
        .arg(&config)
        // herald reads HERALD_* as its configuration.
        .env_remove("HERALD_BIN")
        .stdout(Stdio::null())
        .spawn()?,
    );
    let pid = herald.0.id();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, f64, u64, u64)> = None;
    loop {
        if Instant::now() > deadline {
            return Err("herald did not consume every event within 10 minutes".into());
        }
        if let Some(status) = herald.0.try_wait()? {
            return Err(format!("herald exited: {status}").into());
        }
        let (count, commits) = match http.get(&url).send().await {
            Ok(res) => {
                let text = res.text().await?;
                (
                    counter(&text, "herald_notifications_appended_total"),
                    counter(&text, "herald_store_commits_total"),
                )
            }
            Err(_) => (0, 0),
        };
        if count > 0 && first.is_none() {
            first = Some((Instant::now(), cpu_seconds(pid)?, count, commits));
        }
        if count >= events {
            let (t0, cpu0, count0, commits0) = first.ok_or("no start")?;
            // Counted from the first observation, so a late first answer
            // from /metrics does not inflate the rate.
            let counted = (count - count0) as f64;
            if counted < events as f64 / 2.0 {
                return Err(format!(
                    "/metrics answered too late to time the run ({count0} of {events} events were already consumed)"
                )
                .into());
            }
            let elapsed = t0.elapsed().as_secs_f64();
            let cpu = cpu_seconds(pid)? - cpu0;
            let per_commit = (commits > commits0).then(|| counted / (commits - commits0) as f64);
            return Ok(Run {
                rate: counted / elapsed,
                cpu_us: cpu * 1e6 / counted,
                per_commit,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of an unlabelled counter in a /metrics answer (0 when absent).
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64, Error> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').ok_or("bad /proc stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}
