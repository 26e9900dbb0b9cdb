//! `cargo xtask bench diff`: the data plane against peers, in one run, on
//! the scratch file system `STRATA_BENCH_DIR` (a fresh loop-mounted ext4),
//! with the real Debian images `cargo xtask bench-images` builds, in
//! `STRATA_BENCH_IMAGES` (default `target/bench-images`):
//!
//! * apply: all layers of debian-python (gzip and zstd) onto a fresh
//!   directory, strata against `pigz -dc | tar -x` / `zstd -dc | tar -x`
//!   and `umoci unpack` (gzip only), alternating; plus strata unpacking
//!   into overlay snapshots (upper directories written directly). MB/s of
//!   uncompressed tar and ratios of medians.
//! * diff: a one-file change on top of a 100,000-file overlay snapshot,
//!   exported as a gzip layer through the overlay upper directory and
//!   through the double walk.
//! * merge: the five layers unpacked as five snapshots, merged (overlay and
//!   native) against `cp -al` of the five trees into one.
//!
//! * export: debian-python's 318 MB layer written from its overlay
//!   snapshot (gzip, zstd) against `tar | pigz` and `tar | zstd -T0`.
//!
//! `STRATA_BENCH_ONLY=apply|diff|export|merge` runs one part.

// This program reports on stdout by design.
#![allow(clippy::print_stdout)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_testkit::bench::median;

use strata_core::Labels;
use strata_diff::{
    ApplyOptions, Comparison, Compression, Diff, Merger, Unpacker, WriteOptions, apply,
    walk_changes, walk_upperdir_changes, write_layer,
};
use strata_leases::OpCtx;
use strata_metadata::MetaDb;
use strata_snapshot::mounts::{LocalMount, MountOptions};
use strata_snapshot::{Backend, SnapshotStore, Snapshotter};

const RUNS: usize = 3;

fn store(root: &Path, backend: &str) -> SnapshotStore {
    fs::create_dir_all(root).unwrap();
    let db = Arc::new(MetaDb::open(&root.join("meta.redb")).unwrap());
    let b: Arc<dyn Backend> = match backend {
        "overlay" => Arc::new(
            strata_overlay::Overlay::new(&root.join("snapshots"), Default::default()).unwrap(),
        ),
        _ => Arc::new(strata_native::Native),
    };
    SnapshotStore::open(root, db, b).unwrap()
}

