//! Errors of leases and collection, naming the lease or object concerned.

use strata_core::{Classify, ErrorKind};

/// A failed lease or collection operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// No lease with that id.
    #[error("lease {0:?} not found")]
    NotFound(String),
    /// A lease with that id exists.
    #[error("lease {0:?} already exists")]
    AlreadyExists(String),
    /// A bad id, label or resource type.
    #[error("{0}")]
    Invalid(String),
    /// The lazy scope was used after its release.
    #[error("operation lease scope already released")]
    Released,
    /// The operation was cancelled.
    #[error("operation cancelled")]
    Cancelled,
    /// A store could not remove what the collector swept.
    #[error("collect {what}: {reason}")]
    Collect {
        /// What the store was reading or removing.
        what: String,
        /// The store's error, as text.
        reason: String,
    },
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] strata_metadata::MetaError),
    /// The metadata store failed while a lease was changed.
    #[error("lease {lease:?}: {source}")]
    Store {
        /// The lease's id.
        lease: String,
        /// The metadata store's error.
        #[source]
        source: strata_metadata::MetaError,
    },
}

impl LeaseError {
    /// Names `lease` in a metadata failure, which does not name it.
    pub(crate) fn at(lease: &str) -> impl FnOnce(LeaseError) -> LeaseError + '_ {
        move |e| match e {
            LeaseError::Meta(source) => LeaseError::Store {
                lease: lease.to_owned(),
                source,
            },
            e => e,
        }
    }
}

impl Classify for LeaseError {
    fn kind(&self) -> ErrorKind {
        match self {
            LeaseError::NotFound(_) => ErrorKind::NotFound,
            LeaseError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            LeaseError::Invalid(_) => ErrorKind::Invalid,
            LeaseError::Released | LeaseError::Cancelled => ErrorKind::FailedPrecondition,
            LeaseError::Collect { .. } => ErrorKind::Internal,
            LeaseError::Meta(e) | LeaseError::Store { source: e, .. } => e.kind(),
        }
    }
}
