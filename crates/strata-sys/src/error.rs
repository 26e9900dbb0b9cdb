//! Errors of this crate: the operation, the path it concerned and the cause.

use std::io;
use std::path::PathBuf;

use strata_core::{Classify, ErrorKind};

/// Result alias for this crate.
pub type SysResult<T> = Result<T, SysError>;

/// A failed file-system or mount operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SysError {
    /// A syscall failed.
    #[error("{op} {}: {source}", short_path(path))]
    Io {
        /// The call or step that failed (`mount`, `fsopen overlay`,
        /// `stat`, ...), shown before the path.
        op: &'static str,
        /// The path it acted on (below a [`Root`](crate::Root), joined to
        /// the root's own path).
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A path names something outside the root, or is malformed.
    #[error("invalid path {}: {reason}", short_path(path))]
    InvalidPath {
        /// The path as given.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The operation would act on something it must refuse (a symlink to
    /// chmod, a directory to hard-link, a mount point to remove through).
    #[error("refusing to {op} {}: {reason}", short_path(path))]
    Refused {
        /// The operation refused (`chmod`, `link`, `remove`, ...).
        op: &'static str,
        /// The path it would have acted on.
        path: PathBuf,
        /// Why it is refused.
        reason: &'static str,
    },
}

/// A path for messages: whole when short, else its first and last 100
/// bytes around the number of bytes left out (a 2 KB path of `d/d/d/...`
/// helps nobody).
pub fn short_path(p: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    const KEEP: usize = 100;
    let bytes = p.as_os_str().as_bytes();
    if bytes.len() <= 3 * KEEP {
        return p.display().to_string();
    }
    let (head, tail) = (&bytes[..KEEP], &bytes[bytes.len() - KEEP..]);
    format!(
        "{}…({} bytes)…{}",
        String::from_utf8_lossy(head),
        bytes.len() - 2 * KEEP,
        String::from_utf8_lossy(tail)
    )
}

impl SysError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<io::Error>,
    ) -> Self {
        SysError::Io {
            op,
            path: path.into(),
            source: source.into(),
        }
    }

    /// The raw OS error number, when the failure was a syscall's.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            SysError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The error number, when the failure was a syscall's.
    pub fn errno(&self) -> Option<crate::errno::Errno> {
        match self {
            SysError::Io { source, .. } => crate::errno::Errno::from_io_error(source),
            _ => None,
        }
    }
}

impl Classify for SysError {
    fn kind(&self) -> ErrorKind {
        match self {
            SysError::Io { source, .. } => match source.raw_os_error() {
                Some(libc::EBUSY) => ErrorKind::Unavailable,
                Some(libc::ENOTEMPTY) => ErrorKind::FailedPrecondition,
                Some(libc::ELOOP | libc::EXDEV) => ErrorKind::Invalid,
                _ => Classify::kind(source),
            },
            SysError::InvalidPath { .. } | SysError::Refused { .. } => ErrorKind::Invalid,
        }
    }
}

/// True for failures that come from the machine, never from the data being
/// written: the disk is full, over quota, read-only or failing, or the
/// process is out of memory or file descriptors.
pub fn machine_fault(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENOSPC
                | libc::EDQUOT
                | libc::EROFS
                | libc::EIO
                | libc::ENOMEM
                | libc::EMFILE
                | libc::ENFILE
        )
    )
}
