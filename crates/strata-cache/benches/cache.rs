//! `cargo xtask bench cache`: the cache manager on the real Debian image
//! (`cargo xtask bench-images`), on the scratch file system
//! `STRATA_BENCH_DIR` (image import and pull against containerd are
//! `cargo xtask bench oci`):
//!
//! * export of a one-file change made on top of the imported image;
//! * 10,000 get/release cycles of one ref;
//! * disk usage over 10,000 records.
//!
//! These are timed in process and printed, not recorded (no peer does the
//! same); a quick run (`cargo xtask bench --quick`) imports the small image
//! and makes 100 cycles and records.

// This program reports on stdout by design.
#![allow(clippy::print_stdout)]

use std::path::Path;
use std::time::Instant;

use strata_cache::{
    BackendChoice, CacheManager, CompressionConfig, ImagePullOptions, Location, RefConfig,
    RefOptions, Root, RootOptions,
};
use strata_core::Filter;
use strata_diff::Compression;
use strata_leases::OpCtx;
use strata_testkit::bench;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn open(path: &Path) -> CacheManager {
    let root = Root::open(&RootOptions {
        path: Some(path.to_path_buf()),
        backend: BackendChoice::overlay(),
    })
    .unwrap();
    CacheManager::new(root).unwrap()
}

/// Imports the layout at `layout` into the root at `root`, held by the
/// lease `bench`; the top ref's id.
fn strata_import(rt: &tokio::runtime::Runtime, layout: &Path, root: &Path) -> String {
    let mgr = open(root);
    mgr.root()
        .leases
        .create(strata_leases::LeaseSpec {
            id: Some("bench".into()),
            ..Default::default()
        })
        .unwrap();
    let ctx = OpCtx::new().with_lease_id("bench");
    let location = Location::Layout {
        dir: layout.to_path_buf(),
        tag: None,
    };
    let got = rt
        .block_on(mgr.pull_image(&ctx, &location, &ImagePullOptions::default()))
        .unwrap();
    let top = got.top.expect("layers");
    rt.block_on(mgr.name_image("bench", &got.image, Some(&top), "bench"))
        .unwrap();
    top.id().to_owned()
}

fn bench_ops(rt: &tokio::runtime::Runtime, dir: &Path, layout: &Path) {
    let root = dir.join("ops");
    let top_id = strata_import(rt, layout, &root);
    let cycles = bench::pick(10_000, 100);
    let mgr = open(&root);
    let ctx = OpCtx::new().with_lease_id("bench");
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
        for _ in 0..cycles {
            let r = mgr.get(&top_id, &RefOptions::default()).await.unwrap();
            r.release().unwrap();
        }
        println!(
            "  {cycles} get/release cycles: {:.2}s ({:.0} us each)",
            start.elapsed().as_secs_f64(),
            start.elapsed().as_secs_f64() * 1e6 / cycles as f64
        );
        let start = Instant::now();
        for _ in 0..cycles {
            let m = mgr.new_ref(&ctx, None, &RefOptions::default()).await.unwrap();
            m.commit(&ctx).await.unwrap();
        }
        let made = start.elapsed();
        let start = Instant::now();
        let usage = mgr.disk_usage(&Filter::default()).await.unwrap();
        println!(
            "  disk usage over {} records: {:.2}s (making {cycles} refs took {:.1}s)",
            usage.len(),
            start.elapsed().as_secs_f64(),
            made.as_secs_f64()
        );
    });
}

fn main() {
    let dir = bench::scratch();
    let images = bench::images(&dir);
    println!("bench cache (scratch {}):", dir.display());
    bench_ops(&rt(), &dir, &images.layout(&images.names[0]));
}
