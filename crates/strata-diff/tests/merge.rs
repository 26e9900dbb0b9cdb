//! The merge engine and unpacking into snapshots, on both backends with
//! real mounts: merge(S1..Sn) renders like the layers applied in order onto
//! one directory; a snapshot diff holds what changed (deletions dropped)
//! whether read from the overlay upper directory or by the double walk; a
//! failed unpack leaves no snapshot; merged files share inodes with their
//! inputs and the stored usage leaves them out. Needs root.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_core::Labels;
use strata_diff::{
    ApplyOptions, Comparison, Diff, Merger, Unpacker, WriteOptions, apply, walk_changes,
    write_layer,
};
use strata_leases::OpCtx;
use strata_metadata::MetaDb;
use strata_snapshot::{Backend, SnapshotStore, Snapshotter};
use strata_testkit::crash::Rng;
use strata_testkit::tree::{render, without_sockets};

struct Env {
    _t: tempfile::TempDir,
    base: PathBuf,
    store: SnapshotStore,
    merger: Merger,
}

fn env(backend: &str) -> Env {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    fs::create_dir(&root).unwrap();
    let db = Arc::new(MetaDb::open(&root.join("meta.redb")).unwrap());
    let b: Arc<dyn Backend> = if backend == "overlay" {
        Arc::new(
            strata_overlay::Overlay::new(
                &root.join("snapshots"),
                strata_overlay::OverlayConfig::default(),
            )
            .unwrap(),
        )
    } else {
        Arc::new(strata_native::Native)
    };
    let store = SnapshotStore::open(&root, db, b).unwrap();
    let tmp = root.join("tmp");
    Env {
        base: t.path().to_path_buf(),
        merger: Merger::new(store.clone(), tmp),
        store,
        _t: t,
    }
}

/// Applies `layer` to the plain directory `dir` with default options.
fn apply_plain(layer: &[u8], dir: &Path) {
    apply(&OpCtx::new(), layer, dir, &ApplyOptions::default()).unwrap();
}

fn layer_of(lower: Option<&Path>, upper: &Path, cmp: Comparison) -> Vec<u8> {
    changes_layer(lower, upper, cmp, true)
}

/// A layer of the changes; without `unmodified`, hard links to paths that
/// did not change are not made (a diff snapshot does not have them).
fn changes_layer(lower: Option<&Path>, upper: &Path, cmp: Comparison, unmodified: bool) -> Vec<u8> {
    write_layer(
        &OpCtx::new(),
        Vec::new(),
        upper,
        &WriteOptions::default(),
        |w| {
            walk_changes(lower, upper, cmp, &mut |c| {
                if unmodified || c.kind != strata_diff::ChangeKind::Unmodified {
                    w.change(&c)?;
                }
                Ok(())
            })
        },
    )
    .unwrap()
    .1
}

async fn unpack_bytes(e: &Env, key: &str, parent: Option<&str>, layer: Vec<u8>) {
    let open: strata_diff::LayerSource =
        Arc::new(move || Ok(Box::new(std::io::Cursor::new(layer.clone())) as Box<dyn Read + Send>));
    Unpacker::new(e.store.clone(), e.base.clone())
        .unpack(
            &OpCtx::new(),
            key,
            parent,
            open,
            &ApplyOptions::default(),
            Labels::new(),
        )
        .await
        .unwrap();
}

async fn render_snapshot(e: &Env, key: &str) -> String {
    let mounts = e.store.view_mounts(key).unwrap();
    let m = strata_snapshot::mounts::LocalMount::mount(
        &mounts,
        &e.base,
        strata_snapshot::mounts::MountOptions {
            force_remount: true,
            temporary: true,
        },
    )
    .unwrap();
    render(m.path())
}

/// Native snapshots hold whole trees and must match exactly; overlay
/// chains may split a hard-link group a later layer linked into (see
/// `assert_same_but_split_links`).
#[track_caller]
fn same_tree(backend: &str, got: &str, want: &str, what: &str) {
    if backend == "overlay" {
        strata_testkit::tree::assert_same_but_split_links(got, want, what);
    } else {
        assert_eq!(got, want, "{what}");
    }
}

