//! Advisory whole-file locks (`flock`, through std's `File::try_lock`),
//! used for a root's `LOCK` file so one process owns a root at a time. The
//! lock goes with the process: a crash releases it. The holder writes its
//! pid into the file, so a process that finds it locked can say who holds
//! it (a pid left by a crashed holder is never read: the lock is free).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use strata_core::{Classify, ErrorKind};

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another process holds it.
    #[error("{} is locked by {}", path.display(), holder_text(*holder))]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid, as it wrote it (none when it has not yet).
        holder: Option<u32>,
    },
    /// The lock file could not be opened or locked.
    #[error("lock {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

fn holder_text(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("another process (pid {pid})"),
        None => "another process".to_owned(),
    }
}

impl Classify for LockError {
    fn kind(&self) -> ErrorKind {
        match self {
            LockError::Held { .. } => ErrorKind::Locked,
            LockError::Io { source, .. } => Classify::kind(source),
        }
    }
}

/// A held lock, exclusive or shared; released when dropped.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
    path: PathBuf,
}

impl FileLock {
    /// Takes the exclusive lock on `path` (created if missing, mode 0600,
    /// never through a symlink) without waiting, and records this
    /// process's pid in it.
    pub fn try_exclusive(path: &Path) -> Result<FileLock, LockError> {
        FileLock::take(path, File::try_lock, |file| {
            // Who holds it, for those who wait (advisory: not synced).
            file.set_len(0)?;
            file.write_all(format!("{}\n", std::process::id()).as_bytes())
        })
    }

    /// Takes a shared lock on `path` (created if missing, mode 0600,
    /// never through a symlink) without waiting: any number of processes
    /// hold one at once, and none while another holds the exclusive lock.
    /// The file's modification time is set to now, so it tells when the
    /// lock was last taken.
    pub fn try_shared(path: &Path) -> Result<FileLock, LockError> {
        FileLock::take(path, File::try_lock_shared, |file| {
            file.set_modified(std::time::SystemTime::now())
        })
    }

    /// Opens `path` and takes the lock `lock` takes on it, then lets
    /// `then` write to the held file.
    fn take(
        path: &Path,
        lock: fn(&File) -> Result<(), TryLockError>,
        then: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> Result<FileLock, LockError> {
        let io = |source: std::io::Error| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .map_err(io)?;
        match lock(&file) {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    path: path.to_path_buf(),
                    holder: holder(&mut file),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        then(&mut file).map_err(io)?;
        Ok(FileLock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    /// The locked file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The pid the holder wrote, if it has yet.
fn holder(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
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
        // The holder said who it is.
        let pid = std::process::id();
        assert!(
            err.to_string()
                .contains(&format!("locked by another process (pid {pid})")),
            "{err}"
        );
        drop(first);
        FileLock::try_exclusive(&path).unwrap();
    }

    #[test]
    fn shared_locks_exclude_only_the_exclusive_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("LOCK");
        let (one, two) = (
            FileLock::try_shared(&path).unwrap(),
            FileLock::try_shared(&path).unwrap(),
        );
        assert_eq!(
            FileLock::try_exclusive(&path).unwrap_err().kind(),
            ErrorKind::Locked
        );
        drop(one);
        assert!(
            FileLock::try_exclusive(&path).is_err(),
            "one still shares it"
        );
        drop(two);
        let only = FileLock::try_exclusive(&path).unwrap();
        assert_eq!(
            FileLock::try_shared(&path).unwrap_err().kind(),
            ErrorKind::Locked
        );
        drop(only);
    }
}
