use std::time::Instant;

use redb::ReadableDatabase;

use super::*;
use crate::metrics::Metrics;
use crate::store::Recorder;

struct Fixture {
    dir: tempfile::TempDir,
    hub: Arc<Recorder>,
}

impl Fixture {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            hub: Arc::new(Recorder::default()),
        }
    }

    fn config(&self, max: usize, window: usize) -> StoreConfig {
        StoreConfig {
            kind: crate::store::StoreKind::Disk,
            path: Some(self.dir.path().to_path_buf()),
            max_per_channel: max,
            max_age_secs: 60,
            dedupe_window: window,
            ..StoreConfig::default()
        }
    }

    fn open(&self, max: usize, window: usize) -> DiskStore {
        DiskStore::open(
            &self.config(max, window),
            self.hub.clone(),
            Arc::new(Metrics::new()),
        )
        .expect("open")
    }
}

fn n(channel: &str, key: &str) -> NewNotification {
    NewNotification {
        channel: channel.into(),
        dedupe_key: key.into(),
        fields: format!("\"title\":{key:?}"),
        provenance: None,
    }
}

fn offsets(page: &Page) -> Vec<u64> {
    page.entries.iter().map(|d| d.offset).collect()
}

#[tokio::test]
async fn epoch_offsets_history_and_dedupe_survive_a_reopen() {
    let f = Fixture::new();
    let store = f.open(100, 100);
    let before = store.read_after("a", 0, 0).await.expect("read");
    assert_eq!((before.first, before.last), (1, 0));
    store
        .append(vec![n("a", "k1"), n("a", "k2"), n("b", "k1")])
        .await
        .expect("append");
    let page = store.read_after("a", 0, 10).await.expect("read");
    assert_eq!(page.epoch, before.epoch, "one epoch per database");
    store.close().await.expect("close");
    assert!(store.append(vec![n("a", "k9")]).await.is_err(), "closed");

    let store = f.open(100, 100);
    let again = store.read_after("a", 0, 10).await.expect("read");
    assert_eq!(again.epoch, page.epoch);
    assert_eq!((again.first, again.last), (1, 2));
    assert_eq!(offsets(&again), [1, 2]);
    assert_eq!(again.entries[1], page.entries[1]);
    let out = store
        .append(vec![n("a", "k2"), n("a", "k3")])
        .await
        .expect("append");
    assert!(out[0].duplicate, "the dedupe index is durable");
    assert_eq!(out[0].offset, 2);
    assert_eq!((out[1].offset, out[1].duplicate), (3, false));
    store.close().await.expect("close");
}

#[tokio::test]
async fn a_second_open_of_the_same_path_is_refused() {
    let f = Fixture::new();
    let store = f.open(10, 10);
    let err = DiskStore::open(&f.config(10, 10), f.hub.clone(), Arc::new(Metrics::new()))
        .expect_err("locked");
    assert!(err.to_string().contains("already open"), "{err}");
    store.close().await.expect("close");
}

#[tokio::test]
async fn appends_keep_call_order_and_publish_in_order() {
    let f = Fixture::new();
    let store = f.open(1000, 1000);
    // Start many appends before awaiting any: the calls fix the order.
    let pending: Vec<_> = (0..200)
        .map(|i| store.append(vec![n("c", &format!("k{i}"))]))
        .collect();
    for (i, p) in pending.into_iter().enumerate() {
        let out = p.await.expect("append");
        assert_eq!(out[0].offset, i as u64 + 1);
    }
    let published = f.hub.take();
    assert_eq!(published.len(), 200);
    for (i, e) in published.iter().enumerate() {
        assert_eq!(e.offset, i as u64 + 1);
        assert_eq!(e.fields, format!("\"title\":\"k{i}\""));
    }
    store.close().await.expect("close");
}

