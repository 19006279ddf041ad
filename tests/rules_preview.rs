//! Preview and diff of a rules edit against recorded HTTP traffic.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{Herald, unique};
use serde_json::{Value, json};

fn rules(topic: &str, channel: &str, title: &str) -> String {
    format!(
        "rules:\n  - id: orders\n    match: {{ topic: \"{topic}\" }}\n    emit:\n      channel: \"{channel}:{{{{ event.user_id }}}}\"\n      title: \"{title}\"\n"
    )
}

async fn preview(h: &Herald, candidate: &str) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(format!("{}/admin/rules/preview", h.base))
        .header("content-type", "application/yaml")
        .body(candidate.to_string())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

fn kinds(diff: &Value) -> Vec<String> {
    diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                c["kind"].as_str().unwrap(),
                c["notification"]["channel"].as_str().unwrap_or("")
            )
        })
        .collect()
}

fn diff(old: &std::path::Path, new: &std::path::Path, events: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["rules", "diff"])
        .arg(old)
        .arg(new)
        .arg("--events")
        .arg(events)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_and_diff_show_what_an_edit_changes_on_recorded_events() {
    let h = Herald::start().await;
    let topic = unique("orders");
    let live = rules(&topic, "user", "Order {{ event.order_id }}");
    let res = reqwest::Client::new()
        .put(format!("{}/admin/rules", h.base))
        .body(live.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    for i in 0..3 {
        h.publish(&topic, &json!({"order_id": i, "user_id": 40 + i}))
            .await;
    }
    // An event on another topic: no rule, no difference.
    h.publish(&unique("other"), &json!({"order_id": 9})).await;

    // Nothing changes: an empty diff.
    let (status, same) = preview(&h, &format!("# reworded\n{live}")).await;
    assert_eq!(status, 200, "{same}");
    assert_eq!(same["summary"]["events"], 4);
    assert_eq!(same["summary"]["events_changed"], 0);
    assert_eq!(same["differences"], json!([]));

    // A renamed channel: each affected event is removed + added.
    let renamed = rules(&topic, "customer", "Order {{ event.order_id }}");
    let (status, moved) = preview(&h, &renamed).await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["summary"]["events_changed"], 3, "{moved}");
    assert_eq!(moved["summary"]["added"], 3);
    assert_eq!(moved["summary"]["removed"], 3);
    assert_eq!(moved["summary"]["regressions"], 0);
    assert_eq!(
        moved["summary"]["matched"]["orders"],
        json!({"old": 3, "new": 3})
    );
    assert_eq!(
        kinds(&moved["differences"][0]),
        ["removed user:40", "added customer:40"]
    );
    let (_, one) = {
        let res = reqwest::Client::new()
            .post(format!(
                "{}/admin/rules/preview?channel=customer:41",
                h.base
            ))
            .body(renamed.clone())
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json::<Value>().await.unwrap())
    };
    assert_eq!(one["differences"].as_array().unwrap().len(), 1, "{one}");
    let (_, paged) = {
        let res = reqwest::Client::new()
            .post(format!("{}/admin/rules/preview?limit=2", h.base))
            .body(renamed.clone())
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json::<Value>().await.unwrap())
    };
    assert_eq!(paged["differences"].as_array().unwrap().len(), 2);
    assert_eq!(paged["next_cursor"], paged["differences"][1]["id"]);

    // A broken template: the failures, per rule.
    let broken = rules(&topic, "user", "Order {{ event.order.id }}");
    let (status, failing) = preview(&h, &broken).await;
    assert_eq!(status, 200, "{failing}");
    assert_eq!(
        failing["summary"]["failures"]["orders"],
        json!({"old": 0, "new": 3})
    );
    assert_eq!(failing["summary"]["regressions"], 3);
    let changes = &failing["differences"][0]["changes"];
    assert_eq!(changes[1]["kind"], "failed", "{changes}");
    assert_eq!(changes[1]["failure"]["field"], "emit.title");

    // A candidate that does not compile: diagnostics, nothing evaluated.
    let (status, rejected) =
        preview(&h, "rules:\n  - id: x\n    emit: { channel: \"{{ a\" }\n").await;
    assert_eq!(status, 422, "{rejected}");
    assert_eq!(rejected["diagnostics"][0]["line"], 3);

    // Offline: the same comparisons on the recorded events.
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let recorded = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["rules", "record", "--admin", &h.base, "--out"])
        .arg(&events)
        .status()
        .unwrap();
    assert!(recorded.success());
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let old = file("old.yaml", &live);
    let (code, out) = diff(&old, &file("renamed.yaml", &renamed), &events);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("added 3, removed 3"), "{out}");
    assert!(
        out.contains("- user:40") && out.contains("+ customer:40"),
        "{out}"
    );
    let (code, out) = diff(&old, &file("broken.yaml", &broken), &events);
    assert_eq!(code, 1, "a regression fails the diff: {out}");
    assert!(out.contains("fails at emit.title"), "{out}");
    let (code, out) = diff(&old, &old, &events);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("changed: 0"), "{out}");
    let (code, out) = diff(&old, &old, &file("bad.jsonl", "{\"not\": \"an event\"}\n"));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("line 1"), "{out}");
    h.stop().await;
}