/// The layer blobs of an OCI layout's only manifest, bottom first.
fn layers(layout: &Path) -> Vec<(PathBuf, String)> {
    let blob = |digest: &str| layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
    let read = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .unwrap()
    };
    let index = read(layout.join("index.json"));
    let manifest = read(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                blob(l["digest"].as_str().unwrap()),
                l["mediaType"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn sh(script: &str) -> Duration {
    let start = Instant::now();
    let st = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "{script} failed");
    start.elapsed()
}

fn remove(dir: &Path) {
    if dir.exists() {
        let st = Command::new("rm").arg("-rf").arg(dir).status().unwrap();
        assert!(st.success());
    }
    sh("sync");
}

fn strata_apply(layers: &[(PathBuf, String)], dest: &Path) -> (Duration, u64) {
    fs::create_dir(dest).unwrap();
    let start = Instant::now();
    let mut size = 0;
    for (blob, media_type) in layers {
        let opts = ApplyOptions {
            name: blob.display().to_string(),
            media_type: Some(media_type.clone()),
            ..ApplyOptions::default()
        };
        size += apply(&OpCtx::new(), fs::File::open(blob).unwrap(), dest, &opts)
            .unwrap()
            .size;
    }
    (start.elapsed(), size)
}

fn tar_apply(layers: &[(PathBuf, String)], dest: &Path, zstd: bool) -> Duration {
    fs::create_dir(dest).unwrap();
    let decompress = if zstd { "zstd -dc" } else { "pigz -dc" };
    let script: Vec<String> = layers
        .iter()
        .map(|(blob, _)| {
            format!(
                "{decompress} {} | tar --same-owner --xattrs -xpf - -C {}",
                blob.display(),
                dest.display()
            )
        })
        .collect();
    sh(&script.join(" && "))
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn bench_apply(dir: &Path, images: &Path) {
    for (image, zstd) in [("debian-python", false), ("debian-python-zstd", true)] {
        let layout = images.join(image);
        let ls = layers(&layout);
        let (mut ours, mut theirs, mut umoci, mut snap) = (vec![], vec![], vec![], vec![]);
        let mut size = 0;
        for run in 0..RUNS {
            let d = dir.join(format!("apply-{run}"));
            let (t, s) = strata_apply(&ls, &d);
            size = s;
            ours.push(t);
            remove(&d);
            theirs.push(tar_apply(&ls, &d, zstd));
            remove(&d);
            if !zstd {
                let bundle = dir.join("umoci-bundle");
                umoci.push(sh(&format!(
                    "umoci unpack --image {}:latest {}",
                    layout.display(),
                    bundle.display()
                )));
                remove(&bundle);
            }
            let root = dir.join("snapshots");
            snap.push(unpack_chain(&root, &ls, "overlay"));
            remove(&root);
        }
        let (o, t) = (median(ours), median(theirs));
        let peer = if zstd {
            "zstd -dc | tar -x"
        } else {
            "pigz -dc | tar -x"
        };
        println!(
            "  {image}: {:.0} MB of tar; strata apply {:.2}s ({:.0} MB/s), {peer} {:.2}s ({:.0} MB/s), ratio {:.2}",
            size as f64 / 1e6,
            o.as_secs_f64(),
            mbps(size, o),
            t.as_secs_f64(),
            mbps(size, t),
            o.as_secs_f64() / t.as_secs_f64()
        );
        let umoci_median = (!umoci.is_empty()).then(|| median(umoci.clone()));
        if let Some(u) = umoci_median {
            println!(
                "    umoci unpack {:.2}s ({:.0} MB/s), strata/umoci {:.2}",
                u.as_secs_f64(),
                mbps(size, u),
                o.as_secs_f64() / u.as_secs_f64()
            );
        }
        let s = median(snap);
        let mut figures = vec![("strata layer apply", o), (peer, t)];
        if let Some(u) = umoci_median {
            figures.push(("umoci unpack", u));
        }
        strata_testkit::bench::record("apply", image, &figures);
        println!(
            "    strata unpack into overlay snapshots (committed, synced) {:.2}s ({:.0} MB/s)",
            s.as_secs_f64(),
            mbps(size, s)
        );
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn open_blob(blob: &Path) -> strata_diff::LayerSource {
    let blob = blob.to_path_buf();
    Arc::new(move || Ok(Box::new(fs::File::open(&blob)?) as Box<dyn Read + Send>))
}

/// Unpacks the layers as a chain of snapshots; the time taken.
fn unpack_chain(root: &Path, ls: &[(PathBuf, String)], backend: &str) -> Duration {
    let s = store(root, backend);
    let tmp = root.join("tmp");
    let start = Instant::now();
    rt().block_on(async {
        let mut parent: Option<String> = None;
        for (i, (blob, mt)) in ls.iter().enumerate() {
            let key = format!("layer{i}");
            let opts = ApplyOptions {
                media_type: Some(mt.clone()),
                ..ApplyOptions::default()
            };
            Unpacker::new(s.clone(), tmp.clone())
                .unpack(
                    &OpCtx::new(),
                    &key,
                    parent.as_deref(),
                    open_blob(blob),
                    &opts,
                    Labels::new(),
                )
                .await
                .unwrap();
            parent = Some(key);
        }
    });
    start.elapsed()
}

/// A read-only view of committed `key`, mounted under `tmp`.
fn view(s: &SnapshotStore, key: &str, tmp: &Path) -> LocalMount {
    let opts = MountOptions {
        force_remount: true,
        temporary: true,
    };
    LocalMount::mount(&s.view_mounts(key).unwrap(), tmp, opts).unwrap()
}

/// Writes the layer of `upperdir` (the top of `upper` over `lower`) to
/// nowhere; what was written and how long it took.
fn export_upperdir(
    upperdir: &Path,
    upper: &LocalMount,
    lower: &LocalMount,
    opts: &WriteOptions,
) -> (strata_diff::Written, Duration) {
    let start = Instant::now();
    let (w, _) = write_layer(&OpCtx::new(), std::io::sink(), upper.path(), opts, |w| {
        walk_upperdir_changes(
            upperdir,
            upper.path(),
            lower.path(),
            Comparison::Compat,
            &mut |c| w.change(&c),
        )
    })
    .unwrap();
    (w, start.elapsed())
}

fn bench_diff(dir: &Path) {
    let root = dir.join("diff-store");
    let s = store(&root, "overlay");
    let tmp = root.join("tmp");
    let rt = rt();
    rt.block_on(async {
        s.prepare("base-w", None, Labels::new()).await.unwrap();
        let fs_dir = s.fs_dir("base-w").unwrap();
        for d in 0..100 {
            let sub = fs_dir.join(format!("d{d:03}"));
            fs::create_dir(&sub).unwrap();
            for f in 0..1000 {
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
    for _ in 0..RUNS {
        let (w, took) = export_upperdir(&upperdir, &upper, &lower, &wopts);
        fast.push(took);
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
    let (f, w) = (median(fast), median(slow));
    strata_testkit::bench::record(
        "diff",
        "a one-file change over 100,000 files",
        &[
            ("strata, overlay upper directory", f),
            ("double walk (containerd's method)", w),
        ],
    );
    println!(
        "  one-file change over 100,000 files: overlay upperdir {:.1} ms, double walk {:.0} ms, ratio {:.4}",
        f.as_secs_f64() * 1e3,
        w.as_secs_f64() * 1e3,
        f.as_secs_f64() / w.as_secs_f64()
    );
    drop((lower, upper));
    remove(&root);
}

/// Exports debian-python's largest layer (318 MB of tar) from its overlay
/// snapshot through the upper directory, gzip and zstd, against GNU tar of
/// the same upper directory piped into pigz and zstd.
fn bench_export(dir: &Path, images: &Path) {
    let ls = layers(&images.join("debian-python"));
    let root = dir.join("export-store");
    unpack_chain(&root, &ls[..3], "overlay");
    let s = store(&root, "overlay");
    let tmp = root.join("tmp");
    let (lower, upper) = (view(&s, "layer1", &tmp), view(&s, "layer2", &tmp));
    let upperdir = s.fs_dir("layer2").unwrap();
    for (name, compression, peer) in [
        ("gzip", Compression::Gzip, "pigz -6"),
        ("zstd", Compression::Zstd, "zstd -3 -T0"),
    ] {
        let wopts = WriteOptions {
            compression,
            ..WriteOptions::default()
        };
        let (mut ours, mut theirs) = (vec![], vec![]);
        let (mut size, mut blob) = (0, 0);
        for _ in 0..RUNS {
            let (w, took) = export_upperdir(&upperdir, &upper, &lower, &wopts);
            ours.push(took);
            (size, blob) = (w.uncompressed_size, w.size);
            theirs.push(sh(&format!(
                "tar -C {} -cf - . | {peer} > /dev/null",
                upperdir.display()
            )));
        }
        let (o, t) = (median(ours), median(theirs));
        let peer_blob = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -C {} -cf - . | {peer} | wc -c",
                upperdir.display()
            ))
            .output()
            .unwrap();
        let peer_blob: f64 = String::from_utf8_lossy(&peer_blob.stdout)
            .trim()
            .parse()
            .unwrap_or(0.0);
        strata_testkit::bench::record(
            "export",
            &format!("{name} layer of {:.0} MB", size as f64 / 1e6),
            &[("strata", o), (&format!("tar | {peer}"), t)],
        );
        println!(
            "  {name} export of the {:.0} MB layer: {:.1} MB (peer {:.1} MB); strata {:.2}s ({:.0} MB/s), tar | {peer} {:.2}s, ratio {:.2}",
            size as f64 / 1e6,
            blob as f64 / 1e6,
            peer_blob / 1e6,
            o.as_secs_f64(),
            mbps(size, o),
            t.as_secs_f64(),
            o.as_secs_f64() / t.as_secs_f64()
        );
    }
    drop((lower, upper));
    remove(&root);
}

fn bench_merge(dir: &Path, images: &Path) {
    let ls = layers(&images.join("debian-python"));
    for backend in ["overlay", "native"] {
        let root = dir.join(format!("merge-{backend}"));
        let s = store(&root, backend);
        let tmp = root.join("tmp");
        let rt = rt();
        let mut keys = Vec::new();
        rt.block_on(async {
            for (i, (blob, mt)) in ls.iter().enumerate() {
                let key = format!("whole{i}");
                let opts = ApplyOptions {
                    media_type: Some(mt.clone()),
                    ..ApplyOptions::default()
                };
                Unpacker::new(s.clone(), tmp.clone())
                    .unpack(
                        &OpCtx::new(),
                        &key,
                        None,
                        open_blob(blob),
                        &opts,
                        Labels::new(),
                    )
                    .await
                    .unwrap();
                keys.push(key);
            }
        });
        let diffs: Vec<Diff> = keys.iter().map(|k| Diff::whole(k)).collect();
        let merger = Merger::new(s.clone(), tmp.clone(), false);
        let (mut ours, mut cp) = (vec![], vec![]);
        for run in 0..RUNS {
            sh("sync");
            let start = Instant::now();
            let name = format!("merged{run}");
            rt.block_on(merger.merge(&OpCtx::new(), &name, &diffs, Labels::new()))
                .unwrap();
            ours.push(start.elapsed());
            rt.block_on(s.remove(&name)).unwrap();
            let dest = dir.join("cp-al");
            fs::create_dir(&dest).unwrap();
            sh("sync");
            let script: Vec<String> = keys
                .iter()
                .map(|k| {
                    format!(
                        "cp -al --remove-destination {}/. {}/",
                        s.fs_dir(k).unwrap().display(),
                        dest.display()
                    )
                })
                .collect();
            cp.push(sh(&script.join(" && ")));
            remove(&dest);
        }
        let (o, c) = (median(ours), median(cp));
        strata_testkit::bench::record(
            "merge",
            &format!("the five debian-python layers ({backend})"),
            &[("strata merge", o), ("cp -al", c)],
        );
        println!(
            "  merge of the five debian-python layers ({backend}): strata {:.2}s, cp -al {:.2}s, ratio {:.2}",
            o.as_secs_f64(),
            c.as_secs_f64(),
            o.as_secs_f64() / c.as_secs_f64()
        );
        remove(&root);
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = PathBuf::from(
        std::env::var_os("STRATA_BENCH_DIR").unwrap_or_else(|| "target/bench-diff".into()),
    );
    let images = strata_testkit::bench_images();
    fs::create_dir_all(&dir).unwrap();
    // `STRATA_BENCH_ONLY=apply|diff|export|merge` runs one part.
    let only = std::env::var("STRATA_BENCH_ONLY").unwrap_or_default();
    let wanted = |part: &str| only.is_empty() || only == part;
    if wanted("apply") {
        println!("apply (medians of {RUNS}, alternating):");
        bench_apply(&dir, &images);
    }
    if wanted("diff") {
        println!("diff:");
        bench_diff(&dir);
    }
    if wanted("export") {
        println!("export:");
        bench_export(&dir, &images);
    }
    if wanted("merge") {
        println!("merge:");
        bench_merge(&dir, &images);
    }
}
