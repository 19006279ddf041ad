//! The recorder and explain on real HTTP traffic: what became of each
//! event, and why a channel did or did not get a notification.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Herald, unique};
use serde_json::{Value, json};

/// Orders: shipped ones over 100 notify the user (once per order), fragile
/// ones have a template that reads a field the events lack.
fn rules(topic: &str) -> String {
    format!(
        r#"rules:
  - id: shipped
    match: {{ topic: "{topic}" }}
    when: 'event.type == "order.shipped" and event.total > 100'
    emit:
      channel: "user:{{{{ event.user_id }}}}"
      title: "Order {{{{ event.order_id }}}} shipped"
      dedupe_key: "shipped-{{{{ event.order_id }}}}"
  - id: fragile
    match: {{ topic: "{topic}" }}
    when: 'event.type == "order.fragile"'
    emit:
      channel: "user:{{{{ event.user_id }}}}"
      title: "{{{{ event.handling.note }}}}"
"#
    )
}

async fn get(h: &Herald, path: &str) -> (u16, Value) {
    let (status, body) = h.get(path).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn rule<'a>(explained: &'a Value, id: &str) -> &'a Value {
    explained["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == id)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_answers_for_matched_filtered_failed_and_duplicate_events() {
    let h = Herald::start().await;
    let topic = unique("orders");
    let res = reqwest::Client::new()
        .put(format!("{}/admin/rules", h.base))
        .body(rules(&topic))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "{}", res.text().await.unwrap());
    let user = fastrand::u32(..);
    let channel = format!("user:{user}");
    let shipped = json!({"type": "order.shipped", "order_id": 7, "user_id": user, "total": 150});
    h.publish(&topic, &shipped).await;
    h.publish(&topic, &shipped).await; // redelivered: a duplicate
    h.publish(
        &topic,
        &json!({"type": "order.shipped", "order_id": 8, "user_id": user, "total": 50}),
    )
    .await;
    h.publish(
        &topic,
        &json!({"type": "order.fragile", "order_id": 9, "user_id": user}),
    )
    .await;

    let (status, listed) = get(&h, &format!("/admin/events?topic={topic}")).await;
    assert_eq!(status, 200, "{listed}");
    let events = listed["events"].as_array().unwrap();
    let results: Vec<&str> = events
        .iter()
        .map(|e| e["outcome"]["result"].as_str().unwrap())
        .collect();
    assert_eq!(
        results,
        [
            "appended",
            "duplicate",
            "no_rule_matched",
            "all_rules_failed"
        ]
    );
    assert_eq!(
        events[0]["outcome"]["notifications"][0]["channel"],
        channel.as_str()
    );
    assert_eq!(events[0]["outcome"]["notifications"][0]["offset"], 1);
    assert_eq!(events[3]["outcome"]["failures"][0]["field"], "emit.title");
    let ids: Vec<u64> = events.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    let (_, by_channel) = get(&h, &format!("/admin/events?channel={channel}")).await;
    assert_eq!(
        by_channel["events"].as_array().unwrap().len(),
        2,
        "{by_channel}"
    );

    // Matched and appended.
    let (status, matched) = get(&h, &format!("/admin/explain?event={}", ids[0])).await;
    assert_eq!(status, 200, "{matched}");
    let shipped_rule = rule(&matched, "shipped");
    assert_eq!(shipped_rule["outcome"], "matched");
    assert_eq!(shipped_rule["topic"]["ok"], true);
    assert_eq!(shipped_rule["when"]["result"], true);
    assert_eq!(shipped_rule["when"]["values"]["event.total"], 150);
    let n = &shipped_rule["notifications"][0];
    assert_eq!(n["channel"], channel.as_str());
    assert_eq!(n["dedupe_key"], "shipped-7");
    assert_eq!(n["fields"]["emit.title"]["value"], "Order 7 shipped");
    assert_eq!(
        (n["offset"].as_u64(), n["duplicate"].as_bool()),
        (Some(1), Some(false))
    );
    assert_eq!(rule(&matched, "fragile")["outcome"], "when_false");

    // The same event again: a duplicate of offset 1.
    let (_, duplicate) = get(&h, &format!("/admin/explain?event={}", ids[1])).await;
    let n = &rule(&duplicate, "shipped")["notifications"][0];
    assert_eq!(
        (n["offset"].as_u64(), n["duplicate"].as_bool()),
        (Some(1), Some(true))
    );

    // Filtered out by `when`, with the value it read.
    let (_, filtered) = get(&h, &format!("/admin/explain?event={}", ids[2])).await;
    let r = rule(&filtered, "shipped");
    assert_eq!(r["outcome"], "when_false");
    assert_eq!(r["when"]["values"]["event.total"], 50);
    assert_eq!(r["channels_if_matched"][0], channel.as_str());

    // Failed to render: the field and the error.
    let (_, failed) = get(&h, &format!("/admin/explain?event={}", ids[3])).await;
    let n = &rule(&failed, "fragile")["notifications"][0];
    assert_eq!(n["ok"], false);
    assert_eq!(n["fields"]["emit.channel"]["value"], channel.as_str());
    let error = n["fields"]["emit.title"]["error"].as_str().unwrap();
    assert!(error.contains("undefined"), "{error}");

    // The support question: why did (or didn't) the user get these?
    let (status, answer) = get(&h, &format!("/admin/explain?channel={channel}")).await;
    assert_eq!(status, 200, "{answer}");
    let answers = answer["events"].as_array().unwrap();
    assert_eq!(answers.len(), 4, "{answer}");
    let reached: Vec<bool> = answers
        .iter()
        .map(|a| a["reached"].as_bool().unwrap())
        .collect();
    assert_eq!(reached, [true, true, false, false]);
    let why = |i: usize| {
        answers[i]["why"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap())
            .collect::<Vec<_>>()
            .join(" | ")
    };
    assert!(why(0).contains("appended offset 1"), "{}", why(0));
    assert!(why(1).contains("already in the log"), "{}", why(1));
    assert!(
        why(2).contains("was false") && why(2).contains("event.total = 50"),
        "{}",
        why(2)
    );
    assert!(
        why(3).contains("failed to render") && why(3).contains("emit.title"),
        "{}",
        why(3)
    );
    let (_, since) = get(
        &h,
        &format!("/admin/explain?channel={channel}&since={}", ids[2]),
    )
    .await;
    assert_eq!(since["events"].as_array().unwrap().len(), 2, "{since}");
    let (status, _) = get(&h, "/admin/explain?event=999999").await;
    assert_eq!(status, 404);
    let (status, _) = get(&h, "/admin/explain").await;
    assert_eq!(status, 400);

    // `herald rules record` saves them for offline use.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "rules", "record", "--admin", &h.base, "--topic", &topic, "--out",
        ])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let saved: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(saved, events.to_vec());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorder_keeps_the_newest_events_and_can_be_off() {
    let h = Herald::start_with(|c| c.recorder.capacity = 3).await;
    let topic = unique("t");
    for i in 0..5 {
        h.publish(&topic, &json!({"i": i, "channel": "broadcast"}))
            .await;
    }
    let (_, listed) = get(&h, "/admin/events").await;
    let kept: Vec<i64> = listed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["i"].as_i64().unwrap())
        .collect();
    assert_eq!(kept, [2, 3, 4]);
    h.stop().await;

    let h = Herald::start_with(|c| c.recorder.capacity = 0).await;
    let (status, body) = get(&h, "/admin/events").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("recorder.capacity")
    );
    h.stop().await;
}