#[tokio::test]
async fn retention_by_count_reads_the_same_from_memory_and_disk() {
    let f = Fixture::new();
    let store = f.open(100, 1000);
    for chunk in 0..3 {
        let batch = (0..100)
            .map(|i| n("c", &format!("k{}", chunk * 100 + i)))
            .collect();
        store.append(batch).await.expect("append");
    }
    // From the disk (older than the in-memory tail) and from the tail.
    let old = store.read_after("c", 0, 1000).await.expect("read");
    assert_eq!((old.first, old.last), (201, 300));
    assert_eq!(offsets(&old), (201..=300).collect::<Vec<_>>());
    let tail = store.read_after("c", 290, 1000).await.expect("read");
    assert_eq!(offsets(&tail), (291..=300).collect::<Vec<_>>());
    let limited = store.read_after("c", 220, 5).await.expect("read");
    assert_eq!(offsets(&limited), [221, 222, 223, 224, 225]);
    store.close().await.expect("close");

    let store = f.open(100, 1000);
    let reopened = store.read_after("c", 0, 1000).await.expect("read");
    assert_eq!((reopened.first, reopened.last), (201, 300));
    for (a, b) in reopened.entries.iter().zip(&old.entries) {
        assert_eq!(a, b);
    }
    store.close().await.expect("close");
}

#[tokio::test]
async fn a_chunk_partly_below_the_first_offset_is_read_from_the_first() {
    let f = Fixture::new();
    let store = f.open(150, 1000);
    for round in 0..3 {
        let batch = (0..100)
            .map(|i| n("c", &format!("k{}", round * 100 + i)))
            .collect();
        store.append(batch).await.expect("append");
    }
    let page = store.read_after("c", 0, 1000).await.expect("read");
    assert_eq!((page.first, page.last), (151, 300));
    assert_eq!(offsets(&page), (151..=300).collect::<Vec<_>>());
    let inside = store.read_after("c", 160, 3).await.expect("read");
    assert_eq!(offsets(&inside), [161, 162, 163]);
    store.close().await.expect("close");
    // Only the chunk wholly below 151 is gone: 101..=200 and 201..=300 stay.
    let db = Database::create(f.dir.path().join(FILE_NAME)).expect("open");
    let txn = db.begin_read().expect("read");
    let keys: Vec<(u64, u64)> = txn
        .open_table(ENTRIES)
        .expect("entries")
        .iter()
        .expect("iter")
        .map(|item| item.expect("row").0.value())
        .collect();
    assert_eq!(keys.iter().map(|k| k.1).collect::<Vec<_>>(), [200, 300]);
}

#[tokio::test]
async fn retention_by_age_trims_in_the_background_and_survives_reopen() {
    let f = Fixture::new();
    let store = f.open(1000, 1000);
    store
        .append(vec![n("a", "1"), n("a", "2"), n("b", "1")])
        .await
        .expect("append");
    let now = crate::clock::now_ms();
    assert_eq!(store.trim_expired(now).await.expect("trim"), 0);
    assert_eq!(store.trim_expired(now + 61_000).await.expect("trim"), 3);
    let a = store.read_after("a", 0, 10).await.expect("read");
    assert_eq!((a.first, a.last), (3, 2));
    assert!(a.entries.is_empty());
    // The channel goes on after being emptied, and is trimmed again.
    store.append(vec![n("a", "3")]).await.expect("append");
    assert_eq!(store.trim_expired(now).await.expect("trim"), 0);
    assert_eq!(store.trim_expired(now + 61_000).await.expect("trim"), 1);
    store.close().await.expect("close");
    let store = f.open(1000, 1000);
    let a = store.read_after("a", 0, 10).await.expect("read");
    assert_eq!((a.first, a.last), (4, 3));
    store.close().await.expect("close");
}

#[tokio::test]
async fn a_large_expiry_is_trimmed_in_slices() {
    let f = Fixture::new();
    let store = f.open(100_000, 10);
    let batch: Vec<_> = (0..(TRIM_BUDGET + 10))
        .map(|i| n("big", &i.to_string()))
        .collect();
    store.append(batch).await.expect("append");
    let later = crate::clock::now_ms() + 61_000;
    assert_eq!(
        store.trim_expired(later).await.expect("trim"),
        TRIM_BUDGET + 10
    );
    let page = store.read_after("big", 0, 10).await.expect("read");
    assert!(page.entries.is_empty());
    assert_eq!(page.first, page.last + 1);
    store.close().await.expect("close");
}

#[tokio::test]
async fn the_dedupe_window_forgets_the_oldest_keys() {
    let f = Fixture::new();
    let store = f.open(100, 3);
    store
        .append(vec![n("a", "k1"), n("a", "k2"), n("a", "k3")])
        .await
        .expect("append");
    assert!(store.append(vec![n("a", "k1")]).await.expect("dup")[0].duplicate);
    store.append(vec![n("a", "k4")]).await.expect("append");
    let late = store.append(vec![n("a", "k1")]).await.expect("append");
    assert!(!late[0].duplicate, "k1 left the window");
    assert_eq!(late[0].offset, 5);
    // Duplicates inside one group are recognised too.
    let group = store
        .append(vec![n("b", "x"), n("b", "x")])
        .await
        .expect("append");
    assert_eq!((group[1].offset, group[1].duplicate), (1, true));
    store.close().await.expect("close");
}

