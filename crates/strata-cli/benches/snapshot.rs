//! `cargo xtask bench snapshot`: snapshot store figures, measured through
//! the library in one run on the scratch file system `STRATA_BENCH_DIR`
//! (a fresh loop-mounted ext4 when xtask can make one):
//!
//! * prepare + write one small file + commit, 1,000 times, per backend;
//! * mounting (and unmounting) a read-only view of a 128- and a 500-layer
//!   overlay chain;
//! * native prepare of a large tree run as `strata snapshot prepare` (its
//!   copy synced, as the store requires) against `cp -a` and
//!   `cp -a --reflink=auto`, side by side (`strata_testkit::bench`: cache
//!   dropped before each run, order rotated, returned and durable times,
//!   peak memory), recorded;
//! * as root with btrfs-progs, the same on a fresh loop-mounted btrfs with
//!   the btrfs backend (a subvolume snapshot, whatever the tree's size)
//!   against the same copies there, recorded; and the 1,000 cycles there.
//!
//! A quick run (`cargo xtask bench --quick`) makes 20 cycles, chains of 6
//! and 12 layers and a tree of 101 files.

// This program reports on stdout by design.
#![allow(clippy::print_stdout)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use strata_testkit::bench::{self, Contender, median};

use strata_core::Labels;
use strata_snapshot::mounts::{LocalMount, MountOptions};
use strata_snapshot::{SnapshotStore, Snapshotter};

