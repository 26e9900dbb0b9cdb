//! The snapshotter conformance suite again, with overlays mounted the way
//! kernels before 6.8 need (`mount(2)` with one page of options, lower
//! directories by short names when their paths do not fit), forced on this
//! kernel: chains of 128 and 500 snapshots included.

use std::path::Path;
use std::sync::Arc;

use strata_metadata::MetaDb;
use strata_overlay::{Overlay, OverlayConfig};
use strata_snapshot::{SnapshotStore, Snapshotter};

fn legacy_overlay(root: &Path, db: Arc<MetaDb>) -> Arc<dyn Snapshotter> {
    strata_sys::mount::force_legacy_overlay();
    let backend =
        Overlay::new(&root.join("snapshots"), OverlayConfig::default()).expect("overlay backend");
    Arc::new(SnapshotStore::open(root, db, Arc::new(backend)).expect("open store"))
}

strata_snapshot::conformance_suite!("overlay-legacy", legacy_overlay, dir_renames = false);
