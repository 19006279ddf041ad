//! The lifecycle on the memory and disk version stores: what is recorded,
//! what is refused, what a restart finds.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use super::store::{DiskVersions, MemoryVersions};
use super::*;
use crate::config::StoreConfig;
use crate::delivery::hub::Hub;
use crate::event::{Event, Meta, SourceKind};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::store::MemoryStore;

fn yaml(title: &str) -> StoredText {
    StoredText {
        format: Format::Yaml,
        text: format!("rules:\n  - id: r\n    emit: {{ channel: c, title: {title} }}\n"),
    }
}

fn pipeline(rules: Rules) -> Arc<Pipeline> {
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(Hub::new(metrics.clone()));
    let store = Arc::new(MemoryStore::new(
        &StoreConfig::default(),
        hub,
        metrics.clone(),
    ));
    Arc::new(Pipeline::new(rules, store, metrics, 1 << 20))
}

async fn api(store: Box<dyn VersionStore>) -> Arc<Versions> {
    let (rules, text) = initial(None, &*store).await.unwrap();
    Versions::start(store, pipeline(rules), None, text).await
}

fn title(versions: &Versions) -> String {
    let event = Event {
        payload: serde_json::json!({}),
        meta: Meta::new(SourceKind::Http, "t", "http:t/1#0"),
    };
    versions.rules().evaluate(&event).notifications[0]
        .title
        .clone()
}

#[tokio::test]
async fn activation_records_each_new_content_once() {
    let v = api(Box::new(MemoryVersions::default())).await;
    let builtin = content_id(DEFAULT_RULES);
    let h = v.history().await.unwrap();
    assert_eq!(h.active.as_deref(), Some(builtin.as_str()));
    assert_eq!(h.records[0].origin, BUILT_IN);

    let one = v.activate(yaml("one"), API).await.unwrap().unwrap();
    assert_eq!(one.id, content_id(&yaml("one").text));
    assert_eq!(one.previous.as_deref(), Some(builtin.as_str()));
    assert_eq!(one.rules, vec!["r".to_string()]);
    assert_eq!(title(&v), "one");
    assert!(
        v.activate(yaml("one"), API).await.unwrap().is_none(),
        "the live content again is no new version"
    );

    let bad = StoredText {
        format: Format::Yaml,
        text: "rules:\n  - id: r\n    emit: { channel: c, title: \"{{ x\" }\n".into(),
    };
    match v.activate(bad, API).await {
        Err(ActivateError::Invalid(e)) => assert_eq!(e.diagnostics[0].line, Some(3)),
        other => panic!("expected diagnostics, got {other:?}"),
    }
    assert_eq!(title(&v), "one", "a rejected version leaves the live one");

    v.activate(yaml("two"), API).await.unwrap().unwrap();
    let back = v.rollback(None).await.unwrap();
    assert_eq!(back.id, one.id);
    assert_eq!(back.origin, ROLLBACK);
    assert_eq!(title(&v), "one");
    let to_builtin = v.rollback(Some(&builtin)).await.unwrap();
    assert_eq!(to_builtin.id, builtin);
    assert!(matches!(
        v.rollback(Some("000000000000")).await,
        Err(ActivateError::UnknownVersion(_))
    ));
    let ids: Vec<String> = v
        .history()
        .await
        .unwrap()
        .records
        .iter()
        .map(|r| r.id.clone())
        .collect();
    let two = content_id(&yaml("two").text);
    assert_eq!(
        ids,
        vec![builtin.clone(), one.id.clone(), two, one.id, builtin]
    );
}

#[tokio::test]
async fn file_mode_refuses_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, yaml("file").text).unwrap();
    let store: Box<dyn VersionStore> = Box::new(MemoryVersions::default());
    let (rules, text) = initial(Some(&path), &*store).await.unwrap();
    let v = Versions::start(store, pipeline(rules), Some(path.clone()), text).await;
    assert!(matches!(
        v.activate(yaml("api"), API).await,
        Err(ActivateError::FileMode(_))
    ));
    assert!(matches!(
        v.rollback(None).await,
        Err(ActivateError::FileMode(_))
    ));
    let origin = path.display().to_string();
    let record = v.activate(yaml("edited"), &origin).await.unwrap().unwrap();
    assert_eq!(record.origin, origin);
    assert_eq!(title(&v), "edited");
}

#[tokio::test]
async fn the_disk_history_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(store::DISK_FILE);
    let v = api(Box::new(DiskVersions::new(file.clone()))).await;
    v.activate(yaml("one"), API).await.unwrap();
    v.activate(yaml("two"), API).await.unwrap();
    let before = v.history().await.unwrap();
    drop(v);

    let again = api(Box::new(DiskVersions::new(file))).await;
    assert_eq!(title(&again), "two", "the active version is live again");
    let after = again.history().await.unwrap();
    assert_eq!(after.records, before.records, "nothing new recorded");
    assert_eq!(after.records.len(), 3);
    again.rollback(None).await.unwrap();
    assert_eq!(title(&again), "one");
}

#[tokio::test]
async fn history_is_bounded() {
    let v = api(Box::new(MemoryVersions::default())).await;
    for i in 0..store::HISTORY + 5 {
        v.activate(yaml(&format!("t{i}")), API).await.unwrap();
    }
    let h = v.history().await.unwrap();
    assert_eq!(h.records.len(), store::HISTORY);
    let oldest = &h.records[store::HISTORY - 1];
    assert!(v.text(&oldest.id).await.unwrap().is_some());
    assert!(
        v.text(&content_id(&yaml("t0").text))
            .await
            .unwrap()
            .is_none(),
        "texts of versions no record names are dropped"
    );
}
