//! Rules versions: which version is live, where each came from, and the
//! history an operator rolls back through.
//!
//! A version's id is the [`content_id`](super::content_id) of its text, so
//! the same text is the same version wherever and whenever it is loaded.
//! Every version that becomes live gets a [`VersionRecord`] in the
//! [`VersionStore`] beside the notifications (it survives a restart with
//! the disk store, and every node on one Redis prefix shares it).
//!
//! Where versions come from:
//! - `rules.path` set: the file is the source of truth. Its watcher calls
//!   [`Versions::activate`] once per change of content; the admin API
//!   refuses to activate anything ([`ActivateError::FileMode`], 409);
//! - `rules.path` unset: the admin API activates (`PUT /admin/rules`) and
//!   rolls back; on a shared store (Redis) every node follows the store's
//!   active version, polling it every [`FOLLOW_EVERY`].
//!
//! Invariants:
//! - a version is recorded before it goes live: a store that refuses the
//!   record leaves the previous version live and answers the error (API);
//!   a file version goes live anyway (the file is the truth) and the
//!   failure to record it is logged;
//! - activations on one node are serialized, so `previous` is the version
//!   that was live just before;
//! - activating the live content again records nothing.

pub mod store;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{DEFAULT_RULES, Format, Rules, RulesError, content_id};
use crate::metrics::Metrics;
pub use store::{History, StoredText, VersionStore, VersionStoreError};

/// How often a node on a shared store looks for a version another node
/// activated.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// The origin of the built-in rules.
pub const BUILT_IN: &str = "built-in";
/// The origin of a version activated by `PUT /admin/rules`.
pub const API: &str = "api";
/// The origin of a version restored by `POST /admin/rules/rollback`.
pub const ROLLBACK: &str = "rollback";

/// One version that became active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// The content id of the version's text.
    pub id: String,
    /// RFC 3339, when it became active.
    pub activated_at: String,
    /// The file path, `api`, `rollback` or `built-in`.
    pub origin: String,
    /// The rule ids, in evaluation order.
    pub rules: Vec<String>,
    /// The version active just before, if any.
    pub previous: Option<String>,
}

/// Why a version was not activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// Rules come from a file: edit the file.
    #[error(
        "rules come from the file {0} (rules.path): edit the file, it reloads; the admin API activates versions only when rules.path is unset"
    )]
    FileMode(PathBuf),
    /// The candidate does not compile; the live version stays.
    #[error("{0}")]
    Invalid(RulesError),
    /// No version with that id is kept.
    #[error("no rules version {0:?} is kept (GET /admin/rules lists them)")]
    UnknownVersion(String),
    /// A rollback without a target, and the live version has no previous.
    #[error("the active version has no previous version to roll back to")]
    NoPrevious,
    /// The version store did not take the record; the live version stays.
    #[error("{0}")]
    Store(#[from] VersionStoreError),
}

/// Where the live rules are: the pipeline implements it. Owned here so the
/// rules do not depend on the pipeline that runs them.
pub trait Live: Send + Sync + std::fmt::Debug + 'static {
    /// The live rules version.
    fn rules(&self) -> Arc<Rules>;
    /// Make `rules` the live version.
    fn set_rules(&self, rules: Rules);
    fn metrics(&self) -> &Arc<Metrics>;
}

/// See the module docs.
#[derive(Debug)]
pub struct Versions {
    store: Box<dyn VersionStore>,
    pipeline: Arc<dyn Live>,
    file: Option<PathBuf>,
    /// Serializes activations on this node.
    lock: tokio::sync::Mutex<()>,
    /// The text of the live version.
    live: Mutex<StoredText>,
}

