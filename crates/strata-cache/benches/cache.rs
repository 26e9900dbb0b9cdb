//! `cargo xtask bench cache`: the cache manager on the real Debian image
//! (`cargo xtask bench-images`), on the scratch file system
//! `STRATA_BENCH_DIR`, peers side by side:
//!
//! * import of debian-python (gzip, then zstd) from its OCI layout into a
//!   fresh root (blobs ingested, layers unpacked and committed): Strata one
//!   layer at a time, Strata in parallel, and containerd's own
//!   `ctr images import` of the same image as an OCI archive into its
//!   overlayfs snapshotter (a private containerd: config, root, state and
//!   socket in the scratch directory), alternating, medians of the runs and
//!   the median of the pairwise ratios;
//! * export of a one-file change made on top of the imported image;
//! * 10,000 get/release cycles of one ref;
//! * disk usage over 10,000 records.

// This program reports on stdout by design.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use strata_cache::{
    BackendChoice, CacheManager, CompressionConfig, Image, ImportOptions, RefConfig, RefOptions,
    Root, RootOptions,
};
use strata_core::{Descriptor, Digest, Filter, Labels};
use strata_diff::Compression;
use strata_leases::OpCtx;

const RUNS: usize = 3;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn open(path: &Path) -> CacheManager {
    let root = Root::open(&RootOptions {
        path: Some(path.to_path_buf()),
        backend: BackendChoice::Overlay,
    })
    .unwrap();
    CacheManager::new(root).unwrap()
}

fn sh(script: &str) {
    let ok = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .status()
        .unwrap()
        .success();
    assert!(ok, "{script}");
}

/// Touches and frees about 2 GiB so a timed run gets warm pages.
fn warm(dir: &Path) {
    sh(&format!(
        "head -c 2G /dev/zero > {0}/warm && rm {0}/warm",
        dir.display()
    ));
}

/// The layout's image: its blobs, and the descriptors to import.
struct Layout {
    dir: PathBuf,
    manifest: Descriptor,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

fn blob(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("blobs").join(d.algorithm().as_str()).join(d.hex())
}

fn read_layout(dir: &Path) -> Layout {
    let index = ImageIndex::from_file(dir.join("index.json")).unwrap();
    let manifest = Descriptor::try_from(&index.manifests()[0]).unwrap();
    let m = ImageManifest::from_file(blob(dir, &manifest.digest)).unwrap();
    let config = Descriptor::try_from(m.config()).unwrap();
    let c = ImageConfiguration::from_file(blob(dir, &config.digest)).unwrap();
    let layers = m
        .layers()
        .iter()
        .zip(c.rootfs().diff_ids())
        .map(|(l, diff)| {
            let mut d = Descriptor::try_from(l).unwrap();
            d.annotations
                .insert("containerd.io/uncompressed".into(), diff.clone());
            d
        })
        .collect();
    Layout {
        dir: dir.to_path_buf(),
        manifest,
        config,
        layers,
    }
}

/// Strata's import end to end: blobs ingested from the layout, then the
/// image imported. Returns (whole, import alone).
fn strata_import(
    rt: &tokio::runtime::Runtime,
    layout: &Layout,
    root: &Path,
    parallel: usize,
) -> (Duration, Duration) {
    let start = Instant::now();
    let mgr = open(root);
    let ctx = OpCtx::new().with_lease_id("bench");
    mgr.root()
        .leases
        .create(strata_leases::LeaseSpec {
            id: Some("bench".into()),
            ..Default::default()
        })
        .unwrap();
    let content = mgr.root().content.under(&ctx);
    for d in layout
        .layers
        .iter()
        .chain([&layout.manifest, &layout.config])
    {
        let f = std::fs::File::open(blob(&layout.dir, &d.digest)).unwrap();
        content
            .ingest(
                d.digest.as_str(),
                f,
                Some(d.size),
                Some(&d.digest),
                &Labels::new(),
            )
            .unwrap();
    }
    let img = Image {
        reference: "localhost/bench/debian-python:latest".into(),
        manifest: layout.manifest.clone(),
        config: layout.config.clone(),
        layers: layout.layers.clone(),
        nonlayers: Vec::new(),
    };
    let import_start = Instant::now();
    let top = rt
        .block_on(mgr.import_image(
            &ctx,
            &img,
            &ImportOptions {
                parallel: Some(parallel),
                ..ImportOptions::default()
            },
        ))
        .unwrap();
    let import = import_start.elapsed();
    let whole = start.elapsed();
    drop(top);
    (whole, import)
}

/// A private containerd on the scratch directory.
struct Containerd {
    child: Child,
    socket: PathBuf,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{1}\"\n[ttrpc]\n  address = \"{0}/ttrpc.sock\"\n[plugins.\"io.containerd.metadata.v1.bolt\"]\n  content_sharing_policy = \"isolated\"\n",
                dir.display(),
                socket.display()
            ),
        )
        .unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log")).unwrap())
            .spawn()
            .expect("start containerd (apt-get install containerd)");
        let c = Containerd { child, socket };
        for _ in 0..200 {
            if c.ctr(&["version"]).status().is_ok_and(|s| s.success()) {
                return c;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("containerd did not come up");
    }

    fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.socket)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    fn import(&self, ns: &str, archive: &Path) -> Duration {
        let start = Instant::now();
        let ok = self
            .ctr(&[
                "-n",
                ns,
                "images",
                "import",
                "--base-name",
                "localhost/bench/image",
                "--snapshotter",
                "overlayfs",
            ])
            .arg(archive)
            .status()
            .unwrap()
            .success();
        let took = start.elapsed();
        assert!(ok, "ctr images import {}", archive.display());
        took
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("stop containerd: {e}");
        }
        let _reaped = self.child.wait();
    }
}

