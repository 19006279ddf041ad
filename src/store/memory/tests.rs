use super::*;
use crate::metrics::Metrics;
use crate::store::Recorder;

fn store(max: usize, age_secs: u64) -> (MemoryStore, Arc<Recorder>) {
    let hub = Arc::new(Recorder::default());
    let config = StoreConfig {
        max_per_channel: max,
        max_age_secs: age_secs,
        dedupe_window: 3,
        ..StoreConfig::default()
    };
    (
        MemoryStore::new(&config, hub.clone(), Arc::new(Metrics::new())),
        hub,
    )
}

fn n(channel: &str, key: &str) -> NewNotification {
    NewNotification {
        channel: channel.into(),
        dedupe_key: key.into(),
        fields: format!("\"title\":{key:?}"),
        provenance: None,
    }
}

#[tokio::test]
async fn offsets_start_at_one_per_channel() {
    let (s, _) = store(10, 0);
    let out = s
        .append(vec![n("a", "1"), n("b", "2"), n("a", "3")])
        .await
        .expect("append");
    let offsets: Vec<_> = out
        .iter()
        .map(|a| (a.channel.to_string(), a.offset))
        .collect();
    assert_eq!(offsets, [("a".into(), 1), ("b".into(), 1), ("a".into(), 2)]);
}

#[tokio::test]
async fn dedupe_returns_the_first_offset_within_the_window() {
    let (s, _) = store(10, 0);
    s.append(vec![n("a", "k1")]).await.expect("append");
    let again = s.append(vec![n("a", "k1")]).await.expect("append");
    assert_eq!(again[0].offset, 1);
    assert!(again[0].duplicate);
    // The same key in another channel is another notification.
    let other = s.append(vec![n("b", "k1")]).await.expect("append");
    assert!(!other[0].duplicate);
    // The window holds 3 keys: k1 is forgotten after 3 more.
    s.append(vec![n("a", "k2"), n("a", "k3"), n("a", "k4")])
        .await
        .expect("append");
    let late = s.append(vec![n("a", "k1")]).await.expect("append");
    assert!(!late[0].duplicate);
    assert_eq!(late[0].offset, 5);
}

#[tokio::test]
async fn retention_by_count_moves_first() {
    let (s, _) = store(3, 0);
    for i in 0..5 {
        s.append(vec![n("a", &i.to_string())])
            .await
            .expect("append");
    }
    let page = s.read_after("a", 0, 100).await.expect("read");
    assert_eq!((page.first, page.last), (3, 5));
    let offsets: Vec<_> = page.entries.iter().map(|d| d.offset).collect();
    assert_eq!(offsets, [3, 4, 5]);
    let tail = s.read_after("a", 4, 100).await.expect("read");
    assert_eq!(tail.entries.len(), 1);
    assert_eq!(tail.entries[0].offset, 5);
    let limited = s.read_after("a", 0, 2).await.expect("read");
    assert_eq!(limited.entries.len(), 2);
}

#[tokio::test]
async fn retention_by_age_trims_old_entries() {
    let (s, hub) = store(10, 60);
    // Subscribed: the channel is kept, empty, with its counters.
    hub.watch("a", true);
    s.append(vec![n("a", "1"), n("a", "2")])
        .await
        .expect("append");
    let now = crate::clock::now_ms();
    assert_eq!(s.trim_expired(now).await.expect("trim"), 0);
    assert_eq!(s.trim_expired(now + 61_000).await.expect("trim"), 2);
    let page = s.read_after("a", 0, 10).await.expect("read");
    assert_eq!((page.first, page.last), (3, 2));
    assert!(page.entries.is_empty());
}

#[tokio::test]
async fn unknown_channel_reads_empty_in_the_store_epoch() {
    let (s, _) = store(10, 0);
    let page = s.read_after("nobody", 0, 10).await.expect("read");
    assert_eq!((page.first, page.last), (1, 0));
    s.append(vec![n("a", "1")]).await.expect("append");
    let a = s.read_after("a", 0, 10).await.expect("read");
    assert_eq!(a.epoch, page.epoch);
}

