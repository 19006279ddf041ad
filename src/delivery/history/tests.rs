use super::*;
use crate::config::StoreConfig;
use crate::delivery::hub::Hub;
use crate::metrics::Metrics;
use crate::store::{MemoryStore, NewNotification};

/// A memory store keeping `keep` per channel, with `n` notifications in
/// channel `c` (offsets 1..=n, the oldest `n - keep` trimmed).
async fn store(keep: usize, n: usize) -> (MemoryStore, String) {
    let config = StoreConfig {
        max_per_channel: keep,
        ..StoreConfig::default()
    };
    let store = MemoryStore::new(
        &config,
        Arc::new(Hub::new(Arc::new(Metrics::new()))),
        Arc::new(Metrics::new()),
    );
    let batch = (0..n)
        .map(|i| NewNotification {
            channel: "c".into(),
            dedupe_key: i.to_string(),
            fields: format!("\"title\":\"n{i}\""),
            provenance: Some(format!(
                "{{\"rule\":\"r\",\"rules_version\":\"v\",\"source\":\"http:t/{i}#0\"}}"
            )),
        })
        .collect();
    store.append(batch).await.expect("append");
    let epoch = store.read_after("c", 0, 0).await.expect("head").epoch;
    (store, epoch.to_string())
}

fn q(query: &str) -> HistoryQuery {
    HistoryQuery::parse(Some(query)).expect(query)
}

fn offsets(a: &Answer) -> Vec<u64> {
    a.entries.iter().map(|d| d.offset).collect()
}

#[test]
fn queries_parse_and_bad_ones_say_why() {
    assert_eq!(
        HistoryQuery::parse(None).expect("none"),
        HistoryQuery {
            direction: Direction::Newest,
            limit: DEFAULT_LIMIT
        }
    );
    assert_eq!(
        q("after=e1-5&limit=3&token=x").direction,
        Direction::After("e1".into(), 5)
    );
    assert_eq!(
        q("before=e1-5").direction,
        Direction::Before("e1".into(), 5)
    );
    assert_eq!(q("limit=1000").limit, 1000);
    for (bad, says) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=-1", "limit"),
        ("limit=ten", "limit"),
        ("after=5", "after"),
        ("before=e1-x", "before"),
        ("after=e1-1&before=e1-3", "not both"),
    ] {
        let err = HistoryQuery::parse(Some(bad)).expect_err(bad);
        assert!(err.contains(says), "{bad}: {err}");
    }
}

#[tokio::test]
async fn paging_forward_crosses_the_retention_boundary_honestly() {
    // 1..=10 appended, 5 kept: 6..=10.
    let (s, e) = store(5, 10).await;
    let a = read(&s, "c", &q(&format!("after={e}-5&limit=3")))
        .await
        .expect("read");
    assert_eq!(offsets(&a), [6, 7, 8]);
    assert!(a.recovered && a.more);
    assert_eq!(a.position, format!("{e}-8"));
    let a = read(&s, "c", &q(&format!("after={}&limit=3", a.position)))
        .await
        .expect("read");
    assert_eq!(offsets(&a), [9, 10]);
    assert!(a.recovered && !a.more);
    assert_eq!(a.position, format!("{e}-10"));
    // At the head: nothing, still recovered, the position stays.
    let a = read(&s, "c", &q(&format!("after={e}-10")))
        .await
        .expect("read");
    assert!(a.entries.is_empty() && a.recovered && !a.more);
    assert_eq!(a.position, format!("{e}-10"));
    // 4 was trimmed: recovered false, from the oldest retained.
    let a = read(&s, "c", &q(&format!("after={e}-3&limit=2")))
        .await
        .expect("read");
    assert_eq!(offsets(&a), [6, 7]);
    assert!(!a.recovered && a.more);
    // Another epoch, or an id ahead of the head: the same.
    for id in ["other-7".to_string(), format!("{e}-11")] {
        let a = read(&s, "c", &q(&format!("after={id}")))
            .await
            .expect("read");
        assert_eq!(offsets(&a), [6, 7, 8, 9, 10], "{id}");
        assert!(!a.recovered, "{id}");
    }
}

#[tokio::test]
async fn paging_back_reaches_the_oldest_retained_and_stops() {
    let (s, e) = store(5, 10).await;
    let a = read(&s, "c", &q("limit=2")).await.expect("read");
    assert_eq!(offsets(&a), [9, 10]);
    assert!(a.recovered && a.more);
    assert_eq!(a.position, format!("{e}-9"));
    let a = read(&s, "c", &q(&format!("before={}&limit=2", a.position)))
        .await
        .expect("read");
    assert_eq!(offsets(&a), [7, 8]);
    assert!(a.recovered && a.more);
    let a = read(&s, "c", &q(&format!("before={}&limit=2", a.position)))
        .await
        .expect("read");
    assert_eq!(offsets(&a), [6], "the retention boundary ends the page");
    assert!(a.recovered && !a.more);
    // Before the oldest retained: 5 was trimmed, so that is a gap.
    let a = read(&s, "c", &q(&format!("before={e}-6")))
        .await
        .expect("read");
    assert!(a.entries.is_empty() && !a.recovered && !a.more);
    // Another epoch: the newest, recovered false.
    let a = read(&s, "c", &q("before=other-3&limit=3"))
        .await
        .expect("read");
    assert_eq!(offsets(&a), [8, 9, 10]);
    assert!(!a.recovered);
}

#[tokio::test]
async fn a_channel_nobody_wrote_to_is_an_empty_page() {
    let (s, e) = store(5, 0).await;
    for query in ["", "before=x-1"] {
        let a = read(&s, "c", &q(query)).await.expect("read");
        assert!(a.entries.is_empty() && !a.more, "{query}");
        assert_eq!(a.position, format!("{e}-0"));
    }
    let a = read(&s, "c", &q(&format!("after={e}-0")))
        .await
        .expect("read");
    assert!(a.entries.is_empty() && a.recovered);
    let body: serde_json::Value = serde_json::from_str(&a.to_json()).expect("json");
    assert_eq!(
        body,
        serde_json::json!({"notifications": [], "position": format!("{e}-0"), "recovered": true, "more": false})
    );
}

#[tokio::test]
async fn the_body_carries_the_websocket_frames() {
    let (s, e) = store(5, 2).await;
    let a = read(&s, "c", &q("")).await.expect("read");
    let body: serde_json::Value = serde_json::from_str(&a.to_json()).expect("json");
    let first = &body["notifications"][0];
    assert_eq!(first["type"], "notification");
    assert_eq!(first["id"], format!("{e}-1"));
    assert_eq!(first["title"], "n0");
    assert_eq!(body["notifications"][1]["offset"], 2);
}
