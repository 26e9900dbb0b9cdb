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
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A path names something outside the root, or is malformed.
    #[error("invalid path {}: {reason}", path.display())]
    InvalidPath { path: PathBuf, reason: &'static str },
    /// The operation would act on something it must refuse (a symlink to
    /// chmod, a directory to hard-link, a mount point to remove through).
    #[error("refusing to {op} {}: {reason}", path.display())]
    Refused {
        op: &'static str,
        path: PathBuf,
        reason: &'static str,
    },
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
