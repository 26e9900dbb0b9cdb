//! `cargo xtask bench snapshot`: snapshot store figures, measured through
//! the library in one run on the scratch file system `STRATA_BENCH_DIR`
//! (a fresh loop-mounted ext4 when xtask can make one):
//!
//! * prepare + write one small file + commit, 1,000 times, per backend;
//! * mounting (and unmounting) a read-only view of a 128- and a 500-layer
//!   overlay chain;
//! * native prepare of a large tree (synced, as the store requires)
//!   against `cp -a` with and without `sync -f`, and
//!   `cp -a --reflink=auto` + `sync -f`, alternating, medians.

// This program reports on stdout by design.
#![allow(clippy::print_stdout)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use strata_testkit::bench::median;

use strata_core::Labels;
use strata_snapshot::mounts::{LocalMount, MountOptions};
use strata_snapshot::{SnapshotStore, Snapshotter};

/// A root of `backend` at `root`; only its snapshot store is used (the
/// root's lock is released when the returned root is dropped).
fn store(root: &Path, backend: &str) -> (SnapshotStore, strata_cache::Root) {
    let opened = strata_cache::Root::open(&strata_cache::RootOptions {
        path: Some(root.to_path_buf()),
        backend: match backend {
            "overlay" => strata_cache::BackendChoice::Overlay,
            _ => strata_cache::BackendChoice::Native,
        },
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
    for i in 0..500 {
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
        "  overlay  building a 500-layer chain: {:.2}s",
        secs(build.elapsed())
    );
    let mnt = dir.join("chain-mnt");
    fs::create_dir_all(&mnt).unwrap();
    for depth in [128usize, 500] {
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
/// KiB, plus a few 16 MiB files, written into `root`.
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
    for i in 0..8 {
        let big: Vec<u8> = block.iter().cycle().take(16 << 20).copied().collect();
        fs::write(root.join(format!("big{i}")), &big).unwrap();
        bytes += big.len() as u64;
        count += 1;
    }
    (count, bytes)
}

fn drop_caches() {
    if let Err(e) = Command::new("sync").status() {
        println!("  (sync failed: {e})");
    }
    // Best effort: only root can drop caches; the runs alternate anyway.
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Times `args SRC DST`, followed by `sync -f DST` when `durable` (the
/// store syncs what it copies before recording it; `cp` alone does not).
fn time_cmd(args: &[&str], src: &Path, dst: &Path, durable: bool) -> Duration {
    let t = Instant::now();
    let st = Command::new(args[0])
        .args(&args[1..])
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success(), "{args:?} failed");
    if durable {
        let st = Command::new("sync").arg("-f").arg(dst).status().unwrap();
        assert!(st.success(), "sync -f failed");
    }
    t.elapsed()
}

fn rm(dir: &Path) {
    if dir.exists() {
        strata_sys::Root::open(dir.parent().unwrap())
            .unwrap()
            .remove_all(Path::new(dir.file_name().unwrap()))
            .unwrap();
    }
}

async fn native_copy(dir: &Path, runs: usize) {
    let (s, _root) = store(&dir.join("native-big"), "native");
    s.prepare("tree-key", None, Labels::new()).await.unwrap();
    let fs_dir = s.fs_dir("tree-key").unwrap();
    let (count, bytes) = make_tree(&fs_dir, 100, 200);
    s.commit("tree", "tree-key", Labels::new()).await.unwrap();
    let src = s.fs_dir("tree").unwrap();
    println!(
        "  native   tree: {count} files, {:.0} MiB",
        bytes as f64 / 1048576.0
    );
    let dst: PathBuf = dir.join("cp-dst");
    let (mut ours, mut cp, mut cp_sync, mut cp_reflink, mut ratios) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..=runs {
        drop_caches();
        let t = Instant::now();
        s.prepare("copy", Some("tree"), Labels::new())
            .await
            .unwrap();
        let a = t.elapsed();
        s.remove("copy").await.unwrap();
        drop_caches();
        let b = time_cmd(&["cp", "-a"], &src, &dst, false);
        rm(&dst);
        drop_caches();
        let b_sync = time_cmd(&["cp", "-a"], &src, &dst, true);
        rm(&dst);
        drop_caches();
        let c = time_cmd(&["cp", "-a", "--reflink=auto"], &src, &dst, true);
        rm(&dst);
        if run == 0 {
            continue;
        }
        ours.push(a);
        cp.push(b);
        cp_sync.push(b_sync);
        cp_reflink.push(c);
        ratios.push(secs(a) / secs(b_sync));
    }
    ratios.sort_by(f64::total_cmp);
    let report = [
        ("strata native prepare (copy, synced)", ours),
        ("cp -a (not synced)", cp),
        ("cp -a + sync -f", cp_sync),
        ("cp -a --reflink=auto + sync -f", cp_reflink),
    ];
    let medians: Vec<(&str, Duration)> = report
        .into_iter()
        .map(|(name, times)| (name, median(times)))
        .collect();
    for (name, m) in &medians {
        println!("  {name:<34} median {:.2}s", secs(*m));
    }
    strata_testkit::bench::record(
        "snapshot",
        &format!(
            "native prepare of a {count}-file, {:.1} GB tree",
            bytes as f64 / 1e9
        ),
        &medians,
    );
    println!(
        "  ratio native prepare / (cp -a + sync -f): median {:.2} (below 1 is faster)",
        ratios[ratios.len() / 2]
    );
}

fn main() {
    let dir = PathBuf::from(
        std::env::var_os("STRATA_BENCH_DIR").expect("run through cargo xtask bench snapshot"),
    );
    let is_root = strata_sys::effective_uid() == 0;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("bench snapshot on {}", dir.display());
    rt.block_on(async {
        if is_root {
            small_snapshots(&dir, "overlay", 1000).await;
        }
        small_snapshots(&dir, "native", 1000).await;
        if is_root {
            chain_mounts(&dir).await;
        } else {
            println!("  (not root: overlay figures skipped)");
        }
        native_copy(&dir, 3).await;
    });
}
