//! Errors of layer application, naming the layer and the entry concerned.

use strata_core::{Classify, Digest, ErrorKind};

/// A layer that could not be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The layer is malformed, hostile or over a limit.
    #[error("layer {layer}: {reason}")]
    Invalid {
        /// The layer, as [`ApplyOptions::name`](crate::ApplyOptions::name) calls it.
        layer: String,
        /// What is wrong.
        reason: String,
    },
    /// An entry could not be applied for a reason of its own.
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    Entry {
        /// The layer, as [`ApplyOptions::name`](crate::ApplyOptions::name) calls it.
        layer: String,
        /// The entry's path in the layer.
        entry: String,
        /// Why it could not be applied.
        reason: String,
    },
    /// Writing an entry failed for a reason of the machine, not the layer
    /// (no space left, a read-only or failing disk, too many open files).
    #[error("layer {layer}: entry {entry:?}: {source}")]
    EntryFailed {
        /// The layer, as [`ApplyOptions::name`](crate::ApplyOptions::name) calls it.
        layer: String,
        /// The entry's path in the layer.
        entry: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// An entry's owner has no id in the user namespace applying it (a
    /// rootless run with a single id mapping, where chown fails with
    /// EINVAL): the layer is fine, the namespace too small for it, so this
    /// is not [`ErrorKind::Invalid`].
    #[error(
        "layer {layer}: entry {entry:?}: cannot give it the owner {uid}:{gid}: this user namespace maps no such id: run with subordinate ids (newuidmap) or with --ignore-chown-errors to squash ownership"
    )]
    Unmapped {
        /// The layer, as [`ApplyOptions::name`](crate::ApplyOptions::name) calls it.
        layer: String,
        /// The entry's path in the layer.
        entry: String,
        /// The owner the layer gives the entry.
        uid: u32,
        /// The group the layer gives the entry.
        gid: u32,
    },
    /// The compressed bytes or the tar stream hash to another digest.
    #[error("layer {layer}: {what} mismatch: expected {expected}, got {actual}")]
    Mismatch {
        /// The layer, as [`ApplyOptions::name`](crate::ApplyOptions::name) calls it.
        layer: String,
        /// Which hash: `digest` (the bytes as given) or `diffID` (the
        /// uncompressed tar stream).
        what: &'static str,
        /// The digest the caller expected.
        expected: Digest,
        /// The digest of what was read.
        actual: Digest,
    },
    /// An entry lies below a symlink of a lower layer: only a mounted
    /// overlay can resolve it (write through the mount instead).
    #[error("layer {layer}: entry {entry:?} lies below the lower layers' symlink {}; apply it through a mount", symlink.display())]
    NeedsMount {
        /// The layer, as [`ApplyOptions::name`](crate::ApplyOptions::name) calls it.
        layer: String,
        /// The entry's path in the layer.
        entry: String,
        /// The entry's ancestor that is a symlink in the lowers, relative
        /// to the layer's root.
        symlink: std::path::PathBuf,
    },
    /// A layer written before its lowers are known (to unpack an image's
    /// layers in parallel) needs them for this entry: a parent directory
    /// the layer does not carry, a hard link to a lower file, an opaque
    /// marker at the top. Apply it again on its parent.
    #[error("layer {layer}: entry {entry:?} needs the lower layers: {reason}")]
    NeedsLowers {
        /// The layer, as [`ApplyOptions::name`](crate::ApplyOptions::name) calls it.
        layer: String,
        /// The entry's path in the layer.
        entry: String,
        /// What the entry needs from the lowers.
        reason: &'static str,
    },
    /// The operation was cancelled; what was applied stays (the caller
    /// discards it).
    #[error("layer {layer}: cancelled")]
    Cancelled {
        /// The layer, as [`ApplyOptions::name`](crate::ApplyOptions::name) calls it.
        layer: String,
    },
    /// Reading the layer or writing the tree failed.
    #[error("layer {layer}: {source}")]
    Io {
        /// The layer, as [`ApplyOptions::name`](crate::ApplyOptions::name) calls it.
        layer: String,
        /// The operating system's or the decompressor's error.
        #[source]
        source: std::io::Error,
    },
    /// A confined file-system operation failed.
    #[error("layer {layer}: {source}")]
    Sys {
        /// The layer, as [`ApplyOptions::name`](crate::ApplyOptions::name) calls it.
        layer: String,
        /// The failure, naming the path.
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
            ApplyError::Unmapped { .. } => ErrorKind::Internal,
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
        /// What was being done (`open layer`, `copy`, ...), shown before the
        /// path.
        op: &'static str,
        /// The file or directory it acted on.
        path: std::path::PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The tree holds something the operation cannot handle.
    #[error("{}: {reason}", path.display())]
    Unsupported {
        /// Where in the tree.
        path: std::path::PathBuf,
        /// What could not be handled there.
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
