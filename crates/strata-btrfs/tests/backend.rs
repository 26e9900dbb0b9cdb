//! What the btrfs backend promises beyond the conformance suite, each shown
//! with file-system facts on a loop-mounted btrfs: snapshots share their
//! parent's extents (no data copied, even for a hundred children), committed
//! snapshots and views are read-only subvolumes, removal deletes the
//! subvolumes (nested ones too), a root off btrfs is refused, what a crash
//! leaves in `tmp/` is cleaned at open, and usage reads qgroups when quotas
//! are on.

mod support;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use strata_btrfs::BtrfsBackend;
use strata_core::{Classify, ErrorKind, Labels};
use strata_metadata::MetaDb;
use strata_snapshot::{SnapshotStore, Snapshotter};
use strata_sys::btrfs;
use support::{LoopBtrfs, fs_du, read_only_property};

const MIB: u64 = 1 << 20;
const EROFS: i32 = 30;

/// The store whose state root is `<mnt>/root`.
fn open(fs: &LoopBtrfs) -> SnapshotStore {
    let root = fs.mnt().join("root");
    let backend = BtrfsBackend::new(&root).expect("btrfs backend");
    let db = Arc::new(MetaDb::open(&root.join("meta.redb")).expect("open metadata"));
    SnapshotStore::open(&root, db, Arc::new(backend)).expect("open store")
}

/// `len` bytes no compression or deduplication could shrink.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Prepares `key` on `parent`, lets `fill` write its tree, commits it as
/// `name`.
async fn layer(s: &SnapshotStore, name: &str, parent: Option<&str>, fill: impl FnOnce(&Path)) {
    let key = format!("{name}-key");
    s.prepare(&key, parent, Labels::new()).await.unwrap();
    fill(&s.fs_dir(&key).unwrap());
    s.commit(name, &key, Labels::new()).await.unwrap();
}

fn write_err(path: &Path) -> Option<i32> {
    fs::write(path, "x").err().and_then(|e| e.raw_os_error())
}

#[tokio::test]
async fn a_snapshot_shares_its_parents_extents_and_copies_only_what_is_written() {
    if !support::usable("strata-btrfs::a_snapshot_shares_its_parents_extents") {
        return;
    }
    let fs = LoopBtrfs::new();
    let s = open(&fs);
    let data = noise(64 << 20, 7);
    layer(&s, "base", None, |p| {
        fs::write(p.join("big"), &data).unwrap()
    })
    .await;
    s.prepare("child", Some("base"), Labels::new())
        .await
        .unwrap();
    let child = s.fs_dir("child").unwrap();
    assert!(btrfs::is_subvolume(&child).unwrap());
    assert!(
        fs::read(child.join("big")).unwrap() == data,
        "the child starts as its parent"
    );

    let (total, exclusive, shared) = fs_du(&child);
    assert!(total >= 64 * MIB, "{total}");
    assert_eq!(exclusive, 0, "the snapshot copied data");
    assert_eq!(shared, total);

    // Writing 1 MiB into the child copies that 1 MiB, nothing more, and
    // leaves the parent as it was.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(child.join("big"))
        .unwrap();
    f.seek(SeekFrom::Start(8 * MIB)).unwrap();
    f.write_all(&noise(MIB as usize, 9)).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let (_, exclusive, _) = fs_du(&child);
    assert_eq!(
        exclusive, MIB,
        "only the rewritten range is the child's own"
    );
    let base = s.fs_dir("base").unwrap();
    assert!(
        fs::read(base.join("big")).unwrap() == data,
        "the parent changed"
    );
}

