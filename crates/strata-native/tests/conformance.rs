//! The snapshotter conformance suite against the native backend, with real
//! bind mounts.

use std::path::Path;
use std::sync::Arc;

use strata_metadata::MetaDb;
use strata_native::Native;
use strata_snapshot::{SnapshotStore, Snapshotter};

fn native(root: &Path, db: Arc<MetaDb>) -> Arc<dyn Snapshotter> {
    Arc::new(SnapshotStore::open(root, db, Arc::new(Native)).expect("open store"))
}

strata_snapshot::conformance_suite!("native", native, dir_renames = true);
