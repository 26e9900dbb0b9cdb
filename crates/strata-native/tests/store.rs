//! The shared snapshot store's crash recovery and bookkeeping, driven
//! through the native backend (no mounts needed): orphan directories and
//! staging leftovers are swept at open, rows whose directory vanished are
//! dropped with their descendants, usage is fixed at commit.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use strata_core::{Classify, ErrorKind, Labels};
use strata_metadata::MetaDb;
use strata_native::Native;
use strata_snapshot::{SnapshotStore, Snapshotter};

fn open(root: &Path) -> SnapshotStore {
    let db = Arc::new(MetaDb::open(&root.join("meta.redb")).unwrap());
    SnapshotStore::open(root, db, Arc::new(Native)).unwrap()
}

#[tokio::test]
async fn open_sweeps_orphans_and_drops_rows_without_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let s = open(root);
    s.prepare("a-active", None, Labels::new()).await.unwrap();
    fs::write(s.fs_dir("a-active").unwrap().join("f"), "x").unwrap();
    s.commit("a", "a-active", Labels::new()).await.unwrap();
    s.prepare("b", Some("a"), Labels::new()).await.unwrap();
    s.prepare("lonely", None, Labels::new()).await.unwrap();
    let lonely_dir = s.fs_dir("lonely").unwrap().parent().unwrap().to_path_buf();
    let a_dir = s.fs_dir("a").unwrap().parent().unwrap().to_path_buf();
    drop(s);

    // What a crash can leave: a directory without a row, staging in tmp/,
    // and (disk damage) a row whose directory is gone.
    fs::create_dir_all(root.join("snapshots/orphan/fs")).unwrap();
    fs::create_dir_all(root.join("tmp/snap-new-x/fs")).unwrap();
    fs::create_dir_all(root.join("tmp/snap-rm-y/fs/deep")).unwrap();
    fs::write(root.join("tmp/unrelated"), "kept").unwrap();
    strata_sys::Root::open(root)
        .unwrap()
        .remove_all(a_dir.strip_prefix(root).unwrap())
        .unwrap();

    let s = open(root);
    assert!(!root.join("snapshots/orphan").exists());
    assert!(!root.join("tmp/snap-new-x").exists() && !root.join("tmp/snap-rm-y").exists());
    assert!(
        root.join("tmp/unrelated").exists(),
        "the store only sweeps its own staging"
    );
    assert_eq!(s.stat("a").await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(
        s.stat("b").await.unwrap_err().kind(),
        ErrorKind::NotFound,
        "a descendant of a vanished snapshot goes too"
    );
    assert!(s.stat("lonely").await.is_ok() && lonely_dir.is_dir());
    assert!(s.check().unwrap().is_empty());
}

#[tokio::test]
async fn usage_is_fixed_at_commit_and_measured_while_active() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    s.prepare("k", None, Labels::new()).await.unwrap();
    let fs_dir = s.fs_dir("k").unwrap();
    fs::write(fs_dir.join("one"), vec![1u8; 100_000]).unwrap();
    fs::hard_link(fs_dir.join("one"), fs_dir.join("same")).unwrap();
    let active = s.usage("k").await.unwrap();
    assert_eq!(
        active.inodes, 2,
        "root directory and one inode for two links"
    );
    assert!(active.size >= 100_000);
    s.commit("c", "k", Labels::new()).await.unwrap();
    let committed = s.usage("c").await.unwrap();
    assert_eq!(committed, active);
    // Changing the tree behind the store's back does not change stored usage.
    fs::write(s.fs_dir("c").unwrap().join("later"), vec![0u8; 50_000]).unwrap();
    assert_eq!(s.usage("c").await.unwrap(), committed);
}

#[tokio::test]
async fn bad_keys_and_labels_are_invalid() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    assert_eq!(
        s.prepare("", None, Labels::new()).await.unwrap_err().kind(),
        ErrorKind::Invalid
    );
    assert_eq!(
        s.prepare("a\0b", None, Labels::new())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Invalid
    );
    let huge = Labels::from([("k".to_string(), "v".repeat(5000))]);
    assert_eq!(
        s.prepare("k", None, huge).await.unwrap_err().kind(),
        ErrorKind::Invalid
    );
    assert!(
        fs::read_dir(tmp.path().join("snapshots"))
            .unwrap()
            .next()
            .is_none(),
        "nothing half-made is left"
    );
}

