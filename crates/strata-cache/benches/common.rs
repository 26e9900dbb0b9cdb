//! What the cache manager's benchmarks share: medians, a runtime, a root
//! on the scratch file system, warm pages before a timed run, and Strata's
//! image import end to end.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use strata_cache::{
    BackendChoice, CacheManager, ImagePullOptions, ImportOptions, Location, Root, RootOptions,
};
use strata_leases::OpCtx;

pub const RUNS: usize = 3;

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn open(path: &Path) -> CacheManager {
    let root = Root::open(&RootOptions {
        path: Some(path.to_path_buf()),
        backend: BackendChoice::Overlay,
    })
    .unwrap();
    CacheManager::new(root).unwrap()
}

pub fn sh(script: &str) {
    let ok = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .status()
        .unwrap()
        .success();
    assert!(ok, "{script}");
}

/// Strata's import end to end from the layout at `layout`: blobs verified
/// into the content store, then the layers unpacked. Returns the time and
/// the top ref's id.
pub fn strata_import(
    rt: &tokio::runtime::Runtime,
    layout: &Path,
    root: &Path,
    parallel: usize,
) -> (Duration, String) {
    let start = Instant::now();
    let mgr = open(root);
    mgr.root()
        .leases
        .create(strata_leases::LeaseSpec {
            id: Some("bench".into()),
            ..Default::default()
        })
        .unwrap();
    let ctx = OpCtx::new().with_lease_id("bench");
    let opts = ImagePullOptions {
        import: ImportOptions {
            parallel: Some(parallel),
            ..ImportOptions::default()
        },
        ..ImagePullOptions::default()
    };
    let location = Location::Layout {
        dir: layout.to_path_buf(),
        tag: None,
    };
    let got = rt.block_on(mgr.pull_image(&ctx, &location, &opts)).unwrap();
    let top = got.top.expect("layers");
    rt.block_on(mgr.name_image("bench", &got.image, Some(&top), "bench"))
        .unwrap();
    let id = top.id().to_owned();
    drop(top);
    (start.elapsed(), id)
}
