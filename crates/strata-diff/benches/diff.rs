//! `cargo xtask bench diff`: the data plane against peers, on the scratch
//! file system `STRATA_BENCH_DIR` (a fresh loop-mounted ext4), with the
//! real Debian images `cargo xtask bench-images` builds (a small image of
//! the same shape in a quick run). The side-by-side parts run every
//! contender as a process (`strata_testkit::bench`: cache dropped before
//! each run, order rotated, returned and durable times, peak memory):
//!
//! * apply: every layer of debian-python (gzip, then zstd) onto a fresh
//!   directory, `strata layer apply` against `pigz -dc | tar -x` (`zstd
//!   -dc | tar -x`) and `umoci unpack` (gzip only: umoci 0.4 reads no
//!   zstd layer). Only a peer whose resulting tree is
//!   Strata's (`strata_testkit::tree::render`) counts; GNU tar keeps
//!   whiteouts as plain files, so it is recorded as left out, with the
//!   first entries that differ.
//! * export: the largest layer of debian-python, applied alone onto an
//!   empty directory, written as a layer by `strata layer diff EMPTY DIR`
//!   against `tar -c | pigz -6` and `tar -c | zstd -3 -T0` of the
//!   directory.
//! * merge: the five layers unpacked as five parentless committed
//!   snapshots, merged by `strata snapshot merge` against `cp -al` into one
//!   directory. Native merges link all five trees, as `cp -al` of the five
//!   does; an overlay merge reuses the first input as its lower directory
//!   and links the other four, so its peer is `cp -al` of those four. As
//!   root with btrfs-progs, the same on a fresh loop-mounted btrfs with the
//!   btrfs backend, whose merge is a snapshot of the first input with the
//!   others copied in by reflink (no hard links across subvolumes): its
//!   peer is `btrfs subvolume snapshot` of the first tree and `cp -a
//!   --reflink=always` of the other four.
//! * diff: a one-file change on top of a 100,000-file overlay snapshot
//!   (1,000 files in a quick run) written as a gzip layer through the
//!   overlay upper directory and through the double walk (containerd's
//!   method): two code paths of the library, no command chooses between
//!   them, so both are timed in process.
//!
//! `STRATA_BENCH_ONLY=apply|diff|export|merge` runs one part.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use strata_core::Labels;
use strata_diff::{
    Comparison, Compression, WriteOptions, walk_changes, walk_upperdir_changes, write_layer,
};
use strata_leases::OpCtx;
use strata_metadata::MetaDb;
use strata_snapshot::mounts::{LocalMount, MountOptions};
use strata_snapshot::{SnapshotStore, Snapshotter};
use strata_testkit::bench::{self, Contender, Excluded, Figure, Images};

/// An empty directory at `dir`, whatever was there before.
fn fresh(dir: &Path) {
    bench::remove(dir);
    fs::create_dir_all(dir).unwrap();
}

/// `None` when the listings `ours` and `theirs` are the same tree, else
/// how they differ: how many entries, and the first of each side's.
fn difference(ours: &str, theirs: &str) -> Option<String> {
    let (a, b): (BTreeSet<&str>, BTreeSet<&str>) =
        (ours.lines().collect(), theirs.lines().collect());
    let only_ours: Vec<&&str> = a.difference(&b).collect();
    let only_theirs: Vec<&&str> = b.difference(&a).collect();
    if only_ours.is_empty() && only_theirs.is_empty() {
        return None;
    }
    let first = |v: &[&&str]| v.first().map_or("nothing".to_owned(), |l| format!("`{l}`"));
    Some(format!(
        "{} of its entries are not in Strata's tree (first: {}), {} of Strata's are not in its tree (first: {})",
        only_theirs.len(),
        first(&only_theirs),
        only_ours.len(),
        first(&only_ours)
    ))
}

