//! Provenance: every stored notification knows the rule, the rules version
//! and the source position of its event. Checked where a user looks: the
//! history API and explain (always), WebSocket and SSE frames (only with
//! `delivery.provenance = true`), for events from HTTP, a real Kafka broker
//! and a real RabbitMQ; and across a restart on the disk store.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::amqp::{self, Broker};
use common::kafka::{self, Kafka};
use common::{Herald, unique};
use herald::config::StoreKind;
use herald::source::SourceConfig;
use lapin::BasicProperties;
use serde_json::{Value, json};

/// Two rules for `topic`, both sending to the event's channel: which one
/// rendered a notification is what provenance must say.
fn rules(topic: &str, title: &str) -> String {
    format!(
        r#"rules:
  - id: first
    match: {{ topic: "{topic}" }}
    emit:
      channel: "{{{{ event.channel }}}}"
      title: "{title} {{{{ event.n }}}}"
  - id: second
    match: {{ topic: "{topic}" }}
    when: 'event.twice == true'
    emit:
      channel: "{{{{ event.channel }}}}"
      title: "second {{{{ event.n }}}}"
"#
    )
}

/// Activate `text` through the admin API; its version id.
async fn activate(h: &Herald, text: &str) -> String {
    let res = reqwest::Client::new()
        .put(format!("{}/admin/rules", h.base))
        .body(text.to_string())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body["version"]["id"].as_str().unwrap().to_string()
}

