//! History: the stores' backwards read (memory, disk, Redis), the history
//! API `GET /channels/{channel}/notifications` over real HTTP with good and
//! bad inputs and tokens, and `rewind` on a WebSocket subscription.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::auth::{hs256, jwt, now, token_for};
use common::redis_server::{Prefix, SHARED_URL};
use common::{Herald, offsets, unique};
use herald::config::{StoreConfig, StoreKind};
use herald::delivery::hub::Hub;
use herald::metrics::Metrics;
use herald::store::{NewNotification, Page, Store};
use serde_json::{Value, json};

fn event(channel: &str, n: usize) -> Value {
    json!({ "type": "test.event", "channel": channel, "title": format!("n{n}"), "body": "b" })
}

async fn publish_n(h: &Herald, channel: &str, n: usize) {
    for i in 0..n {
        h.publish("t", &event(channel, i)).await;
    }
}

fn provenance(i: usize) -> String {
    format!(r#"{{"rule":"r{i}","rules_version":"0123456789ab","source":"http:t/req#{i}"}}"#)
}

fn page_offsets(page: &Page) -> Vec<u64> {
    page.entries.iter().map(|d| d.offset).collect()
}

/// What every store's `read_before` must do: with 1..=10 appended and 7
/// kept (4..=10), the newest below an offset, oldest first, never below
/// the oldest retained.
async fn check_read_before(store: Arc<dyn Store>) {
    let channel = unique("back");
    let batch = (0..10)
        .map(|i| NewNotification {
            channel: channel.clone(),
            dedupe_key: format!("k{i}"),
            fields: format!("\"title\":\"n{i}\""),
            // Odd ones stand for entries written before provenance.
            provenance: (i % 2 == 0).then(|| provenance(i)),
        })
        .collect();
    store.append(batch).await.unwrap();
    let read = |before: u64, limit: usize| {
        let (store, channel) = (store.clone(), channel.clone());
        async move { store.read_before(&channel, before, limit).await.unwrap() }
    };
    let newest = read(u64::MAX, 3).await;
    assert_eq!(page_offsets(&newest), [8, 9, 10]);
    assert_eq!((newest.first, newest.last), (4, 10));
    assert_eq!(page_offsets(&read(8, 3).await), [5, 6, 7]);
    assert_eq!(
        page_offsets(&read(6, 3).await),
        [4, 5],
        "retention stops it"
    );
    assert!(read(4, 3).await.entries.is_empty());
    assert!(read(1, 3).await.entries.is_empty());
    assert!(read(8, 0).await.entries.is_empty());
    assert_eq!(page_offsets(&read(50, 2).await), [9, 10], "past the head");
    assert_eq!(
        page_offsets(&read(u64::MAX, 100).await),
        [4, 5, 6, 7, 8, 9, 10]
    );
    let fields = format!("{{{}}}", read(6, 1).await.entries[0].fields);
    let fields: Value = serde_json::from_str(&fields).unwrap();
    assert_eq!(fields["title"], "n4");
    // Every store keeps provenance beside the fields, and an entry without
    // one reads without one (not as an empty or made-up object).
    for e in &read(u64::MAX, 100).await.entries {
        let i = usize::try_from(e.offset - 1).unwrap();
        let want = (i % 2 == 0).then(|| provenance(i));
        assert_eq!(e.provenance, want, "offset {}", e.offset);
    }
    let nobody = store
        .read_before(&unique("nobody"), u64::MAX, 5)
        .await
        .unwrap();
    assert!(nobody.entries.is_empty());
    assert_eq!(nobody.last, 0);
}

async fn open(config: StoreConfig) -> Arc<dyn Store> {
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(Hub::new(metrics.clone()));
    herald::store::open(&config, hub, metrics).await.unwrap()
}

fn keeping_seven(kind: StoreKind) -> StoreConfig {
    StoreConfig {
        kind,
        max_per_channel: 7,
        ..StoreConfig::default()
    }
}

#[tokio::test]
async fn memory_store_reads_backwards() {
    check_read_before(open(keeping_seven(StoreKind::Memory)).await).await;
}

#[tokio::test]
async fn disk_store_reads_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(StoreConfig {
        path: Some(dir.path().to_path_buf()),
        ..keeping_seven(StoreKind::Disk)
    })
    .await;
    check_read_before(store.clone()).await;
    store.close().await.unwrap();
}