/// A root of `backend` at `root`; only its snapshot store is used (the
/// root's lock is released when the returned root is dropped).
fn store(root: &Path, backend: &str) -> (SnapshotStore, strata_cache::Root) {
    let opened = strata_cache::Root::open(&strata_cache::RootOptions {
        path: Some(root.to_path_buf()),
        backend: strata_cache::BackendChoice::named(backend).expect("a built-in backend"),
    })
    .unwrap();
    (opened.snapshots.clone(), opened)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

async fn small_snapshots(dir: &Path, backend: &str, n: usize) {
    let (s, _root) = store(&dir.join(format!("small-{backend}")), backend);
    s.prepare("base-key", None, Labels::new()).await.unwrap();
    fs::write(s.fs_dir("base-key").unwrap().join("base"), "b").unwrap();
    s.commit("base", "base-key", Labels::new()).await.unwrap();
    let start = Instant::now();
    for i in 0..n {
        let key = format!("k{i}");
        s.prepare(&key, Some("base"), Labels::new()).await.unwrap();
        fs::write(s.fs_dir(&key).unwrap().join("file"), i.to_string()).unwrap();
        s.commit(&format!("s{i}"), &key, Labels::new())
            .await
            .unwrap();
    }
    let t = start.elapsed();
    println!(
        "  {backend:<8} {n} x (prepare + small write + commit): {:.2}s, {:.2} ms each",
        secs(t),
        secs(t) * 1000.0 / n as f64
    );
}

async fn chain_mounts(dir: &Path) {
    let (s, _root) = store(&dir.join("chain"), "overlay");
    let mut parent: Option<String> = None;
    let build = Instant::now();
    let depths = bench::pick([128usize, 500], [6, 12]);
    for i in 0..depths[1] {
        let key = format!("l{i}-key");
        s.prepare(&key, parent.as_deref(), Labels::new())
            .await
            .unwrap();
        fs::write(s.fs_dir(&key).unwrap().join(format!("f{i}")), i.to_string()).unwrap();
        let name = format!("l{i}");
        s.commit(&name, &key, Labels::new()).await.unwrap();
        parent = Some(name);
    }
    println!(
        "  overlay  building a {}-layer chain: {:.2}s",
        depths[1],
        secs(build.elapsed())
    );
    let mnt = dir.join("chain-mnt");
    fs::create_dir_all(&mnt).unwrap();
    for depth in depths {
        let mounts = s.view_mounts(&format!("l{}", depth - 1)).unwrap();
        let mut times = Vec::new();
        for _ in 0..11 {
            let t = Instant::now();
            let m = LocalMount::mount(
                &mounts,
                &mnt,
                MountOptions {
                    force_remount: true,
                    temporary: true,
                },
            )
            .unwrap();
            let mounted = t.elapsed();
            assert!(m.path().join("f0").exists());
            m.unmount().unwrap();
            times.push(mounted);
        }
        println!(
            "  overlay  mount a {depth}-layer view: median {:.2} ms",
            secs(median(times)) * 1000.0
        );
    }
}

/// A tree of `dirs` directories of `files` files each, sizes from 0 to 256
/// KiB, plus eight 16 MiB files (one in a quick run), written into `root`.
fn make_tree(root: &Path, dirs: usize, files: usize) -> (u64, u64) {
    let mut bytes = 0u64;
    let mut count = 0u64;
    let block: Vec<u8> = (0..(256 << 10)).map(|i: u32| (i % 251) as u8).collect();
    for d in 0..dirs {
        let sub = root.join(format!("d{d:03}/sub"));
        fs::create_dir_all(&sub).unwrap();
        for f in 0..files {
            let size = (f * 7919 + d * 104_729) % block.len();
            fs::write(sub.join(format!("f{f:04}")), &block[..size]).unwrap();
            bytes += size as u64;
            count += 1;
        }
    }
    for i in 0..bench::pick(8, 1) {
        let big: Vec<u8> = block.iter().cycle().take(16 << 20).copied().collect();
        fs::write(root.join(format!("big{i}")), &big).unwrap();
        bytes += big.len() as u64;
        count += 1;
    }
    (count, bytes)
}

/// `backend`'s prepare of a child of a large tree, run as `strata snapshot
/// prepare` on the file system holding `dir`, against `cp -a` and `cp -a
/// --reflink=auto` of the same tree (the store syncs what it makes before
/// recording it; `cp` does not, so the durable times are the ones to
/// compare).
async fn prepare_on_a_large_tree(dir: &Path, backend: &str) {
    let root = dir.join(format!("{backend}-big"));
    let (count, bytes, src) = {
        let (s, _root) = store(&root, backend);
        s.prepare("tree-key", None, Labels::new()).await.unwrap();
        let (dirs, files) = bench::pick((100, 200), (5, 20));
        let (count, bytes) = make_tree(&s.fs_dir("tree-key").unwrap(), dirs, files);
        s.commit("tree", "tree-key", Labels::new()).await.unwrap();
        (count, bytes, s.fs_dir("tree").unwrap())
    };
    println!(
        "  {backend:<8} tree: {count} files, {:.0} MiB",
        bytes as f64 / 1048576.0
    );
    let dst: PathBuf = dir.join("cp-dst");
    let strata = |args: &[&str]| {
        let mut cmd = bench::strata(&root);
        cmd.args(["--backend", backend, "snapshot"]).args(args);
        cmd
    };
    let cp = |extra: &'static [&'static str]| {
        let (src, dst) = (&src, &dst);
        move |_| {
            bench::remove(dst);
            let mut cmd = Command::new("cp");
            cmd.arg("-a").args(extra).arg(src).arg(dst);
            cmd
        }
    };
    let cp_version = bench::version("cp");
    let what = match backend {
        "btrfs" => "strata snapshot prepare (btrfs snapshot, synced)",
        _ => "strata snapshot prepare (native copy, synced)",
    };
    let mut contenders = [
        Contender::new(what, &bench::strata_version(), |_| {
            strata(&["prepare", "copy", "tree"])
        })
        .after(|_| bench::ok(&mut strata(&["rm", "copy"]))),
        Contender::new("cp -a", &cp_version, cp(&[])),
        Contender::new("cp -a --reflink=auto", &cp_version, cp(&["--reflink=auto"])),
    ];
    let times = bench::side_by_side(dir, true, &mut contenders);
    bench::remove(&dst);
    let figures: Vec<_> = times.iter().map(bench::Times::figure).collect();
    bench::record(
        "snapshot",
        &format!(
            "{backend} prepare of a {count}-file, {:.1} GB tree",
            bytes as f64 / 1e9
        ),
        dir,
        &figures,
        &[],
    );
}

fn main() {
    let dir = bench::scratch();
    let is_root = strata_sys::effective_uid() == 0;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("bench snapshot on {}", dir.display());
    rt.block_on(async {
        let cycles = bench::pick(1000, 20);
        if is_root {
            small_snapshots(&dir, "overlay", cycles).await;
        }
        small_snapshots(&dir, "native", cycles).await;
        if is_root {
            chain_mounts(&dir).await;
        } else {
            println!("  (not root: overlay figures skipped)");
        }
        prepare_on_a_large_tree(&dir, "native").await;
        if strata_testkit::loopfs::usable("bench snapshot: btrfs", "btrfs", "btrfs-progs") {
            let btrfs = strata_testkit::loopfs::LoopFs::new("btrfs", &["-q"], 16 << 30);
            small_snapshots(btrfs.mnt_path(), "btrfs", cycles).await;
            prepare_on_a_large_tree(btrfs.mnt_path(), "btrfs").await;
        } else {
            println!("  (no loop btrfs here: btrfs figures skipped)");
        }
    });
}
