//! The effectively-once harness, for any source and any durable store.
//!
//! A [`Run`] has one producer task per channel, handing numbered events to
//! herald through a [`Producer`] (HTTP here; Kafka and RabbitMQ in
//! `producers.rs`) and retrying until the source accepted them, and
//! one client per channel that consumes, drops its connection now and then,
//! and reconnects with its last id (to the next node when there are
//! several). The test does its damage while the run goes on (kill -9
//! herald, restart Redis, ...), then [`Run::finish`] waits and
//! [`Report::assert_exactly_once`] checks, per channel: every event exactly
//! once and in order, offsets contiguous from 1 in one epoch, and every
//! resume answered with `recovered: true`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::process::Process;

/// Hands events to one of herald's sources.
pub trait Producer: Send + Sync + 'static {
    /// Give `events` (consecutive ones of `channel`, starting at `first`)
    /// to the source; return once it accepted them durably, retrying
    /// through restarts and outages until then.
    fn send<'a>(&'a self, channel: &'a str, first: usize, events: Vec<Value>) -> BoxFuture<'a, ()>;
}

/// Event number `seq` of `channel`, for the built-in rule.
pub fn event(channel: &str, seq: usize) -> Value {
    json!({
        "type": "crash.test",
        "channel": channel,
        "title": format!("n{seq}"),
        "data": { "seq": seq },
    })
}

/// How big a run is.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub channels: usize,
    pub per_channel: usize,
    /// Events per producer call (one HTTP request, one broker batch).
    pub batch: usize,
    /// Bound of the whole run.
    pub within: Duration,
}

impl Scenario {
    /// The broker sources' runs: 8 users × 500 events, 10 per batch.
    pub fn brokers() -> Self {
        Self {
            channels: 8,
            per_channel: 500,
            batch: 10,
            within: Duration::from_secs(120),
        }
    }

    pub fn total(&self) -> usize {
        self.channels * self.per_channel
    }
}

/// Run `scenario` against one herald process whose source is fed by
/// `producer`; kill it with SIGKILL and restart it on the same
/// configuration once the clients received each fraction of `kill_at`
/// (so herald, not only the producer, is mid-stream: appends in flight,
/// acknowledgements not yet sent). Checks exactly-once and that every
/// event was produced; the report.
pub async fn kill_9_during(
    herald: &mut Process,
    scenario: &Scenario,
    producer: Arc<dyn Producer>,
    kill_at: &[f64],
) -> Report {
    let ws = format!("ws://127.0.0.1:{}/notifications", herald.port);
    let run = Run::start(scenario, &super::unique("user"), producer, vec![ws]).await;
    for &fraction in kill_at {
        run.wait_received(fraction).await;
        herald.kill9();
        herald.restart();
    }
    let report = run.finish().await;
    report.assert_exactly_once(&herald.log());
    assert_eq!(report.produced, scenario.total());
    report
}

/// A run in progress.
pub struct Run {
    scenario: Scenario,
    produced: Arc<AtomicUsize>,
    /// Notifications the clients received so far.
    received: Arc<AtomicUsize>,
    producers: Vec<JoinHandle<()>>,
    consumers: Vec<JoinHandle<Consumed>>,
    deadline: Instant,
}

impl Run {
    /// Connect one client per channel (fresh channels named after
    /// `prefix`) to the first of `ws_urls` (`ws://host:port/notifications`),
    /// wait until each is subscribed, then start producing.
    pub async fn start(
        scenario: &Scenario,
        prefix: &str,
        producer: Arc<dyn Producer>,
        ws_urls: Vec<String>,
    ) -> Self {
        let deadline = Instant::now() + scenario.within;
        let channels: Vec<String> = (0..scenario.channels)
            .map(|i| format!("{prefix}-{i}"))
            .collect();
        let mut consumers = Vec::new();
        let mut ready = Vec::new();
        let received = Arc::new(AtomicUsize::new(0));
        for (i, channel) in channels.iter().enumerate() {
            let (tx, rx) = oneshot::channel();
            ready.push(rx);
            let mut urls = ws_urls.clone();
            urls.rotate_left(i % ws_urls.len().max(1));
            consumers.push(tokio::spawn(consume(
                channel.clone(),
                urls,
                scenario.per_channel,
                deadline,
                tx,
                received.clone(),
            )));
        }
        for rx in ready {
            tokio::time::timeout(Duration::from_secs(20), rx)
                .await
                .expect("every client subscribes within 20 s")
                .expect("client task alive");
        }
        let produced = Arc::new(AtomicUsize::new(0));
        let producers = channels
            .into_iter()
            .map(|channel| {
                let producer = producer.clone();
                let produced = produced.clone();
                let scenario = scenario.clone();
                tokio::spawn(async move {
                    let mut seq = 0;
                    while seq < scenario.per_channel {
                        let end = (seq + scenario.batch).min(scenario.per_channel);
                        let events = (seq..end).map(|s| event(&channel, s)).collect();
                        producer.send(&channel, seq, events).await;
                        produced.fetch_add(end - seq, Ordering::Relaxed);
                        seq = end;
                    }
                })
            })
            .collect();
        Self {
            scenario: scenario.clone(),
            produced,
            received,
            producers,
            consumers,
            deadline,
        }
    }

