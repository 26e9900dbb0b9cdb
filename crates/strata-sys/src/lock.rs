//! Advisory whole-file locks (`flock`, through std's `File::try_lock`),
//! used for a root's `LOCK` file so one process owns a root at a time,
//! and for the lazy-mount cache's layers, mounts and uppers. The
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
///
/// A lock file may be removed by the holder of its exclusive lock
/// ([`FileLock::remove`]): whoever opened it before and locks it after
/// finds the name gone or given to another file, and starts again on the
/// file the name now has, so two processes never hold "the" lock on two
/// different files.
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
    exclusive: bool,
}

impl FileLock {
    /// Takes the exclusive lock on `path` (created if missing, mode 0600,
    /// never through a symlink) without waiting, and records this
    /// process's pid in it. The file's modification time stays as it was:
    /// it tells when a shared lock was last taken.
    pub fn try_exclusive(path: &Path) -> Result<FileLock, LockError> {
        FileLock::take(path, true, |file| {
            let was = file.metadata()?.modified()?;
            // Who holds it, for those who wait (advisory: not synced).
            file.set_len(0)?;
            file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
            file.set_modified(was)
        })
    }

    /// Takes a shared lock on `path` (created if missing, mode 0600,
    /// never through a symlink) without waiting: any number of processes
    /// hold one at once, and none while another holds the exclusive lock.
    /// The file's modification time is set to now, so it tells when the
    /// lock was last taken.
    pub fn try_shared(path: &Path) -> Result<FileLock, LockError> {
        FileLock::take(path, false, |file| {
            file.set_modified(std::time::SystemTime::now())
        })
    }

    /// Opens `path` and takes the exclusive or shared lock on it, then
    /// lets `then` write to the held file. A file removed (or replaced)
    /// between the open and the lock is let go and `path` opened again,
    /// a few times at most: a name that never holds the file opened
    /// through it (a file system whose inode numbers differ between the
    /// two) is an error, not a spin.
    fn take(
        path: &Path,
        exclusive: bool,
        then: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> Result<FileLock, LockError> {
        let io = |source: std::io::Error| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut tries = 0;
        let mut file = loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(path)
                .map_err(io)?;
            let locked = if exclusive {
                file.try_lock()
            } else {
                file.try_lock_shared()
            };
            match locked {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    return Err(LockError::Held {
                        path: path.to_path_buf(),
                        holder: holder(&mut file),
                    });
                }
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
            if still_named(&file, path).map_err(io)? {
                break file;
            }
            tries += 1;
            if tries == 16 {
                return Err(io(std::io::Error::other(
                    "the name never holds the file opened through it (removed each time, or the file system gives the two different inode numbers)",
                )));
            }
        };
        then(&mut file).map_err(io)?;
        Ok(FileLock {
            file,
            path: path.to_path_buf(),
            exclusive,
        })
    }

    /// Removes the lock file, then lets the lock go. Only the holder of
    /// the exclusive lock may: a shared holder gets an error and keeps
    /// its lock.
    pub fn remove(self) -> std::io::Result<()> {
        if !self.exclusive {
            return Err(std::io::Error::other(format!(
                "{}: only the exclusive lock's holder may remove it",
                self.path.display()
            )));
        }
        // Always so while the exclusive lock is held, as every taker
        // checks the name after locking; a file put there by hand stays.
        if !still_named(&self.file, &self.path)? {
            return Err(std::io::Error::other(format!(
                "{}: the name no longer holds the locked file",
                self.path.display()
            )));
        }
        std::fs::remove_file(&self.path)
    }

    /// The locked file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether `path` still names `file` (the same inode on the same device,
/// not a symlink to it).
fn still_named(file: &File, path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt as _;
    let held = file.metadata()?;
    match std::fs::symlink_metadata(path) {
        Ok(named) => Ok(named.dev() == held.dev() && named.ino() == held.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
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

    #[test]
    fn an_exclusive_lock_leaves_the_time_of_the_last_shared_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("LOCK");
        drop(FileLock::try_shared(&path).unwrap());
        let then = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1 << 30);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(then)
            .unwrap();
        let held = FileLock::try_exclusive(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), then);
        drop(held);
        drop(FileLock::try_shared(&path).unwrap());
        assert!(std::fs::metadata(&path).unwrap().modified().unwrap() > then);
    }

    #[test]
    fn a_removed_lock_file_is_taken_again_as_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("LOCK");
        let shared = FileLock::try_shared(&path).unwrap();
        let err = shared.remove().unwrap_err();
        assert!(err.to_string().contains("only the exclusive"), "{err}");
        assert!(path.exists(), "a shared holder removed the lock file");
        let first = FileLock::try_exclusive(&path).unwrap();
        // Opened before the removal, as a racing taker would have.
        let opened = File::open(&path).unwrap();
        assert!(still_named(&opened, &path).unwrap());
        first.remove().unwrap();
        assert!(!path.exists());
        assert!(!still_named(&opened, &path).unwrap(), "the name is gone");
        let again = FileLock::try_exclusive(&path).unwrap();
        assert!(!still_named(&opened, &path).unwrap(), "another file has it");
        assert!(still_named(&again.file, &path).unwrap());
    }
}