fn random_trees(base: &Path, seed: u64, n: usize) -> Vec<PathBuf> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let d = base.join(format!("tree{seed}-{i}"));
            fs::create_dir(&d).unwrap();
            strata_testkit::random_tree::populate(&d, &mut rng, 40);
            d
        })
        .collect()
}

async fn merge_equals_ordered_apply(backend: &str) {
    let e = env(backend);
    for seed in
        strata_testkit::random_tree::seeds(&format!("merge_equals_ordered_apply {backend}"), 4)
    {
        let trees = random_trees(&e.base, seed, 3);
        let reference = e.base.join(format!("ref{seed}"));
        fs::create_dir(&reference).unwrap();
        let mut keys = Vec::new();
        for (i, t) in trees.iter().enumerate() {
            let layer = layer_of(None, t, Comparison::Compat);
            apply_plain(&layer, &reference);
            let key = format!("s{seed}-{i}");
            unpack_bytes(&e, &key, None, layer).await;
            keys.push(key);
        }
        let diffs: Vec<Diff> = keys.iter().map(|k| Diff::whole(k)).collect();
        let merged = format!("merged{seed}");
        let stats = e
            .merger
            .merge(&OpCtx::new(), &merged, &diffs, Labels::new())
            .await
            .unwrap();
        assert_eq!(
            render_snapshot(&e, &merged).await,
            render(&reference),
            "{backend} seed {seed}"
        );
        assert!(
            stats.linked > 0,
            "{backend}: merged files share inodes: {stats:?}"
        );
        let usage = e.merger.usage(&merged).await.unwrap();
        assert_eq!(usage, stats.usage);
        let backend_usage = e.store.usage(&merged).await.unwrap();
        assert!(
            usage.inodes < backend_usage.inodes,
            "{backend}: shared inodes are not the merge's own: {usage:?} vs {backend_usage:?}"
        );
    }
}

#[tokio::test]
async fn merge_equals_ordered_apply_overlay() {
    if strata_testkit::require_root("strata-diff::merge_equals_ordered_apply_overlay") {
        merge_equals_ordered_apply("overlay").await;
    }
}

#[tokio::test]
async fn merge_equals_ordered_apply_native() {
    if strata_testkit::require_root("strata-diff::merge_equals_ordered_apply_native") {
        merge_equals_ordered_apply("native").await;
    }
}

/// A snapshot diff of a parent and its child holds what changed.
async fn snapshot_diff_holds_the_changes(backend: &str) {
    let e = env(backend);
    for seed in strata_testkit::random_tree::seeds(&format!("snapshot diff {backend}"), 4) {
        let mut rng = Rng::new(seed);
        let a = random_trees(&e.base, seed, 1).remove(0);
        let b = e.base.join(format!("b{seed}"));
        strata_native::copy_tree(&a, &b).unwrap();
        strata_testkit::random_tree::mutate(&b, &mut rng, 15);
        let (ka, kb) = (format!("a{seed}"), format!("b{seed}"));
        unpack_bytes(&e, &ka, None, layer_of(None, &a, Comparison::Compat)).await;
        unpack_bytes(
            &e,
            &kb,
            Some(&ka),
            layer_of(Some(&a), &b, Comparison::Compat),
        )
        .await;
        // Reference: the changes (as the snapshots hold them) onto nothing.
        same_tree(
            backend,
            &render_snapshot(&e, &kb).await,
            &without_sockets(&render(&b)),
            &format!("{backend} seed {seed}: unpacked chain"),
        );
        let reference = e.base.join(format!("diffref{seed}"));
        fs::create_dir(&reference).unwrap();
        let mounts_a = e.store.view_mounts(&ka).unwrap();
        let mounts_b = e.store.view_mounts(&kb).unwrap();
        let opts = strata_snapshot::mounts::MountOptions {
            force_remount: true,
            temporary: true,
        };
        let ma = strata_snapshot::mounts::LocalMount::mount(&mounts_a, &e.base, opts).unwrap();
        let mb = strata_snapshot::mounts::LocalMount::mount(&mounts_b, &e.base, opts).unwrap();
        let layer = changes_layer(
            Some(ma.path()),
            mb.path(),
            Comparison::ContentOnMetadataMatch,
            false,
        );
        drop((ma, mb));
        apply_plain(&layer, &reference);
        let name = format!("diff{seed}");
        let diff = Diff {
            lower: Some(ka.clone()),
            upper: Some(kb.clone()),
            comparison: Comparison::ContentOnMetadataMatch,
        };
        e.merger
            .merge(&OpCtx::new(), &name, &[diff], Labels::new())
            .await
            .unwrap();
        same_tree(
            backend,
            &render_snapshot(&e, &name).await,
            &render(&reference),
            &format!("{backend} seed {seed}: snapshot diff"),
        );
    }
}

