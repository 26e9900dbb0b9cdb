//! Advisory whole-file locks (`flock`), used for a root's `LOCK` file so one
//! process owns a root at a time. The lock goes with the process: a crash
//! releases it.

use std::fs::File;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use strata_core::{Classify, ErrorKind};

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another process holds it.
    #[error("{} is locked by another process", path.display())]
    Held { path: PathBuf },
    /// The lock file could not be opened or locked.
    #[error("lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Classify for LockError {
    fn kind(&self) -> ErrorKind {
        match self {
            LockError::Held { .. } => ErrorKind::Locked,
            LockError::Io { source, .. } => Classify::kind(source),
        }
    }
}

/// A held exclusive lock; released when dropped.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
    path: PathBuf,
}

impl FileLock {
    /// Takes the exclusive lock on `path` (created if missing) without
    /// waiting.
    pub fn try_exclusive(path: &Path) -> Result<FileLock, LockError> {
        let io = |e: Errno| LockError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        };
        let fd = rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )
        .map_err(io)?;
        match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(FileLock {
                _file: File::from(fd),
                path: path.to_path_buf(),
            }),
            Err(Errno::WOULDBLOCK) => Err(LockError::Held {
                path: path.to_path_buf(),
            }),
            Err(e) => Err(io(e)),
        }
    }

    /// The locked file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_until_release() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("LOCK");
        let first = FileLock::try_exclusive(&path).unwrap();
        let err = FileLock::try_exclusive(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Locked);
        assert!(err.to_string().contains("locked by another process"));
        drop(first);
        FileLock::try_exclusive(&path).unwrap();
    }
}
