//! The cache manager: the library home of a state root and the seed's
//! whole API on top of it.
//!
//! * [`Root::open`]: one call opens a root (lock, cleanup of what a dead
//!   process left, metadata, stores, backend, collector).
//! * [`CacheManager`]: durable records over snapshots handed out as
//!   [`ImmutableRef`]s and [`MutableRef`]s (released on drop), merge and
//!   diff, sizes, search, image import with dedupe, export chains with
//!   compression variants, owner leases, and the persistent rows.
//! * Images by name (owner leases `image/NAME`), pulled from OCI layouts,
//!   docker archives and registries and written back to them.
//!
//! Every create boundary puts the new object in the operation context's
//! lease before the object exists, so a collection can never see it
//! unheld.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod export;
mod images;
mod import;
mod keyed;
mod manager;
mod metadata;
mod owner;
mod pool;
mod progress;
mod reader;
mod refs;
mod root;
mod usage;
mod uses;

pub use error::{CacheError, Result};
pub use export::{CompressionConfig, ExportChain, ExportLayer, RefConfig, VARIANT_LABEL_PREFIX};
pub use images::{IMAGE_LEASE_PREFIX, ImagePullOptions, NamedImage, PulledImage, image_lease};
pub use import::{BLOB_MEDIA_TYPE_LABEL, ImportOptions};
pub use manager::{CacheManager, RefOptions, SCRATCH, SnapshotRecordMetadata};
pub use metadata::{RecordType, RefMetadata, Value};
pub use owner::{ImportedLayerRow, OWNER_LEASE_PREFIX, PersistentMetadataRows, SnapshotContentRow};
pub use progress::display_ref;
pub use reader::{FileStat, RefReader};
pub use refs::{ImmutableRef, MutableRef, RefCore, RefMount};
pub use root::{BackendChoice, OpenError, Root, RootOptions, default_root};
// What an embedder needs beside the manager, so that it depends on
// strata-cache alone: operation contexts and leases, local mounts of refs,
// compressions, filters, and the backend seam.
pub use strata_core::{Compression, Filter};
pub use strata_leases::{
    LazyScope, LeaseGuard, OpCtx, PROGRESS_EMIT_INTERVAL, ProgressTracker, with_lease,
};
pub use strata_oci::{Image, Location, Platform, PullOptions, PushReport, RegistryOptions};
pub use strata_snapshot::mounts::{LocalMount, MountOptions};
pub use strata_snapshot::{Backend, Capabilities};
pub use usage::{PruneOptions, PruneReport, REF_LEASE_PREFIX, UsageInfo, ref_lease};

/// Keys of the values the manager keeps on every record.
pub mod keys {
    pub use crate::metadata::{
        BLOB, BLOB_SIZE, COMMITTED, CREATED_AT, DESCRIPTION, DIFF_ID, IMAGE_REFS, LAST_USED_AT,
        MEDIA_TYPE, RECORD_TYPE, SIZE, URLS, USAGE_COUNT,
    };
}

// The README's examples compile and run as doc tests, so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
