//! Change walking and layer writing: the seed's comparison-mode tests
//! (§11.6), walk order, suppression of deleted directories' children,
//! hard-link reporting, and round trips on random trees: applying the layer
//! of diff(A, B) onto A gives B, and export then import gives the same tree.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use strata_diff::{
    ApplyOptions, Change, ChangeKind, Comparison, Compression, WriteOptions, apply, walk_changes,
    write_layer,
};
use strata_sys::{Root, Times};
use strata_testkit::crash::Rng;
use strata_testkit::tree::{render, without_sockets};

const FIXED: Times = Times {
    sec: 1_775_443_663,
    nsec: 799_549_393,
};

fn write(dir: &Path, rel: &str, data: &str) {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn set_time(dir: &Path, rel: &str) {
    Root::open(dir)
        .unwrap()
        .set_times(Path::new(rel), FIXED, FIXED)
        .unwrap();
}

fn changes(lower: Option<&Path>, upper: &Path, cmp: Comparison) -> Vec<(ChangeKind, String)> {
    let mut out = Vec::new();
    walk_changes(lower, upper, cmp, &mut |c: Change| {
        out.push((c.kind, c.path.to_string_lossy().into_owned()));
        Ok(())
    })
    .unwrap();
    out
}

fn changed_paths(lower: &Path, upper: &Path, cmp: Comparison) -> Vec<String> {
    changes(Some(lower), upper, cmp)
        .into_iter()
        .filter(|(k, _)| *k != ChangeKind::Unmodified)
        .map(|(_, p)| p)
        .collect()
}

fn pair() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let (l, u) = (t.path().join("lower"), t.path().join("upper"));
    fs::create_dir(&l).unwrap();
    fs::create_dir(&u).unwrap();
    (t, l, u)
}

#[test]
fn comparison_modes() {
    let (_t, l, u) = pair();
    write(&l, "level1/file.txt", "level1 original");
    write(&u, "level1/file.txt", "level1 modified");
    set_time(&l, "level1/file.txt");
    set_time(&u, "level1/file.txt");
    assert!(!changed_paths(&l, &u, Comparison::Compat).contains(&"level1/file.txt".into()));
    assert!(
        changed_paths(&l, &u, Comparison::ContentOnMetadataMatch)
            .contains(&"level1/file.txt".into())
    );
    assert!(
        changed_paths(&l, &u, Comparison::InodeThenContent).contains(&"level1/file.txt".into())
    );
}

#[test]
fn content_mode_symlink_target_and_zero_length() {
    let (_t, l, u) = pair();
    symlink("one", l.join("link")).unwrap();
    symlink("two", u.join("link")).unwrap();
    write(&l, "zero", "");
    write(&u, "zero", "");
    for rel in ["link", "zero"] {
        set_time(&l, rel);
        set_time(&u, rel);
    }
    let got = changed_paths(&l, &u, Comparison::ContentOnMetadataMatch);
    assert!(got.contains(&"link".into()), "{got:?}");
    assert!(!got.contains(&"zero".into()), "{got:?}");
}

#[test]
fn compat_compares_contents_of_whole_second_times() {
    let (_t, l, u) = pair();
    write(&l, "f", "aaaa");
    write(&u, "f", "bbbb");
    let whole = Times {
        sec: 1_700_000_000,
        nsec: 0,
    };
    for d in [&l, &u] {
        Root::open(d)
            .unwrap()
            .set_times(Path::new("f"), whole, whole)
            .unwrap();
    }
    assert_eq!(changed_paths(&l, &u, Comparison::Compat), ["f"]);
}

#[test]
fn inode_then_content_trusts_the_same_inode() {
    let (_t, l, _u) = pair();
    write(&l, "f", "data");
    // The same tree on both sides: every inode matches, nothing changed.
    assert!(changed_paths(&l, &l, Comparison::InodeThenContent).is_empty());
}

#[test]
fn order_puts_slash_first_and_suppresses_deleted_children() {
    let (_t, l, u) = pair();
    write(&u, "a/b", "x");
    write(&u, "a.b", "x");
    write(&u, "ab", "x");
    write(&l, "gone/deep/file", "x");
    write(&l, "replaced/child", "x");
    write(&u, "replaced", "now a file");
    let got = changes(Some(&l), &u, Comparison::Compat);
    let want = [
        (ChangeKind::Add, "a"),
        (ChangeKind::Add, "a/b"),
        (ChangeKind::Add, "a.b"),
        (ChangeKind::Add, "ab"),
        (ChangeKind::Delete, "gone"),
        (ChangeKind::Modify, "replaced"),
    ];
    assert_eq!(
        got,
        want.map(|(k, p)| (k, p.to_string())).to_vec(),
        "children of deleted or replaced directories are not reported"
    );
}

#[test]
fn hardlinked_unchanged_files_are_reported_unmodified() {
    let (_t, l, u) = pair();
    write(&l, "f", "same");
    write(&u, "f", "same");
    let t = Times {
        sec: 1_700_000_000,
        nsec: 5,
    };
    for d in [&l, &u] {
        Root::open(d)
            .unwrap()
            .set_times(Path::new("f"), t, t)
            .unwrap();
    }
    fs::hard_link(u.join("f"), u.join("g")).unwrap();
    let got = changes(Some(&l), &u, Comparison::Compat);
    assert_eq!(
        got,
        [
            (ChangeKind::Unmodified, "f".to_string()),
            (ChangeKind::Add, "g".to_string())
        ]
    );
}