#[tokio::test]
async fn collection_removes_directories_of_unleased_snapshots() {
    use strata_leases::gc::GcOptions;
    use strata_leases::{Collect, Collector, LeaseManager, LeaseSpec, Resource};
    let tmp = tempfile::tempdir().unwrap();
    let db = Arc::new(MetaDb::open(&tmp.path().join("meta.redb")).unwrap());
    let s = SnapshotStore::open(tmp.path(), Arc::clone(&db), Arc::new(Native)).unwrap();
    let gc = Collector::new(
        Arc::clone(&db),
        "native",
        vec![Arc::new(s.clone()) as Arc<dyn Collect>],
    );
    let lm = LeaseManager::new(Arc::clone(&db));
    lm.create(LeaseSpec {
        id: Some("l".into()),
        ..LeaseSpec::default()
    })
    .unwrap();
    lm.add_resource("l", &Resource::snapshot("native", "top"))
        .unwrap();
    s.prepare("base-key", None, Labels::new()).await.unwrap();
    s.commit("base", "base-key", Labels::new()).await.unwrap();
    s.prepare("top", Some("base"), Labels::new()).await.unwrap();
    s.prepare("loose", None, Labels::new()).await.unwrap();
    let loose_dir = s.fs_dir("loose").unwrap();
    let report = gc.collect(GcOptions::default()).unwrap();
    assert_eq!(
        report
            .swept
            .snapshots
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
        ["loose"]
    );
    assert!(!loose_dir.exists());
    assert!(s.stat("base").await.is_ok() && s.stat("top").await.is_ok());
    assert!(s.check().unwrap().is_empty());
    assert_eq!(
        fs::read_dir(tmp.path().join("snapshots")).unwrap().count(),
        2
    );
}

#[tokio::test]
async fn mounted_snapshots_are_in_use() {
    use strata_leases::{Collect, Node};
    if !strata_testkit::require_root("strata-native::mounted_snapshots_are_in_use") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    let mounts = s.prepare("k", None, Labels::new()).await.unwrap();
    s.prepare("other", None, Labels::new()).await.unwrap();
    let target = tmp.path().join("mnt");
    fs::create_dir(&target).unwrap();
    strata_sys::mount::mount_all(&mounts, &target).unwrap();
    let in_use = s.in_use();
    strata_sys::mount::unmount(&target).unwrap();
    assert_eq!(in_use.unwrap(), [Node::Snapshot("k".into())]);
    assert!(s.in_use().unwrap().is_empty());
}

#[tokio::test]
async fn a_lazy_snapshot_is_never_read_until_filled_and_then_keeps_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let s = open(root);
    let layer = |name: &'static str, file: &'static str| {
        let s = s.clone();
        async move {
            let active = format!("{name}-active");
            s.prepare(
                &active,
                Some("base").filter(|_| name != "base"),
                Labels::new(),
            )
            .await
            .unwrap();
            fs::write(s.fs_dir(&active).unwrap().join(file), file).unwrap();
            s.commit(name, &active, Labels::new()).await.unwrap();
        }
    };
    layer("base", "a").await;
    s.create_lazy("lazy1", Some("base"), Labels::new())
        .await
        .unwrap();
    s.create_lazy("lazy2", Some("lazy1"), Labels::new())
        .await
        .unwrap();
    let info = s.stat("lazy2").await.unwrap();
    assert_eq!(
        (info.kind, info.parent.as_deref()),
        (strata_snapshot::Kind::Committed, Some("lazy1"))
    );
    assert!(s.is_lazy("lazy1").unwrap() && !s.is_lazy("base").unwrap());
    assert_eq!(s.usage("lazy1").await.unwrap(), Default::default());

    // Nothing reads a placeholder or stacks on it, however it is asked.
    let lazy = |e: strata_snapshot::SnapshotError, key: &str| {
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
        assert!(e.to_string().contains(&format!("{key:?} is lazy")), "{e}");
    };
    lazy(
        s.view("v", Some("lazy2"), Labels::new()).await.unwrap_err(),
        "lazy2",
    );
    lazy(
        s.prepare("p", Some("lazy2"), Labels::new())
            .await
            .unwrap_err(),
        "lazy2",
    );
    lazy(s.fs_dir("lazy1").unwrap_err(), "lazy1");
    lazy(s.view_mounts("lazy1").unwrap_err(), "lazy1");
    assert!(s.check().unwrap().is_empty());

    // Filled bottom first: the lazy snapshot keeps its name and children.
    layer("fill", "b").await;
    let refused = s.fill_lazy("lazy2", "fill").await.unwrap_err();
    assert!(
        refused.to_string().contains("is not the lazy snapshot's"),
        "{refused}"
    );
    s.fill_lazy("lazy1", "fill").await.unwrap();
    assert!(!s.is_lazy("lazy1").unwrap());
    assert_eq!(
        s.stat("fill").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        fs::read_to_string(s.fs_dir("lazy1").unwrap().join("b")).unwrap(),
        "b"
    );
    assert!(s.usage("lazy1").await.unwrap().inodes > 0);
    s.view("v", Some("lazy1"), Labels::new()).await.unwrap();
    lazy(
        s.view("v2", Some("lazy2"), Labels::new())
            .await
            .unwrap_err(),
        "lazy2",
    );
    let again = s.fill_lazy("lazy1", "base").await.unwrap_err();
    assert!(again.to_string().contains("it is not lazy"), "{again}");

    // The placeholder went with the fill; a reopen after a crash keeps
    // the lazy snapshot (its placeholder is a directory like any other).
    let dirs = || fs::read_dir(root.join("snapshots")).unwrap().count();
    assert_eq!(dirs(), 4, "base, lazy1, lazy2 and the view");
    drop(s);
    let s = open(root);
    assert!(s.is_lazy("lazy2").unwrap());
    assert!(s.check().unwrap().is_empty());
    s.remove("lazy2").await.unwrap();
    assert_eq!(dirs(), 3);
}