#[tokio::test]
async fn snapshot_diff_holds_the_changes_overlay() {
    if strata_testkit::require_root("strata-diff::snapshot_diff_holds_the_changes_overlay") {
        snapshot_diff_holds_the_changes("overlay").await;
    }
}

#[tokio::test]
async fn snapshot_diff_holds_the_changes_native() {
    if strata_testkit::require_root("strata-diff::snapshot_diff_holds_the_changes_native") {
        snapshot_diff_holds_the_changes("native").await;
    }
}

#[tokio::test]
async fn a_failed_unpack_leaves_no_snapshot() {
    if !strata_testkit::require_root("strata-diff::a_failed_unpack_leaves_no_snapshot") {
        return;
    }
    for backend in ["overlay", "native"] {
        let e = env(backend);
        let tree = random_trees(&e.base, 99, 1).remove(0);
        let layer = layer_of(None, &tree, Comparison::Compat);
        let wrong = strata_core::Digest::parse(&format!("sha256:{}", "0".repeat(64))).unwrap();
        let open: strata_diff::LayerSource = Arc::new(move || {
            Ok(Box::new(std::io::Cursor::new(layer.clone())) as Box<dyn Read + Send>)
        });
        let opts = ApplyOptions {
            name: "layer.tar".into(),
            diff_id: Some(wrong),
            ..ApplyOptions::default()
        };
        let err = Unpacker::new(e.store.clone(), e.base.clone())
            .unpack(&OpCtx::new(), "k", None, open, &opts, Labels::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("diffID mismatch"), "{err}");
        let mut left = Vec::new();
        e.store
            .walk(&strata_core::Filter::default(), &mut |i| {
                left.push(i.name);
                Box::pin(async { Ok(()) })
            })
            .await
            .unwrap();
        assert!(left.is_empty(), "{backend}: {left:?}");
    }
}

/// The same layers render alike as overlay snapshots (mounted), native
/// snapshots, applied in order onto a directory, and (for a layer without
/// whiteouts) as GNU tar extracts them.
#[tokio::test]
async fn unpacked_chains_render_alike_everywhere() {
    if !strata_testkit::require_root("strata-diff::unpacked_chains_render_alike_everywhere") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let seed = strata_testkit::random_tree::seeds("unpacked_chains_render_alike_everywhere", 1)[0];
    let mut rng = Rng::new(seed);
    let trees = strata_testkit::random_tree::history(t.path(), &mut rng, 4, 60, 20);
    let layers: Vec<Vec<u8>> = trees
        .iter()
        .enumerate()
        .map(|(i, tree)| {
            let lower = i.checked_sub(1).map(|p| trees[p].as_path());
            layer_of(lower, tree, Comparison::Compat)
        })
        .collect();
    let reference = t.path().join("reference");
    fs::create_dir(&reference).unwrap();
    for l in &layers {
        apply_plain(l, &reference);
    }
    let want = render(&reference);
    assert_eq!(want, without_sockets(&render(trees.last().unwrap())));
    for backend in ["overlay", "native"] {
        let e = env(backend);
        let mut parent: Option<String> = None;
        for (i, l) in layers.iter().enumerate() {
            let key = format!("l{i}");
            unpack_bytes(&e, &key, parent.as_deref(), l.clone()).await;
            parent = Some(key);
        }
        same_tree(backend, &render_snapshot(&e, "l3").await, &want, backend);
    }
    // GNU tar as the reference extraction of the first layer.
    let (ours, gnu) = (t.path().join("ours"), t.path().join("gnu"));
    fs::create_dir(&ours).unwrap();
    fs::create_dir(&gnu).unwrap();
    apply_plain(&layers[0], &ours);
    let mut child = std::process::Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--same-owner",
            "--numeric-owner",
            "-xpf",
            "-",
            "-C",
        ])
        .arg(&gnu)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &layers[0]).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    assert_eq!(
        render(&gnu),
        render(&ours),
        "GNU tar reads our layer the same way"
    );
}

