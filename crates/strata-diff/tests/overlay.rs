//! Applying straight into overlay upper directories: for the same layers,
//! the mounted overlay of the upper directories renders exactly like the
//! layers applied in order onto one plain directory. Layers come from random
//! tree histories (whiteouts, type changes, hard links) and from hand-made
//! tars with opaque markers, whiteouts re-created as directories and hard
//! links to lower files. Needs root (mounts, whiteout devices).

use std::fs;
use std::path::{Path, PathBuf};

use strata_core::Mount;
use strata_diff::{ApplyError, ApplyOptions, Comparison, OverlayTarget, WriteOptions, apply};
use strata_testkit::crash::Rng;
use strata_testkit::layer_tar::{archive, entry};
use strata_testkit::tree::{render, without_sockets};

fn diff_layer(lower: Option<&Path>, upper: &Path) -> Vec<u8> {
    strata_diff::write_layer(
        &strata_leases::OpCtx::new(),
        Vec::new(),
        upper,
        &WriteOptions::default(),
        |w| strata_diff::walk_changes(lower, upper, Comparison::Compat, &mut |c| w.change(&c)),
    )
    .unwrap()
    .1
}

/// Applies `layers` into fresh upper directories under `base`, each over
/// the ones before, and returns the rendering of the mounted overlay.
fn overlay_render(base: &Path, layers: &[Vec<u8>]) -> Result<String, ApplyError> {
    overlay_render_as(base, layers, false)
}

/// With `detached`, each layer is first written without its lowers (as a
/// parallel unpack does) and written again over them only when it
/// `NeedsLowers`.
fn overlay_render_as(
    base: &Path,
    layers: &[Vec<u8>],
    detached: bool,
) -> Result<String, ApplyError> {
    let mut uppers: Vec<PathBuf> = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let upper = base.join(format!("u{i}"));
        fs::create_dir(&upper).unwrap();
        let lowers: Vec<PathBuf> = uppers.iter().rev().cloned().collect();
        let ctx = strata_leases::OpCtx::new();
        let opts = |lowers: Vec<PathBuf>, detached: bool| ApplyOptions {
            overlay: Some(OverlayTarget {
                lowers,
                userxattr: false,
                detached,
            }),
            ..ApplyOptions::default()
        };
        if detached {
            match apply(&ctx, layer.as_slice(), &upper, &opts(Vec::new(), true)) {
                Err(ApplyError::NeedsLowers { .. }) => {
                    let written = strata_sys::Root::open(&upper).unwrap();
                    for (name, _) in written.read_dir(Path::new("")).unwrap() {
                        written.remove_all(Path::new(&name)).unwrap();
                    }
                    apply(&ctx, layer.as_slice(), &upper, &opts(lowers, false))?;
                }
                other => {
                    other?;
                }
            }
        } else {
            apply(&ctx, layer.as_slice(), &upper, &opts(lowers, false))?;
        }
        uppers.push(upper);
    }
    let empty = base.join("empty");
    fs::create_dir_all(&empty).unwrap();
    let mut lowers: Vec<PathBuf> = uppers.iter().rev().cloned().collect();
    lowers.push(empty);
    let target = base.join("merged");
    fs::create_dir(&target).unwrap();
    let m = Mount::overlay(
        strata_core::OverlayLayers {
            lowers,
            ..Default::default()
        },
        Vec::new(),
    );
    strata_sys::mount::mount(&m, &target).unwrap();
    let out = render(&target);
    strata_sys::mount::unmount(&target).unwrap();
    Ok(out)
}

fn plain_render(base: &Path, layers: &[Vec<u8>]) -> String {
    let dest = base.join("plain");
    fs::create_dir(&dest).unwrap();
    for layer in layers {
        apply(
            &strata_leases::OpCtx::new(),
            layer.as_slice(),
            &dest,
            &ApplyOptions::default(),
        )
        .unwrap();
    }
    render(&dest)
}

