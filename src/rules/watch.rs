//! Reloading the rules file when its content changes.
//!
//! The parent directory is watched, not the file: editors and config
//! management replace files by renaming, which a watch on the old inode
//! would miss.
//!
//! Invariants:
//! - only events that can change the file count (written, created,
//!   renamed, removed); opening and reading it does not, so the watcher's
//!   own reads, a `cat`, or another herald loading the same file never
//!   trigger a reload;
//! - events are debounced, then the file is read once and its
//!   [`content_id`] compared with the content last tried, valid or not:
//!   one edit is one reload, saving the same bytes again is none, and a
//!   broken version is reported once, not at every event until it is
//!   fixed;
//! - a version that does not compile is logged with every diagnostic and
//!   the live version stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::versions::{ActivateError, StoredText, Versions};
use super::{Format, Rules, RulesError, content_id};

/// Quiet time after the last change before reloading.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Watch `path` and activate every valid change of its content through
/// `versions`. The live rules are the file's current version when called.
pub fn spawn(path: PathBuf, versions: Arc<Versions>, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let target = path.file_name().map(|n| n.to_owned());
        let handler = move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                if is_change(&event.kind)
                    && event
                        .paths
                        .iter()
                        .any(|p| p.file_name().map(|n| n.to_owned()) == target)
                {
                    let _ = tx.send(());
                }
            }
        };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the rules file; reload disabled");
                return;
            }
        };
        if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the rules directory; reload disabled");
            return;
        }
        let mut last_tried = versions.rules().content_id().to_string();
        // A change between loading the file at start and watching it.
        reload_if_changed(&path, &versions, &mut last_tried).await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                got = rx.recv() => if got.is_none() { return },
            }
            // Let a burst of writes settle into one reload.
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    got = tokio::time::timeout(DEBOUNCE, rx.recv()) => match got {
                        Ok(Some(())) => {}
                        Ok(None) => return,
                        Err(_) => break,
                    },
                }
            }
            reload_if_changed(&path, &versions, &mut last_tried).await;
        }
    })
}

/// Whether a file event can have changed the file's content. Reads (open,
/// access, close after reading) and metadata changes cannot.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Any | EventKind::Other => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
    }
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

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, DataChange, MetadataKind, RemoveKind, RenameMode};

    use super::*;

    #[test]
    fn reads_are_not_changes() {
        for read in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)),
        ] {
            assert!(!is_change(&read), "{read:?}");
        }
        for change in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Create(CreateKind::File),
            EventKind::Remove(RemoveKind::File),
        ] {
            assert!(is_change(&change), "{change:?}");
        }
    }
}
