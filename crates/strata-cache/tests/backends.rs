//! Choosing a root's backend: a backend that cannot work where the root is
//! is never remembered, a btrfs root opens over what a crash left (a
//! read-only subvolume in `tmp/`, an active snapshot whose subvolume the
//! commit hook had already made read-only), and in a build that leaves
//! backends out (`--no-default-features`), asking for one of them fails
//! naming it.

use strata_cache::{BackendChoice, OpenError, Root, RootOptions};

fn open(path: &std::path::Path, backend: BackendChoice) -> Result<Root, OpenError> {
    Root::open(&RootOptions {
        path: Some(path.to_path_buf()),
        backend,
    })
}

#[cfg(all(feature = "btrfs", feature = "native"))]
#[test]
fn a_backend_that_cannot_open_here_is_not_remembered() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("root");
    if strata_sys::btrfs::is_btrfs(tmp.path()).unwrap() {
        strata_testkit::skip(
            "strata-cache backends::a_backend_that_cannot_open_here_is_not_remembered",
            "the temporary directory is on btrfs",
        );
        return;
    }
    let err = open(&path, BackendChoice::Btrfs).unwrap_err().to_string();
    assert!(err.contains("not on btrfs"), "{err}");
    // The failed choice left no name behind: another backend opens it.
    let root = open(&path, BackendChoice::Native).expect("open with native");
    assert_eq!(root.backend.name(), "native");
}

#[cfg(feature = "btrfs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_btrfs_root_opens_over_what_a_crash_left() {
    use strata_core::Labels;
    use strata_snapshot::Snapshotter;
    let test = "strata-cache backends::a_btrfs_root_opens_over_what_a_crash_left";
    if !strata_testkit::loopfs::usable(test, "btrfs", "btrfs-progs") {
        return;
    }
    let fs = strata_testkit::loopfs::LoopFs::new("btrfs", &["-q"], 1 << 30);
    let path = fs.mnt().join("root");
    let root = open(&path, BackendChoice::Btrfs).unwrap();
    root.snapshots
        .prepare("k", None, Labels::new())
        .await
        .unwrap();
    let active = root.snapshots.fs_dir("k").unwrap();
    drop(root);
    // A removal cut short: a read-only subvolume in the store's trash.
    let trash = path.join("tmp/snap-rm-leftover");
    std::fs::create_dir(&trash).unwrap();
    strata_sys::btrfs::create_subvolume(&trash.join("fs")).unwrap();
    std::fs::write(trash.join("fs/file"), "x").unwrap();
    strata_sys::btrfs::set_read_only(&trash.join("fs"), true).unwrap();
    // A commit cut short after its hook: the active snapshot read-only.
    strata_sys::btrfs::set_read_only(&active, true).unwrap();
    assert!(std::fs::write(active.join("f"), "y").is_err());

    let root = open(&path, BackendChoice::Auto).expect("the root opens");
    assert!(!trash.exists(), "the leftover subvolume went");
    // Reconciling (what an unclean open does) makes it writable again.
    root.snapshots.reconcile().unwrap();
    std::fs::write(active.join("f"), "y").expect("the active snapshot is writable again");
    assert_eq!(root.backend.name(), "btrfs");
}

#[cfg(not(all(feature = "overlay", feature = "native", feature = "btrfs")))]
#[test]
fn a_backend_left_out_is_refused_by_name() {
    let backends = [
        (
            "overlay",
            cfg!(feature = "overlay"),
            BackendChoice::overlay(),
        ),
        ("native", cfg!(feature = "native"), BackendChoice::Native),
        ("btrfs", cfg!(feature = "btrfs"), BackendChoice::Btrfs),
    ];
    for (wanted, _, choice) in backends.into_iter().filter(|(_, built, _)| !built) {
        let tmp = tempfile::tempdir().unwrap();
        let err = open(&tmp.path().join("root"), choice).unwrap_err();
        assert!(
            matches!(&err, OpenError::BackendNotBuilt { name, .. } if name == wanted),
            "{err}"
        );
        assert!(
            err.to_string().ends_with(&format!(
                "the {wanted} backend is not built in (strata-cache's `{wanted}` feature is off)"
            )),
            "{err}"
        );
        assert_eq!(
            strata_core::Classify::kind(&err),
            strata_core::ErrorKind::FailedPrecondition
        );
    }
}

#[cfg(not(any(feature = "overlay", feature = "native", feature = "btrfs")))]
#[test]
fn auto_without_a_backend_built_in_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let err = open(&tmp.path().join("root"), BackendChoice::Auto).unwrap_err();
    assert!(matches!(err, OpenError::NoBackend { .. }), "{err}");
}
