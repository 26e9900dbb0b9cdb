//! The snapshotter conformance suite against the btrfs backend, with real
//! bind mounts, each case on a loop-mounted btrfs of its own.
//!
//! Each case mounts a fresh btrfs and puts the suite's fixture on it
//! (`Fixture::on`, which unmounts it after the store has gone). Every case therefore needs root
//! and `mkfs.btrfs`, the plain ones too, so the cases are listed here with
//! that check (skipped by name without) instead of through
//! `conformance_suite!`, whose plain cases run for anyone; a last test
//! checks that this list still calls every case the suite defines.

mod support;

use std::path::Path;
use std::sync::Arc;

use strata_btrfs::BtrfsBackend;
use strata_metadata::MetaDb;
use strata_snapshot::testsuite::{self, Fixture};
use strata_snapshot::{SnapshotStore, Snapshotter};
use support::LoopBtrfs;

/// The factory: the fixture's root is on the case's loop btrfs.
fn btrfs(root: &Path, db: Arc<MetaDb>) -> Arc<dyn Snapshotter> {
    let backend = BtrfsBackend::new(root).expect("btrfs backend");
    Arc::new(SnapshotStore::open(root, db, Arc::new(backend)).expect("open store"))
}

macro_rules! cases {
    ($($name:ident => $call:ident($($arg:expr),*);)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if !support::usable(concat!("btrfs conformance::", stringify!($name))) {
                    return;
                }
                let fs = LoopBtrfs::new();
                let fixture = Fixture::on(&fs.mnt(), fs, btrfs);
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
