//! Noticing that files changed: the rules file, TLS certificates.
//!
//! The parent directories are watched, not the files: editors, config
//! management and certificate tools (certbot, cert-manager's symlink
//! swaps) replace files by renaming, which a watch on the old inode would
//! miss.
//!
//! Invariants:
//! - only events that can change a file count (written, created, renamed,
//!   removed); opening and reading it does not, so a reader's own reads, a
//!   `cat`, or another process loading the same file never signal;
//! - a burst of events is one signal after [`DEBOUNCE`] of quiet. What the
//!   owner does with it (read the files, compare a content id with the one
//!   last tried, keep the old version when the new one is invalid) is the
//!   owner's.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Quiet time after the last change before signalling.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// Changes of a set of files, debounced.
#[derive(Debug)]
pub struct Changes {
    rx: mpsc::UnboundedReceiver<()>,
    _watcher: RecommendedWatcher,
}

impl Changes {
    /// Start watching `files` (their directories).
    pub fn watch(files: &[&Path]) -> Result<Self, notify::Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let names: BTreeSet<(PathBuf, OsString)> = files
            .iter()
            .filter_map(|f| Some((dir_of(f), f.file_name()?.to_owned())))
            .collect();
        let targets = names.clone();
        let handler = move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if is_change(&event.kind)
                && event.paths.iter().any(|p| {
                    targets
                        .iter()
                        .any(|(_, name)| p.file_name() == Some(name.as_os_str()))
                })
            {
                let _ = tx.send(());
            }
        };
        let mut watcher = notify::recommended_watcher(handler)?;
        let dirs: BTreeSet<&PathBuf> = names.iter().map(|(dir, _)| dir).collect();
        for dir in dirs {
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
        }
        Ok(Self {
            rx,
            _watcher: watcher,
        })
    }

    /// Wait for the next change, then for [`DEBOUNCE`] of quiet; `None`
    /// once `stop` is cancelled.
    pub async fn next(&mut self, stop: &CancellationToken) -> Option<()> {
        tokio::select! {
            () = stop.cancelled() => return None,
            got = self.rx.recv() => got?,
        }
        loop {
            tokio::select! {
                () = stop.cancelled() => return None,
                got = tokio::time::timeout(DEBOUNCE, self.rx.recv()) => match got {
                    Ok(Some(())) => {}
                    Ok(None) => return None,
                    Err(_) => return Some(()),
                },
            }
        }
    }
}

fn dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
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

    #[tokio::test]
    async fn a_write_signals_once_a_read_does_not() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("cert.pem");
        std::fs::write(&file, "one").expect("write");
        let mut changes = Changes::watch(&[&file]).expect("watch");
        let stop = CancellationToken::new();
        let _ = std::fs::read(&file);
        std::fs::write(dir.path().join("other.pem"), "x").expect("write");
        std::fs::write(&file, "two").expect("write");
        std::fs::write(&file, "three").expect("write");
        let got = tokio::time::timeout(Duration::from_secs(10), changes.next(&stop)).await;
        assert_eq!(got.expect("a change"), Some(()));
        // The burst was one signal.
        let again = tokio::time::timeout(DEBOUNCE * 4, changes.next(&stop)).await;
        assert!(again.is_err(), "one burst, one signal");
    }
}
