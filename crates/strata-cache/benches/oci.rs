//! `cargo xtask bench oci`: images into a fresh root against containerd
//! 1.6, on the real Debian images (`cargo xtask bench-images`) and the
//! scratch file system `STRATA_BENCH_DIR`, alternating, one warm-up round,
//! medians of the runs and the median of the pairwise ratios:
//!
//! * pull of debian-python (gzip, then zstd) from a registry on 127.0.0.1
//!   (Debian's docker-registry) into a fresh root: Strata's `pull_image`
//!   (manifest, config and layers fetched in parallel and verified, layers
//!   unpacked) against `ctr images pull --plain-http` into containerd's
//!   overlayfs snapshotter (a private containerd on the scratch directory,
//!   content isolated per namespace so every run fetches);
//! * import of the same images from their OCI layouts: Strata one layer at
//!   a time and in parallel, against `ctr images import` of the same image
//!   as an OCI archive.

// This program reports on stdout by design.
#![allow(clippy::print_stdout)]

#[path = "common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{RUNS, open, rt, sh, strata_import};
use strata_cache::{ImagePullOptions, Location, RegistryOptions};
use strata_leases::OpCtx;
use strata_testkit::bench::{median, median_f, warm};
use strata_testkit::containerd::Containerd;
use strata_testkit::registry::Registry;

fn bench_import(rt: &tokio::runtime::Runtime, dir: &Path, images: &Path, ctrd: &Containerd) {
    for name in ["debian-python", "debian-python-zstd"] {
        let layout = images.join(name);
        let archive = images.join("archives").join(format!("{name}.oci.tar"));
        let (mut seq, mut par, mut ctr) = (vec![], vec![], vec![]);
        let mut ratios = vec![];
        // One warm-up round, then the measured ones.
        for run in 0..=RUNS {
            let (s_root, p_root) = (
                dir.join(format!("seq-{run}")),
                dir.join(format!("par-{run}")),
            );
            warm(dir);
            let (s, _) = strata_import(rt, &layout, &s_root, 1);
            warm(dir);
            let (p, _) = strata_import(rt, &layout, &p_root, 8);
            warm(dir);
            let c = ctrd.import(&format!("{name}-{run}"), &archive, "overlayfs");
            if run > 0 {
                seq.push(s);
                par.push(p);
                ctr.push(c);
                ratios.push(p.as_secs_f64() / c.as_secs_f64());
            }
            for r in [&s_root, &p_root] {
                sh(&format!(
                    "umount -R {0}/tmp 2>/dev/null || true; rm -rf --one-file-system {0}",
                    r.display()
                ));
            }
        }
        strata_testkit::bench::record(
            "import",
            &format!("{name} from its OCI layout"),
            &[
                ("strata, layers in parallel", median(par.clone())),
                ("strata, one layer at a time", median(seq.clone())),
                ("ctr images import (containerd 1.6)", median(ctr.clone())),
            ],
        );
        println!(
            "  import {name}: strata one layer at a time {:.2}s, in parallel {:.2}s, ctr images import {:.2}s; strata parallel / containerd {:.2}",
            median(seq).as_secs_f64(),
            median(par).as_secs_f64(),
            median(ctr).as_secs_f64(),
            median_f(ratios)
        );
    }
}

/// Strata's pull end to end into a fresh root at `root`.
fn strata_pull(rt: &tokio::runtime::Runtime, reference: &str, root: &Path) -> std::time::Duration {
    let start = Instant::now();
    let mgr = open(root);
    rt.block_on(async {
        let (ctx, guard) = strata_leases::with_lease(&OpCtx::new(), &mgr.root().leases).unwrap();
        let location = Location::Registry {
            reference: reference.to_owned(),
        };
        let got = mgr
            .pull_image(&ctx, &location, &ImagePullOptions::default())
            .await
            .unwrap();
        mgr.name_image("bench", &got.image, got.top.as_ref(), reference)
            .await
            .unwrap();
        drop(got);
        guard.release().unwrap();
    });
    start.elapsed()
}

fn bench_pull(rt: &tokio::runtime::Runtime, dir: &Path, images: &Path, ctrd: &Containerd) {
    let registry = Registry::start(None);
    // The images go into the registry through a staging root.
    let staging = dir.join("staging");
    for name in ["debian-python", "debian-python-zstd"] {
        let mgr = open(&staging);
        rt.block_on(async {
            let (ctx, guard) =
                strata_leases::with_lease(&OpCtx::new(), &mgr.root().leases).unwrap();
            let layout = Location::Layout {
                dir: images.join(name),
                tag: None,
            };
            let got = mgr
                .pull_image(&ctx, &layout, &ImagePullOptions::default())
                .await
                .unwrap();
            let target = Location::Registry {
                reference: format!("{}/bench/{name}:latest", registry.addr),
            };
            mgr.write_image(&ctx, &got.image, &target, &RegistryOptions::default())
                .await
                .unwrap();
            drop(got);
            guard.release().unwrap();
        });
    }
    sh(&format!("rm -rf --one-file-system {}", staging.display()));
    for name in ["debian-python", "debian-python-zstd"] {
        let reference = format!("{}/bench/{name}:latest", registry.addr);
        let (mut strata, mut ctr, mut ratios) = (vec![], vec![], vec![]);
        for run in 0..=RUNS {
            let root = dir.join(format!("pull-{run}"));
            warm(dir);
            let s = strata_pull(rt, &reference, &root);
            warm(dir);
            let c = ctrd.pull(&format!("pull-{name}-{run}"), &reference);
            if run > 0 {
                strata.push(s);
                ctr.push(c);
                ratios.push(s.as_secs_f64() / c.as_secs_f64());
            }
            sh(&format!(
                "umount -R {0}/tmp 2>/dev/null || true; rm -rf --one-file-system {0}",
                root.display()
            ));
        }
        strata_testkit::bench::record(
            "pull",
            &format!("{name} from a registry on 127.0.0.1"),
            &[
                ("strata image pull", median(strata.clone())),
                ("ctr images pull (containerd 1.6)", median(ctr.clone())),
            ],
        );
        println!(
            "  pull {name} from 127.0.0.1: strata {:.2}s, ctr images pull {:.2}s; strata / containerd {:.2}",
            median(strata).as_secs_f64(),
            median(ctr).as_secs_f64(),
            median_f(ratios)
        );
    }
}

fn main() {
    let dir = PathBuf::from(
        std::env::var_os("STRATA_BENCH_DIR").expect("run through cargo xtask bench oci"),
    );
    let images = strata_testkit::bench_images();
    let rt = rt();
    println!("bench oci (scratch {}):", dir.display());
    let ctrd_dir = dir.join("containerd");
    std::fs::create_dir_all(&ctrd_dir).unwrap();
    let ctrd = Containerd::start(&ctrd_dir);
    // `STRATA_BENCH_ONLY=pull|import` runs one part.
    let only = std::env::var("STRATA_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "pull" {
        bench_pull(&rt, &dir, &images, &ctrd);
    }
    if only.is_empty() || only == "import" {
        bench_import(&rt, &dir, &images, &ctrd);
    }
}