#[test]
fn random_histories_render_the_same_through_overlay() {
    if !strata_testkit::require_root(
        "strata-diff::random_histories_render_the_same_through_overlay",
    ) {
        return;
    }
    for seed in
        strata_testkit::random_tree::seeds("random_histories_render_the_same_through_overlay", 8)
    {
        let mut rng = Rng::new(seed);
        let t = tempfile::tempdir().unwrap();
        let work = t.path().join("work");
        fs::create_dir(&work).unwrap();
        let trees = strata_testkit::random_tree::history(t.path(), &mut rng, 4, 50, 20);
        let layers: Vec<Vec<u8>> = trees
            .iter()
            .enumerate()
            .map(|(i, tree)| diff_layer(i.checked_sub(1).map(|p| trees[p].as_path()), tree))
            .collect();
        let plain = plain_render(&work, &layers);
        assert_eq!(
            plain,
            without_sockets(&render(trees.last().unwrap())),
            "seed {seed}: plain apply reproduces the last tree"
        );
        strata_testkit::tree::assert_same_but_split_links(
            &overlay_render(&work, &layers).unwrap(),
            &plain,
            &format!("seed {seed}: overlay upper directories"),
        );
        let detached = t.path().join("detached");
        fs::create_dir(&detached).unwrap();
        strata_testkit::tree::assert_same_but_split_links(
            &overlay_render_as(&detached, &layers, true).unwrap(),
            &plain,
            &format!("seed {seed}: upper directories written before their lowers"),
        );
    }
}

#[test]
fn opaque_markers_whiteouts_and_links_to_lower_files() {
    if !strata_testkit::require_root(
        "strata-diff::opaque_markers_whiteouts_and_links_to_lower_files",
    ) {
        return;
    }
    use tar::EntryType::{Directory as D, Link as L, Regular as F};
    let layers = vec![
        archive(&[
            entry("etc/", D, b"", ""),
            entry("etc/a", F, b"a", ""),
            entry("etc/b", F, b"b", ""),
            entry("opt/", D, b"", ""),
            entry("opt/x/", D, b"", ""),
            entry("opt/x/old", F, b"old", ""),
            entry("top1", F, b"1", ""),
            entry("top2", F, b"2", ""),
            entry("data/", D, b"", ""),
            entry("data/shared", F, b"shared", ""),
        ]),
        archive(&[
            // Opaque etc: a and b go, c stays.
            entry("etc/", D, b"", ""),
            entry("etc/.wh..wh..opq", F, b"", ""),
            entry("etc/c", F, b"c", ""),
            // Whiteout then a directory of the same name: nothing merges.
            entry("opt/.wh.x", F, b"", ""),
            entry("opt/x/", D, b"", ""),
            entry("opt/x/new", F, b"new", ""),
            // A whiteout of nothing makes nothing.
            entry(".wh.never", F, b"", ""),
            // A hard link to a lower file, with no parent entry.
            entry("data/link", L, b"", "data/shared"),
        ]),
        archive(&[
            // Opaque at the top: only what this layer brings survives.
            entry(".wh..wh..opq", F, b"", ""),
            entry("top3", F, b"3", ""),
        ]),
    ];
    let t = tempfile::tempdir().unwrap();
    let two = t.path().join("two");
    let three = t.path().join("three");
    fs::create_dir(&two).unwrap();
    fs::create_dir(&three).unwrap();
    assert_eq!(
        overlay_render(&two, &layers[..2]).unwrap(),
        plain_render(&two, &layers[..2])
    );
    assert!(!two.join("u1/.wh.never").exists() && !two.join("u1/never").exists());
    let want = plain_render(&three, &layers);
    assert_eq!(overlay_render(&three, &layers).unwrap(), want);
    // Written before their lowers: the same tree (the hard link to a lower
    // file and the opaque top need the lowers and are written again).
    let detached = t.path().join("detached");
    fs::create_dir(&detached).unwrap();
    assert_eq!(overlay_render_as(&detached, &layers, true).unwrap(), want);
}

#[test]
fn entries_below_a_lower_symlink_need_a_mount() {
    if !strata_testkit::require_root("strata-diff::entries_below_a_lower_symlink_need_a_mount") {
        return;
    }
    use tar::EntryType::{Directory as D, Regular as F, Symlink as S};
    let layers = vec![
        archive(&[
            entry("usr/", D, b"", ""),
            entry("usr/lib/", D, b"", ""),
            entry("lib", S, b"", "usr/lib"),
        ]),
        archive(&[entry("lib/x", F, b"x", "")]),
    ];
    let t = tempfile::tempdir().unwrap();
    let err = overlay_render(t.path(), &layers).unwrap_err();
    assert!(matches!(err, ApplyError::NeedsMount { .. }), "{err}");
}

