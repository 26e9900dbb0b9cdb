//! The snapshotter conformance suite against the overlay backend, with real
//! overlay mounts. Directory renames across layers need `redirect_dir`, which
//! the backend does not enable by default, so that part of `rename` is off.

use std::path::Path;
use std::sync::Arc;

use strata_metadata::MetaDb;
use strata_overlay::{Overlay, OverlayConfig};
use strata_snapshot::{SnapshotStore, Snapshotter};

fn overlay(root: &Path, db: Arc<MetaDb>) -> Arc<dyn Snapshotter> {
    let backend =
        Overlay::new(&root.join("snapshots"), OverlayConfig::default()).expect("overlay backend");
    Arc::new(SnapshotStore::open(root, db, Arc::new(backend)).expect("open store"))
}

strata_snapshot::conformance_suite!("overlay", overlay, dir_renames = false);