fn bench_import(rt: &tokio::runtime::Runtime, dir: &Path, images: &Path) {
    let ctrd_dir = dir.join("containerd");
    std::fs::create_dir_all(&ctrd_dir).unwrap();
    let ctrd = Containerd::start(&ctrd_dir);
    for name in ["debian-python", "debian-python-zstd"] {
        let layout = read_layout(&images.join(name));
        let archive = images.join("archives").join(format!("{name}.oci.tar"));
        let (mut seq, mut par, mut ctr) = (vec![], vec![], vec![]);
        let (mut seq_import, mut par_import) = (vec![], vec![]);
        let mut ratios = vec![];
        // One warm-up round, then the measured ones.
        for run in 0..=RUNS {
            let (s_root, p_root) = (
                dir.join(format!("seq-{run}")),
                dir.join(format!("par-{run}")),
            );
            warm(dir);
            let (s, si) = strata_import(rt, &layout, &s_root, 1);
            warm(dir);
            let (p, pi) = strata_import(rt, &layout, &p_root, 8);
            warm(dir);
            let c = ctrd.import(&format!("{name}-{run}"), &archive);
            if run > 0 {
                seq.push(s);
                par.push(p);
                ctr.push(c);
                seq_import.push(si);
                par_import.push(pi);
                ratios.push(p.as_secs_f64() / c.as_secs_f64());
            }
            for r in [&s_root, &p_root] {
                sh(&format!(
                    "umount -R {0}/tmp 2>/dev/null || true; rm -rf --one-file-system {0}",
                    r.display()
                ));
            }
        }
        println!(
            "  import {name}: strata one layer at a time {:.2}s (unpack {:.2}s), in parallel {:.2}s (unpack {:.2}s), ctr images import {:.2}s; strata parallel / containerd {:.2}",
            median(seq).as_secs_f64(),
            median(seq_import).as_secs_f64(),
            median(par).as_secs_f64(),
            median(par_import).as_secs_f64(),
            median(ctr).as_secs_f64(),
            median_f(ratios)
        );
    }
}

fn bench_ops(rt: &tokio::runtime::Runtime, dir: &Path, images: &Path) {
    let layout = read_layout(&images.join("debian-python"));
    let root = dir.join("ops");
    strata_import(rt, &layout, &root, 8);
    let mgr = open(&root);
    let ctx = OpCtx::new().with_lease_id("bench");
    let top_id = mgr
        .records()
        .unwrap()
        .into_iter()
        .find(|m| m.blob() == layout.layers.last().map(|l| l.digest.clone()))
        .unwrap()
        .id()
        .to_owned();
    rt.block_on(async {
        let top = mgr.get(&top_id, &RefOptions::default()).await.unwrap();
        let m = mgr.new_ref(&ctx, Some(&top), &RefOptions::default()).await.unwrap();
        let dir = mgr.root().snapshots.fs_dir(m.id()).unwrap();
        std::fs::write(dir.join("one-change"), "x").unwrap();
        let step = m.commit(&ctx).await.unwrap();
        let cfg = RefConfig {
            compression: CompressionConfig {
                kind: Compression::Gzip,
                ..CompressionConfig::default()
            },
            ..RefConfig::default()
        };
        let start = Instant::now();
        let chain = step.export_chain(&ctx, &cfg).await.unwrap();
        println!(
            "  export of a one-file change on the imported image: {:.1} ms ({} layers, the new one computed)",
            start.elapsed().as_secs_f64() * 1e3,
            chain.layers.len()
        );
        let start = Instant::now();
        for _ in 0..10_000 {
            let r = mgr.get(&top_id, &RefOptions::default()).await.unwrap();
            r.release().unwrap();
        }
        println!(
            "  10,000 get/release cycles: {:.2}s ({:.0} us each)",
            start.elapsed().as_secs_f64(),
            start.elapsed().as_secs_f64() * 1e6 / 10_000.0
        );
        let start = Instant::now();
        for _ in 0..10_000 {
            let m = mgr.new_ref(&ctx, None, &RefOptions::default()).await.unwrap();
            m.commit(&ctx).await.unwrap();
        }
        let made = start.elapsed();
        let start = Instant::now();
        let usage = mgr.disk_usage(&Filter::default()).await.unwrap();
        println!(
            "  disk usage over {} records: {:.2}s (making 10,000 refs took {:.1}s)",
            usage.len(),
            start.elapsed().as_secs_f64(),
            made.as_secs_f64()
        );
    });
}

fn main() {
    let dir = PathBuf::from(
        std::env::var_os("STRATA_BENCH_DIR").expect("run through cargo xtask bench cache"),
    );
    let images = strata_testkit::bench_images();
    let rt = rt();
    println!("bench cache (scratch {}):", dir.display());
    // `STRATA_BENCH_ONLY=import|ops` runs one part.
    let only = std::env::var("STRATA_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "import" {
        bench_import(&rt, &dir, &images);
    }
    if only.is_empty() || only == "ops" {
        bench_ops(&rt, &dir, &images);
    }
}
