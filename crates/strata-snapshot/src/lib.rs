//! Snapshots: the async [`Snapshotter`] trait every backend is used through,
//! the shared [`SnapshotStore`] that keeps all bookkeeping (keys, ids, kinds,
//! parents, labels, times, usage) in the metadata store, the small
//! [`Backend`] trait through which a store asks a backend for directory work
//! (create, mounts), and mount helpers.
//!
//! Keys of all kinds share one namespace. A new snapshot is built under
//! `<root>/tmp/`, synced and renamed to `<root>/snapshots/<id>` before the
//! transaction that records it; removal deletes the row first and the
//! directory after. Orphan directories are swept when a store opens.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod attach;
mod backend;
mod collect;
mod error;
mod info;
pub mod mounts;
mod store;
#[cfg(feature = "testsuite")]
pub mod testsuite;
mod usage;

use std::future::Future;
use std::pin::Pin;

pub use attach::Attachment;
pub use backend::{
    Backend, Capabilities, OverlayConfig, create_dir, remove_tree, whole_tree_mounts,
};
pub use error::SnapshotError;
pub use info::{Info, Kind, Usage};
pub use store::{SnapshotStore, is_store_scratch};
pub use usage::disk_usage;

use strata_core::{Filter, Labels, Mount};

/// What a walk callback returns: a future, so the callback may itself call
/// the snapshotter (no lock is held while it runs).
pub type WalkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SnapshotError>> + Send + 'a>>;

/// The callback of [`Snapshotter::walk`].
pub type WalkFn<'a> = &'a mut (dyn FnMut(Info) -> WalkFuture<'a> + Send);

/// containerd's snapshotter contract.
#[async_trait::async_trait]
pub trait Snapshotter: Send + Sync + std::fmt::Debug {
    /// The backend's name (`overlay`, `native`), used in lease resource
    /// types (`snapshots/<name>`).
    fn name(&self) -> &str;

    /// Creates an active snapshot `key` whose tree starts as `parent`'s
    /// (empty without a parent) and returns its mounts.
    async fn prepare(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>, SnapshotError>;

    /// Creates a read-only view `key` of `parent` and returns its mounts.
    async fn view(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>, SnapshotError>;

    /// The mounts of an active snapshot or view.
    async fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError>;

    /// Turns the active snapshot `key` into the committed snapshot `name`
    /// (same parent); `key` ceases to exist. Usage is fixed here.
    async fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<(), SnapshotError>;

    /// Removes a snapshot that has no children.
    async fn remove(&self, key: &str) -> Result<(), SnapshotError>;

    /// A snapshot's info.
    async fn stat(&self, key: &str) -> Result<Info, SnapshotError>;

    /// Updates labels: no field paths or `labels` replace them all,
    /// `labels.KEY` sets or (empty or absent) removes one.
    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info, SnapshotError>;

    /// Disk usage of the snapshot's own layer: stored for committed
    /// snapshots, measured for active ones.
    async fn usage(&self, key: &str) -> Result<Usage, SnapshotError>;

    /// Calls `f` for every snapshot that passes `filter`, in key order.
    async fn walk(&self, filter: &Filter, f: WalkFn<'_>) -> Result<(), SnapshotError>;

    /// Releases resources; calling it again does nothing.
    async fn close(&self) -> Result<(), SnapshotError>;
}

// The README's examples compile and run as doc tests, so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
