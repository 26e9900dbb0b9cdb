//! Errors of image work, each naming the image, file, blob or registry
//! concerned and the reason.

use strata_content::ContentError;
use strata_core::{Classify, ErrorKind};

/// A failed image operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OciError {
    /// The input is malformed, hostile, or does not match what describes
    /// it (digest, size, diffID, media type, platform).
    #[error("{object}: {reason}")]
    Invalid {
        /// The layout, archive, document or blob.
        object: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The image, tag, blob or file does not exist.
    #[error("{object}: {reason}")]
    NotFound {
        /// What was looked for.
        object: String,
        /// Where, and what there is instead.
        reason: String,
    },
    /// A registry refused or failed a request.
    #[error("registry {registry}: {reason}")]
    Registry {
        /// The registry host and repository.
        registry: String,
        /// The status and the registry's words.
        reason: String,
        /// How the refusal classifies (401 and 403 are preconditions,
        /// 404 not found, a digest mismatch invalid).
        kind: ErrorKind,
    },
    /// The input needs what this build of strata-oci leaves out: a
    /// registry reference where the `registry` feature (the registry
    /// client, with its HTTP and TLS stack) is off.
    #[error("{object}: this build of strata-oci lacks its `{feature}` feature")]
    NotBuilt {
        /// What was asked for.
        object: String,
        /// The feature it needs.
        feature: &'static str,
    },
    /// A file-system operation failed.
    #[error("{op} {object}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        object: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The content store failed (a digest or size mismatch among them).
    #[error(transparent)]
    Content(#[from] ContentError),
    /// The operation's lease failed, or the operation was cancelled.
    #[error(transparent)]
    Lease(#[from] strata_leases::LeaseError),
}

impl OciError {
    pub(crate) fn invalid(object: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        OciError::Invalid {
            object: object.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn not_found(object: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        OciError::NotFound {
            object: object.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(
        op: &'static str,
        object: impl std::fmt::Display,
        source: std::io::Error,
    ) -> Self {
        OciError::Io {
            op,
            object: object.to_string(),
            source,
        }
    }
}

impl Classify for OciError {
    fn kind(&self) -> ErrorKind {
        match self {
            OciError::Invalid { .. } => ErrorKind::Invalid,
            OciError::NotFound { .. } => ErrorKind::NotFound,
            OciError::Registry { kind, .. } => *kind,
            // The same request fails the same way until the program is
            // built otherwise: not worth a retry.
            OciError::NotBuilt { .. } => ErrorKind::Invalid,
            OciError::Io { source, .. } => Classify::kind(source),
            OciError::Content(e) => e.kind(),
            OciError::Lease(e) => e.kind(),
        }
    }
}

/// The result of image operations.
pub type Result<T, E = OciError> = std::result::Result<T, E>;
