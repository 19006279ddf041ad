//! HTTP ingest and the operations endpoints, against a real server.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Herald, unique};
use herald::source::SourceConfig;
use herald::source::http::HttpSourceConfig;
use serde_json::json;

#[tokio::test]
async fn an_object_or_an_array_is_accepted_once_appended() {
    let h = Herald::start().await;
    let channel = unique("c");
    let (mut client, _) = h.subscribe(&format!("channel={channel}")).await;
    let one = h
        .publish("orders", &json!({"channel": channel, "title": "one"}))
        .await;
    let request_id = one["request_id"].as_str().unwrap().to_string();
    assert_eq!(
        one,
        json!({"events": 1, "notifications": 1, "duplicates": 0, "failed_rules": 0,
               "request_id": request_id})
    );
    let many = h
        .publish(
            "orders",
            &json!([{"channel": channel, "title": "two"}, {"channel": channel, "title": "three"}]),
        )
        .await;
    assert_eq!(many["events"], 2);
    assert_eq!(many["notifications"], 2);
    // Each request is named (provenance says `http:<topic>/<request id>#i`).
    assert_ne!(many["request_id"], request_id.as_str());
    let titles: Vec<_> = client
        .notifications(3)
        .await
        .iter()
        .map(|n| n["title"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(titles, ["one", "two", "three"], "array order is log order");
    let empty = h.publish("orders", &json!([])).await;
    assert_eq!(empty["events"], 0);
    h.stop().await;
}

#[tokio::test]
async fn invalid_json_is_400_with_a_reason() {
    let h = Herald::start().await;
    for (body, needle) in [
        (&b"{not json"[..], "invalid JSON"),
        (b"42", "expected a JSON object"),
        (b"[{\"a\":1}, 2]", "element 1"),
        (b"", "invalid JSON"),
    ] {
        let (status, answer) = h.post_raw("t", body.to_vec()).await;
        assert_eq!(status, 400, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(needle),
            "{answer}"
        );
    }
    let (_, metrics) = h.get("/metrics").await;
    assert!(
        metrics.contains(r#"herald_events_rejected_total{source="http",reason="invalid_json"} 4"#),
        "{metrics}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_and_smaller_ones_still_pass() {
    let h = Herald::start_with(|c| {
        c.sources = vec![SourceConfig::Http(HttpSourceConfig {
            max_body_bytes: 1024,
            ..HttpSourceConfig::default()
        })];
    })
    .await;
    let big = json!({"title": "x".repeat(2000)});
    let (status, answer) = h.post("t", &big).await;
    assert_eq!(status, 413);
    assert!(
        answer["error"].as_str().unwrap().contains("1024"),
        "{answer}"
    );
    h.publish("t", &json!({"title": "small"})).await;
    let (_, metrics) = h.get("/metrics").await;
    assert!(metrics.contains(r#"reason="too_large"} 1"#), "{metrics}");
    h.stop().await;
}

#[tokio::test]
async fn too_many_events_in_one_request_is_413() {
    let h = Herald::start_with(|c| {
        c.sources = vec![SourceConfig::Http(HttpSourceConfig {
            max_events_per_request: 3,
            ..HttpSourceConfig::default()
        })];
    })
    .await;
    let (status, answer) = h.post("t", &json!([{}, {}, {}, {}])).await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("at most 3"),
        "{answer}"
    );
    let (status, _) = h.post("t", &json!([{}, {}, {}])).await;
    assert_eq!(status, 202);
    h.stop().await;
}

#[tokio::test]
async fn a_non_ascii_idempotency_key_is_400() {
    let h = Herald::start().await;
    let res = reqwest::Client::new()
        .post(format!("{}/events/t", h.base))
        .header(
            "idempotency-key",
            reqwest::header::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        )
        .json(&json!({"title": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    h.stop().await;
}

#[tokio::test]
async fn the_default_limit_is_one_mebibyte() {
    let h = Herald::start().await;
    let (status, _) = h
        .post("t", &json!({"title": "x".repeat(1024 * 1024)}))
        .await;
    assert_eq!(status, 413);
    let (status, _) = h
        .post("t", &json!({"title": "x".repeat(1000 * 1000)}))
        .await;
    assert_eq!(status, 202);
    h.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_makes_a_retried_request_append_nothing() {
    let h = Herald::start().await;
    let channel = unique("c");
    let client = reqwest::Client::new();
    let post = |key: &'static str| {
        client
            .post(format!("{}/events/t", h.base))
            .header("idempotency-key", key)
            .json(&json!([{"channel": channel, "title": "a"}, {"channel": channel, "title": "b"}]))
            .send()
    };
    let first: serde_json::Value = post("order-7").await.unwrap().json().await.unwrap();
    assert_eq!(first["notifications"], 2);
    let retry: serde_json::Value = post("order-7").await.unwrap().json().await.unwrap();
    assert_eq!(retry["notifications"], 0);
    assert_eq!(retry["duplicates"], 2);
    let other: serde_json::Value = post("order-8").await.unwrap().json().await.unwrap();
    assert_eq!(other["notifications"], 2);
    // Without the header every request is new.
    h.publish("t", &json!({"channel": channel})).await;
    h.publish("t", &json!({"channel": channel})).await;
    let (mut c, sub) = h.subscribe(&format!("channel={channel}")).await;
    assert!(sub["position"].as_str().unwrap().ends_with("-6"), "{sub}");
    c.assert_quiet(std::time::Duration::from_millis(50)).await;
    h.stop().await;
}

#[tokio::test]
async fn a_failing_rule_drops_its_notification_and_the_rest_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        "rules:\n  - id: needs-name\n    emit: { channel: \"{{ event.to }}\", title: \"Hi {{ event.name }}\" }\n",
    )
    .unwrap();
    let h = Herald::start_with(|c| c.rules.path = Some(rules.clone())).await;
    let to = unique("u");
    let (mut client, _) = h.subscribe(&format!("channel={to}")).await;
    let answer = h
        .publish("t", &json!([{"to": to}, {"to": to, "name": "Ada"}]))
        .await;
    assert_eq!(answer["notifications"], 1);
    assert_eq!(answer["failed_rules"], 1);
    assert_eq!(client.next_of_type("notification").await["title"], "Hi Ada");
    let (_, metrics) = h.get("/metrics").await;
    assert!(
        metrics.contains(r#"herald_rule_failures_total{rule="needs-name"} 1"#),
        "{metrics}"
    );
    h.stop().await;
}

#[tokio::test]
async fn rules_reload_on_change_and_a_broken_version_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    let version = |title: &str| {
        format!(
            "rules:\n  - id: r\n    emit: {{ channel: \"{{{{ event.to }}}}\", title: \"{title}\" }}\n"
        )
    };
    std::fs::write(&rules, version("v1")).unwrap();
    let h = Herald::start_with(|c| c.rules.path = Some(rules.clone())).await;
    let to = unique("u");
    let (mut client, _) = h.subscribe(&format!("channel={to}")).await;
    h.publish("t", &json!({"to": to})).await;
    assert_eq!(client.next_of_type("notification").await["title"], "v1");

    std::fs::write(&rules, version("v2")).unwrap();
    let mut title = String::new();
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        h.publish("t", &json!({"to": to})).await;
        title = client.next_of_type("notification").await["title"]
            .as_str()
            .unwrap()
            .to_string();
        if title == "v2" {
            break;
        }
    }
    assert_eq!(title, "v2", "the new version went live");

    std::fs::write(
        &rules,
        "rules:\n  - id: r\n    emit: { channel: \"{{ oops\" }\n",
    )
    .unwrap();
    let mut rejected = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (_, metrics) = h.get("/metrics").await;
        if metrics.contains(r#"herald_rules_reloads_total{result="rejected"} 1"#) {
            rejected = true;
            break;
        }
    }
    assert!(rejected, "the broken version was seen and rejected");
    h.publish("t", &json!({"to": to})).await;
    assert_eq!(
        client.next_of_type("notification").await["title"],
        "v2",
        "v2 stays live"
    );
    h.stop().await;
}

/// Reading the rules file (a `cat`, another herald loading it, the
/// watcher's own read) is not a change, saving the same bytes is not
/// either, one edit is one reload, and a broken version is reported once.
/// Mutation: without the content comparison in `reload_if_changed` the
/// count never stays put (fails). The event filter, which keeps the
/// watcher from re-reading the file after its own reads, is checked by the
/// unit test in `rules/watch.rs`.
#[tokio::test]
async fn rules_reload_once_per_content_change() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    let v1 = "rules:\n  - id: r\n    emit: { channel: c, title: v1 }\n";
    std::fs::write(&rules, v1).unwrap();
    let h = Herald::start_with(|c| c.rules.path = Some(rules.clone())).await;
    let ok = r#"herald_rules_reloads_total{result="ok"}"#;
    let rejected = r#"herald_rules_reloads_total{result="rejected"}"#;
    // Several debounce periods: long enough for a read-triggered reload to
    // show (and, before the fix, to repeat).
    let window = Duration::from_secs(2);
    let wait_for = |series: &'static str, want: f64| {
        let h = &h;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while h.metric(series).await != want {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{series} never reached {want}: {}",
                    h.metric(series).await
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for(ok, 1.0).await; // the start

    for _ in 0..3 {
        std::fs::read_to_string(&rules).unwrap();
    }
    std::fs::write(&rules, v1).unwrap(); // saved again, unchanged
    tokio::time::sleep(window).await;
    assert_eq!(
        h.metric(ok).await,
        1.0,
        "reads and an unchanged save reload nothing"
    );

    std::fs::write(&rules, v1.replace("v1", "v2")).unwrap();
    wait_for(ok, 2.0).await;
    tokio::time::sleep(window).await;
    assert_eq!(h.metric(ok).await, 2.0, "one edit, one reload");

    std::fs::write(
        &rules,
        "rules:\n  - id: r\n    emit: { title: no-channel }\n",
    )
    .unwrap();
    wait_for(rejected, 1.0).await;
    std::fs::read_to_string(&rules).unwrap();
    tokio::time::sleep(window).await;
    assert_eq!(
        h.metric(rejected).await,
        1.0,
        "a broken version is reported once"
    );
    assert_eq!(h.metric(ok).await, 2.0);
    h.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let h = Herald::start().await;
    let (status, body) = h.get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = h.get("/readyz").await;
    assert_eq!(status, 200);
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["sources"]["http"]["ready"], true);
    let (status, body) = h.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("herald_sessions "), "{body}");
    let (status, page) = h.get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains("/notifications"));
    h.stop().await;
}

/// An event no rule matches is not an error, but it is counted (and the
/// request still answers 202 with nothing appended).
#[tokio::test]
async fn an_event_no_rule_matches_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        "rules:\n  - id: orders-only\n    match: { topic: orders }\n    emit: { channel: \"{{ event.to }}\", title: t }\n",
    )
    .unwrap();
    let h = Herald::start_with(|c| c.rules.path = Some(rules.clone())).await;
    let answer = h
        .publish("billing", &json!([{"to": "a"}, {"to": "b"}]))
        .await;
    assert_eq!(
        answer,
        json!({"events": 2, "notifications": 0, "duplicates": 0, "failed_rules": 0,
               "request_id": answer["request_id"]})
    );
    h.publish("orders", &json!({"to": unique("u")})).await;
    let metrics = h.metrics().await;
    assert_eq!(
        common::metric_value(
            &metrics,
            r#"herald_events_rejected_total{source="http",reason="no_rule_matched"}"#
        ),
        2.0,
        "{metrics}"
    );
    h.stop().await;
}