#[tokio::test]
async fn redis_store_reads_backwards() {
    let prefix = Prefix::shared();
    let store = open(StoreConfig {
        url: Some(SHARED_URL.into()),
        key_prefix: Some(prefix.prefix.clone()),
        ..keeping_seven(StoreKind::Redis)
    })
    .await;
    // Reads wait for the store's live feed to follow Redis.
    let ready = tokio::time::Instant::now() + common::WAIT;
    while store.readiness().is_err() {
        assert!(tokio::time::Instant::now() < ready, "redis store ready");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    check_read_before(store.clone()).await;
    store.close().await.unwrap();
}

/// GET a history path; the status and the JSON body.
async fn history(h: &Herald, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(format!("{}{path}", h.base));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let cache = res.headers().get("cache-control").cloned();
    assert_eq!(cache.unwrap(), "no-store", "{path}");
    (status, res.json().await.unwrap())
}

#[tokio::test]
async fn history_api_pages_forward_and_back_across_the_retention_boundary() {
    let h = Herald::start_with(|c| c.store.max_per_channel = 5).await;
    let channel = unique("inbox");
    publish_n(&h, &channel, 8).await; // 1..=8, 4..=8 kept
    let path = format!("/channels/{channel}/notifications");
    let (status, newest) = history(&h, &format!("{path}?limit=2"), None).await;
    assert_eq!(status, 200);
    assert_eq!(offsets(newest["notifications"].as_array().unwrap()), [7, 8]);
    assert_eq!(newest["notifications"][1]["title"], "n7");
    assert_eq!(newest["more"], true);
    assert_eq!(newest["recovered"], true);
    let epoch = common::epoch_of(newest["position"].as_str().unwrap());
    // Back: 5..=6, then 4 and the end.
    let (_, page) = history(
        &h,
        &format!(
            "{path}?before={}&limit=2",
            newest["position"].as_str().unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(offsets(page["notifications"].as_array().unwrap()), [5, 6]);
    let (_, page) = history(
        &h,
        &format!(
            "{path}?before={}&limit=2",
            page["position"].as_str().unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(offsets(page["notifications"].as_array().unwrap()), [4]);
    assert_eq!(
        (page["more"].clone(), page["recovered"].clone()),
        (json!(false), json!(true))
    );
    // Forward from a trimmed id: what is retained, and recovered: false.
    let (_, page) = history(&h, &format!("{path}?after={epoch}-1&limit=3"), None).await;
    assert_eq!(
        offsets(page["notifications"].as_array().unwrap()),
        [4, 5, 6]
    );
    assert_eq!(page["recovered"], false);
    assert_eq!(page["more"], true);
    let (_, page) = history(
        &h,
        &format!("{path}?after={}", page["position"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(offsets(page["notifications"].as_array().unwrap()), [7, 8]);
    assert_eq!(
        (page["more"].clone(), page["recovered"].clone()),
        (json!(false), json!(true))
    );
    assert_eq!(page["position"], format!("{epoch}-8"));
    // Another epoch (a restarted memory store, say): recovered false.
    let (_, page) = history(&h, &format!("{path}?after=0123456789abcdef-3"), None).await;
    assert_eq!(page["recovered"], false);
    assert!(h.metric("herald_history_notifications_total").await >= 14.0);
    h.stop().await;
}

#[tokio::test]
async fn history_api_refuses_bad_input_with_a_status_and_a_close_code() {
    let h = Herald::start().await;
    let channel = unique("c");
    publish_n(&h, &channel, 2).await;
    let path = format!("/channels/{channel}/notifications");
    for (query, says) in [
        ("after=nonsense", "after"),
        ("before=e-x", "before"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=many", "limit"),
        ("after=e-1&before=e-2", "not both"),
    ] {
        let (status, body) = history(&h, &format!("{path}?{query}"), None).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["code"], 4000, "{query}");
        assert!(
            body["error"].as_str().unwrap().contains(says),
            "{query}: {body}"
        );
    }
    let (status, body) = history(&h, "/channels/a%20b/notifications", None).await;
    assert_eq!((status, body["code"].clone()), (400, json!(4000)), "{body}");
    // limit 1000 is fine, and a channel nobody wrote to is an empty page.
    let (status, body) = history(
        &h,
        &format!("/channels/{}/notifications?limit=1000", unique("none")),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["notifications"], json!([]));
    assert_eq!(body["more"], false);
    assert!(body["position"].as_str().unwrap().ends_with("-0"));
    assert_eq!(
        h.metric("herald_history_requests_total{outcome=\"bad_request\"}")
            .await,
        7.0
    );
    h.stop().await;
}

#[tokio::test]
async fn history_api_asks_the_same_token_rules_as_a_subscription() {
    let h = Herald::start_with(jwt).await;
    publish_n(&h, "user:ann", 3).await;
    let path = "/channels/user:ann/notifications";
    let ann = token_for("ann", 300, json!({}));
    let (status, body) = history(&h, path, Some(&ann)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        offsets(body["notifications"].as_array().unwrap()),
        [1, 2, 3]
    );
    // The query parameter works as well as the header.
    let (status, _) = history(&h, &format!("{path}?token={ann}"), None).await;
    assert_eq!(status, 200);
    let bob = token_for("bob", 300, json!({}));
    let (status, body) = history(&h, path, Some(&bob)).await;
    assert_eq!((status, body["code"].clone()), (403, json!(4003)), "{body}");
    let (status, body) = history(&h, path, None).await;
    assert_eq!((status, body["code"].clone()), (401, json!(4001)), "{body}");
    let (status, body) = history(&h, path, Some("not.a.jwt")).await;
    assert_eq!((status, body["code"].clone()), (401, json!(4001)), "{body}");
    let expired = hs256(&json!({ "sub": "ann", "exp": now() - 3600 }));
    let (status, body) = history(&h, path, Some(&expired)).await;
    assert_eq!((status, body["code"].clone()), (401, json!(4010)), "{body}");
    assert_eq!(
        h.metric("herald_auth_rejections_total{surface=\"history\",reason=\"forbidden\"}")
            .await,
        1.0
    );
    h.stop().await;
}

#[tokio::test]
async fn rewind_replays_the_last_n_then_goes_live() {
    let h = Herald::start().await;
    let channel = unique("feed");
    publish_n(&h, &channel, 5).await;
    // In the connect query.
    let mut client = h.connect(&format!("channel={channel}&rewind=3")).await;
    assert_eq!(offsets(&client.notifications(3).await), [3, 4, 5]);
    let subscribed = client.next_of_type("subscribed").await;
    assert_eq!(subscribed["replayed"], 3);
    assert_eq!(subscribed["recovered"], true);
    let epoch = common::epoch_of(subscribed["position"].as_str().unwrap());
    assert_eq!(subscribed["position"], format!("{epoch}-5"));
    h.publish("t", &event(&channel, 5)).await;
    assert_eq!(offsets(&client.notifications(1).await), [6]);
    // In a subscribe frame, larger than the history: all of it.
    let other = unique("feed");
    publish_n(&h, &other, 2).await;
    client
        .send_json(&json!({"type": "subscribe", "channel": other, "rewind": 50}))
        .await;
    assert_eq!(offsets(&client.notifications(2).await), [1, 2]);
    let subscribed = client.next_of_type("subscribed").await;
    assert_eq!(
        (
            subscribed["replayed"].clone(),
            subscribed["recovered"].clone()
        ),
        (json!(2), json!(true))
    );
    // last_id wins over rewind.
    let (_, subscribed) = h
        .subscribe(&format!("channel={channel}&last_id={epoch}-6&rewind=4"))
        .await;
    assert_eq!(subscribed["replayed"], 0);
    // A rewind that is not a number refuses the connect with 4000.
    let mut bad = h.connect(&format!("channel={channel}&rewind=ten")).await;
    assert_eq!(bad.close_code().await, Some(4000));
    h.stop().await;
}
