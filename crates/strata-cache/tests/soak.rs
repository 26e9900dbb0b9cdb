//! A bounded mixed workload in one process, watching for leaks: round
//! after round imports an image (a shared layer and one of its own),
//! builds a ref on it through a writable mount, merges, exports the chain,
//! reads it back through a read-only mount, then lets everything go and
//! prunes. After a warm-up, open file descriptors must stay where they
//! were, resident memory must not climb, and every prune must bring the
//! root back to the same rows and snapshots. `STRATA_SOAK_SECS` sets the
//! length (CI runs a short one; `cargo xtask stress` a long one). Needs
//! root (mounts).

mod common;

use std::time::{Duration, Instant};

use common::*;
use strata_cache::{ImportOptions, PruneOptions, RefConfig, RefOptions};
use strata_leases::gc::GcOptions;

/// Open descriptors and resident memory (KiB) of this process.
fn sample() -> (usize, u64) {
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status");
    (fds, rss)
}

/// Rows and snapshots in the root: what a prune must bring back.
fn footprint(mgr: &strata_cache::CacheManager) -> (usize, usize) {
    let root = mgr.root();
    let blobs = root.content.list(&Default::default()).unwrap().len();
    let refs = mgr.records().unwrap().len();
    (blobs, refs)
}

async fn round(e: &Env, n: u32, shared: &strata_core::Descriptor) {
    let mgr = &e.mgr;
    let tmp = e.dir.path();
    let (ctx, scope) = lazy(mgr);
    let own = format!("round-{n}");
    let layer = put_layer(mgr, &[dir("own/"), file(&format!("own/{own}"), &own)]);
    let img = image(
        mgr,
        &format!("example.com/soak:{n}"),
        vec![shared.clone(), layer.clone()],
    );
    let top = mgr
        .import_image(&ctx, &img, &ImportOptions::default())
        .await
        .unwrap();
    let m = mgr
        .new_ref(&ctx, Some(&top), &RefOptions::described(&own))
        .await
        .unwrap();
    let rw = m.mount(&ctx, false).await.unwrap();
    with_mounted(&rw, tmp, |p| std::fs::write(p.join("built"), &own).unwrap());
    drop(rw);
    let built = m.commit(&ctx).await.unwrap();
    let merged = mgr
        .merge(&ctx, &[Some(&top), Some(&built)], &RefOptions::default())
        .await
        .unwrap()
        .unwrap();
    let chain = built
        .export_chain(&ctx, &RefConfig::default())
        .await
        .unwrap();
    assert_eq!(chain.layers.len(), 3);
    let ro = merged.mount(&ctx).await.unwrap();
    let seen = with_mounted(&ro, tmp, files);
    drop(ro);
    assert!(seen.contains(&("built".into(), own.clone())), "{seen:?}");
    for r in [top, built, merged] {
        r.release().unwrap();
    }
    scope.release().unwrap();
    // The test's own holds on this round's blobs go too (`put_blob`).
    for d in [&layer, &img.config, &img.manifest] {
        let lease = format!("test-blob-{}", d.digest.hex());
        mgr.root().leases.delete(&lease).unwrap();
    }
    let pruned = mgr
        .prune(&PruneOptions {
            all: true,
            ..PruneOptions::default()
        })
        .await
        .unwrap();
    assert!(!pruned.removed.is_empty(), "round {n}: nothing pruned");
    mgr.root().collector.collect(GcOptions::default()).unwrap();
}

async fn soak(backend: &str) {
    let secs: u64 = std::env::var("STRATA_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let e = env(backend);
    let shared = put_layer(&e.mgr, &[dir("shared/"), file("shared/base", "everyone's")]);
    let start = Instant::now();
    let warm = Duration::from_secs(secs) / 3;
    let mut n = 0;
    let mut after_warmup: Option<((usize, u64), (usize, usize))> = None;
    let (mut peak_fds, mut peak_rss) = (0, 0);
    // Rounds checked against the warm-up: however slow the machine, the
    // soak checks at least this many, never none.
    const CHECKED: u32 = 5;
    let mut checked = 0;
    while start.elapsed() < Duration::from_secs(secs) || checked < CHECKED {
        round(&e, n, &shared).await;
        n += 1;
        let (fds, rss) = sample();
        let footprint = footprint(&e.mgr);
        match after_warmup {
            None if start.elapsed() >= warm && n >= 3 => {
                after_warmup = Some(((fds, rss), footprint));
            }
            None => {}
            Some(((base_fds, _), base_footprint)) => {
                assert!(
                    fds <= base_fds,
                    "round {n}: {fds} descriptors open, {base_fds} after the warm-up"
                );
                assert_eq!(
                    footprint, base_footprint,
                    "round {n}: (blobs, records) after a prune"
                );
                peak_fds = peak_fds.max(fds);
                peak_rss = peak_rss.max(rss);
                checked += 1;
            }
        }
    }
    let ((base_fds, base_rss), _) = after_warmup.unwrap();
    assert!(checked >= CHECKED && peak_rss > 0);
    eprintln!(
        "{backend}: {n} rounds ({checked} checked after the warm-up) in {:.0?}; descriptors {base_fds} after warm-up, at most {peak_fds} later; resident {} MiB after warm-up, at most {} MiB later",
        start.elapsed(),
        base_rss / 1024,
        peak_rss / 1024
    );
    // Allocator and page-cache noise, not a leak: a leak of one mount, ref
    // or buffer per round grows without bound over hundreds of rounds.
    assert!(
        peak_rss <= base_rss + base_rss / 4 + 16 * 1024,
        "resident memory climbed from {base_rss} KiB to {peak_rss} KiB"
    );
    assert_clean(&e.mgr);
    strata_testkit::reliability::record(
        "soak",
        backend,
        e.dir.path(),
        &[
            ("backend", backend.to_owned()),
            ("build", strata_testkit::reliability::build().to_owned()),
            ("seconds", secs.to_string()),
            (
                "rounds (checked after the warm-up)",
                format!("{n} ({checked})"),
            ),
            (
                "descriptors after the warm-up, at most later",
                format!("{base_fds}, {peak_fds}"),
            ),
            (
                "resident MiB after the warm-up, at most later",
                format!("{}, {}", base_rss / 1024, peak_rss / 1024),
            ),
        ],
    );
}

// One test, the backends in turn: descriptors and memory are the
// process's, so nothing else may run beside the soak.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_both_backends() {
    if strata_testkit::require_root("strata-cache soak::soak_both_backends") {
        soak("overlay").await;
        soak("native").await;
    }
}
