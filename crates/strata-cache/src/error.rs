//! The cache manager's errors: the seed's three sentinels (not found,
//! invalid, locked) as variants naming the ref, and the failures of the
//! stores underneath, each kept whole.

use strata_content::ContentError;
use strata_core::{Classify, ErrorKind};
use strata_diff::DiffError;
use strata_leases::LeaseError;
use strata_metadata::MetaError;
use strata_snapshot::SnapshotError;

/// A failure of the cache manager.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// No record or snapshot by that id.
    #[error("{0}: not found")]
    NotFound(String),
    /// The ref is of the wrong kind or already released.
    #[error("{id}: invalid: {reason}")]
    Invalid {
        /// The ref, record or name.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// A mutable ref is held by someone else.
    #[error("{0} is locked")]
    Locked(String),
    /// The operation was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The content store failed.
    #[error(transparent)]
    Content(#[from] ContentError),
    /// The snapshotter failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The lease manager or collector failed.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// Apply, diff, merge or export failed.
    #[error(transparent)]
    Diff(#[from] DiffError),
    /// Work on the blocking pool died.
    #[error("background task: {0}")]
    Task(String),
    /// Reading a ref's files failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path inside the ref.
        path: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A syscall-level failure while reading a ref's files.
    #[error(transparent)]
    Sys(#[from] strata_sys::SysError),
    /// An image could not be read, fetched or written.
    #[error(transparent)]
    Oci(#[from] strata_oci::OciError),
    /// A store or the machine failed while the manager worked on refs:
    /// what it was doing and to which, then the failure.
    #[error("{op} {subject}: {source}")]
    During {
        /// What the manager was doing (`commit`, `merge`, `diff`).
        op: &'static str,
        /// The ref, or the refs, it was doing it to.
        subject: String,
        /// What failed.
        #[source]
        source: Box<CacheError>,
    },
}

impl CacheError {
    pub(crate) fn invalid(id: &str, reason: impl Into<String>) -> CacheError {
        CacheError::Invalid {
            id: id.to_owned(),
            reason: reason.into(),
        }
    }

    /// Says what was being done to `subject` (a ref, or the refs merged)
    /// in a failure that does not name its ref already (the three
    /// sentinels do).
    pub(crate) fn during(
        op: &'static str,
        subject: impl Into<String>,
    ) -> impl FnOnce(CacheError) -> CacheError {
        let subject = subject.into();
        move |e| match e {
            CacheError::NotFound(_)
            | CacheError::Invalid { .. }
            | CacheError::Locked(_)
            | CacheError::Cancelled
            | CacheError::During { .. } => e,
            other => CacheError::During {
                op,
                subject,
                source: Box::new(other),
            },
        }
    }

    /// True for [`CacheError::NotFound`] (the seed's `IsNotFound`): only the
    /// manager's own not-found, not a store's.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CacheError::NotFound(_))
    }
}

impl Classify for CacheError {
    fn kind(&self) -> ErrorKind {
        match self {
            CacheError::NotFound(_) => ErrorKind::NotFound,
            CacheError::Invalid { .. } => ErrorKind::FailedPrecondition,
            CacheError::Locked(_) => ErrorKind::Locked,
            CacheError::Cancelled | CacheError::Task(_) => ErrorKind::Internal,
            CacheError::Meta(e) => e.kind(),
            CacheError::Content(e) => e.kind(),
            CacheError::Snapshot(e) => e.kind(),
            CacheError::Lease(e) => e.kind(),
            CacheError::Diff(e) => e.kind(),
            CacheError::Io { source, .. } => Classify::kind(source),
            CacheError::Sys(e) => e.kind(),
            CacheError::Oci(e) => e.kind(),
            CacheError::During { source, .. } => source.kind(),
        }
    }
}

/// The manager's result.
pub type Result<T, E = CacheError> = std::result::Result<T, E>;
