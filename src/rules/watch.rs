//! Reloading the rules file when it changes.
//!
//! The parent directory is watched, not the file: editors and config
//! management replace files by renaming, which a watch on the old inode
//! would miss. Changes are debounced; a version that does not compile is
//! logged with every diagnostic and the live version stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Rules;
use crate::pipeline::Pipeline;

/// Quiet time after the last change before reloading.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Watch `path` and swap the pipeline's rules on every valid change.
pub fn spawn(path: PathBuf, pipeline: Arc<Pipeline>, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let target = path.file_name().map(|n| n.to_owned());
        let handler = move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                if event
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
            reload(&path, &pipeline);
        }
    })
}

/// Compile `path` and make it live if it is valid. Returns whether it was.
pub fn reload(path: &Path, pipeline: &Pipeline) -> bool {
    match Rules::load(path) {
        Ok(rules) => {
            tracing::info!(
                origin = rules.origin(),
                rules = rules.len(),
                "rules reloaded"
            );
            pipeline.metrics().rules_loaded(true);
            pipeline.set_rules(rules);
            true
        }
        Err(e) => {
            pipeline.metrics().rules_loaded(false);
            for d in &e.diagnostics {
                tracing::error!(
                    file = %e.origin,
                    line = ?d.line,
                    rule = ?d.rule,
                    field = %d.field,
                    problem = %d.message,
                    "rules rejected; the previous version stays live"
                );
            }
            false
        }
    }
}