/// Layers written into the content store: labelled with their diffID,
/// readable back into the same tree, idempotent, and a failed write leaves
/// no ingest behind.
#[test]
fn layers_go_into_the_content_store() {
    let t = tempfile::tempdir().unwrap();
    let db = Arc::new(MetaDb::open(&t.path().join("meta.redb")).unwrap());
    let content = strata_content::ContentStore::open(&t.path().join("content"), db).unwrap();
    let tree = random_trees(t.path(), 77, 1).remove(0);
    let opts = WriteOptions {
        compression: strata_diff::Compression::Zstd,
        level: Some(3),
        ..WriteOptions::default()
    };
    let write = |reference: &str| {
        strata_diff::write_layer_to_store(&OpCtx::new(), &content, reference, &tree, &opts, |w| {
            walk_changes(None, &tree, Comparison::Compat, &mut |c| w.change(&c))
        })
    };
    let written = write("export-1").unwrap();
    let info = content.info(&written.digest).unwrap();
    assert_eq!(info.size, written.size);
    assert_eq!(
        info.labels.get(strata_diff::UNCOMPRESSED_LABEL),
        Some(&written.diff_id.to_string())
    );
    let back = t.path().join("back");
    fs::create_dir(&back).unwrap();
    let applied = apply(
        &OpCtx::new(),
        content.reader_at(&written.digest).unwrap(),
        &back,
        &ApplyOptions {
            digest: Some(written.digest.clone()),
            diff_id: Some(written.diff_id.clone()),
            ..ApplyOptions::default()
        },
    )
    .unwrap();
    assert_eq!(applied.size, written.uncompressed_size);
    assert_eq!(render(&back), without_sockets(&render(&tree)));
    assert_eq!(write("export-2").unwrap(), written, "the same layer again");
    let failed = strata_diff::write_layer_to_store(
        &OpCtx::new(),
        &content,
        "export-3",
        &tree,
        &opts,
        |_| {
            Err(strata_diff::DiffError::Unsupported {
                path: tree.clone(),
                reason: "stop".into(),
            })
        },
    );
    assert!(failed.is_err());
    assert!(
        content.status("export-3").is_err(),
        "the failed ingest is gone"
    );
}

/// On overlay the first input's whole chain becomes the base of a merge:
/// nothing of it is copied, and the result sits on it.
#[tokio::test]
async fn overlay_merges_reuse_the_first_chain() {
    if !strata_testkit::require_root("strata-diff::overlay_merges_reuse_the_first_chain") {
        return;
    }
    let e = env("overlay");
    let trees = random_trees(&e.base, 5, 3);
    let reference = e.base.join("ref");
    fs::create_dir(&reference).unwrap();
    let mut parent: Option<String> = None;
    for (i, t) in trees.iter().enumerate().take(2) {
        let layer = layer_of(None, t, Comparison::Compat);
        apply_plain(&layer, &reference);
        let key = format!("chain{i}");
        unpack_bytes(&e, &key, parent.as_deref(), layer).await;
        parent = Some(key);
    }
    let other = layer_of(None, &trees[2], Comparison::Compat);
    apply_plain(&other, &reference);
    unpack_bytes(&e, "other", None, other).await;
    let stats = e
        .merger
        .merge(
            &OpCtx::new(),
            "m",
            &[Diff::whole("chain1"), Diff::whole("other")],
            Labels::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        e.store.stat("m").await.unwrap().parent.as_deref(),
        Some("chain1")
    );
    assert_eq!(render_snapshot(&e, "m").await, render(&reference));
    let own = e.merger.usage("m").await.unwrap();
    assert_eq!(own, stats.usage);
    assert!(stats.changes > 0);
}

