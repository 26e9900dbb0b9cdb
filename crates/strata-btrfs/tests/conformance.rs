//! The snapshotter conformance suite against the btrfs backend, with real
//! bind mounts, each case on a loop-mounted btrfs of its own.
//!
//! The suite's fixture puts its state root in the system temporary
//! directory, which is not btrfs; the factory here mounts a fresh btrfs,
//! opens the store on it, and hands back a snapshotter that owns the mount
//! (unmounted when the fixture drops it). Every case therefore needs root
//! and `mkfs.btrfs`, the plain ones too, so the cases are listed here with
//! that check (skipped by name without) instead of through
//! `conformance_suite!`, whose plain cases run for anyone; a last test
//! checks that this list still calls every case the suite defines.

mod support;

use std::path::Path;
use std::sync::Arc;

use strata_btrfs::BtrfsBackend;
use strata_core::{Filter, Labels, Mount};
use strata_metadata::MetaDb;
use strata_snapshot::testsuite::{self, Fixture};
use strata_snapshot::{Info, SnapshotError, SnapshotStore, Snapshotter, Usage, WalkFn};
use support::LoopBtrfs;

/// A store on a loop btrfs that lives as long as the store.
#[derive(Debug)]
struct OnLoop {
    store: SnapshotStore,
    _fs: LoopBtrfs,
}

#[async_trait::async_trait]
impl Snapshotter for OnLoop {
    fn name(&self) -> &str {
        self.store.name()
    }

    async fn prepare(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.store.prepare(key, parent, labels).await
    }

    async fn view(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.store.view(key, parent, labels).await
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        self.store.mounts(key).await
    }

    async fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<(), SnapshotError> {
        self.store.commit(name, key, labels).await
    }

    async fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        self.store.remove(key).await
    }

    async fn stat(&self, key: &str) -> Result<Info, SnapshotError> {
        self.store.stat(key).await
    }

    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info, SnapshotError> {
        self.store.update(info, fieldpaths).await
    }

    async fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        self.store.usage(key).await
    }

    async fn walk(&self, filter: &Filter, f: WalkFn<'_>) -> Result<(), SnapshotError> {
        self.store.walk(filter, f).await
    }

    async fn close(&self) -> Result<(), SnapshotError> {
        self.store.close().await
    }
}

/// The factory: the fixture's root holds only the metadata database; the
/// state root is on a new loop btrfs.
fn btrfs(_root: &Path, db: Arc<MetaDb>) -> Arc<dyn Snapshotter> {
    let fs = LoopBtrfs::new();
    let root = fs.mnt().join("root");
    let backend = BtrfsBackend::new(&root).expect("btrfs backend");
    let store = SnapshotStore::open(&root, db, Arc::new(backend)).expect("open store");
    Arc::new(OnLoop { store, _fs: fs })
}

macro_rules! cases {
    ($($name:ident => $call:ident($($arg:expr),*);)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if !support::usable(concat!("btrfs conformance::", stringify!($name))) {
                    return;
                }
                let fixture = Fixture::new(btrfs);
                testsuite::$call(&fixture $(, $arg)*).await;
            }
        )*

        /// The suite's functions these cases call.
        const CALLED: &[&str] = &[$(stringify!($call)),*];
    };
}

cases! {
    basic => basic();
    stat_active => stat_active();
    stat_committed => stat_committed();
    transitivity => transitivity();
    prepare_view_clash => prepare_view_clash();
    remove => remove();
    layer_file_update => layer_file_update();
    remove_directory_in_lower_layer => remove_directory_in_lower_layer();
    chown_lower => chown_lower();
    directory_permission_on_commit => directory_permission_on_commit();
    remove_intermediate_snapshot => remove_intermediate_snapshot();
    deleted_files_in_child_snapshot => deleted_files_in_child_snapshot();
    move_file_from_lower_layer => move_file_from_lower_layer();
    view_readonly => view_readonly();
    root_permission => root_permission();
    unix_domain_sockets => unix_domain_sockets();
    directory_inode_stability => directory_inode_stability();
    chmod_lower => chmod_lower();
    // A subvolume is a whole tree: directories rename like anything else.
    rename => rename(true);
    layers_128 => deep_chain(128, true);
    layers_500 => deep_chain(500, false);
    update => update();
    walk => walk();
    stat_in_walk => stat_in_walk();
    remove_in_walk => remove_in_walk();
    close_twice => close_twice();
    remove_after_commit => remove_after_commit();
}

/// Every case the suite defines (`pub async fn NAME(fx: &Fixture`) is
/// called above, so a case added to the suite cannot be missed here.
#[test]
fn every_suite_case_is_called() {
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("../strata-snapshot/src/testsuite.rs");
    let text = std::fs::read_to_string(&suite).expect("read the suite");
    let defined: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("pub async fn "))
        .filter(|l| l.contains("(fx: &Fixture"))
        .filter_map(|l| l.split('(').next())
        .collect();
    assert!(defined.len() >= 20, "suite cases found: {defined:?}");
    let missing: Vec<&&str> = defined.iter().filter(|c| !CALLED.contains(c)).collect();
    assert!(
        missing.is_empty(),
        "suite cases not run on btrfs: {missing:?}"
    );
}