fn bench_apply(dir: &Path, images: &Images) {
    let bin = strata_testkit::cli::strata();
    let (ours, theirs, bundle) = (
        dir.join("apply-strata"),
        dir.join("apply-tar"),
        dir.join("apply-umoci"),
    );
    for (i, name) in images.names.iter().enumerate() {
        let layers = images.layers(name);
        let decompress = if i == 0 { "pigz" } else { "zstd" };
        let tar_peer = format!("{decompress} -dc | tar -x");
        let script = |each: &dyn Fn(&Path, &str) -> String| {
            layers
                .iter()
                .map(|(blob, media_type)| each(blob, media_type))
                .collect::<Vec<_>>()
                .join(" && ")
        };
        let strata_script = script(&|blob, media_type| {
            format!(
                "{} layer apply --media-type {media_type} {} {}",
                bin.display(),
                blob.display(),
                ours.display()
            )
        });
        let tar_script = script(&|blob, _| {
            format!(
                "{decompress} -dc {} | tar --same-owner --xattrs --xattrs-include='*' -xpf - -C {}",
                blob.display(),
                theirs.display()
            )
        });
        // Each contender's resulting tree, as `tree::render` lists it.
        let trees: RefCell<BTreeMap<String, String>> = RefCell::default();
        let keep = |peer: &str, tree: &Path| {
            trees
                .borrow_mut()
                .insert(peer.to_owned(), strata_testkit::tree::render(tree));
        };
        let mut contenders = vec![
            Contender::new("strata layer apply", &bench::strata_version(), |_| {
                fresh(&ours);
                bench::bash(&strata_script)
            })
            .after(|_| keep("strata layer apply", &ours)),
            Contender::new(
                &tar_peer,
                &format!("{}; {}", bench::version(decompress), bench::version("tar")),
                |_| {
                    fresh(&theirs);
                    bench::bash(&tar_script)
                },
            )
            .after(|_| keep(&tar_peer, &theirs)),
        ];
        // umoci 0.4 reads no zstd layer ("blob is not correct mediatype").
        if i == 0 {
            contenders.push(
                Contender::new("umoci unpack", &bench::version("umoci"), |_| {
                    bench::remove(&bundle);
                    let mut cmd = Command::new("umoci");
                    cmd.arg("unpack")
                        .arg("--image")
                        .arg(format!("{}:latest", images.layout(name).display()))
                        .arg(&bundle);
                    cmd
                })
                .after(|_| keep("umoci unpack", &bundle.join("rootfs"))),
            );
        }
        let times = bench::side_by_side(dir, true, &mut contenders);
        drop(contenders);
        let trees = trees.into_inner();
        let strata_tree = &trees["strata layer apply"];
        let (mut figures, mut excluded) = (Vec::new(), Vec::new());
        for t in &times {
            match difference(strata_tree, &trees[&t.peer]) {
                None => figures.push(t.figure()),
                Some(why) => excluded.push(Excluded {
                    peer: t.peer.clone(),
                    tool: t.tool.clone(),
                    why: format!("its tree is not Strata's: {why}"),
                }),
            }
        }
        bench::record("apply", name, dir, &figures, &excluded);
    }
    for d in [&ours, &theirs, &bundle] {
        bench::remove(d);
    }
}

fn bench_export(dir: &Path, images: &Images) {
    let name = &images.names[0];
    let layers = images.layers(name);
    let (blob, media_type) = layers
        .iter()
        .max_by_key(|(blob, _)| fs::metadata(blob).unwrap().len())
        .expect("an image has layers");
    let (src, empty, out) = (
        dir.join("export-src"),
        dir.join("export-empty"),
        dir.join("export.out"),
    );
    fresh(&src);
    fresh(&empty);
    bench::ok(
        Command::new(strata_testkit::cli::strata())
            .args(["layer", "apply", "--media-type", media_type])
            .arg(blob)
            .arg(&src),
    );
    for (codec, compress) in [("gzip", "pigz -6"), ("zstd", "zstd -3 -T0")] {
        let tool = compress.split(' ').next().unwrap_or(compress);
        let tar_script = format!(
            "tar --xattrs --xattrs-include='*' --numeric-owner -C {} -cf - . | {compress} > {}",
            src.display(),
            out.display()
        );
        let mut contenders = [
            Contender::new(
                &format!("strata layer diff --compression {codec}"),
                &bench::strata_version(),
                |_| {
                    bench::remove(&out);
                    let mut cmd = Command::new(strata_testkit::cli::strata());
                    cmd.args(["layer", "diff"])
                        .arg(&empty)
                        .arg(&src)
                        .arg("-o")
                        .arg(&out)
                        .args(["--compression", codec]);
                    cmd
                },
            ),
            Contender::new(
                &format!("tar -c | {compress}"),
                &format!("{}; {}", bench::version("tar"), bench::version(tool)),
                |_| {
                    bench::remove(&out);
                    bench::bash(&tar_script)
                },
            ),
        ];
        let times = bench::side_by_side(dir, true, &mut contenders);
        let figures: Vec<_> = times.iter().map(bench::Times::figure).collect();
        bench::record(
            "export",
            &format!("the largest layer of {name}, {codec}"),
            dir,
            &figures,
            &[],
        );
    }
    for d in [&src, &empty, &out] {
        bench::remove(d);
    }
}

