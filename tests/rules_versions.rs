//! Rules versions through the admin API: file edits, activation, rollback,
//! a restart with the disk store, and two nodes on one Redis.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::redis_server::{Prefix, SHARED_URL};
use common::{Herald, WAIT, unique};
use herald::config::{Config, StoreKind};
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-for-the-rules-tests";

/// A rules file sending `topic` events to `channel`, titled `title`.
fn rules(channel: &str, title: &str) -> String {
    format!(
        "rules:\n  - id: orders\n    match: {{ topic: \"orders\" }}\n    emit:\n      channel: \"{channel}\"\n      title: \"{title} {{{{ event.order_id }}}}\"\n      data: {{ total: \"{{{{ event.total }}}}\" }}\n"
    )
}

async fn admin(
    h: &Herald,
    method: reqwest::Method,
    path: &str,
    body: Option<String>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", h.base))
        .bearer_auth(ADMIN);
    if let Some(body) = body {
        req = req.header("content-type", "application/yaml").body(body);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// `/metrics`, with the admin token.
async fn metrics(h: &Herald) -> String {
    reqwest::Client::new()
        .get(format!("{}/metrics", h.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn show(h: &Herald) -> Value {
    let (status, body) = admin(h, reqwest::Method::GET, "/admin/rules", None).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn history_ids(body: &Value) -> Vec<String> {
    body["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

async fn start(edit: impl FnOnce(&mut Config)) -> Herald {
    Herald::start_with(|c| {
        c.admin.token = Some(herald::auth::Secret::new(ADMIN));
        edit(c);
    })
    .await
}

/// Poll `GET /admin/rules` until `done` holds, or fail after [`WAIT`].
async fn wait_rules(h: &Herald, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let body = show(h).await;
        if done(&body) {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The notification without what the log adds (id, offset, time).
fn shape(mut n: Value) -> Value {
    for key in ["id", "offset", "time", "epoch"] {
        n.as_object_mut().unwrap().remove(key);
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_edits_make_one_version_per_content_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    let channel = unique("orders");
    let v1 = rules(&channel, "v1");
    std::fs::write(&path, &v1).unwrap();
    let h = start(|c| c.rules.path = Some(path.clone())).await;
    let first = show(&h).await;
    assert_eq!(first["mode"], "file");
    assert_eq!(first["live"]["id"], herald::rules::content_id(&v1));
    assert_eq!(history_ids(&first).len(), 1);

    let v2 = rules(&channel, "v2");
    std::fs::write(&path, &v2).unwrap();
    std::fs::write(&path, &v2).unwrap(); // saved twice: one version
    wait_rules(&h, "v2 recorded", |b| history_ids(b).len() == 2).await;
    std::fs::write(
        &path,
        "rules:\n  - id: orders\n    emit: { channel: \"{{ x\" }\n",
    )
    .unwrap();
    let rejected = r#"herald_rules_reloads_total{result="rejected"}"#;
    assert_eq!(
        common::wait_metric(|| metrics(&h), rejected, 1.0).await,
        1.0
    );
    let v3 = rules(&channel, "v3");
    std::fs::write(&path, &v3).unwrap();
    let body = wait_rules(&h, "v3 recorded", |b| history_ids(b).len() == 3).await;
    let ids: Vec<String> = [&v3, &v2, &v1]
        .iter()
        .map(|t| herald::rules::content_id(t))
        .collect();
    assert_eq!(history_ids(&body), ids);
    assert_eq!(body["history"][0]["previous"], ids[1]);
    assert_eq!(body["history"][0]["origin"], path.display().to_string());
    assert_eq!(
        common::metric_value(&metrics(&h).await, rejected),
        1.0,
        "the bad edit is reported once"
    );

    // The file is the source of truth: the API says so.
    let (status, answer) = admin(&h, reqwest::Method::PUT, "/admin/rules", Some(v1)).await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("rules.path"));
    let (status, _) = admin(&h, reqwest::Method::POST, "/admin/rules/rollback", None).await;
    assert_eq!(status, 409);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_activates_rejects_with_diagnostics_and_rollback_restores_the_output() {
    let h = start(|_| {}).await;
    let channel = unique("orders");
    let (mut client, _) = h.subscribe(&format!("channel={channel}")).await;
    let event = json!({"order_id": 7, "total": 12.5});

    // The admin token guards the rules API.
    let res = reqwest::Client::new()
        .put(format!("{}/admin/rules", h.base))
        .body(rules(&channel, "v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);

    let (status, answer) = admin(
        &h,
        reqwest::Method::PUT,
        "/admin/rules",
        Some(rules(&channel, "v1")),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["activated"], true);
    let v1 = answer["version"]["id"].as_str().unwrap().to_string();
    h.publish("orders", &event).await;
    let before = client.next_of_type("notification").await;
    assert_eq!(before["title"], "v1 7");

    let broken = rules(&channel, "{{ event.order_id").replace("{{ event.order_id }}", "");
    let (status, answer) = admin(&h, reqwest::Method::PUT, "/admin/rules", Some(broken)).await;
    assert_eq!(status, 422, "{answer}");
    let d = &answer["diagnostics"][0];
    assert_eq!(d["rule"], "orders", "{answer}");
    assert_eq!(d["field"], "emit.title", "{answer}");
    assert_eq!(d["line"], 6, "{answer}");

    let (status, answer) = admin(
        &h,
        reqwest::Method::PUT,
        "/admin/rules",
        Some(rules(&channel, "v2")),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["version"]["previous"], v1.as_str());
    h.publish("orders", &event).await;
    assert_eq!(client.next_of_type("notification").await["title"], "v2 7");

    let (status, answer) = admin(&h, reqwest::Method::POST, "/admin/rules/rollback", None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["version"]["id"], v1.as_str());
    assert_eq!(answer["version"]["origin"], "rollback");
    h.publish("orders", &event).await;
    let after = client.next_of_type("notification").await;
    assert_eq!(
        serde_json::to_string(&shape(after)).unwrap(),
        serde_json::to_string(&shape(before)).unwrap(),
        "the rolled-back version renders byte for byte what it did"
    );

    let (status, answer) = admin(
        &h,
        reqwest::Method::POST,
        "/admin/rules/rollback?to=0123456789ab",
        None,
    )
    .await;
    assert_eq!(status, 404, "{answer}");
    let metrics = metrics(&h).await;
    assert!(
        metrics.contains(&format!(
            "herald_rules_activations_total{{version=\"{v1}\",origin=\"rollback\"}} 1"
        )),
        "{metrics}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_the_disk_store_keeps_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let channel = unique("orders");
    let disk = |c: &mut Config| {
        c.store.kind = StoreKind::Disk;
        c.store.path = Some(dir.path().to_path_buf());
    };
    let h = start(disk).await;
    let (status, answer) = admin(
        &h,
        reqwest::Method::PUT,
        "/admin/rules",
        Some(rules(&channel, "kept")),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let before = show(&h).await;
    h.stop().await;

    let h = start(disk).await;
    let after = show(&h).await;
    assert_eq!(after["live"]["id"], answer["version"]["id"]);
    assert_eq!(after["history"], before["history"]);
    assert_eq!(history_ids(&after).len(), 2, "built-in, then the PUT");
    let (mut client, _) = h.subscribe(&format!("channel={channel}")).await;
    h.publish("orders", &json!({"order_id": 1, "total": 2}))
        .await;
    assert_eq!(client.next_of_type("notification").await["title"], "kept 1");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_on_one_redis_node_is_live_on_the_other() {
    let prefix = Prefix::shared();
    let node = |p: String| {
        move |c: &mut Config| {
            c.store.kind = StoreKind::Redis;
            c.store.url = Some(SHARED_URL.into());
            c.store.key_prefix = Some(p);
        }
    };
    let a = start(node(prefix.to_string())).await;
    let b = start(node(prefix.to_string())).await;
    let channel = unique("orders");
    let (mut on_b, _) = b.subscribe(&format!("channel={channel}")).await;

    let (status, answer) = admin(
        &a,
        reqwest::Method::PUT,
        "/admin/rules",
        Some(rules(&channel, "from-a")),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["version"]["id"].as_str().unwrap().to_string();
    wait_rules(&b, "b follows a", |body| body["live"]["id"] == id.as_str()).await;
    b.publish("orders", &json!({"order_id": 3, "total": 1}))
        .await;
    assert_eq!(on_b.next_of_type("notification").await["title"], "from-a 3");

    // And back, from the other node.
    let (status, answer) = admin(&b, reqwest::Method::POST, "/admin/rules/rollback", None).await;
    assert_eq!(status, 200, "{answer}");
    let builtin = herald::rules::content_id(herald::rules::DEFAULT_RULES);
    assert_eq!(answer["version"]["id"], builtin.as_str());
    let body = wait_rules(&a, "a follows b", |body| {
        body["live"]["id"] == builtin.as_str()
    })
    .await;
    assert_eq!(history_ids(&body), vec![builtin.clone(), id, builtin]);
    a.stop().await;
    b.stop().await;
}