/// What `walk` (over the mounted `view`) writes as a layer.
fn layer_of_walk(
    view: &Path,
    walk: impl FnOnce(&mut strata_diff::ChangeFn<'_>) -> Result<(), strata_diff::DiffError>,
) -> Vec<u8> {
    strata_diff::write_layer(
        &strata_leases::OpCtx::new(),
        Vec::new(),
        view,
        &WriteOptions::default(),
        |w| walk(&mut |c| w.change(&c)),
    )
    .unwrap()
    .1
}

/// The kernel, not a layer, makes the upper directory: directories removed
/// and made again through a mounted overlay (which overlayfs marks opaque),
/// files deleted (whiteout devices), type changes and random edits. The
/// upper-directory export must write what the double walk writes.
#[test]
fn kernel_made_upper_directories_export_like_the_double_walk() {
    if !strata_testkit::require_root(
        "strata-diff::kernel_made_upper_directories_export_like_the_double_walk",
    ) {
        return;
    }
    for seed in strata_testkit::random_tree::seeds("kernel_made_upper_directories", 6) {
        let mut rng = Rng::new(seed);
        let t = tempfile::tempdir().unwrap();
        let dir = |n: &str| {
            let d = t.path().join(n);
            fs::create_dir(&d).unwrap();
            d
        };
        let (lower, upper, work, view) = (dir("lower"), dir("upper"), dir("work"), dir("view"));
        strata_testkit::random_tree::populate(&lower, &mut rng, 60);
        let m = Mount::overlay(
            strata_core::OverlayLayers {
                lowers: vec![lower.clone()],
                upper: Some(upper.clone()),
                work: Some(work.clone()),
                ..Default::default()
            },
            Vec::new(),
        );
        strata_sys::mount::mount(&m, &view).unwrap();
        // Every lower directory at the top goes and comes back (opaque),
        // holding one new file; then random changes on top.
        let tops: Vec<PathBuf> = fs::read_dir(&lower)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| PathBuf::from(e.file_name()))
            .collect();
        let root = strata_sys::Root::open(&view).unwrap();
        for d in &tops {
            root.remove_all(d).unwrap();
            fs::create_dir(view.join(d)).unwrap();
            fs::write(view.join(d).join("again"), b"made after the removal").unwrap();
        }
        drop(root);
        let opaque = tops.iter().any(|d| {
            strata_sys::Root::open(&upper)
                .unwrap()
                .get_xattr(d, std::ffi::OsStr::new("trusted.overlay.opaque"))
                .unwrap()
                .is_some()
        });
        assert!(
            tops.is_empty() || opaque,
            "seed {seed}: the kernel made no opaque directory"
        );
        strata_testkit::random_tree::mutate(&view, &mut rng, 25);

        let fast = layer_of_walk(&view, |f| {
            strata_diff::walk_upperdir_changes(&upper, &view, &lower, Comparison::Compat, f)
        });
        let slow = layer_of_walk(&view, |f| {
            strata_diff::walk_changes(Some(&lower), &view, Comparison::Compat, f)
        });
        let want = without_sockets(&render(&view));
        strata_sys::mount::unmount(&view).unwrap();
        let onto_lower = |layer: &[u8], name: &str| {
            let d = t.path().join(name);
            strata_native::copy_tree(&lower, &d).unwrap();
            apply(
                &strata_leases::OpCtx::new(),
                layer,
                &d,
                &ApplyOptions::default(),
            )
            .unwrap();
            render(&d)
        };
        let (by_upper, by_walk) = (onto_lower(&fast, "fast"), onto_lower(&slow, "slow"));
        assert_eq!(
            by_upper, by_walk,
            "seed {seed}: upper directory vs double walk"
        );
        // The lower's sockets stay where no layer touched them; the view is
        // the side that may split hard-link groups (copy-up of one name).
        strata_testkit::tree::assert_same_but_split_links(
            &want,
            &without_sockets(&by_walk),
            &format!("seed {seed}: applied vs the mounted tree"),
        );
    }
}