/// The tar of diff(lower, upper).
fn diff_layer(lower: Option<&Path>, upper: &Path, opts: &WriteOptions) -> Vec<u8> {
    let (_, tar) = write_layer(&strata_leases::OpCtx::new(), Vec::new(), upper, opts, |w| {
        walk_changes(lower, upper, Comparison::Compat, &mut |c| w.change(&c))
    })
    .unwrap();
    tar
}

fn apply_bytes(layer: &[u8], dest: &Path) {
    apply(
        &strata_leases::OpCtx::new(),
        layer,
        dest,
        &ApplyOptions::default(),
    )
    .unwrap();
}

#[test]
fn random_round_trips() {
    for seed in strata_testkit::random_tree::seeds("random_round_trips", 12) {
        let mut rng = Rng::new(seed);
        let t = tempfile::tempdir().unwrap();
        let (a, b, copy) = (t.path().join("a"), t.path().join("b"), t.path().join("c"));
        for d in [&a, &copy] {
            fs::create_dir(d).unwrap();
        }
        strata_testkit::random_tree::populate(&a, &mut rng, 60);
        let compression =
            [Compression::None, Compression::Gzip, Compression::Zstd][seed as usize % 3];
        let opts = WriteOptions {
            compression,
            ..WriteOptions::default()
        };
        // Export then import gives the same tree.
        apply_bytes(&diff_layer(None, &a, &opts), &copy);
        assert_eq!(
            without_sockets(&render(&a)),
            render(&copy),
            "seed {seed}: export/import"
        );
        // diff(A, B) applied onto A gives B.
        native_copy(&a, &b);
        strata_testkit::random_tree::mutate(&b, &mut rng, 25);
        apply_bytes(&diff_layer(Some(&a), &b, &opts), &copy);
        assert_eq!(
            without_sockets(&render(&b)),
            render(&copy),
            "seed {seed}: diff round trip"
        );
    }
}

fn native_copy(from: &Path, to: &Path) {
    strata_native::copy_tree(from, to).unwrap();
}

#[test]
fn layers_are_deterministic_and_clamped() {
    let (_t, _l, u) = pair();
    write(&u, "dir/file", "content");
    write(&u, &format!("{}/long", "x".repeat(120)), "long name");
    symlink("y".repeat(150), u.join("longlink")).unwrap();
    let opts = WriteOptions {
        compression: Compression::Gzip,
        level: Some(6),
        source_date_epoch: Some(1000),
        ..WriteOptions::default()
    };
    let one = diff_layer(None, &u, &opts);
    let two = diff_layer(None, &u, &opts);
    assert_eq!(one, two);
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(one.as_slice()));
    let mut names = Vec::new();
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        assert!(e.header().mtime().unwrap() <= 1000);
        names.push(e.path().unwrap().to_string_lossy().into_owned());
    }
    assert_eq!(
        names,
        [
            "dir/".to_string(),
            "dir/file".into(),
            "longlink".into(),
            format!("{}/", "x".repeat(120)),
            format!("{}/long", "x".repeat(120)),
        ]
    );
}

#[test]
fn deletes_become_whiteouts_after_their_parents() {
    let (_t, l, u) = pair();
    write(&l, "keep/gone", "x");
    write(&l, "keep/stay", "x");
    fs::create_dir(u.join("keep")).unwrap();
    fs::copy(l.join("keep/stay"), u.join("keep/stay")).unwrap();
    let tar = diff_layer(Some(&l), &u, &WriteOptions::default());
    let mut ar = tar::Archive::new(tar.as_slice());
    let names: Vec<String> = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["keep/", "keep/.wh.gone", "keep/stay"]);
}

#[test]
fn a_cancelled_write_stops() {
    let (_t, _l, u) = pair();
    for i in 0..50 {
        write(&u, &format!("f{i}"), "x");
    }
    let ctx = strata_leases::OpCtx::new();
    ctx.cancel();
    let opts = WriteOptions::default();
    let err = write_layer(&ctx, Vec::new(), &u, &opts, |w| {
        walk_changes(None, &u, Comparison::Compat, &mut |c| w.change(&c))
    })
    .unwrap_err();
    assert!(matches!(err, strata_diff::DiffError::Cancelled), "{err}");
}

#[test]
fn a_new_name_sorted_before_an_unchanged_one_keeps_the_link() {
    let (t, l, u) = pair();
    write(&l, "z/old", "shared bytes");
    native_copy(&l, &u.join("tree"));
    let upper = u.join("tree");
    // The new name sorts before the existing one, so the layer meets it
    // first and writes its content; the old name must follow as a link.
    fs::hard_link(upper.join("z/old"), upper.join("a-new")).unwrap();
    let layer = diff_layer(Some(&l), &upper, &WriteOptions::default());
    let copy = t.path().join("copy");
    native_copy(&l, &copy);
    apply_bytes(&layer, &copy);
    let (want, got) = (render(&upper), render(&copy));
    assert!(want.contains(" link=/a-new"), "{want}");
    assert_eq!(want, got);
}
