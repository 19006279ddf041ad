//! SIGTERM with work in flight, herald a separate process: an HTTP ingest
//! request and RabbitMQ deliveries whose appends are pending (the Redis
//! store's server frozen with SIGSTOP) when the signal arrives. The order
//! herald documents: the running request finishes (202), the deliveries
//! are appended and acknowledged before the connection closes, sessions
//! are closed with 1001, the process exits 0.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::amqp::{Broker, amqp_url, source_toml};
use common::process::Process;
use common::redis_server::{self, RedisServer};
use common::{Client, WAIT, unique};
use serde_json::{Value, json};

/// Event `title` of `channel` for the built-in rule.
fn event(channel: &str, title: &str) -> Value {
    json!({"channel": channel, "title": title})
}

/// Redis is frozen between the appends' start and the SIGTERM, a few
/// steps of milliseconds (herald gives Redis 5 s before an append fails).
/// Fails with "abort running requests at shutdown" (the POST gets no
/// answer), "close the AMQP connection before the last acknowledgements"
/// (the broker requeues the deliveries) and "no 1001 on SIGTERM".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_and_acknowledges_appends_before_closing_sessions() {
    const DELIVERIES: usize = 10;
    let mut broker = Broker::connect().await;
    let queue = broker.queue_name("q-shutdown");
    let exchange = broker.exchange_name("x-shutdown");
    let redis = RedisServer::start(false);
    let prefix = redis_server::prefix();
    let mut herald = Process::start(&format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\nkey_prefix = \"{prefix}\"\n\
         [[sources]]\nkind = \"http\"\n{}",
        redis.url(),
        source_toml(&amqp_url(), &queue, &exchange, "shutdown.#", 64),
    ));
    assert!(herald.wait_ready(200, WAIT).await, "{}", herald.log());
    let channel = unique("c");
    let mut client = Client::connect(&herald.ws_url(&format!("channel={channel}"))).await;
    client.next_of_type("subscribed").await;
    let post = |title: String| {
        let url = format!("{}/events/t", herald.base());
        let body = event(&channel, &title);
        async move {
            let res = reqwest::Client::new()
                .post(url)
                .json(&body)
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .expect("an answer to the running request");
            (res.status().as_u16(), res.text().await.unwrap_or_default())
        }
    };
    assert_eq!(post("before".into()).await.0, 202);
    let before = client.next_of_type("notification").await;
    assert_eq!(before["title"], "before");

    redis.freeze();
    let running = tokio::spawn(post("during".into()));
    for i in 0..DELIVERIES {
        broker
            .publish_json(
                &exchange,
                "shutdown.event",
                &event(&channel, &format!("d{i}")),
            )
            .await;
    }
    let http = herald
        .wait_metric(r#"herald_events_total{source="http"}"#, 2.0)
        .await;
    let amqp = herald
        .wait_metric(r#"herald_events_total{source="amqp"}"#, DELIVERIES as f64)
        .await;
    herald.terminate();
    let deadline = Instant::now() + WAIT;
    while !herald.log().contains("shutting down") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    redis.thaw();
    assert_eq!(
        (http, amqp),
        (2.0, DELIVERIES as f64),
        "taken before SIGTERM"
    );
    assert!(herald.log().contains("shutting down"), "{}", herald.log());

    let (status, answer) = running.await.unwrap();
    assert_eq!(status, 202, "the running request finished: {answer}");
    let (seen, code) = client.notifications_until_close().await;
    assert_eq!(code, Some(1001), "sessions are closed with going away");
    herald.wait_exit();
    assert_eq!(
        broker.ready(&queue).await,
        0,
        "every delivery was acknowledged before the connection closed"
    );

    // Everything is in the log once, whatever reached the session before
    // it closed (the live feed may lag behind the appends).
    let last = seen.last().unwrap_or(&before).clone();
    herald.restart();
    let mut expected: BTreeSet<String> = (0..DELIVERIES).map(|i| format!("d{i}")).collect();
    expected.insert("during".into());
    let mut got: BTreeSet<String> = BTreeSet::new();
    for f in &seen {
        assert!(
            got.insert(f["title"].as_str().unwrap().to_string()),
            "twice: {f}"
        );
    }
    if got != expected {
        let query = format!("channel={channel}&last_id={}", last["id"].as_str().unwrap());
        let mut resumed = Client::connect(&herald.ws_url(&query)).await;
        while got != expected {
            let f = resumed.frame().await;
            if f["type"] == "notification" {
                let title = f["title"].as_str().unwrap().to_string();
                assert!(got.insert(title), "twice: {f}");
            }
        }
    }
    herald.stop();
}
