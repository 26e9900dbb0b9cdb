//! A lazy snapshot's layer attached: the directory its layer is mounted
//! on, and the lock that keeps other attaches, removals and fills away
//! while it is served.

use std::path::{Path, PathBuf};

use strata_sys::lock::FileLock;

/// A lazy snapshot attached by [`crate::SnapshotStore::attach`]: mount its
/// layer on [`Attachment::dir`], and unmount it before this is dropped.
/// Dropped, it removes that directory (left when something is still
/// mounted there: a mount whose server has gone is detached by the next
/// attach, removal, or open after a crash) and lets the lock go. It
/// holds nothing of the store, so the store may be closed meanwhile.
#[derive(Debug)]
#[must_use = "the attach lock is let go when this is dropped"]
pub struct Attachment {
    dir: PathBuf,
    _lock: FileLock,
}

impl Attachment {
    pub(crate) fn new(dir: PathBuf, lock: FileLock) -> Attachment {
        Attachment { dir, _lock: lock }
    }

    /// Where the layer is to be mounted: the placeholder's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        // Gone, a mount naming it fails rather than stacking nothing.
        match std::fs::remove_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "leaving an attached layer's directory")
            }
        }
    }
}