/// Unpacks each of `layers` as a parentless committed snapshot `k<i>` of
/// the root at `root` through the command line; their directories.
fn whole_snapshots(
    root: &Path,
    backend: &str,
    layers: &[(std::path::PathBuf, String)],
) -> Vec<String> {
    let strata = |args: &[&str]| {
        let mut cmd = bench::strata(root);
        cmd.args(["--backend", backend]).args(args);
        cmd
    };
    let mut dirs = Vec::new();
    for (i, (blob, media_type)) in layers.iter().enumerate() {
        let (work, key) = (format!("w{i}"), format!("k{i}"));
        let out = strata(&["--json", "snapshot", "prepare", &work])
            .output()
            .unwrap();
        assert!(out.status.success(), "strata snapshot prepare {work}");
        let mounts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        // A parentless snapshot mounts as a bind of its own directory.
        let tree = mounts[0]["source"]
            .as_str()
            .expect("a bind source")
            .to_owned();
        bench::ok(
            Command::new(strata_testkit::cli::strata())
                .args(["layer", "apply", "--media-type", media_type])
                .arg(blob)
                .arg(&tree),
        );
        bench::ok(&mut strata(&["snapshot", "commit", &key, &work]));
        dirs.push(tree);
    }
    dirs
}

fn bench_merge(dir: &Path, images: &Images) {
    for backend in ["native", "overlay"] {
        merge_on(dir, backend, images);
    }
    if strata_testkit::loopfs::usable("bench diff: btrfs merge", "btrfs", "btrfs-progs") {
        let btrfs = strata_testkit::loopfs::LoopFs::new("btrfs", &["-q"], 32 << 30);
        merge_on(btrfs.mnt_path(), "btrfs", images);
    } else {
        eprintln!("  (no loop btrfs here: btrfs merge skipped)");
    }
}

/// The merge of `images`' first image's layers on `backend`, against what
/// the shell does for the same result, on the file system at `dir`.
fn merge_on(dir: &Path, backend: &str, images: &Images) {
    let name = &images.names[0];
    let layers = images.layers(name);
    let n = layers.len();
    let dest = dir.join("peer-result");
    let root = dir.join(format!("merge-{backend}"));
    let trees = whole_snapshots(&root, backend, &layers);
    let others = trees[1..]
        .iter()
        .map(|t| format!("{t}/."))
        .collect::<Vec<_>>()
        .join(" ");
    let d = dest.display();
    // What the shell must do to make what the merge makes.
    let (case, peer, script) = match backend {
        "overlay" => (
            format!(
                "the {n} {name} layers (overlay: the first input reused as the lower directory, {} linked)",
                n - 1
            ),
            format!("cp -al of the {} upper trees", n - 1),
            format!("mkdir {d} && cp -al --remove-destination {others} {d}/"),
        ),
        "btrfs" => (
            format!(
                "the {n} {name} layers (btrfs: a snapshot of the first input, {} reflinked)",
                n - 1
            ),
            format!(
                "btrfs subvolume snapshot of the first, cp -a --reflink=always of the other {}",
                n - 1
            ),
            format!(
                "btrfs -q subvolume snapshot {} {d} && cp -a --reflink=always --remove-destination {others} {d}/",
                trees[0]
            ),
        ),
        _ => (
            format!("the {n} {name} layers (native: all {n} linked)"),
            format!("cp -al of the {n} trees"),
            format!(
                "mkdir {d} && cp -al --remove-destination {}/. {others} {d}/",
                trees[0]
            ),
        ),
    };
    let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    let strata = |args: &[&str]| {
        let mut cmd = bench::strata(&root);
        cmd.args(["--backend", backend, "snapshot"]).args(args);
        cmd
    };
    let clear = || bench::remove(&dest);
    let mut contenders = [
        Contender::new("strata snapshot merge", &bench::strata_version(), |_| {
            let mut cmd = strata(&["merge", "merged"]);
            cmd.args(&keys);
            cmd
        })
        .after(|_| bench::ok(&mut strata(&["rm", "merged"]))),
        Contender::new(&peer, &bench::version("cp"), |_| {
            clear();
            bench::bash(&script)
        }),
    ];
    let times = bench::side_by_side(dir, true, &mut contenders);
    let figures: Vec<_> = times.iter().map(bench::Times::figure).collect();
    bench::record("merge", &case, dir, &figures, &[]);
    clear();
    bench::remove(&root);
}