async fn get_json(h: &Herald, path: &str) -> Value {
    let (status, body) = h.get(path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// POST a batch with an Idempotency-Key; the answer.
async fn post_batch(h: &Herald, topic: &str, key: &str, events: &Value) -> Value {
    let res = reqwest::Client::new()
        .post(format!("{}/events/{topic}", h.base))
        .header("idempotency-key", key)
        .json(events)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 202, "{body}");
    body
}

fn provenance(rule: &str, version: &str, source: &str) -> Value {
    json!({ "rule": rule, "rules_version": version, "source": source })
}

/// The `notification` frames of a Server-Sent Events stream, until `n`.
async fn sse_notifications(res: &mut reqwest::Response, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + common::FRAME_TIMEOUT;
    let (mut buf, mut out) = (String::new(), Vec::new());
    while out.len() < n {
        let chunk = tokio::time::timeout_at(deadline, res.chunk())
            .await
            .unwrap_or_else(|_| panic!("{} of {n} SSE notifications: {buf}", out.len()))
            .unwrap()
            .expect("the stream stays open");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            for line in block.lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    let v: Value = serde_json::from_str(data).unwrap();
                    if v["type"] == "notification" {
                        out.push(v);
                    }
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_events_carry_provenance_in_frames_history_and_explain() {
    let h = Herald::start_with(|c| c.delivery.provenance = true).await;
    let topic = unique("orders");
    let v1 = activate(&h, &rules(&topic, "one")).await;
    let channel = unique("user");
    let (mut ws, _) = h.subscribe(&format!("channel={channel}")).await;
    let mut sse = reqwest::Client::new()
        .get(format!("{}/notifications?channel={channel}", h.base))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status().as_u16(), 200);
    let key = unique("req");
    let answer = post_batch(
        &h,
        &topic,
        &key,
        &json!([
            {"channel": channel, "n": 0},
            {"channel": channel, "n": 1, "twice": true},
        ]),
    )
    .await;
    assert_eq!(answer["request_id"], key.as_str(), "{answer}");
    let want = [
        provenance("first", &v1, &format!("http:{topic}/{key}#0")),
        provenance("first", &v1, &format!("http:{topic}/{key}#1")),
        provenance("second", &v1, &format!("http:{topic}/{key}#1")),
    ];
    let live = ws.notifications(3).await;
    let got: Vec<&Value> = live.iter().map(|f| &f["provenance"]).collect();
    assert_eq!(got, want.iter().collect::<Vec<_>>(), "WebSocket frames");
    let streamed = sse_notifications(&mut sse, 3).await;
    let got: Vec<&Value> = streamed.iter().map(|f| &f["provenance"]).collect();
    assert_eq!(got, want.iter().collect::<Vec<_>>(), "SSE frames");

    // A new version: new notifications name it, stored ones keep theirs.
    let v2 = activate(&h, &rules(&topic, "two")).await;
    assert_ne!(v1, v2);
    post_batch(
        &h,
        &topic,
        &unique("req"),
        &json!({"channel": channel, "n": 2}),
    )
    .await;
    assert_eq!(
        ws.notifications(1).await[0]["provenance"]["rules_version"],
        v2.as_str()
    );
    let history = get_json(&h, &format!("/channels/{channel}/notifications")).await;
    let versions: Vec<&Value> = history["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| &n["provenance"]["rules_version"])
        .collect();
    assert_eq!(versions, [&json!(v1), &json!(v1), &json!(v1), &json!(v2)]);
    assert_eq!(history["notifications"][2]["provenance"], want[2]);

    // Explain shows the same provenance beside each appended offset.
    let events = get_json(&h, &format!("/admin/events?topic={topic}")).await;
    let second = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"]["n"] == 1)
        .unwrap();
    assert_eq!(second["locator"], format!("http:{topic}/{key}#1"));
    let explained = get_json(&h, &format!("/admin/explain?event={}", second["id"])).await;
    let by_rule: Vec<(&Value, &Value)> = explained["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                &r["notifications"][0]["offset"],
                &r["notifications"][0]["provenance"],
            )
        })
        .collect();
    assert_eq!(
        by_rule,
        [(&json!(2), &want[1]), (&json!(3), &want[2])],
        "{explained}"
    );
    let why = get_json(&h, &format!("/admin/explain?channel={channel}")).await;
    assert_eq!(why["events"][0]["source"], format!("http:{topic}/{key}#0"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_carry_no_provenance_unless_asked_but_history_always_does() {
    let h = Herald::start().await;
    let channel = unique("user");
    let (mut live, _) = h.subscribe(&format!("channel={channel}")).await;
    let answer = h
        .publish("plain", &json!({"channel": channel, "title": "t"}))
        .await;
    let request_id = answer["request_id"].as_str().unwrap();
    let frame = live.notifications(1).await.remove(0);
    assert!(frame.get("provenance").is_none(), "live: {frame}");
    let (mut replay, _) = h.subscribe(&format!("channel={}", unique("other"))).await;
    replay
        .send_json(&json!({"type": "subscribe", "channel": channel, "rewind": 1}))
        .await;
    let frame = replay.notifications(1).await.remove(0);
    assert!(frame.get("provenance").is_none(), "replayed: {frame}");
    let history = get_json(&h, &format!("/channels/{channel}/notifications")).await;
    let rules = get_json(&h, "/admin/rules").await;
    assert_eq!(
        history["notifications"][0]["provenance"],
        provenance(
            "default",
            rules["live"]["id"].as_str().unwrap(),
            &format!("http:plain/{request_id}#0")
        )
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_events_name_their_topic_partition_and_offset() {
    let kafka = Kafka::shared();
    let topic = kafka.topic("prov", 2).await;
    let mut source = kafka::source(&kafka.brokers, &[&topic], &unique("g"));
    source.max_in_flight = Some(4);
    let h = Herald::start_with(|c| {
        c.delivery.provenance = true;
        c.sources = vec![kafka::kafka_source(source)];
    })
    .await;
    h.wait_ready(200, common::WAIT).await.unwrap();
    let version = get_json(&h, "/admin/rules").await["live"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let channel = unique("user");
    let (mut client, _) = h.subscribe(&format!("channel={channel}")).await;
    let mut sent = Vec::new();
    for n in 0..4 {
        let partition = n % 2;
        let event = json!({"channel": channel, "title": n.to_string()});
        let offset = kafka
            .send(&topic, partition, None, event.to_string().as_bytes(), &[])
            .await;
        sent.push((n.to_string(), partition, offset));
    }
    let frames = client.notifications(4).await;
    for (title, partition, offset) in &sent {
        let frame = frames
            .iter()
            .find(|f| f["title"] == title.as_str())
            .unwrap();
        assert_eq!(
            frame["provenance"],
            provenance(
                "default",
                &version,
                &format!("kafka:{topic}/{partition}@{offset}")
            ),
            "{frame}"
        );
    }
    let history = get_json(&h, &format!("/channels/{channel}/notifications")).await;
    let sources: std::collections::BTreeSet<String> = history["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["provenance"]["source"].as_str().unwrap().to_string())
        .collect();
    let want = sent
        .iter()
        .map(|(_, p, o)| format!("kafka:{topic}/{p}@{o}"))
        .collect();
    assert_eq!(sources, want);
    tokio::time::timeout(Duration::from_secs(30), h.stop())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_events_name_their_queue_and_message_id_or_hash() {
    let mut broker = Broker::connect().await;
    let queue = broker.queue_name("q");
    let exchange = broker.exchange_name("x");
    let h = Herald::start_with(|c| {
        c.delivery.provenance = true;
        c.sources = vec![SourceConfig::Amqp(amqp::source(
            &queue,
            &[(&exchange, "#")],
        ))];
    })
    .await;
    h.wait_ready(200, common::WAIT).await.unwrap();
    let version = get_json(&h, "/admin/rules").await["live"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let channel = unique("user");
    let (mut client, _) = h.subscribe(&format!("channel={channel}")).await;
    let id = unique("m");
    let with_id = json!({"channel": channel, "title": "with id"}).to_string();
    let props = BasicProperties::default().with_message_id(id.as_str().into());
    assert!(
        broker
            .publish(&exchange, "orders.a", with_id.as_bytes(), props)
            .await
    );
    let without = json!({"channel": channel, "title": "without"}).to_string();
    let props = BasicProperties::default();
    assert!(
        broker
            .publish(&exchange, "orders.b", without.as_bytes(), props)
            .await
    );
    // Without a message id, the hash herald dedupes by (exchange, routing
    // key and body, each length-prefixed).
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for part in [exchange.as_bytes(), b"orders.b", without.as_bytes()] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let frames = client.notifications(2).await;
    assert_eq!(
        frames[0]["provenance"],
        provenance("default", &version, &format!("amqp:{queue}/{id}"))
    );
    assert_eq!(
        frames[1]["provenance"],
        provenance(
            "default",
            &version,
            &format!("amqp:{queue}/xxh3:{:032x}", hasher.digest128())
        )
    );
    let history = get_json(&h, &format!("/channels/{channel}/notifications")).await;
    assert_eq!(
        history["notifications"][0]["provenance"],
        frames[0]["provenance"]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_store_keeps_provenance_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        Herald::start_with(|c| {
            c.delivery.provenance = true;
            c.store.kind = StoreKind::Disk;
            c.store.path = Some(dir.path().to_path_buf());
        })
    };
    let h = start().await;
    let channel = unique("user");
    let answer = h
        .publish("orders", &json!({"channel": channel, "title": "kept"}))
        .await;
    let version = get_json(&h, "/admin/rules").await["live"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let want = provenance(
        "default",
        &version,
        &format!("http:orders/{}#0", answer["request_id"].as_str().unwrap()),
    );
    h.stop().await;

    let h = start().await;
    let history = get_json(&h, &format!("/channels/{channel}/notifications")).await;
    assert_eq!(history["notifications"][0]["title"], "kept");
    assert_eq!(history["notifications"][0]["provenance"], want, "{history}");
    // Replayed from the database to a client that asked for provenance.
    let (mut client, _) = h.subscribe(&format!("channel={}", unique("other"))).await;
    client
        .send_json(&json!({"type": "subscribe", "channel": channel, "rewind": 1}))
        .await;
    assert_eq!(client.notifications(1).await[0]["provenance"], want);
    h.stop().await;
}