/// The rules to start with: the file's when `file` is set, else the
/// store's active version, else the built-in rules. The text comes along.
pub async fn initial(
    file: Option<&std::path::Path>,
    store: &dyn VersionStore,
) -> Result<(Rules, StoredText), RulesError> {
    if let Some(path) = file {
        let text = Rules::read(path)?;
        let format = Format::from_path(path);
        let rules = Rules::parse(&text, format, &path.display().to_string())?;
        return Ok((rules, StoredText { format, text }));
    }
    let stored = async {
        let active = store.history().await?.active;
        match active {
            Some(id) => Ok::<_, VersionStoreError>(store.text(&id).await?.map(|t| (id, t))),
            None => Ok(None),
        }
    };
    match stored.await {
        Ok(Some((id, t))) => match Rules::parse(&t.text, t.format, API) {
            Ok(rules) => return Ok((rules, t)),
            Err(e) => {
                tracing::error!(version = %id, error = %e, "the stored active rules version does not compile; starting on the built-in rules");
            }
        },
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the active rules version at start; starting on the built-in rules, following the store once it answers");
        }
    }
    Ok((Rules::builtin(), builtin_text()))
}

fn builtin_text() -> StoredText {
    StoredText {
        format: Format::Yaml,
        text: DEFAULT_RULES.to_string(),
    }
}

impl Versions {
    /// Manage `pipeline`'s rules, which were made from `text`
    /// ([`initial`]). Records the live version when the store's active one
    /// differs (a new file, the first start).
    pub async fn start(
        store: Box<dyn VersionStore>,
        pipeline: Arc<dyn Live>,
        file: Option<PathBuf>,
        text: StoredText,
    ) -> Arc<Self> {
        let versions = Arc::new(Self {
            store,
            pipeline,
            file,
            lock: tokio::sync::Mutex::new(()),
            live: Mutex::new(text),
        });
        let rules = versions.pipeline.rules();
        versions
            .pipeline
            .metrics()
            .rules_activated(rules.content_id(), rules.origin());
        match versions.store.history().await {
            Ok(h) if h.active.as_deref() == Some(rules.content_id()) => {}
            Ok(h) => {
                let record = versions.record_for(&rules, rules.origin(), h.active);
                let text = versions.live_text();
                if let Err(e) = versions.store.activate(&record, &text).await {
                    tracing::warn!(version = %record.id, error = %e, "cannot record the rules version");
                }
            }
            Err(e) => {
                tracing::warn!(version = rules.content_id(), error = %e, "cannot record the rules version");
            }
        }
        versions
    }

    /// The rules file, when rules come from one.
    pub fn file(&self) -> Option<&std::path::Path> {
        self.file.as_deref()
    }