/// ApplySnapshotDiff of a snapshot against itself: a new, empty snapshot.
#[tokio::test]
async fn a_diff_of_equal_inputs_is_empty() {
    if !strata_testkit::require_root("strata-diff::a_diff_of_equal_inputs_is_empty") {
        return;
    }
    for backend in ["overlay", "native"] {
        let e = env(backend);
        let tree = random_trees(&e.base, 31, 1).remove(0);
        unpack_bytes(&e, "a", None, layer_of(None, &tree, Comparison::Compat)).await;
        let diff = Diff {
            lower: Some("a".into()),
            upper: Some("a".into()),
            comparison: Comparison::ContentOnMetadataMatch,
        };
        let stats = e
            .merger
            .merge(&OpCtx::new(), "same", &[diff], Labels::new())
            .await
            .unwrap();
        assert_eq!(stats.changes, 0, "{backend}");
        let listing = render_snapshot(&e, "same").await;
        assert_eq!(
            listing.lines().count(),
            1,
            "{backend}: only the root: {listing}"
        );
        assert_eq!(e.store.stat("same").await.unwrap().parent, None);
    }
}

#[tokio::test]
async fn a_cancelled_merge_leaves_nothing() {
    if !strata_testkit::require_root("strata-diff::a_cancelled_merge_leaves_nothing") {
        return;
    }
    let e = env("native");
    let tree = random_trees(&e.base, 41, 1).remove(0);
    unpack_bytes(&e, "a", None, layer_of(None, &tree, Comparison::Compat)).await;
    let ctx = OpCtx::new();
    ctx.cancel();
    let err = e
        .merger
        .merge(&ctx, "m", &[Diff::whole("a")], Labels::new())
        .await
        .unwrap_err();
    assert!(matches!(err, strata_diff::DiffError::Cancelled), "{err}");
    let mut left = Vec::new();
    e.store
        .walk(&strata_core::Filter::default(), &mut |i| {
            left.push(i.name);
            Box::pin(async { Ok(()) })
        })
        .await
        .unwrap();
    assert_eq!(left, ["a"]);
}

/// A layer writing below a lower layer's symlink (`lib -> usr/lib`, then
/// `lib/x`) cannot go straight into the upper directory; unpack applies it
/// through a mount instead, where the symlink resolves as it would in the
/// image.
#[tokio::test]
async fn unpack_falls_back_to_a_mount_below_lower_symlinks() {
    if !strata_testkit::require_root(
        "strata-diff::unpack_falls_back_to_a_mount_below_lower_symlinks",
    ) {
        return;
    }
    use strata_testkit::layer_tar::{archive, entry};
    use tar::EntryType::{Directory as D, Regular as F, Symlink as S};
    let one = archive(&[
        entry("usr/", D, b"", ""),
        entry("usr/lib/", D, b"", ""),
        entry("lib", S, b"", "usr/lib"),
    ]);
    let two = archive(&[entry("lib/x", F, b"x", "")]);
    for backend in ["overlay", "native"] {
        let e = env(backend);
        unpack_bytes(&e, "one", None, one.clone()).await;
        unpack_bytes(&e, "two", Some("one"), two.clone()).await;
        let listing = render_snapshot(&e, "two").await;
        assert!(listing.contains("/lib Symlink"), "{backend}: {listing}");
        assert!(listing.contains("/usr/lib/x File"), "{backend}: {listing}");
    }
}
