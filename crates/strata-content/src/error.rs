//! Errors of the content store, each naming the digest, ref or path concerned.

use std::path::PathBuf;

use strata_core::{Classify, Digest, ErrorKind};

/// A failed content-store operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContentError {
    /// No blob with that digest.
    #[error("content {0} not found")]
    NotFound(Digest),
    /// No ingest with that ref.
    #[error("ingest {0:?} not found")]
    IngestNotFound(String),
    /// The blob is already committed.
    #[error("content {0} already exists")]
    AlreadyExists(Digest),
    /// Another writer holds the ref.
    #[error("ingest {0:?} is in use by another writer")]
    RefInUse(String),
    /// The bytes do not hash to the expected digest.
    #[error("content for ingest {ingest:?} does not match: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The ingest's ref.
        ingest: String,
        /// The digest the caller asked the bytes to have.
        expected: Digest,
        /// The digest of the bytes written.
        actual: Digest,
    },
    /// The size given at commit differs from what was written.
    #[error("ingest {ingest:?}: commit size {expected} does not match the {actual} bytes written")]
    SizeMismatch {
        /// The ingest's ref.
        ingest: String,
        /// The size given at commit, in bytes.
        expected: u64,
        /// The bytes the ingest holds.
        actual: u64,
    },
    /// A resumed writer was given a different expectation than the ingest has.
    #[error("ingest {ingest:?} was started expecting {existing}, not {requested}")]
    ExpectationConflict {
        /// The ingest's ref.
        ingest: String,
        /// The digest or size (`N bytes`) the ingest was started with.
        existing: String,
        /// The differing digest or size the resuming writer gave.
        requested: String,
    },
    /// A bad argument: ref name, label, field path or filter.
    #[error("{0}")]
    Invalid(String),
    /// The writer was already committed.
    #[error("ingest {0:?} was already committed by this writer")]
    Finished(String),
    /// A file-system operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done (`open ingest`, `rename into blobs`, ...),
        /// shown before the path.
        op: &'static str,
        /// The file or directory it acted on.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Starting or writing an ingest failed on the machine or in the
    /// metadata store.
    #[error("ingest {reference}: {source}")]
    Ingest {
        /// The ingest's ref.
        reference: String,
        /// What failed.
        #[source]
        source: Box<ContentError>,
    },
    /// Recording a committed blob failed (the data went back to its
    /// ingest).
    #[error("commit {digest}: {source}")]
    Commit {
        /// The blob being committed.
        digest: Digest,
        /// What failed.
        #[source]
        source: Box<ContentError>,
    },
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] strata_metadata::MetaError),
    /// A strata-sys operation failed.
    #[error(transparent)]
    Sys(#[from] strata_sys::SysError),
    /// Holding the blob in the operation's lease failed.
    #[error(transparent)]
    Lease(#[from] strata_leases::LeaseError),
}

impl ContentError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ContentError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

impl Classify for ContentError {
    fn kind(&self) -> ErrorKind {
        match self {
            ContentError::NotFound(_) | ContentError::IngestNotFound(_) => ErrorKind::NotFound,
            ContentError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            ContentError::RefInUse(_) => ErrorKind::Unavailable,
            ContentError::DigestMismatch { .. }
            | ContentError::SizeMismatch { .. }
            | ContentError::Invalid(_) => ErrorKind::Invalid,
            ContentError::ExpectationConflict { .. } | ContentError::Finished(_) => {
                ErrorKind::FailedPrecondition
            }
            ContentError::Commit { source, .. } | ContentError::Ingest { source, .. } => {
                source.kind()
            }
            ContentError::Io { source, .. } => Classify::kind(source),
            ContentError::Meta(e) => e.kind(),
            ContentError::Sys(e) => e.kind(),
            ContentError::Lease(e) => e.kind(),
        }
    }
}