#[tokio::test]
async fn a_hundred_children_of_a_large_tree_copy_no_data() {
    if !support::usable("strata-btrfs::a_hundred_children_of_a_large_tree_copy_no_data") {
        return;
    }
    let fs = LoopBtrfs::new();
    let s = open(&fs);
    layer(&s, "base", None, |p| {
        fs::write(p.join("big"), noise(64 << 20, 3)).unwrap();
        for d in 0..10 {
            fs::create_dir(p.join(format!("d{d}"))).unwrap();
            for f in 0..50 {
                let seed = d * 100 + f + 11;
                fs::write(p.join(format!("d{d}/f{f}")), noise(8192, seed)).unwrap();
            }
        }
    })
    .await;
    let (base_total, ..) = fs_du(&s.fs_dir("base").unwrap());
    assert!(base_total >= 64 * MIB + 500 * 8192, "{base_total}");

    let started = std::time::Instant::now();
    for i in 0..100 {
        s.prepare(&format!("child-{i}"), Some("base"), Labels::new())
            .await
            .unwrap();
    }
    eprintln!("100 children prepared in {:?}", started.elapsed());

    strata_sys::sync::syncfs(&fs.mnt()).unwrap();
    let mut cmd = std::process::Command::new("btrfs");
    cmd.args(["filesystem", "du", "-s", "--raw"]);
    for i in 0..100 {
        cmd.arg(s.fs_dir(&format!("child-{i}")).unwrap());
    }
    let out = support::run(&mut cmd);
    let rows: Vec<Vec<u64>> = out
        .lines()
        .skip(1)
        .map(|l| {
            l.split_whitespace()
                .take(2)
                .map(|n| n.parse().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 100, "{out}");
    for row in &rows {
        assert_eq!(row[0], base_total, "a child holds the whole tree");
        assert_eq!(row[1], 0, "a child holds data of its own:\n{out}");
    }
    // Not a copy that happens to share extents (a reflink copy would, at a
    // cost per file): every child is a btrfs snapshot of the base.
    let lineage = fs.lineage();
    let uuid_of = |dir: &Path| {
        let rel = dir.strip_prefix(fs.mnt()).unwrap().display().to_string();
        let row = lineage.iter().find(|(p, ..)| *p == rel);
        row.unwrap_or_else(|| panic!("{rel} is not a subvolume: {lineage:?}"))
            .clone()
    };
    let (_, base_uuid, _) = uuid_of(&s.fs_dir("base").unwrap());
    for i in 0..100 {
        let (path, _, parent) = uuid_of(&s.fs_dir(&format!("child-{i}")).unwrap());
        assert_eq!(parent, base_uuid, "{path} is not a snapshot of the base");
    }
}

#[tokio::test]
async fn committed_snapshots_and_views_are_read_only_subvolumes() {
    if !support::usable("strata-btrfs::committed_snapshots_and_views_are_read_only_subvolumes") {
        return;
    }
    let fs = LoopBtrfs::new();
    let s = open(&fs);
    layer(&s, "a", None, |p| fs::write(p.join("f"), "x").unwrap()).await;
    let a = s.fs_dir("a").unwrap();
    assert!(read_only_property(&a));
    assert_eq!(write_err(&a.join("new")), Some(EROFS));
    assert_eq!(write_err(&a.join("f")), Some(EROFS));
    assert_eq!(
        fs::remove_file(a.join("f")).unwrap_err().raw_os_error(),
        Some(EROFS)
    );

    for (view, parent) in [("v", Some("a")), ("v-empty", None)] {
        s.view(view, parent, Labels::new()).await.unwrap();
        let v = s.fs_dir(view).unwrap();
        assert!(
            btrfs::is_subvolume(&v).unwrap() && read_only_property(&v),
            "{view}"
        );
        assert_eq!(write_err(&v.join("new")), Some(EROFS), "{view}");
    }
    assert_eq!(
        fs::read_to_string(s.fs_dir("v").unwrap().join("f")).unwrap(),
        "x"
    );

    // A child of a read-only parent is writable.
    s.prepare("b", Some("a"), Labels::new()).await.unwrap();
    let b = s.fs_dir("b").unwrap();
    assert!(!read_only_property(&b));
    fs::write(b.join("f"), "changed").unwrap();
    assert_eq!(fs::read_to_string(a.join("f")).unwrap(), "x");
}

#[tokio::test]
async fn remove_deletes_the_subvolumes_nested_ones_too() {
    if !support::usable("strata-btrfs::remove_deletes_the_subvolumes_nested_ones_too") {
        return;
    }
    let fs = LoopBtrfs::new();
    let s = open(&fs);
    layer(&s, "a", None, |p| fs::write(p.join("f"), "x").unwrap()).await;
    s.view("v", Some("a"), Labels::new()).await.unwrap();
    // Subvolumes made inside an active snapshot (a build step running
    // `btrfs subvolume create`), then committed: a read-only subvolume with
    // writable ones nested two deep.
    layer(&s, "b", Some("a"), |p| {
        btrfs::create_subvolume(&p.join("inner")).unwrap();
        fs::write(p.join("inner/g"), "g").unwrap();
        btrfs::create_subvolume(&p.join("inner/deeper")).unwrap();
    })
    .await;
    let id = |key: &str| {
        let fs_dir = s.fs_dir(key).unwrap();
        let dir = fs_dir.parent().unwrap();
        dir.file_name().unwrap().to_string_lossy().into_owned()
    };
    let (a, v, b) = (id("a"), id("v"), id("b"));
    let listed = |id: &str| fs.subvolumes().iter().filter(|p| p.contains(id)).count();
    assert_eq!((listed(&a), listed(&v), listed(&b)), (1, 1, 3));

    s.remove("v").await.unwrap();
    assert_eq!(listed(&v), 0, "{:?}", fs.subvolumes());
    s.remove("b").await.unwrap();
    assert_eq!(listed(&b), 0, "{:?}", fs.subvolumes());
    s.remove("a").await.unwrap();
    assert!(fs.subvolumes().is_empty(), "{:?}", fs.subvolumes());
    let root = fs.mnt().join("root");
    for d in ["snapshots", "tmp"] {
        assert_eq!(fs::read_dir(root.join(d)).unwrap().count(), 0, "{d}");
    }
}

#[tokio::test]
async fn a_root_off_btrfs_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    if btrfs::is_btrfs(tmp.path()).unwrap() {
        strata_testkit::skip(
            "strata-btrfs::a_root_off_btrfs_is_refused_naming_it",
            "the temporary directory is on btrfs",
        );
        return;
    }
    let root = tmp.path().join("state");
    let err = BtrfsBackend::new(&root).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&root.display().to_string()) && msg.contains("is not on btrfs"),
        "{msg}"
    );
}