#[tokio::test]
async fn every_start_is_a_new_epoch() {
    let (a, _) = store(10, 0);
    let (b, _) = store(10, 0);
    let ea = a.read_after("c", 0, 0).await.expect("read").epoch;
    let eb = b.read_after("c", 0, 0).await.expect("read").epoch;
    assert_ne!(ea, eb);
}

#[tokio::test]
async fn appends_are_published_in_order() {
    let (s, hub) = store(10, 0);
    s.append(vec![n("a", "1"), n("a", "2")])
        .await
        .expect("append");
    s.append(vec![n("a", "1")]).await.expect("duplicate");
    let offsets: Vec<_> = hub.take().iter().map(|e| e.offset).collect();
    assert_eq!(offsets, [1, 2], "a duplicate is not published");
}

fn bounded(edit: impl FnOnce(&mut StoreConfig)) -> (MemoryStore, Arc<Recorder>, Arc<Metrics>) {
    let hub = Arc::new(Recorder::default());
    let metrics = Arc::new(Metrics::new());
    let mut config = StoreConfig {
        dedupe_window: 3,
        ..StoreConfig::default()
    };
    edit(&mut config);
    let store = MemoryStore::new(&config, hub.clone(), metrics.clone());
    (store, hub, metrics)
}

fn dropped(metrics: &Metrics, reason: &str) -> u64 {
    metrics
        .store_channels_dropped
        .get_or_create(&vec![("reason", reason.to_string())])
        .get()
}

#[tokio::test]
async fn an_idle_channel_without_subscribers_is_dropped_with_its_dedupe_keys() {
    let (s, hub, metrics) = bounded(|c| c.max_age_secs = 60);
    s.append(vec![n("quiet", "k1"), n("watched", "k1")])
        .await
        .expect("append");
    hub.watch("watched", true);
    let before = s.read_after("quiet", 0, 10).await.expect("read");
    assert_eq!(metrics.store_channels.get(), 2);
    let later = crate::clock::now_ms() + 61_000;
    assert_eq!(s.trim_expired(later).await.expect("trim"), 2);
    // The subscribed channel stays (empty, with its counters); the other
    // is gone whole.
    assert_eq!(s.channel_count(), 1);
    assert_eq!(metrics.store_channels.get(), 1);
    assert_eq!(dropped(&metrics, "idle"), 1);
    let watched = s.read_after("watched", 0, 10).await.expect("read");
    assert_eq!((watched.first, watched.last), (2, 1));
    // Its dedupe key went with it: the same key appends again, at offset 1
    // of a new epoch, so the old ids cannot be mistaken for the new ones.
    let again = s.append(vec![n("quiet", "k1")]).await.expect("append");
    assert!(!again[0].duplicate);
    assert_eq!(again[0].offset, 1);
    let after = s.read_after("quiet", 0, 10).await.expect("read");
    assert_ne!(after.epoch, before.epoch);
    assert_eq!(metrics.store_channels.get(), 2);
}

#[tokio::test]
async fn a_channel_with_a_recent_notification_is_kept() {
    let (s, _, _) = bounded(|c| c.max_age_secs = 60);
    s.append(vec![n("a", "1")]).await.expect("append");
    let now = crate::clock::now_ms();
    assert_eq!(s.trim_expired(now + 30_000).await.expect("trim"), 0);
    assert_eq!(s.channel_count(), 1);
}

#[tokio::test]
async fn no_age_limit_drops_nothing() {
    let (s, _, _) = bounded(|c| c.max_age_secs = 0);
    s.append(vec![n("a", "1")]).await.expect("append");
    let far = crate::clock::now_ms() + 365 * 86_400_000;
    assert_eq!(s.trim_expired(far).await.expect("trim"), 0);
    assert_eq!(s.channel_count(), 1);
}

