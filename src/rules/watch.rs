//! Reloading the rules file when its content changes.
//!
//! [`crate::watch`] notices changes (the parent directory is watched; reads
//! never count; a burst of events is one signal).
//!
//! Invariants:
//! - after a change signal the file is read once and its
//!   [`content_id`] compared with the content last tried, valid or not:
//!   one edit is one reload, saving the same bytes again is none, and a
//!   broken version is reported once, not at every event until it is
//!   fixed;
//! - a version that does not compile is logged with every diagnostic and
//!   the live version stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::versions::{ActivateError, StoredText, Versions};
use super::{Format, Rules, RulesError, content_id};
use crate::watch::Changes;

/// Watch `path` and activate every valid change of its content through
/// `versions`. The live rules are the file's current version when called.
pub fn spawn(path: PathBuf, versions: Arc<Versions>, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut changes = match Changes::watch(&[&path]) {
            Ok(changes) => changes,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot watch the rules file; reload disabled");
                return;
            }
        };
        let mut last_tried = versions.rules().content_id().to_string();
        // A change between loading the file at start and watching it.
        reload_if_changed(&path, &versions, &mut last_tried).await;
        while changes.next(&stop).await.is_some() {
            reload_if_changed(&path, &versions, &mut last_tried).await;
        }
    })
}

/// Read `path`; when its content differs from `last_tried` (the content id
/// of the version last tried, or the last read error), activate it through
/// `versions` (compiled, recorded, made live when valid). Returns whether a
/// new version went live.
pub async fn reload_if_changed(path: &Path, versions: &Versions, last_tried: &mut String) -> bool {
    let origin = path.display().to_string();
    let (tried, text) = match Rules::read(path) {
        Ok(text) => (content_id(&text), Ok(text)),
        // The same failure again (a file still missing) is not news either.
        Err(e) => (format!("unreadable: {e}"), Err(e)),
    };
    if tried == *last_tried {
        tracing::debug!(file = %origin, "rules file touched; content unchanged");
        return false;
    }
    *last_tried = tried;
    let text = match text {
        Ok(text) => text,
        Err(e) => {
            versions.rules_rejected();
            log_rejected(&e);
            return false;
        }
    };
    let stored = StoredText {
        format: Format::from_path(path),
        text,
    };
    match versions.activate(stored, &origin).await {
        Ok(activated) => activated.is_some(),
        Err(ActivateError::Invalid(e)) => {
            log_rejected(&e);
            false
        }
        Err(e) => {
            tracing::warn!(file = %origin, error = %e, "rules file not activated");
            false
        }
    }
}

/// One log line per diagnostic of a rejected version.
fn log_rejected(e: &RulesError) {
    for d in &e.diagnostics {
        tracing::error!(
            file = %e.origin,
            line = d.line,
            rule = d.rule.as_deref(),
            field = (!d.field.is_empty()).then_some(d.field.as_str()),
            problem = %d.message,
            "rules rejected; the previous version stays live"
        );
    }
}
