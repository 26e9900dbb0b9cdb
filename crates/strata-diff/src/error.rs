//! Errors of layer application, naming the layer and the entry concerned.

use strata_core::{Classify, Digest, ErrorKind};

/// A layer that could not be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The layer is malformed, hostile or over a limit.
    #[error("layer {layer}: {reason}")]
    Invalid { layer: String, reason: String },
    /// An entry could not be applied for a reason of its own.
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    Entry {
        layer: String,
        entry: String,
        reason: String,
    },
    /// Writing an entry failed for a reason of the machine, not the layer
    /// (no space left, a read-only or failing disk, too many open files).
    #[error("layer {layer}: entry {entry:?}: {source}")]
    EntryFailed {
        layer: String,
        entry: String,
        #[source]
        source: std::io::Error,
    },
    /// The compressed bytes or the tar stream hash to another digest.
    #[error("layer {layer}: {what} mismatch: expected {expected}, got {actual}")]
    Mismatch {
        layer: String,
        what: &'static str,
        expected: Digest,
        actual: Digest,
    },
    /// An entry lies below a symlink of a lower layer: only a mounted
    /// overlay can resolve it (write through the mount instead).
    #[error("layer {layer}: entry {entry:?} lies below the lower layers' symlink {}; apply it through a mount", symlink.display())]
    NeedsMount {
        layer: String,
        entry: String,
        symlink: std::path::PathBuf,
    },
    /// A layer written before its lowers are known (to unpack an image's
    /// layers in parallel) needs them for this entry: a parent directory
    /// the layer does not carry, a hard link to a lower file, an opaque
    /// marker at the top. Apply it again on its parent.
    #[error("layer {layer}: entry {entry:?} needs the lower layers: {reason}")]
    NeedsLowers {
        layer: String,
        entry: String,
        reason: &'static str,
    },
    /// The operation was cancelled; what was applied stays (the caller
    /// discards it).
    #[error("layer {layer}: cancelled")]
    Cancelled { layer: String },
    /// Reading the layer or writing the tree failed.
    #[error("layer {layer}: {source}")]
    Io {
        layer: String,
        #[source]
        source: std::io::Error,
    },
    /// A confined file-system operation failed.
    #[error("layer {layer}: {source}")]
    Sys {
        layer: String,
        #[source]
        source: strata_sys::SysError,
    },
}

impl Classify for ApplyError {
    fn kind(&self) -> ErrorKind {
        match self {
            ApplyError::Invalid { .. } | ApplyError::Entry { .. } | ApplyError::Mismatch { .. } => {
                ErrorKind::Invalid
            }
            ApplyError::NeedsMount { .. }
            | ApplyError::NeedsLowers { .. }
            | ApplyError::Cancelled { .. } => ErrorKind::FailedPrecondition,
            ApplyError::Io { source, .. } | ApplyError::EntryFailed { source, .. } => {
                Classify::kind(source)
            }
            ApplyError::Sys { source, .. } => source.kind(),
        }
    }
}

/// A failure of change walking, layer writing or merging.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiffError {
    /// A confined file-system operation failed (the error names the path).
    #[error(transparent)]
    Sys(#[from] strata_sys::SysError),
    /// Reading or writing data failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The tree holds something the operation cannot handle.
    #[error("{}: {reason}", path.display())]
    Unsupported {
        path: std::path::PathBuf,
        reason: String,
    },
    /// A snapshot operation failed.
    #[error(transparent)]
    Snapshot(#[from] strata_snapshot::SnapshotError),
    /// A content store operation failed.
    #[error(transparent)]
    Content(#[from] strata_content::ContentError),
    /// Applying a layer failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The operation was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// Holding a new object in a lease failed.
    #[error(transparent)]
    Lease(#[from] strata_leases::LeaseError),
}

impl DiffError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<std::path::PathBuf>,
        source: std::io::Error,
    ) -> Self {
        DiffError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

impl Classify for DiffError {
    fn kind(&self) -> ErrorKind {
        match self {
            DiffError::Sys(e) => e.kind(),
            DiffError::Io { source, .. } => Classify::kind(source),
            DiffError::Unsupported { .. } => ErrorKind::FailedPrecondition,
            DiffError::Snapshot(e) => e.kind(),
            DiffError::Content(e) => e.kind(),
            DiffError::Apply(e) => e.kind(),
            DiffError::Cancelled => ErrorKind::FailedPrecondition,
            DiffError::Lease(e) => e.kind(),
        }
    }
}