/// The dedupe rows of `channel` in the database at `dir`, as (key, offset).
fn dedupe_rows(db: &Database, channel: &str) -> Vec<(String, u64)> {
    let txn = db.begin_read().expect("read");
    let (id, _, _, _) = txn
        .open_table(CHANNELS)
        .expect("channels")
        .get(channel)
        .expect("get")
        .expect("channel")
        .value();
    txn.open_table(DEDUPE)
        .expect("dedupe")
        .range::<(u64, &str)>((id, "")..(id + 1, ""))
        .expect("range")
        .map(|item| {
            let (k, v) = item.expect("row");
            (k.value().1.to_string(), v.value())
        })
        .collect()
}

#[tokio::test]
async fn stale_dedupe_rows_are_swept_and_the_window_stays_exact() {
    let f = Fixture::new();
    let store = f.open(1000, 10);
    for i in 0..100 {
        store
            .append(vec![n("a", &format!("k{i}"))])
            .await
            .expect("append");
    }
    let rows = dedupe_rows(&store.shared.db().expect("db"), "a");
    assert!(
        (10..=20).contains(&rows.len()),
        "at most two windows of rows: {rows:?}"
    );
    assert!(rows.iter().all(|(_, offset)| *offset > 80), "{rows:?}");
    store.close().await.expect("close");

    let store = f.open(1000, 10);
    // The newest ten keys are duplicates, the eleventh newest is not.
    for i in 90..100 {
        let out = store
            .append(vec![n("a", &format!("k{i}"))])
            .await
            .expect("append");
        assert_eq!((out[0].offset, out[0].duplicate), (i + 1, true));
    }
    let out = store.append(vec![n("a", "k89")]).await.expect("append");
    assert_eq!((out[0].offset, out[0].duplicate), (101, false));
    // And the key that came back is a duplicate again, at its new offset.
    let out = store.append(vec![n("a", "k89")]).await.expect("append");
    assert_eq!((out[0].offset, out[0].duplicate), (101, true));
    store.close().await.expect("close");
}

#[tokio::test]
async fn a_sweep_cut_short_by_a_restart_goes_on_after_it() {
    let f = Fixture::new();
    let store = f.open(100_000, 10);
    let total = SWEEP_SCAN + 2 * SWEEP_BUDGET;
    let batch: Vec<_> = (0..total).map(|i| n("a", &format!("k{i}"))).collect();
    // The sweep takes several transactions; the close queued right behind
    // the append stops the writer after at most one of them.
    let (appended, closed) = tokio::join!(store.append(batch), store.close());
    appended.expect("append");
    closed.expect("close");

    let store = f.open(100_000, 10);
    let db = store.shared.db().expect("db");
    assert!(dedupe_rows(&db, "a").len() > 20, "the sweep was cut short");
    let out = store
        .append(vec![n("a", &format!("k{}", total - 1)), n("a", "k0")])
        .await
        .expect("append");
    assert!(out[0].duplicate, "in the window");
    assert_eq!((out[1].offset, out[1].duplicate), (total as u64 + 1, false));
    // Touching the channel queues its sweep again; it finishes in the
    // background.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rows = dedupe_rows(&db, "a");
    while rows.len() > 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        rows = dedupe_rows(&db, "a");
    }
    assert!(rows.len() <= 20, "{} rows left", rows.len());
    drop(db);
    store.close().await.expect("close");
}

#[tokio::test]
async fn a_database_of_another_layout_is_refused_clearly() {
    let f = Fixture::new();
    {
        let db = Database::create(f.dir.path().join(FILE_NAME)).expect("create");
        let txn = db.begin_write().expect("write");
        txn.open_table(META)
            .expect("meta")
            .insert("format", "1")
            .expect("insert");
        txn.commit().expect("commit");
    }
    let err = DiskStore::open(&f.config(10, 10), f.hub.clone(), Arc::new(Metrics::new()))
        .expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("layout version 1"), "{text}");
    assert!(text.contains("reads version 3"), "{text}");
}