    /// The text of the live version.
    pub fn live_text(&self) -> StoredText {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The live rules.
    pub fn rules(&self) -> Arc<Rules> {
        self.pipeline.rules()
    }

    /// Count a version that could not be used (an unreadable file).
    pub fn rules_rejected(&self) {
        self.pipeline.metrics().rules_loaded(false);
    }

    /// The active version and the history, from the store.
    pub async fn history(&self) -> Result<History, VersionStoreError> {
        self.store.history().await
    }

    /// The text of a kept version.
    pub async fn text(&self, id: &str) -> Result<Option<StoredText>, VersionStoreError> {
        if let Some(t) = self.store.text(id).await? {
            return Ok(Some(t));
        }
        // The built-in rules are always at hand, recorded or not.
        Ok((id == content_id(DEFAULT_RULES)).then(builtin_text))
    }

    /// Compile `text` and make it live, recorded with `origin`. Answers the
    /// record, or `None` when that content is already live. The admin API
    /// passes [`API`] and is refused in file mode; the file watcher passes
    /// the path.
    pub async fn activate(
        &self,
        text: StoredText,
        origin: &str,
    ) -> Result<Option<VersionRecord>, ActivateError> {
        let from_file = self.file.as_ref().map(|p| p.display().to_string());
        if let Some(path) = &self.file
            && from_file.as_deref() != Some(origin)
        {
            return Err(ActivateError::FileMode(path.clone()));
        }
        let metrics = self.pipeline.metrics().clone();
        let rules = match Rules::parse(&text.text, text.format, origin) {
            Ok(r) => r,
            Err(e) => {
                metrics.rules_loaded(false);
                return Err(ActivateError::Invalid(e));
            }
        };
        self.make_live(rules, text, origin).await
    }

    /// Make version `to` (or the live version's previous one) live again,
    /// recorded as a [`ROLLBACK`].
    pub async fn rollback(&self, to: Option<&str>) -> Result<VersionRecord, ActivateError> {
        if let Some(path) = &self.file {
            return Err(ActivateError::FileMode(path.clone()));
        }
        let target = match to {
            Some(id) => id.to_string(),
            None => {
                let live = self.rules().content_id().to_string();
                let history = self.store.history().await?;
                history
                    .records
                    .iter()
                    .find(|r| r.id == live)
                    .and_then(|r| r.previous.clone())
                    .ok_or(ActivateError::NoPrevious)?
            }
        };
        let text = self
            .text(&target)
            .await?
            .ok_or_else(|| ActivateError::UnknownVersion(target.clone()))?;
        let rules =
            Rules::parse(&text.text, text.format, ROLLBACK).map_err(ActivateError::Invalid)?;
        match self.make_live(rules, text, ROLLBACK).await? {
            Some(record) => Ok(record),
            // Rolling back to the live version: nothing to do; say what is live.
            None => {
                let history = self.store.history().await?;
                history
                    .records
                    .into_iter()
                    .find(|r| r.id == target)
                    .ok_or(ActivateError::UnknownVersion(target))
            }
        }
    }

    async fn make_live(
        &self,
        rules: Rules,
        text: StoredText,
        origin: &str,
    ) -> Result<Option<VersionRecord>, ActivateError> {
        let _guard = self.lock.lock().await;
        let live = self.rules();
        if live.content_id() == rules.content_id() {
            tracing::debug!(version = rules.content_id(), origin, "rules unchanged");
            return Ok(None);
        }
        let record = self.record_for(&rules, origin, Some(live.content_id().to_string()));
        if let Err(e) = self.store.activate(&record, &text).await {
            if self.file.is_none() {
                tracing::warn!(version = %record.id, origin, error = %e, "rules version not activated: the version store refused it");
                return Err(e.into());
            }
            tracing::warn!(version = %record.id, origin, error = %e, "cannot record the rules version; it is live (the file is the source of truth)");
        }
        self.go_live(rules, text, origin);
        Ok(Some(record))
    }

    fn go_live(&self, rules: Rules, text: StoredText, origin: &str) {
        let metrics = self.pipeline.metrics();
        metrics.rules_loaded(true);
        metrics.rules_activated(rules.content_id(), origin);
        tracing::info!(
            version = rules.content_id(),
            origin,
            rules = rules.len(),
            "rules version activated"
        );
        *self.live.lock().unwrap_or_else(|e| e.into_inner()) = text;
        self.pipeline.set_rules(rules);
    }

    fn record_for(&self, rules: &Rules, origin: &str, previous: Option<String>) -> VersionRecord {
        VersionRecord {
            id: rules.content_id().to_string(),
            activated_at: crate::clock::now_rfc3339(),
            origin: origin.to_string(),
            rules: rules.rule_ids(),
            previous,
        }
    }

    /// On a shared store without a rules file: follow the store's active
    /// version (activated by another node) until `stop`.
    pub fn spawn_follower(self: &Arc<Self>, stop: CancellationToken) -> Option<JoinHandle<()>> {
        if self.file.is_some() || !self.store.shared() {
            return None;
        }
        let versions = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(FOLLOW_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match versions.follow().await {
                    Ok(()) => failing = false,
                    Err(e) => {
                        // Said once per outage, not four times a second.
                        if !failing {
                            tracing::warn!(error = %e, "cannot follow the active rules version");
                        }
                        failing = true;
                    }
                }
            }
        }))
    }

    /// One look at the store's active version.
    async fn follow(&self) -> Result<(), VersionStoreError> {
        let Some(active) = self.store.active().await? else {
            return Ok(());
        };
        if active == self.rules().content_id() {
            return Ok(());
        }
        let _guard = self.lock.lock().await;
        let Some(text) = self.text(&active).await? else {
            return Err(VersionStoreError::Corrupt(format!(
                "the active version {active} has no text"
            )));
        };
        match Rules::parse(&text.text, text.format, API) {
            Ok(rules) if rules.content_id() == self.rules().content_id() => {}
            Ok(rules) => self.go_live(rules, text, "store"),
            Err(e) => {
                return Err(VersionStoreError::Corrupt(format!(
                    "the active version {active} does not compile here: {e}"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
