//! The snapshotter conformance suite against the example backend, with
//! real bind mounts: the whole suite, through nothing but strata-snapshot's
//! public items, as any backend crate would run it.

use std::path::Path;
use std::sync::Arc;

use strata_example_backend::CopyBackend;
use strata_snapshot::testsuite::MetaDb;
use strata_snapshot::{SnapshotStore, Snapshotter};

fn copy(root: &Path, db: Arc<MetaDb>) -> Arc<dyn Snapshotter> {
    Arc::new(SnapshotStore::open(root, db, Arc::new(CopyBackend)).expect("open store"))
}

// A full copy is a whole tree: directories rename like anything else.
strata_snapshot::conformance_suite!("copy", copy, dir_renames = true);
