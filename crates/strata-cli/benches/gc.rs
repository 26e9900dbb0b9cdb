//! `cargo xtask bench gc`: one collection over 100,000 snapshots (in chains
//! of ten) and 100,000 blobs (2,000 of each in a quick run), 10% reachable
//! through a lease per hundred, with real snapshot directories and blob
//! files on the scratch file system `STRATA_BENCH_DIR`. Reports the
//! dry-run mark time, the whole collection, the time writers were paused,
//! and the time per object; the collection is timed in process (it has no
//! peer), and recorded with its provenance.

// This program reports on stdout by design.
#![allow(clippy::print_stdout)]

use std::fs;
use std::time::Instant;

use strata_cache::{BackendChoice, Root, RootOptions};
use strata_core::{Algorithm, Digest, Labels};
use strata_leases::gc::GcOptions;
use strata_leases::{LeaseSpec, Resource};
use strata_metadata::records::{ContentRecord, SnapshotKind, SnapshotRecord, now};
use strata_testkit::bench::{self, Figure};

/// Opening the populated root after a clean close, and after an unclean
/// one (the full reconciliation), as a command starts; then removing one
/// snapshot of the `n` (the parent index makes it cost its children).
/// Returns the root, open.
fn large_root(root: &std::path::Path, n: usize) -> Root {
    let options = RootOptions {
        path: Some(root.to_path_buf()),
        backend: BackendChoice::Native,
    };
    let open = || {
        let t = Instant::now();
        let mgr = strata_cache::CacheManager::new(Root::open(&options).unwrap()).unwrap();
        (t.elapsed(), mgr)
    };
    let mut clean = Vec::new();
    for _ in 0..5 {
        clean.push(open().0);
    }
    clean.sort();
    strata_metadata::MetaDb::open(&root.join("meta.redb"))
        .unwrap()
        .mark_open()
        .unwrap();
    let (unclean, mgr) = open();
    println!(
        "  open of the root and its cache manager: {:.1} ms after a clean close (median of 5), {:.0} ms after a kill (full reconciliation)",
        clean[2].as_secs_f64() * 1e3,
        unclean.as_secs_f64() * 1e3
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = Instant::now();
    rt.block_on(strata_snapshot::Snapshotter::remove(
        &mgr.root().snapshots,
        &format!("s{}", n - 1),
    ))
    .unwrap();
    let took = t.elapsed();
    let t = Instant::now();
    let children = rt
        .block_on(async {
            let mut n = 0;
            let filter = strata_core::Filter::parse(&["parent==s5"]).unwrap();
            strata_snapshot::Snapshotter::walk(&mgr.root().snapshots, &filter, &mut |_| {
                n += 1;
                Box::pin(async { Ok(()) })
            })
            .await
            .map(|()| n)
        })
        .unwrap();
    println!(
        "  removing one of {n} snapshots: {:.2} ms; a walk by parent ({children} child): {:.2} ms",
        took.as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64() * 1e3
    );
    drop(mgr);
    Root::open(&options).unwrap()
}

fn main() {
    let dir = bench::scratch();
    let root = dir.join("gc-root");
    fs::create_dir_all(&root).unwrap();
    let opened = Root::open(&RootOptions {
        path: Some(root.clone()),
        backend: BackendChoice::Native,
    })
    .unwrap();
    let (db, lm) = (&opened.db, &opened.leases);
    // A quick run (`cargo xtask bench --quick`) only shows it still runs.
    let (n, chain) = (bench::pick(100_000usize, 2_000), 10usize);

    let t = Instant::now();
    let blobs = root.join("content/blobs/sha256");
    let tx = db.write().unwrap();
    let mut digests = Vec::with_capacity(n);
    for i in 0..n {
        let d = Digest::of_bytes(Algorithm::Sha256, &i.to_le_bytes());
        fs::write(blobs.join(d.hex()), i.to_le_bytes()).unwrap();
        tx.put(
            d.as_str(),
            &ContentRecord {
                size: 8,
                created: now(),
                updated: now(),
                labels: Labels::new(),
            },
        )
        .unwrap();
        digests.push(d);
    }
    for i in 0..n {
        let id = format!("bench{i:020}");
        fs::create_dir_all(root.join("snapshots").join(&id).join("fs")).unwrap();
        let parent = (i % chain != 0).then(|| format!("s{}", i - 1));
        let r = SnapshotRecord {
            id,
            kind: SnapshotKind::Committed,
            parent,
            labels: Labels::new(),
            created: now(),
            updated: now(),
            usage: None,
            lazy: false,
        };
        tx.put(&format!("s{i}"), &r).unwrap();
    }
    tx.commit().unwrap();
    // 1,000 leases, each holding one chain top (ten snapshots) and ten blobs.
    for l in 0..n / 100 {
        let lease = format!("l{l}");
        lm.create(LeaseSpec {
            id: Some(lease.clone()),
            ..LeaseSpec::default()
        })
        .unwrap();
        let top = l * 100 + chain - 1;
        lm.add_resource(&lease, &Resource::snapshot("native", &format!("s{top}")))
            .unwrap();
        for b in 0..10 {
            lm.add_resource(&lease, &Resource::content(&digests[l * 100 + b]))
                .unwrap();
        }
    }
    println!(
        "bench gc: populated {n} snapshots and {n} blobs in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    drop(opened);
    let opened = large_root(&root, n);

    let gc = &opened.collector;
    let dry = gc
        .collect(GcOptions {
            dry_run: true,
            explain: false,
        })
        .unwrap();
    let objects = 2 * n;
    println!(
        "  dry run (load + mark + decide): {:.0} ms, {:.2} us per object; would remove {}, keep {}",
        dry.duration.as_secs_f64() * 1000.0,
        dry.duration.as_secs_f64() * 1e6 / objects as f64,
        dry.swept.len(),
        dry.kept
    );
    let real = gc.collect(GcOptions::default()).unwrap();
    println!(
        "  collection: {:.2}s in all, {:.2} us per object; writers paused {:.0} ms; removed {}, kept {}",
        real.duration.as_secs_f64(),
        real.duration.as_secs_f64() * 1e6 / objects as f64,
        real.pause.as_secs_f64() * 1000.0,
        real.swept.len(),
        real.kept
    );
    assert_eq!(real.kept, objects / 10);
    bench::record(
        "gc",
        &format!("{n} snapshots + {n} blobs, 10% reachable"),
        &dir,
        &[
            Figure::in_process(
                &format!("strata gc (removes {})", real.swept.len()),
                1,
                real.duration,
            ),
            Figure::in_process("strata gc --dry-run (mark and decide)", 1, dry.duration),
            Figure::in_process(
                "strata gc: writers paused (its one write transaction)",
                1,
                real.pause,
            ),
        ],
        &[],
    );
}
