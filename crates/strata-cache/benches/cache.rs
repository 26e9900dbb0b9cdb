//! `cargo xtask bench cache`: the cache manager on the real Debian image
//! (`cargo xtask bench-images`), on the scratch file system
//! `STRATA_BENCH_DIR` (image import and pull against containerd are
//! `cargo xtask bench oci`):
//!
//! * export of a one-file change made on top of the imported image;
//! * 10,000 get/release cycles of one ref;
//! * disk usage over 10,000 records.

// This program reports on stdout by design.
#![allow(clippy::print_stdout)]

#[path = "common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{open, rt, strata_import};
use strata_cache::{CompressionConfig, RefConfig, RefOptions};
use strata_core::Filter;
use strata_diff::Compression;
use strata_leases::OpCtx;

fn bench_ops(rt: &tokio::runtime::Runtime, dir: &Path, images: &Path) {
    let root = dir.join("ops");
    let (_, top_id) = strata_import(rt, &images.join("debian-python"), &root, 8);
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
    println!("bench cache (scratch {}):", dir.display());
    bench_ops(&rt(), &dir, &images);
}