    /// Events accepted by the source so far.
    pub fn produced(&self) -> usize {
        self.produced.load(Ordering::Relaxed)
    }

    /// Notifications the clients received so far.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }

    /// Wait until at least `fraction` of all events were accepted.
    pub async fn wait_produced(&self, fraction: f64) {
        let want = (self.scenario.total() as f64 * fraction) as usize;
        while self.produced() < want {
            assert!(
                Instant::now() < self.deadline,
                "only {} of {want} events accepted before the deadline",
                self.produced()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until the clients received at least `fraction` of all events
    /// (for damage done while herald, not the producer, is mid-stream).
    pub async fn wait_received(&self, fraction: f64) {
        let want = (self.scenario.total() as f64 * fraction) as usize;
        while self.received.load(Ordering::Relaxed) < want {
            assert!(
                Instant::now() < self.deadline,
                "clients received only {} of {want} events before the deadline",
                self.received.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait for every producer and every client (bounded by the run's
    /// deadline) and gather what the clients saw.
    pub async fn finish(self) -> Report {
        let mut problems = Vec::new();
        for p in self.producers {
            let left = self.deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, p).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => problems.push(format!("producer failed: {e}")),
                Err(_) => problems.push("producer did not finish before the deadline".into()),
            }
        }
        let mut channels = Vec::new();
        for c in self.consumers {
            match c.await {
                Ok(consumed) => channels.push(consumed),
                Err(e) => problems.push(format!("client task failed: {e}")),
            }
        }
        Report {
            per_channel: self.scenario.per_channel,
            produced: self.produced.load(Ordering::Relaxed),
            channels,
            problems,
        }
    }
}

/// What one client saw.
#[derive(Debug, Default)]
pub struct Consumed {
    pub channel: String,
    /// Event numbers in the order received.
    pub seqs: Vec<usize>,
    pub epoch: Option<String>,
    /// Connections after the first (voluntary drops, kills, outages).
    pub reconnects: usize,
    /// `subscribed` frames answering a `last_id`.
    pub resumes: usize,
    pub violations: Vec<String>,
    last_offset: u64,
    last_id: Option<String>,
}

/// The outcome of a run.
#[derive(Debug)]
pub struct Report {
    pub per_channel: usize,
    pub produced: usize,
    pub channels: Vec<Consumed>,
    pub problems: Vec<String>,
}

impl Report {
    /// Every event exactly once, in order, offsets contiguous, one epoch,
    /// every resume recovered. `context` (e.g. herald's log) is printed
    /// when something is wrong.
    pub fn assert_exactly_once(&self, context: &str) {
        let mut wrong = self.problems.clone();
        for c in &self.channels {
            wrong.extend(c.violations.iter().map(|v| format!("{}: {v}", c.channel)));
            let expected: Vec<usize> = (0..self.per_channel).collect();
            if c.seqs != expected {
                let missing = expected.iter().filter(|s| !c.seqs.contains(s)).count();
                wrong.push(format!(
                    "{}: received {} events ({missing} missing), expected {}",
                    c.channel,
                    c.seqs.len(),
                    self.per_channel
                ));
            }
        }
        let tail: String = context
            .lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            wrong.is_empty(),
            "effectively-once violated:\n{}\n--- context (last lines) ---\n{tail}",
            wrong.join("\n")
        );
        let never: Vec<(&str, usize)> = self
            .channels
            .iter()
            .filter(|c| c.resumes == 0)
            .map(|c| (c.channel.as_str(), c.reconnects))
            .collect();
        assert!(
            never.is_empty(),
            "every client resumed at least once; (channel, reconnects) without: {never:?}\n--- context (last lines) ---\n{tail}"
        );
    }

    pub fn reconnects(&self) -> usize {
        self.channels.iter().map(|c| c.reconnects).sum()
    }
}

/// One client: consume `channel` until `want` events arrived, reconnecting
/// with the last id, to the next of `urls` each time.
async fn consume(
    channel: String,
    urls: Vec<String>,
    want: usize,
    deadline: Instant,
    ready: oneshot::Sender<()>,
    received: Arc<AtomicUsize>,
) -> Consumed {
    let mut c = Consumed {
        channel: channel.clone(),
        ..Consumed::default()
    };
    let mut ready = Some(ready);
    let mut attempt = 0;
    while c.seqs.len() < want && Instant::now() < deadline {
        let url = &urls[attempt % urls.len()];
        attempt += 1;
        let query = match &c.last_id {
            Some(id) => format!("channel={channel}&last_id={id}"),
            None => format!("channel={channel}"),
        };
        let connect = tokio_tungstenite::connect_async(format!("{url}?{query}"));
        let mut ws = match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok((ws, _))) => ws,
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if attempt > 1 {
            c.reconnects += 1;
        }
        // Drop the connection by choice now and then, as real clients do.
        // Not before `subscribed`, though: a resume's replay comes first,
        // and a client that is behind would otherwise leave during every
        // replay and never have a resume confirmed. Nor when a replay brought
        // the last events: its `subscribed` still counts (a client far
        // behind may get everything that is left in one replay).
        let budget = fastrand::usize(20..150);
        let mut got = 0;
        let mut confirmed = false;
        while !confirmed || (got < budget && c.seqs.len() < want) {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(left.min(Duration::from_secs(10)), ws.next()).await;
            let text = match next {
                Ok(Some(Ok(Message::Text(t)))) => t,
                Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) | Err(_) => break,
                Ok(Some(Ok(_))) => continue,
            };
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                c.violations.push(format!("not JSON: {text}"));
                break;
            };
            match v["type"].as_str() {
                Some("subscribed") => {
                    if !subscribed(&mut c, &v) {
                        break;
                    }
                    confirmed = true;
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Some("notification") => {
                    notification(&mut c, &v);
                    received.fetch_add(1, Ordering::Relaxed);
                    got += 1;
                }
                Some("error") if v["code"] == "unavailable" => {
                    // The log cannot be read right now: retry shortly.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
                _ => c.violations.push(format!("unexpected frame {v}")),
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    }
    c
}

/// Check a `subscribed` frame; false when the client must reconnect.
fn subscribed(c: &mut Consumed, v: &Value) -> bool {
    let position = v["position"].as_str().unwrap_or_default();
    let Some((epoch, offset)) = position.rsplit_once('-') else {
        c.violations.push(format!("bad position in {v}"));
        return false;
    };
    if c.last_id.is_none() {
        // The first subscription, to a fresh channel.
        if offset != "0" {
            c.violations
                .push(format!("fresh channel not empty at subscribe: {v}"));
        }
        c.epoch = Some(epoch.to_string());
        c.last_id = Some(position.to_string());
        return true;
    }
    c.resumes += 1;
    if v["recovered"] != true {
        c.violations
            .push(format!("resume from {:?} not recovered: {v}", c.last_id));
    }
    if c.epoch.as_deref() != Some(epoch) {
        c.violations.push(format!(
            "epoch changed from {:?} to {epoch}",
            c.epoch.as_deref()
        ));
        c.epoch = Some(epoch.to_string());
    }
    if position != c.last_id.as_deref().unwrap_or_default() {
        c.violations.push(format!(
            "resumed to {position}, last id was {:?}",
            c.last_id
        ));
    }
    true
}

fn notification(c: &mut Consumed, v: &Value) {
    let offset = v["offset"].as_u64().unwrap_or(0);
    let seq = v["data"]["seq"].as_u64().unwrap_or(u64::MAX) as usize;
    if v["epoch"].as_str() != c.epoch.as_deref() {
        c.violations
            .push(format!("notification from another epoch: {v}"));
    }
    if offset != c.last_offset + 1 {
        c.violations.push(format!(
            "offset {offset} after {} (not contiguous)",
            c.last_offset
        ));
    }
    if seq != c.seqs.len() {
        c.violations.push(format!(
            "event {seq} where {} was expected (duplicate or out of order)",
            c.seqs.len()
        ));
    }
    c.seqs.push(seq);
    c.last_offset = offset;
    c.last_id = v["id"].as_str().map(str::to_string);
}

/// Posts to `POST /events/{topic}` of one of `bases` with an
/// `Idempotency-Key`, retrying on connection errors and 503 (on the next
/// node each time) until 202.
pub struct HttpProducer {
    client: reqwest::Client,
    bases: Vec<String>,
    topic: String,
    run: String,
    /// Attempts that did not get 202.
    pub retries: AtomicUsize,
}

impl HttpProducer {
    pub fn new(bases: Vec<String>) -> Self {
        Self {
            client: reqwest::Client::new(),
            bases,
            topic: "crash".into(),
            run: super::unique("run"),
            retries: AtomicUsize::new(0),
        }
    }
}

impl Producer for HttpProducer {
    fn send<'a>(&'a self, channel: &'a str, first: usize, events: Vec<Value>) -> BoxFuture<'a, ()> {
        async move {
            let key = format!("{}-{channel}-{first}", self.run);
            let mut attempt = first / events.len().max(1);
            loop {
                let base = &self.bases[attempt % self.bases.len()];
                let res = self
                    .client
                    .post(format!("{base}/events/{}", self.topic))
                    .header("idempotency-key", &key)
                    .json(&events)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match res.map(|r| r.status().as_u16()) {
                    Ok(202) => return,
                    Ok(503) | Err(_) => {}
                    Ok(status) => panic!("POST {base}: unexpected status {status}"),
                }
                self.retries.fetch_add(1, Ordering::Relaxed);
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        .boxed()
    }
}
