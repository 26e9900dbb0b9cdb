//! Errors of snapshot operations, naming the key or path concerned.

use std::path::PathBuf;

use strata_core::{Classify, ErrorKind};

/// A failed snapshot operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// No snapshot with that key.
    #[error("snapshot {0:?} not found")]
    NotFound(String),
    /// The key is taken (by a snapshot of any kind).
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    /// The snapshot is not in a state that allows the operation.
    #[error("snapshot {key:?}: {reason}")]
    FailedPrecondition {
        /// The snapshot's key.
        key: String,
        /// What about its state forbids the operation.
        reason: String,
    },
    /// The snapshot, or one below it, is lazy: its layer has not been
    /// fetched, so there is no tree to read or stack on yet (and none is
    /// attached: [`crate::SnapshotStore::attach`]).
    #[error("snapshot {0:?} is lazy: its layer has not been fetched yet (unlazy it first)")]
    Lazy(String),
    /// A bad key, label or field path.
    #[error("{0}")]
    Invalid(String),
    /// A file-system operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done (`create`, `create mount point`, ...),
        /// shown before the path.
        op: &'static str,
        /// The file or directory it acted on.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] strata_metadata::MetaError),
    /// A strata-sys operation failed.
    #[error(transparent)]
    Sys(#[from] strata_sys::SysError),
    /// The blocking task running the operation died.
    #[error("snapshot operation was cancelled or panicked: {0}")]
    Task(String),
    /// Holding the snapshot in the operation's lease failed.
    #[error(transparent)]
    Lease(#[from] strata_leases::LeaseError),
}

impl SnapshotError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SnapshotError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// The refusal of every call after `close`.
    pub fn closed() -> Self {
        SnapshotError::precondition("", "the snapshotter is closed")
    }

    pub(crate) fn precondition(key: &str, reason: impl Into<String>) -> Self {
        SnapshotError::FailedPrecondition {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }
}

impl Classify for SnapshotError {
    fn kind(&self) -> ErrorKind {
        match self {
            SnapshotError::NotFound(_) => ErrorKind::NotFound,
            SnapshotError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            SnapshotError::FailedPrecondition { .. } | SnapshotError::Lazy(_) => {
                ErrorKind::FailedPrecondition
            }
            SnapshotError::Invalid(_) => ErrorKind::Invalid,
            SnapshotError::Io { source, .. } => Classify::kind(source),
            SnapshotError::Meta(e) => e.kind(),
            SnapshotError::Sys(e) => e.kind(),
            SnapshotError::Task(_) => ErrorKind::Internal,
            SnapshotError::Lease(e) => e.kind(),
        }
    }
}
