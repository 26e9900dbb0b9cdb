//! The native backend: every snapshot's `fs` is a complete tree. Preparing
//! on a parent copies the parent's tree (see [`copy_tree`]); a view of a
//! parent is a read-only bind of the parent's tree, which cannot change
//! while the view (its child) exists.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod copy;

use std::path::{Path, PathBuf};

pub use copy::{CopyStats, copy_tree};
use strata_core::Mount;
use strata_snapshot::{Backend, Capabilities, Kind, SnapshotError, create_dir};

/// The native backend.
#[derive(Debug, Default)]
pub struct Native;

impl Backend for Native {
    fn name(&self) -> &'static str {
        "native"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::none().with_cross_snapshot_links(true)
    }

    fn create(&self, dir: &Path, kind: Kind, parents: &[PathBuf]) -> Result<(), SnapshotError> {
        let fs = dir.join("fs");
        match parents.first() {
            Some(parent) if kind == Kind::Active => {
                copy_tree(&parent.join("fs"), &fs)?;
                // The copy must be durable before the snapshot is recorded.
                strata_sys::sync::syncfs(dir)?;
            }
            _ => create_dir(&fs, 0o755)?,
        }
        Ok(())
    }

    fn mounts(&self, dir: &Path, kind: Kind, parents: &[PathBuf]) -> Vec<Mount> {
        strata_snapshot::whole_tree_mounts(dir, kind, parents)
    }
}

// The README's examples compile and run as doc tests, so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