#[tokio::test]
async fn a_position_read_from_an_absent_channel_stays_valid_when_it_is_created() {
    let (s, _, _) = bounded(|c| c.max_age_secs = 60);
    let absent = s.read_after("c", 0, 0).await.expect("read");
    s.append(vec![n("c", "1")]).await.expect("append");
    let created = s.read_after("c", 0, 10).await.expect("read");
    assert_eq!(created.epoch, absent.epoch, "<epoch>-0 resumes into it");
    // Once a channel of that epoch is dropped, the epoch is not given out
    // again: neither to an absent channel nor to a new one.
    s.trim_expired(crate::clock::now_ms() + 61_000)
        .await
        .expect("trim");
    let gone = s.read_after("c", 0, 0).await.expect("read");
    assert_ne!(gone.epoch, created.epoch);
    s.append(vec![n("c", "2")]).await.expect("append");
    let recreated = s.read_after("c", 0, 10).await.expect("read");
    assert_eq!(recreated.epoch, gone.epoch);
    assert_eq!(recreated.entries[0].epoch, recreated.epoch);
}

#[tokio::test]
async fn max_channels_drops_the_oldest_idle_channel_first() {
    let (s, _, metrics) = bounded(|c| c.max_channels = 3);
    for (i, ch) in ["a", "b", "c"].into_iter().enumerate() {
        let mut m = n(ch, "1");
        m.dedupe_key = format!("{i}");
        s.append(vec![m]).await.expect("append");
        // Distinct append times: a is idle the longest.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    // a is appended to again: b is now idle the longest.
    s.append(vec![n("a", "2")]).await.expect("append");
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    s.append(vec![n("d", "1")]).await.expect("append");
    assert_eq!(s.channel_count(), 3);
    assert_eq!(dropped(&metrics, "max_channels"), 1);
    assert_eq!(s.read_after("b", 0, 10).await.expect("read").last, 0);
    for kept in ["a", "c", "d"] {
        assert!(
            s.read_after(kept, 0, 10).await.expect("read").last > 0,
            "{kept}"
        );
    }
}

#[tokio::test]
async fn max_channels_never_drops_a_subscribed_channel() {
    let (s, hub, metrics) = bounded(|c| c.max_channels = 2);
    s.append(vec![n("a", "1"), n("b", "1")])
        .await
        .expect("append");
    hub.watch("a", true);
    hub.watch("b", true);
    // Every channel is subscribed: the new one is created over the limit,
    // and the notification is kept.
    s.append(vec![n("c", "1")]).await.expect("append");
    assert_eq!(s.channel_count(), 3);
    assert_eq!(s.read_after("c", 0, 10).await.expect("read").last, 1);
    // The next one makes room by dropping the only unsubscribed one.
    s.append(vec![n("d", "1")]).await.expect("append");
    assert_eq!(s.channel_count(), 3);
    assert_eq!(s.read_after("c", 0, 10).await.expect("read").last, 0);
    assert_eq!(dropped(&metrics, "max_channels"), 1);
    // Once a subscription ends, that channel can go: the next creation
    // brings the count back to the limit (a and d go, oldest first).
    hub.watch("a", false);
    s.append(vec![n("e", "1")]).await.expect("append");
    assert_eq!(s.channel_count(), 2);
    assert_eq!(dropped(&metrics, "max_channels"), 3);
    for (channel, last) in [("a", 0), ("b", 1), ("d", 0), ("e", 1)] {
        let page = s.read_after(channel, 0, 10).await.expect("read");
        assert_eq!(page.last, last, "{channel}");
    }
}

#[tokio::test]
async fn retention_by_size_keeps_the_newest_within_the_limit() {
    // Each notification's fields are `"title":"kN"`: 12 bytes.
    let (s, _, metrics) = bounded(|c| c.max_bytes_per_channel = 30);
    for i in 0..5 {
        s.append(vec![n("a", &format!("k{i}"))])
            .await
            .expect("append");
    }
    let page = s.read_after("a", 0, 100).await.expect("read");
    assert_eq!((page.first, page.last), (4, 5));
    assert_eq!(metrics.store_trimmed.get(), 3);
    // One notification larger than the limit is still kept, alone.
    let mut big = n("a", "big");
    big.fields = format!("\"title\":\"{}\"", "x".repeat(100));
    s.append(vec![big]).await.expect("append");
    let page = s.read_after("a", 0, 100).await.expect("read");
    assert_eq!((page.first, page.last), (6, 6));
}