#[tokio::test]
async fn open_deletes_the_subvolumes_a_crash_left() {
    if !support::usable("strata-btrfs::open_deletes_the_subvolumes_a_crash_left") {
        return;
    }
    let fs = LoopBtrfs::new();
    let root = fs.mnt().join("root");
    let (a, keep) = {
        let s = open(&fs);
        layer(&s, "a", None, |p| fs::write(p.join("f"), "x").unwrap()).await;
        s.prepare("keep", None, Labels::new()).await.unwrap();
        (s.fs_dir("a").unwrap(), s.fs_dir("keep").unwrap())
    };
    // What crashes leave: a new snapshot's subvolume before its rename, a
    // removal's read-only snapshot, a read-only one with a subvolume nested
    // in it, a staging directory stopped before its subvolume, and a
    // snapshot directory whose row was never written.
    let leftovers = [
        root.join("tmp/snap-new-x"),
        root.join("tmp/snap-rm-y"),
        root.join("tmp/snap-rm-z"),
        root.join("tmp/snap-new-w"),
        root.join("snapshots/orphan"),
    ];
    for d in &leftovers {
        fs::create_dir(d).unwrap();
    }
    btrfs::create_subvolume(&root.join("tmp/snap-new-x/fs")).unwrap();
    fs::write(root.join("tmp/snap-new-x/fs/half"), "written").unwrap();
    btrfs::snapshot(&a, &root.join("tmp/snap-rm-y/fs"), true).unwrap();
    btrfs::create_subvolume(&root.join("tmp/snap-rm-z/fs")).unwrap();
    btrfs::create_subvolume(&root.join("tmp/snap-rm-z/fs/nested")).unwrap();
    btrfs::set_read_only(&root.join("tmp/snap-rm-z/fs"), true).unwrap();
    btrfs::snapshot(&a, &root.join("snapshots/orphan/fs"), false).unwrap();
    assert_eq!(fs.subvolumes().len(), 7);

    let s = open(&fs);
    for d in &leftovers {
        assert!(!d.exists(), "{} is left", d.display());
    }
    let relative = |p: &Path| p.strip_prefix(fs.mnt()).unwrap().display().to_string();
    let mut left = fs.subvolumes();
    left.sort();
    let mut expected = vec![relative(&a), relative(&keep)];
    expected.sort();
    assert_eq!(left, expected);
    assert!(s.check().unwrap().is_empty());
    assert_eq!(
        fs::read_to_string(s.fs_dir("a").unwrap().join("f")).unwrap(),
        "x"
    );
}

#[tokio::test]
async fn usage_counts_exclusive_bytes_when_quotas_are_on() {
    if !support::usable("strata-btrfs::usage_counts_exclusive_bytes_when_quotas_are_on") {
        return;
    }
    let fs = LoopBtrfs::new();
    let s = open(&fs);
    layer(&s, "a", None, |p| {
        fs::write(p.join("f"), noise(8 << 20, 5)).unwrap()
    })
    .await;
    s.prepare("b", Some("a"), Labels::new()).await.unwrap();
    fs::write(s.fs_dir("b").unwrap().join("g"), noise(1 << 20, 6)).unwrap();

    // Quotas off: the walk counts the whole tree.
    let walked = s.usage("b").await.unwrap();
    assert!(walked.size >= 9 * MIB, "{walked:?}");
    assert_eq!(walked.inodes, 3, "root, f and g");

    fs.enable_quotas();
    let own = s.usage("b").await.unwrap();
    assert!(
        own.size >= MIB && own.size < MIB + MIB / 2,
        "the child's own bytes are its 1 MiB and some metadata: {own:?}"
    );
    assert_eq!(own.inodes, 3);
    s.commit("bc", "b", Labels::new()).await.unwrap();
    let committed = s.usage("bc").await.unwrap();
    assert!(
        committed.size >= MIB && committed.size < MIB + MIB / 2,
        "{committed:?}"
    );
}
