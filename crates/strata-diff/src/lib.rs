//! The data plane: [`apply`] (a streaming, verifying, hostile-safe
//! application of an OCI layer onto a directory or an overlay upper
//! directory), change walking ([`walk_changes`], [`walk_upperdir_changes`]),
//! the layer writer ([`write_layer`]) and the merge engine.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod apply;
mod changes;
mod channel;
mod compression;
mod error;
pub mod estargz;
mod export;
mod guard;
mod merge;
mod ordered;
mod overlay_xattr;
mod pgzip;
mod sparse;
mod tarblock;
mod unpack;
mod write;

pub use apply::{Applied, ApplyOptions, Limits, OverlayTarget, apply};
pub use changes::{Change, ChangeFn, ChangeKind, Comparison, walk_changes, walk_upperdir_changes};
pub use compression::Compression;
pub use error::{ApplyError, DiffError};
pub use export::{ExportPath, Exporter};
pub use merge::{Diff, MergeStats, Merger, USAGE_INODES_LABEL, USAGE_SIZE_LABEL};
pub use unpack::{LayerSource, Unpacker, apply_to_mounts};
pub use write::{
    LayerWriter, UNCOMPRESSED_LABEL, WriteOptions, Written, write_layer, write_layer_to_store,
};

// The README's examples compile and run as doc tests, so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