fn store(root: &Path) -> SnapshotStore {
    fs::create_dir_all(root).unwrap();
    let db = Arc::new(MetaDb::open(&root.join("meta.redb")).unwrap());
    let backend = Arc::new(
        strata_overlay::Overlay::new(&root.join("snapshots"), Default::default()).unwrap(),
    );
    SnapshotStore::open(root, db, backend).unwrap()
}

/// A read-only view of committed `key`, mounted under `tmp`.
fn view(s: &SnapshotStore, key: &str, tmp: &Path) -> LocalMount {
    let opts = MountOptions {
        force_remount: true,
        temporary: true,
    };
    LocalMount::mount(&s.view_mounts(key).unwrap(), tmp, opts).unwrap()
}

fn bench_diff(dir: &Path) {
    let root = dir.join("diff-store");
    let s = store(&root);
    let tmp = root.join("tmp");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (dirs, files) = bench::pick((100, 1000), (10, 100));
    rt.block_on(async {
        s.prepare("base-w", None, Labels::new()).await.unwrap();
        let fs_dir = s.fs_dir("base-w").unwrap();
        for d in 0..dirs {
            let sub = fs_dir.join(format!("d{d:03}"));
            fs::create_dir(&sub).unwrap();
            for f in 0..files {
                fs::write(sub.join(format!("f{f:04}")), format!("{d}/{f}")).unwrap();
            }
        }
        s.commit("base", "base-w", Labels::new()).await.unwrap();
        s.prepare("top-w", Some("base"), Labels::new())
            .await
            .unwrap();
        fs::write(s.fs_dir("top-w").unwrap().join("changed"), "one file").unwrap();
        s.commit("top", "top-w", Labels::new()).await.unwrap();
    });
    let (lower, upper) = (view(&s, "base", &tmp), view(&s, "top", &tmp));
    let upperdir = s.fs_dir("top").unwrap();
    let wopts = WriteOptions {
        compression: Compression::Gzip,
        ..WriteOptions::default()
    };
    let (mut fast, mut slow) = (vec![], vec![]);
    for _ in 0..bench::runs() {
        let start = Instant::now();
        let (w, _) = write_layer(&OpCtx::new(), std::io::sink(), upper.path(), &wopts, |w| {
            walk_upperdir_changes(
                &upperdir,
                upper.path(),
                lower.path(),
                Comparison::Compat,
                &mut |c| w.change(&c),
            )
        })
        .unwrap();
        fast.push(start.elapsed());
        let start = Instant::now();
        let (w2, _) = write_layer(&OpCtx::new(), std::io::sink(), upper.path(), &wopts, |w| {
            walk_changes(
                Some(lower.path()),
                upper.path(),
                Comparison::Compat,
                &mut |c| w.change(&c),
            )
        })
        .unwrap();
        slow.push(start.elapsed());
        assert_eq!(w.diff_id, w2.diff_id, "both paths write the same layer");
    }
    let runs = fast.len();
    bench::record(
        "diff",
        &format!("a one-file change over {dirs} directories of {files} files"),
        dir,
        &[
            Figure::in_process("strata, overlay upper directory", runs, bench::median(fast)),
            Figure::in_process(
                "double walk (containerd's method)",
                runs,
                bench::median(slow),
            ),
        ],
        &[],
    );
    drop((lower, upper));
    drop(s);
    bench::remove(&root);
}

fn main() {
    let dir = bench::scratch();
    let images = bench::images(&dir);
    let only = std::env::var("STRATA_BENCH_ONLY").unwrap_or_default();
    let wanted = |part: &str| only.is_empty() || only == part;
    if wanted("apply") {
        bench_apply(&dir, &images);
    }
    if wanted("export") {
        bench_export(&dir, &images);
    }
    if wanted("merge") {
        bench_merge(&dir, &images);
    }
    if wanted("diff") {
        bench_diff(&dir);
    }
}
