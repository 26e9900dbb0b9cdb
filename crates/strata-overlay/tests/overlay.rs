//! Overlay specifics: writes land in the upper directory the store exposes,
//! and a volatile mount's `work/incompat` is removed after unmounting so the
//! snapshot can be mounted again.

use std::fs;
use std::sync::Arc;

use strata_core::Labels;
use strata_metadata::MetaDb;
use strata_overlay::{Overlay, OverlayConfig};
use strata_snapshot::mounts::{LocalMount, MountOptions, read_only};
use strata_snapshot::{SnapshotStore, Snapshotter};

fn store(root: &std::path::Path, options: &[&str]) -> SnapshotStore {
    let db = Arc::new(MetaDb::open(&root.join("meta.redb")).unwrap());
    let config = OverlayConfig {
        mount_options: options.iter().map(|s| s.to_string()).collect(),
    };
    let backend = Overlay::new(&root.join("snapshots"), config).unwrap();
    SnapshotStore::open(root, db, Arc::new(backend)).unwrap()
}

#[tokio::test]
async fn writes_land_in_the_exposed_upperdir() {
    if !strata_testkit::require_root("strata-overlay::writes_land_in_the_exposed_upperdir") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path(), &[]);
    s.prepare("base-key", None, Labels::new()).await.unwrap();
    fs::write(s.fs_dir("base-key").unwrap().join("lower"), "l").unwrap();
    s.commit("base", "base-key", Labels::new()).await.unwrap();
    let mounts = s.prepare("k", Some("base"), Labels::new()).await.unwrap();
    let m = LocalMount::mount(&mounts, tmp.path(), MountOptions::default()).unwrap();
    fs::write(m.path().join("upper"), "u").unwrap();
    assert_eq!(fs::read_to_string(m.path().join("lower")).unwrap(), "l");
    m.unmount().unwrap();
    let upper = s.fs_dir("k").unwrap();
    assert_eq!(fs::read_to_string(upper.join("upper")).unwrap(), "u");
    assert!(
        !upper.join("lower").exists(),
        "the upper holds only the change"
    );

    // The read-only form of the active mounts shows the same tree.
    let ro = read_only(&s.mounts("k").await.unwrap());
    let m = LocalMount::mount(&ro, tmp.path(), MountOptions::default()).unwrap();
    assert_eq!(fs::read_to_string(m.path().join("upper")).unwrap(), "u");
    assert!(fs::write(m.path().join("x"), "y").is_err());
}

#[tokio::test]
async fn volatile_incompat_is_removed_after_unmount() {
    if !strata_testkit::require_root("strata-overlay::volatile_incompat_is_removed_after_unmount") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path(), &["volatile"]);
    s.prepare("base-key", None, Labels::new()).await.unwrap();
    s.commit("base", "base-key", Labels::new()).await.unwrap();
    let mounts = s.prepare("k", Some("base"), Labels::new()).await.unwrap();
    assert!(mounts[0].layers.as_ref().is_some_and(|l| l.volatile));
    let work = s.fs_dir("k").unwrap().with_file_name("work");
    for round in 0..2 {
        let m = LocalMount::mount(&mounts, tmp.path(), MountOptions::default()).unwrap();
        fs::write(m.path().join(format!("f{round}")), "x").unwrap();
        assert!(
            work.join("work/incompat/volatile").exists(),
            "the kernel marks a volatile mount"
        );
        m.unmount().unwrap();
        assert!(
            !work.join("work/incompat").exists(),
            "round {round}: incompat left behind"
        );
    }
}
