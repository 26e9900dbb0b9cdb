//! The cache manager on real roots, every backend (btrfs on a loop
//! btrfs), real mounts: ref life
//! cycle (Locked on a second holder, commit to a new id, read-only mounts
//! of immutable refs), the seed's contracts for merge and snapshot diff,
//! lazy leases materialised at create boundaries, import with dedupe
//! (also concurrent and after a restart), export chains with compression
//! variants, owner leases, collection with clean checks (also racing
//! imports, exports and mounts in flight), durable metadata and search, the
//! cache-mount pool. Needs root (mounts).

mod common;

use std::sync::Arc;

use common::*;
use strata_cache::{
    CacheError, CompressionConfig, ImportOptions, RecordType, RefConfig, RefOptions, Value,
};
use strata_core::Labels;
use strata_diff::Compression;
use strata_leases::OpCtx;
use strata_leases::gc::GcOptions;
use strata_metadata::Reader;
use strata_metadata::records::SnapshotRecord;
use strata_snapshot::Snapshotter;

macro_rules! every_backend {
    ($($name:ident),* $(,)?) => {
        mod overlay {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    if strata_testkit::require_root(concat!("strata-cache overlay::", stringify!($name))) {
                        super::$name("overlay").await;
                    }
                }
            )*
        }
        mod native {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    if strata_testkit::require_root(concat!("strata-cache native::", stringify!($name))) {
                        super::$name("native").await;
                    }
                }
            )*
        }
        mod btrfs {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    if super::usable(concat!("strata-cache btrfs::", stringify!($name)), "btrfs") {
                        super::$name("btrfs").await;
                    }
                }
            )*
        }
        // The example backend kept outside the crates, chosen the way an
        // embedder chooses its own: `BackendChoice::Custom`.
        mod outside {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    if super::usable(concat!("strata-cache outside::", stringify!($name)), "outside") {
                        super::$name("outside").await;
                    }
                }
            )*
        }
    };
}

every_backend!(
    life_cycle,
    merge_and_diff_contracts,
    import_dedupes_and_survives_restart,
    concurrent_imports_unpack_each_layer_once,
    export_chain_and_variants,
    estargz_variants_keep_their_own_diff_ids,
    export_under_an_unmade_lazy_lease_keeps_its_blobs_in_it,
    owner_leases_pin_chains_and_collection_cleans_rows,
    cache_mounts_share_one_mount,
    readers_stay_inside_the_ref,
    hostile_layers_never_write_outside,
    trees_as_deep_as_a_path_may_be_import_merge_and_export,
    collection_never_takes_what_work_in_flight_uses,
);

/// A new mutable ref on nothing, with default options.
async fn fresh(mgr: &strata_cache::CacheManager, ctx: &OpCtx) -> strata_cache::MutableRef {
    mgr.new_ref(ctx, None, &RefOptions::default())
        .await
        .unwrap()
}

const UNCOMPRESSED: &str = "containerd.io/uncompressed";

/// Export in zstd, converting layers that exist in another compression.
fn forced_zstd() -> RefConfig {
    RefConfig {
        compression: CompressionConfig {
            kind: Compression::Zstd,
            force: true,
            level: None,
        },
        ..RefConfig::default()
    }
}

fn snapshot_count(mgr: &strata_cache::CacheManager) -> usize {
    mgr.root()
        .db
        .read()
        .unwrap()
        .scan::<SnapshotRecord>("")
        .unwrap()
        .len()
}

async fn life_cycle(backend: &str) {
    let e = env(backend);
    let mgr = &e.mgr;
    let tmp = e.dir.path();
    let (ctx, scope) = lazy(mgr);
    let m = mgr
        .new_ref(&ctx, None, &RefOptions::described("build step"))
        .await
        .unwrap();
    // The lazy lease was made at the create boundary and holds it.
    let lease = ctx.lease().expect("the lazy lease was materialised");
    let held = mgr.root().leases.list_resources(&lease).unwrap();
    assert!(held.iter().any(|r| r.id == m.id()), "{held:?}");
    // A second holder is refused.
    match mgr.get_mutable(m.id(), &RefOptions::default()).await {
        Err(CacheError::Locked(id)) => assert_eq!(id, m.id()),
        other => panic!("expected Locked, got {other:?}"),
    }
    let rw = m.mount(&ctx, false).await.unwrap();
    with_mounted(&rw, tmp, |p| {
        std::fs::write(p.join("hello"), "world").unwrap()
    });
    drop(rw);
    let old = m.id().to_owned();
    let committed = m.commit(&ctx).await.unwrap();
    assert_ne!(committed.id(), old);
    assert!(matches!(
        mgr.get(&old, &RefOptions::default()).await,
        Err(CacheError::NotFound(_))
    ));
    let md = committed.metadata().unwrap();
    assert!(md.is_committed());
    assert_eq!(md.description(), "build step");
    assert!(md.created_at().is_some());
    assert!(committed.size().await.unwrap() > 0);
    // Immutable refs mount read-only.
    let ro = committed.mount(&ctx).await.unwrap();
    with_mounted(&ro, tmp, |p| {
        assert_eq!(std::fs::read_to_string(p.join("hello")).unwrap(), "world");
        let err = std::fs::write(p.join("nope"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc_erofs()), "{err}");
    });
    drop(ro);
    // A mutable ref of an immutable record is invalid, and vice versa.
    assert!(matches!(
        mgr.get_mutable(committed.id(), &RefOptions::default())
            .await,
        Err(CacheError::Invalid { .. })
    ));
    let child = mgr
        .new_ref(&ctx, Some(&committed), &RefOptions::default())
        .await
        .unwrap();
    assert!(matches!(
        mgr.get(child.id(), &RefOptions::default()).await,
        Err(CacheError::Invalid { .. })
    ));
    // Released, the mutable record can be taken again.
    let child_id = child.id().to_owned();
    drop(child);
    let again = mgr
        .get_mutable(&child_id, &RefOptions::default())
        .await
        .unwrap();
    let ro_child = again.mount(&ctx, true).await.unwrap();
    with_mounted(&ro_child, tmp, |p| {
        assert_eq!(std::fs::read_to_string(p.join("hello")).unwrap(), "world");
        assert!(std::fs::write(p.join("nope"), "x").is_err());
    });
    drop(ro_child);
    // Released refs refuse work; releasing twice is fine.
    committed.release().unwrap();
    committed.release().unwrap();
    assert!(committed.mount(&ctx).await.is_err());
    // Usage is counted on release.
    let r = mgr
        .get(committed.id(), &RefOptions::default())
        .await
        .unwrap();
    r.release().unwrap();
    let md = mgr.metadata(committed.id()).unwrap().unwrap();
    assert_eq!(md.usage_count(), 2);
    assert!(md.last_used_at().is_some());
    drop((again, r));
    scope.release().unwrap();
    assert_clean(mgr);
}

fn libc_erofs() -> i32 {
    30
}

async fn merge_and_diff_contracts(backend: &str) {
    let e = env(backend);
    let mgr = &e.mgr;
    let tmp = e.dir.path();
    let (ctx, _scope) = lazy(mgr);
    let make = |files: &'static [(&'static str, &'static str)]| {
        let ctx = ctx.clone();
        async move {
            let m = fresh(mgr, &ctx).await;
            let rw = m.mount(&ctx, false).await.unwrap();
            with_mounted(&rw, tmp, |p| {
                for (name, data) in files {
                    std::fs::write(p.join(name), data).unwrap();
                }
            });
            drop(rw);
            m.commit(&ctx).await.unwrap()
        }
    };
    let lower = make(&[("a", "1"), ("b", "lower")]).await;
    let upper = make(&[("b", "upper"), ("c", "3")]).await;
    let before = snapshot_count(mgr);
    let opts = RefOptions::default();
    // ApplySnapshotDiff's nil contract.
    assert!(
        mgr.apply_snapshot_diff(&ctx, None, None, &opts)
            .await
            .unwrap()
            .is_none()
    );
    let same = mgr
        .apply_snapshot_diff(&ctx, None, Some(&upper), &opts)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(same.snapshot_id(), upper.snapshot_id());
    assert_eq!(snapshot_count(mgr), before, "no merge for a missing lower");
    let empty = mgr
        .apply_snapshot_diff(&ctx, Some(&lower), Some(&lower), &opts)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(empty.snapshot_id(), lower.snapshot_id());
    let diff = mgr
        .apply_snapshot_diff(&ctx, Some(&lower), Some(&upper), &opts)
        .await
        .unwrap()
        .unwrap();
    // Merge's contract.
    assert!(mgr.merge(&ctx, &[], &opts).await.unwrap().is_none());
    let one = mgr
        .merge(&ctx, &[None, Some(&lower), None], &opts)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(one.snapshot_id(), lower.snapshot_id());
    let merged = mgr
        .merge(&ctx, &[Some(&lower), Some(&upper)], &opts)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(merged.snapshot_id(), lower.snapshot_id());
    assert_ne!(merged.snapshot_id(), upper.snapshot_id());
    // Overlay and btrfs start the result from the first input (its chain
    // as lowers, a snapshot of its tree); the others make a fresh tree.
    let caps = mgr.root().snapshots.capabilities();
    let parent = mgr
        .root()
        .snapshots
        .stat(merged.snapshot_id())
        .await
        .unwrap()
        .parent;
    if caps.overlay_layers || caps.cheap_snapshots {
        assert_eq!(parent.as_deref(), Some(lower.snapshot_id()));
    } else {
        assert_eq!(parent, None);
    }
    // Inputs released: results stay valid.
    drop((lower, upper, same, one));
    expect_files(tree(&ctx, tmp, &empty).await, &[]);
    expect_files(tree(&ctx, tmp, &diff).await, &[("b", "upper"), ("c", "3")]);
    expect_files(
        tree(&ctx, tmp, &merged).await,
        &[("a", "1"), ("b", "upper"), ("c", "3")],
    );
}

async fn tree(
    ctx: &OpCtx,
    tmp: &std::path::Path,
    r: &strata_cache::ImmutableRef,
) -> Vec<(String, String)> {
    let m = r.mount(ctx).await.unwrap();
    with_mounted(&m, tmp, files)
}

async fn import_dedupes_and_survives_restart(backend: &str) {
    let e = env(backend);
    let path = e.root_path();
    let tmp = e.dir.path().to_path_buf();
    let mgr = e.mgr;
    let (plain, _scope) = lazy(&mgr);
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let ctx = plain.with_events(move |e| sink.lock().unwrap().push(e.clone()));
    drop(plain);
    let img = image(&mgr, "example.com/test:1", three_layers(&mgr));
    let opts = ImportOptions {
        image_ref: Some(img.reference.clone()),
        ..ImportOptions::default()
    };
    let top = mgr.import_image(&ctx, &img, &opts).await.unwrap();
    // Each layer's progress ends at its size.
    let events = events.lock().unwrap().clone();
    for l in &img.layers {
        let last = events
            .iter()
            .rfind(|e| e.item == l.digest.as_str())
            .expect("progress of every layer");
        assert_eq!(
            (last.current, last.total, last.unit.as_str()),
            (l.size, l.size, "bytes")
        );
    }
    let m = top.mount(&ctx).await.unwrap();
    expect_files(with_mounted(&m, &tmp, files), &three_layers_expected());
    drop(m);
    let md = top.metadata().unwrap();
    assert_eq!(md.blob(), Some(img.layers[2].digest.clone()));
    assert_eq!(
        md.diff_id().map(|d| d.to_string()).as_deref(),
        img.layers[2]
            .annotations
            .get("containerd.io/uncompressed")
            .map(String::as_str)
    );
    assert_eq!(md.image_refs(), vec![img.reference.clone()]);
    assert_eq!(md.record_type(), RecordType::Regular);
    let count = snapshot_count(&mgr);
    let again = mgr.import_image(&ctx, &img, &opts).await.unwrap();
    assert_eq!(again.snapshot_id(), top.snapshot_id());
    assert_eq!(
        snapshot_count(&mgr),
        count,
        "a second import unpacks nothing"
    );
    // Hold the chain, then restart.
    mgr.attach_lease("strata/owner/test", top.snapshot_id())
        .await
        .unwrap();
    let top_id = top.snapshot_id().to_owned();
    let rows = mgr.persistent_metadata_rows().unwrap();
    assert_eq!(rows.imported_by_blob.len(), 3);
    assert_eq!(rows.imported_by_diff.len(), 3);
    drop((top, again, ctx, _scope));
    mgr.close().await.unwrap();
    drop(mgr);
    let mgr = open_at(&path, backend);
    assert_eq!(mgr.persistent_metadata_rows().unwrap(), rows);
    let (ctx, _scope) = lazy(&mgr);
    let top = mgr.get(&top_id, &RefOptions::default()).await.unwrap();
    let md = top.metadata().unwrap();
    assert_eq!(md.blob(), Some(img.layers[2].digest.clone()));
    assert_eq!(
        md.description(),
        format!("import image layer {}", img.layers[2].digest)
    );
    let count = snapshot_count(&mgr);
    let third = mgr.import_image(&ctx, &img, &opts).await.unwrap();
    assert_eq!(third.snapshot_id(), top_id);
    assert_eq!(
        snapshot_count(&mgr),
        count,
        "re-import after restart unpacks nothing"
    );
    // Blobs recorded later still reach the owner lease attached before the
    // restart.
    let forced = forced_zstd();
    let chain = third.export_chain(&ctx, &forced).await.unwrap();
    let held = mgr
        .root()
        .leases
        .list_resources("strata/owner/test")
        .unwrap();
    for l in &chain.layers {
        let d = l.descriptor.digest.to_string();
        assert!(
            held.iter().any(|r| r.id == d),
            "{d} reaches the owner lease"
        );
    }
    assert_clean(&mgr);
}

async fn concurrent_imports_unpack_each_layer_once(backend: &str) {
    let e = env(backend);
    let mgr = e.mgr.clone();
    let (ctx, _scope) = lazy(&mgr);
    let img = Arc::new(image(&mgr, "example.com/test:2", three_layers(&mgr)));
    let before = snapshot_count(&mgr);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (mgr, ctx, img) = (mgr.clone(), ctx.clone(), Arc::clone(&img));
        tasks.push(tokio::spawn(async move {
            let r = mgr
                .import_image(&ctx, &img, &ImportOptions::default())
                .await
                .unwrap();
            r.snapshot_id().to_owned()
        }));
    }
    let mut tops = Vec::new();
    for t in tasks {
        tops.push(t.await.unwrap());
    }
    tops.dedup();
    assert_eq!(tops.len(), 1, "every import returns the same top");
    assert_eq!(snapshot_count(&mgr), before + 3, "each layer unpacked once");
    // 100 tasks getting, mounting and releasing shared refs.
    let top = tops.pop().unwrap();
    let uses = mgr.metadata(&top).unwrap().unwrap().usage_count();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (mgr, ctx, top) = (mgr.clone(), ctx.clone(), top.clone());
        tasks.push(tokio::spawn(async move {
            let r = mgr.get(&top, &RefOptions::default()).await.unwrap();
            let m = r.mount(&ctx).await.unwrap();
            assert!(!m.mounts.is_empty());
            drop(m);
            r.release().unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        mgr.metadata(&top).unwrap().unwrap().usage_count(),
        uses + 100
    );
}

/// A collector that never rests runs while six workers each import images
/// (a layer of their own and one all share), build a ref on top through a
/// writable mount, export its chain, read it back through a read-only mount
/// and hand it to an owner lease. Nothing in flight is taken: every step
/// succeeds, and afterwards every ref mounts with its files, every exported
/// blob is there, and the checks are clean.
async fn collection_never_takes_what_work_in_flight_uses(backend: &str) {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let e = env(backend);
    let mgr = e.mgr.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU32::new(0));
    let collector = {
        let (gc, stop, runs) = (
            Arc::clone(&mgr.root().collector),
            Arc::clone(&stop),
            Arc::clone(&runs),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                gc.collect(GcOptions::default()).expect("collect");
                runs.fetch_add(1, Ordering::AcqRel);
            }
        })
    };
    // The layer every worker shares, put once (one ingest reference).
    let shared = put_layer(&mgr, &[dir("shared/"), file("shared/base", "everyone's")]);
    let mut workers = Vec::new();
    for w in 0..6u32 {
        let (mgr, tmp, shared) = (mgr.clone(), e.dir.path().to_path_buf(), shared.clone());
        let runs = Arc::clone(&runs);
        workers.push(tokio::spawn(async move {
            let mut made = Vec::new();
            for round in 0..3u32 {
                let (ctx, scope) = lazy(&mgr);
                let own = format!("w{w}-{round}");
                let layers = vec![
                    shared.clone(),
                    put_layer(&mgr, &[dir("own/"), file(&format!("own/{own}"), &own)]),
                ];
                let img = image(&mgr, &format!("example.com/{own}:1"), layers);
                let top = mgr
                    .import_image(&ctx, &img, &ImportOptions::default())
                    .await
                    .expect("import while collecting");
                let m = mgr
                    .new_ref(&ctx, Some(&top), &RefOptions::described(&own))
                    .await
                    .expect("new ref");
                let rw = m.mount(&ctx, false).await.expect("mount rw");
                with_mounted(&rw, &tmp, |p| {
                    std::fs::write(p.join("built"), &own).unwrap()
                });
                drop(rw);
                let r = m.commit(&ctx).await.expect("commit");
                let chain = r
                    .export_chain(&ctx, &RefConfig::default())
                    .await
                    .expect("export while collecting");
                let ro = r.mount(&ctx).await.expect("mount ro");
                // However the machine schedules the threads, a whole
                // collection starts and ends while this round's ref,
                // chain and mount are in flight.
                let before = runs.load(Ordering::Acquire);
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
                while runs.load(Ordering::Acquire) < before + 2 {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the collector stalled"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                let seen = with_mounted(&ro, &tmp, files);
                drop(ro);
                assert!(seen.contains(&("built".into(), own.clone())), "{seen:?}");
                mgr.attach_lease(&strata_cache::ref_lease(r.id()), r.snapshot_id())
                    .await
                    .expect("attach owner lease");
                let blobs: Vec<_> = chain
                    .layers
                    .iter()
                    .map(|l| l.descriptor.digest.clone())
                    .collect();
                made.push((r.id().to_owned(), own, seen, blobs));
                drop(r);
                scope.release().expect("release the scope");
            }
            made
        }));
    }
    let mut made = Vec::new();
    for w in workers {
        made.extend(w.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    collector.join().unwrap();
    let runs = runs.load(Ordering::Acquire);
    assert!(
        runs >= 6,
        "the collector ran only {runs} times alongside the work"
    );
    mgr.root().collector.collect(GcOptions::default()).unwrap();
    let (ctx, _scope) = lazy(&mgr);
    for (id, own, seen, blobs) in made {
        let r = mgr
            .get(&id, &RefOptions::default())
            .await
            .expect("an owned ref");
        let ro = r.mount(&ctx).await.unwrap();
        assert_eq!(with_mounted(&ro, e.dir.path(), files), seen, "{own}");
        for d in blobs {
            mgr.root()
                .content
                .info(&d)
                .unwrap_or_else(|e| panic!("{own}: exported blob {d}: {e}"));
        }
    }
    assert_clean(&mgr);
    assert!(mgr.root().content.check(true).unwrap().is_empty());
}

/// An export under a lazy scope whose lease is not made yet makes it (the
/// seed's EnsureLease) and leaves its blobs there: a temporary lease of its
/// own, deleted on return, would leave them held by nothing.
async fn export_under_an_unmade_lazy_lease_keeps_its_blobs_in_it(backend: &str) {
    let e = env(backend);
    let mgr = &e.mgr;
    // The ref is built under another scope, so the export's is untouched.
    let (build, build_scope) = lazy(mgr);
    let m = fresh(mgr, &build).await;
    std::fs::write(
        mgr.root().snapshots.fs_dir(m.id()).unwrap().join("f"),
        "exported",
    )
    .unwrap();
    let r = m.commit(&build).await.unwrap();
    let (ctx, scope) = lazy(mgr);
    assert_eq!(ctx.lease(), None, "nothing has made the export's lease yet");
    let chain = r.export_chain(&ctx, &RefConfig::default()).await.unwrap();
    let blob = chain.layers[0].descriptor.digest.clone();
    let lease = ctx.lease().expect("the export made the scope's lease");
    let held = mgr.root().leases.list_resources(&lease).unwrap();
    assert!(
        held.contains(&strata_leases::Resource::content(&blob)),
        "{blob} in {held:?}"
    );
    // With the ref and its builder gone, only the export's lease keeps the
    // blob.
    drop(r);
    build_scope.release().unwrap();
    mgr.root().collector.collect(GcOptions::default()).unwrap();
    assert!(mgr.root().content.info(&blob).is_ok(), "the blob survived");
    scope.release().unwrap();
    assert_clean(mgr);
}

async fn export_chain_and_variants(backend: &str) {
    let e = env(backend);
    let mgr = &e.mgr;
    let tmp = e.dir.path();
    let (ctx, _scope) = lazy(mgr);
    let img = image(mgr, "example.com/test:3", three_layers(mgr));
    let top = mgr
        .import_image(&ctx, &img, &ImportOptions::default())
        .await
        .unwrap();
    // Imported layers export as the blobs they came from.
    let chain = top.export_chain(&ctx, &RefConfig::default()).await.unwrap();
    let digests: Vec<_> = chain
        .layers
        .iter()
        .map(|l| l.descriptor.digest.clone())
        .collect();
    let want: Vec<_> = img.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(digests, want);
    // A new layer on top is computed once and remembered.
    let m = mgr
        .new_ref(&ctx, Some(&top), &RefOptions::described("step"))
        .await
        .unwrap();
    let rw = m.mount(&ctx, false).await.unwrap();
    with_mounted(&rw, tmp, |p| {
        std::fs::write(p.join("etc/hostname"), "changed\n").unwrap();
        std::fs::remove_file(p.join("usr/lib/b")).unwrap();
    });
    drop(rw);
    let step = m.commit(&ctx).await.unwrap();
    let zstd = RefConfig {
        compression: CompressionConfig {
            kind: Compression::Zstd,
            ..CompressionConfig::default()
        },
        ..RefConfig::default()
    };
    let chain = step.export_chain(&ctx, &zstd).await.unwrap();
    assert_eq!(chain.layers.len(), 4);
    let last = &chain.layers[3];
    assert_eq!(last.description, "step");
    assert!(last.descriptor.media_type.ends_with("+zstd"));
    assert_eq!(
        digests,
        chain.layers[..3]
            .iter()
            .map(|l| l.descriptor.digest.clone())
            .collect::<Vec<_>>(),
        "without force, existing gzip blobs are kept"
    );
    let again = step.export_chain(&ctx, &zstd).await.unwrap();
    assert_eq!(again, chain, "the second export reuses the blobs");
    // Forced: every layer in zstd, lossless (same diffIDs), linked both ways.
    let forced = forced_zstd();
    let converted = step.export_chain(&ctx, &forced).await.unwrap();
    for (a, b) in chain.layers.iter().zip(&converted.layers) {
        assert!(b.descriptor.media_type.ends_with("+zstd"), "{b:?}");
        assert_eq!(
            a.descriptor.annotations.get("containerd.io/uncompressed"),
            b.descriptor.annotations.get("containerd.io/uncompressed")
        );
        if a.descriptor.digest != b.descriptor.digest {
            let info = mgr.root().content.info(&a.descriptor.digest).unwrap();
            let label = format!(
                "containerd.io/gc.ref.content.blob-{}",
                b.descriptor.digest.hex()
            );
            assert_eq!(
                info.labels.get(&label),
                Some(&b.descriptor.digest.to_string())
            );
            let back = mgr.root().content.info(&b.descriptor.digest).unwrap();
            let label = format!(
                "containerd.io/gc.ref.content.blob-{}",
                a.descriptor.digest.hex()
            );
            assert_eq!(
                back.labels.get(&label),
                Some(&a.descriptor.digest.to_string())
            );
        }
    }
    let forced_again = step.export_chain(&ctx, &forced).await.unwrap();
    assert_eq!(
        forced_again, converted,
        "variants are found, not converted again"
    );
    // Applying the exported layers in order reproduces the tree.
    let out = tmp.join("applied");
    std::fs::create_dir(&out).unwrap();
    for l in &converted.layers {
        let r = mgr.root().content.reader_at(&l.descriptor.digest).unwrap();
        strata_diff::apply(
            &ctx,
            r,
            &out,
            &strata_diff::ApplyOptions {
                diff_id: l
                    .descriptor
                    .annotations
                    .get("containerd.io/uncompressed")
                    .map(|d| strata_core::Digest::parse(d).unwrap()),
                ..Default::default()
            },
        )
        .unwrap();
    }
    expect_files(
        files(&out),
        &[("etc/hostname", "changed\n"), ("usr/lib/c", "c2")],
    );
    // Size counts the blob and its variant.
    let size = step.size().await.unwrap();
    assert!(size > 0);
}

fn config(kind: Compression, force: bool) -> RefConfig {
    RefConfig {
        compression: CompressionConfig {
            kind,
            force,
            level: None,
        },
        ..RefConfig::default()
    }
}

/// Applies `layers` in order onto a new directory `name` under `tmp`.
fn apply_chain(
    mgr: &strata_cache::CacheManager,
    tmp: &std::path::Path,
    name: &str,
    layers: &[strata_cache::ExportLayer],
) -> std::path::PathBuf {
    let out = tmp.join(name);
    std::fs::create_dir(&out).unwrap();
    for l in layers {
        let mut r = mgr.root().content.reader_at(&l.descriptor.digest).unwrap();
        let estargz = strata_diff::estargz::Index::read(&mut r)
            .unwrap()
            .map(Arc::new);
        std::io::Seek::rewind(&mut r).unwrap();
        let diff_id = l.descriptor.annotations.get("containerd.io/uncompressed");
        strata_diff::apply(
            &OpCtx::new(),
            r,
            &out,
            &strata_diff::ApplyOptions {
                diff_id: diff_id.map(|d| strata_core::Digest::parse(d).unwrap()),
                estargz,
                ..Default::default()
            },
        )
        .unwrap();
    }
    out
}

async fn estargz_variants_keep_their_own_diff_ids(backend: &str) {
    const TOC: &str = "containerd.io/snapshot/stargz/toc.digest";
    let e = env(backend);
    let mgr = &e.mgr;
    let tmp = e.dir.path();
    let (ctx, _scope) = lazy(mgr);
    let img = image(mgr, "example.com/test:esgz", three_layers(mgr));
    let top = mgr
        .import_image(&ctx, &img, &ImportOptions::default())
        .await
        .unwrap();
    let gzip = top.export_chain(&ctx, &RefConfig::default()).await.unwrap();
    // Forced: every layer converted, annotated with its TOC digest and
    // uncompressed size, with a diffID of its own (the format's entries),
    // and linked to the gzip blob.
    let esgz = top
        .export_chain(&ctx, &config(Compression::EStargz, true))
        .await
        .unwrap();
    for (g, s) in gzip.layers.iter().zip(&esgz.layers) {
        let (g, s) = (&g.descriptor, &s.descriptor);
        assert_ne!(g.digest, s.digest);
        assert!(s.annotations.contains_key(TOC), "{s:?}");
        assert!(
            s.annotations
                .contains_key("io.containers.estargz.uncompressed-size")
        );
        assert_ne!(
            g.annotations.get(UNCOMPRESSED),
            s.annotations.get(UNCOMPRESSED),
            "eStargz adds entries"
        );
        let info = mgr.root().content.info(&g.digest).unwrap();
        let label = format!("containerd.io/gc.ref.content.blob-{}", s.digest.hex());
        assert!(info.labels.contains_key(&label));
    }
    let again = top
        .export_chain(&ctx, &config(Compression::EStargz, true))
        .await
        .unwrap();
    assert_eq!(again, esgz, "variants are found, not converted again");
    let as_gzip = top
        .export_chain(&ctx, &config(Compression::Gzip, true))
        .await
        .unwrap();
    assert_eq!(as_gzip, gzip, "gzip layers stay themselves");
    // The eStargz chain applies to the same tree, without its entries.
    let a = apply_chain(mgr, tmp, "from-gzip", &gzip.layers);
    let b = apply_chain(mgr, tmp, "from-esgz", &esgz.layers);
    assert_eq!(files(&a), files(&b));
    assert!(!b.join("stargz.index.json").exists());

    // A new layer written as eStargz first: its record's blob is eStargz,
    // which serves a forced gzip export as it is; forced zstd strips the
    // format's entries, giving back the plain stream.
    let m = mgr
        .new_ref(&ctx, Some(&top), &RefOptions::described("step"))
        .await
        .unwrap();
    let rw = m.mount(&ctx, false).await.unwrap();
    with_mounted(&rw, tmp, |p| {
        std::fs::write(p.join("new"), "new\n").unwrap()
    });
    drop(rw);
    let step = m.commit(&ctx).await.unwrap();
    let first = step
        .export_chain(&ctx, &config(Compression::EStargz, false))
        .await
        .unwrap();
    let last = &first.layers[3].descriptor;
    assert!(last.annotations.contains_key(TOC));
    let gz = step
        .export_chain(&ctx, &config(Compression::Gzip, true))
        .await
        .unwrap();
    assert_eq!(gz.layers[3].descriptor.digest, last.digest);
    let zstd = step.export_chain(&ctx, &forced_zstd()).await.unwrap();
    let z = &zstd.layers[3].descriptor;
    assert!(z.media_type.ends_with("+zstd") && !z.annotations.contains_key(TOC));
    assert_ne!(
        z.annotations.get(UNCOMPRESSED),
        last.annotations.get(UNCOMPRESSED)
    );
    let plain = apply_chain(mgr, tmp, "from-zstd", &zstd.layers);
    assert_eq!(std::fs::read_to_string(plain.join("new")).unwrap(), "new\n");
    for hidden in ["stargz.index.json", ".no.prefetch.landmark"] {
        assert!(!plain.join(hidden).exists(), "{hidden}");
    }
    assert_clean(mgr);
}

async fn owner_leases_pin_chains_and_collection_cleans_rows(backend: &str) {
    let e = env(backend);
    let mgr = &e.mgr;
    let img = image(mgr, "example.com/test:4", three_layers(mgr));
    let (ctx, scope) = lazy(mgr);
    let top = mgr
        .import_image(&ctx, &img, &ImportOptions::default())
        .await
        .unwrap();
    mgr.attach_lease("strata/owner/a", top.snapshot_id())
        .await
        .unwrap();
    // Nothing but the owner lease holds the image now.
    scope.release().unwrap();
    for l in mgr.root().leases.list(&Default::default()).unwrap() {
        if l.id.starts_with("test-blob-") {
            mgr.root().leases.delete(&l.id).unwrap();
        }
    }
    let gc = mgr.root().collector.collect(GcOptions::default()).unwrap();
    assert_eq!(
        snapshot_count(mgr),
        3,
        "the owner lease keeps the chain: {gc:?}"
    );
    for l in &img.layers {
        mgr.root()
            .content
            .info(&l.digest)
            .expect("layer blobs are kept");
    }
    assert_clean(mgr);
    // Only the owner prefix is swept.
    mgr.root()
        .leases
        .create(strata_leases::LeaseSpec {
            id: Some("other".into()),
            ..Default::default()
        })
        .unwrap();
    let removed = mgr
        .delete_stale_owner_leases("strata/owner/", &[])
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert!(mgr.root().leases.get("other").is_ok());
    let top_id = top.snapshot_id().to_owned();
    drop(top);
    mgr.root().collector.collect(GcOptions::default()).unwrap();
    assert_eq!(snapshot_count(mgr), 0);
    assert!(
        mgr.metadata(&top_id).unwrap().is_none(),
        "records go with their snapshot"
    );
    assert!(
        mgr.persistent_metadata_rows()
            .unwrap()
            .imported_by_blob
            .is_empty()
    );
    assert_clean(mgr);
}

async fn cache_mounts_share_one_mount(backend: &str) {
    let e = env(backend);
    let mgr = &e.mgr;
    let ctx = OpCtx::new();
    let opts = RefOptions {
        record_type: Some(RecordType::CacheMount),
        ..RefOptions::default()
    };
    let m = mgr.new_ref(&ctx, None, &opts).await.unwrap();
    let a = m.mount(&ctx, false).await.unwrap();
    let b = m.mount(&ctx, true).await.unwrap();
    assert_eq!(
        a.mounts[0].source, b.mounts[0].source,
        "one shared mount point"
    );
    let shared = a.mounts[0].source.clone();
    assert!(shared.starts_with(mgr.root().mounts.as_path()));
    drop(a);
    assert!(
        strata_sys::mount::is_mount_point(&shared).unwrap(),
        "still used by b"
    );
    drop(b);
    assert!(!shared.exists(), "the last user unmounts and removes it");
}

/// Releasing an immutable ref counts a use without a write of its own:
/// readers see it at once, the next metadata edit writes it with its own
/// change, and a manager going away writes what still waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uses_are_counted_in_memory_and_written_in_batches() {
    let e = env("native");
    let path = e.root_path();
    let mgr = e.mgr;
    let ctx = OpCtx::new();
    let a = fresh(&mgr, &ctx).await.commit(&ctx).await.unwrap();
    let b = fresh(&mgr, &ctx).await.commit(&ctx).await.unwrap();
    let (aid, bid) = (a.id().to_owned(), b.id().to_owned());
    let stored = |mgr: &strata_cache::CacheManager, id: &str| -> u64 {
        let tx = mgr.root().db.read().unwrap();
        let r = tx
            .get::<strata_metadata::records::RefRecord>(id)
            .unwrap()
            .unwrap();
        let v = r.values.get(strata_cache::keys::USAGE_COUNT);
        v.map_or(0, |v| serde_json::from_slice(&v.value).unwrap())
    };
    drop((a, b));
    for _ in 0..3 {
        drop(mgr.get(&aid, &RefOptions::default()).await.unwrap());
    }
    assert_eq!(mgr.metadata(&aid).unwrap().unwrap().usage_count(), 4);
    assert!(
        mgr.metadata(&aid)
            .unwrap()
            .unwrap()
            .last_used_at()
            .is_some()
    );
    assert_eq!(stored(&mgr, &aid), 0, "no write per release");
    // An edit of another record carries the waiting uses.
    let bref = mgr.get(&bid, &RefOptions::default()).await.unwrap();
    bref.set_description("edited").unwrap();
    assert_eq!(stored(&mgr, &aid), 4);
    assert_eq!(stored(&mgr, &bid), 1, "b's own first release");
    // Counts keep adding after a write, and survive the manager.
    drop(bref);
    drop(mgr.get(&aid, &RefOptions::default()).await.unwrap());
    assert_eq!(mgr.metadata(&aid).unwrap().unwrap().usage_count(), 5);
    drop(mgr);
    let mgr = open_at(&path, "native");
    assert_eq!(stored(&mgr, &aid), 5);
    assert_eq!(stored(&mgr, &bid), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metadata_is_durable_and_searchable() {
    // Native snapshots without mounts: no root needed.
    let e = env("native");
    let path = e.root_path();
    let mgr = e.mgr;
    let ctx = OpCtx::new();
    let m = fresh(&mgr, &ctx).await;
    m.set_string("app.key", "v1", "app.key:v1").unwrap();
    m.set_string("other", "x", "app.other").unwrap();
    m.set_external("blob", b"\x00\x01raw").unwrap();
    let n = fresh(&mgr, &ctx).await;
    n.set_string("app.key", "v2", "app.key:v2").unwrap();
    let ids = |v: Vec<strata_cache::RefMetadata>| -> Vec<String> {
        v.iter().map(|m| m.id().to_owned()).collect()
    };
    assert_eq!(
        ids(mgr.search("app.key:v1", false).unwrap()),
        vec![m.id().to_owned()]
    );
    let mut both = vec![m.id().to_owned(), n.id().to_owned()];
    both.sort();
    assert_eq!(ids(mgr.search("app.key:", true).unwrap()), both);
    assert!(mgr.search("app.key:", false).unwrap().is_empty());
    // Clearing drops the value and the index it had.
    m.clear_value_and_index("app.key", "app.key:").unwrap();
    assert!(mgr.search("app.key:v1", false).unwrap().is_empty());
    assert_eq!(m.metadata().unwrap().get_string("app.key"), "");
    let v = Value::new(&vec![1, 2, 3]).unwrap();
    m.set_value("list", Some(v.clone())).unwrap();
    assert_eq!(m.metadata().unwrap().get("list"), Some(v));
    assert!(m.set_string("bad\0key", "x", "").is_err());
    let (mid, nid) = (m.id().to_owned(), n.id().to_owned());
    drop((m, n));
    drop(mgr);
    let mgr = open_at(&path, "native");
    let m = mgr.get_mutable(&mid, &RefOptions::default()).await.unwrap();
    assert_eq!(
        m.metadata().unwrap().get_external("blob").unwrap(),
        b"\x00\x01raw"
    );
    assert_eq!(
        ids(mgr.search("app.other", false).unwrap()),
        vec![mid.clone()]
    );
    assert_eq!(ids(mgr.search("app.key:v2", false).unwrap()), vec![nid]);
    // Rehydration checks the snapshot's kind.
    assert!(matches!(
        mgr.get_by_snapshot_id(&mid, &RefOptions::default()).await,
        Err(CacheError::Invalid { .. })
    ));
    let sid = "made-outside";
    mgr.root()
        .snapshots
        .prepare("made-outside-w", None, Labels::new())
        .await
        .unwrap();
    mgr.root()
        .snapshots
        .commit(sid, "made-outside-w", Labels::new())
        .await
        .unwrap();
    assert!(matches!(
        mgr.get_mutable_by_snapshot_id(sid, &RefOptions::default())
            .await,
        Err(CacheError::Invalid { .. })
    ));
    assert!(
        mgr.metadata(sid).unwrap().is_none(),
        "a refused rehydration leaves nothing"
    );
    let r = mgr
        .get_by_snapshot_id(sid, &RefOptions::default())
        .await
        .unwrap();
    assert_eq!(
        r.metadata().unwrap().description(),
        "rehydrated persisted snapshot"
    );
    assert_eq!(
        mgr.snapshot_record_metadata(sid)
            .unwrap()
            .unwrap()
            .record_type,
        RecordType::Regular
    );
    assert!(matches!(
        mgr.get("nothing-here", &RefOptions::default()).await,
        Err(CacheError::NotFound(_))
    ));
    assert!(
        mgr.get("nothing-here", &RefOptions::default())
            .await
            .unwrap_err()
            .is_not_found()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_half_finished_commit_is_repaired_at_open() {
    let e = env("native");
    let path = e.root_path();
    let mgr = e.mgr;
    let ctx = OpCtx::new();
    let m = fresh(&mgr, &ctx).await;
    let id = m.id().to_owned();
    drop(m);
    // A crash after the new record was written and before the snapshot
    // commit leaves a record whose snapshot does not exist.
    {
        let tx = mgr.root().db.write().unwrap();
        let mut r: strata_metadata::records::RefRecord = tx.get(&id).unwrap().unwrap();
        r.snapshot = "never-committed".into();
        tx.put("never-committed", &r).unwrap();
        tx.commit().unwrap();
    }
    assert!(!mgr.root().db.check().unwrap().is_empty());
    drop(mgr);
    // As if the process had been killed: the root was never marked closed.
    strata_metadata::MetaDb::open(&path.join("meta.redb"))
        .unwrap()
        .mark_open()
        .unwrap();
    let mgr = open_at(&path, "native");
    assert_clean(&mgr);
    assert!(mgr.metadata("never-committed").unwrap().is_none());
    assert!(mgr.metadata(&id).unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn attach_and_remove_of_one_lease_exclude_each_other() {
    let e = env("native");
    let mgr = e.mgr.clone();
    let ctx = OpCtx::new();
    let mut snaps = Vec::new();
    for _ in 0..2 {
        let m = fresh(&mgr, &ctx).await;
        snaps.push(m.commit(&ctx).await.unwrap().snapshot_id().to_owned());
    }
    let lease = "strata/owner/race";
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (mgr, sid) = (mgr.clone(), snaps[i % 2].clone());
        tasks.push(tokio::spawn(async move {
            if i % 3 == 0 {
                mgr.remove_lease(lease).await
            } else {
                mgr.attach_lease(lease, &sid).await
            }
        }));
    }
    for t in tasks {
        t.await
            .unwrap()
            .expect("attach and remove never fail each other");
    }
    mgr.attach_lease(lease, &snaps[0]).await.unwrap();
    let held = mgr.root().leases.list_resources(lease).unwrap();
    assert!(held.iter().any(|r| r.id == snaps[0]));
    assert!(
        mgr.attach_lease(lease, "missing")
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert!(mgr.attach_lease("", &snaps[0]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scratch_is_shared_and_skipped_by_export() {
    let e = env("native");
    let mgr = &e.mgr;
    let a = mgr.scratch().await.unwrap();
    let b = mgr.scratch().await.unwrap();
    assert_eq!(a.snapshot_id(), b.snapshot_id());
    let chain = a
        .export_chain(&OpCtx::new(), &RefConfig::default())
        .await
        .unwrap();
    assert!(chain.layers.is_empty());
    mgr.root().collector.collect(GcOptions::default()).unwrap();
    assert!(
        mgr.root()
            .snapshots
            .stat(strata_cache::SCRATCH)
            .await
            .is_ok(),
        "its own lease holds it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_boundaries_hold_what_they_make_in_the_operation_lease() {
    // Native snapshots are read in place: no mounts, no root needed.
    let e = env("native");
    let mgr = &e.mgr;
    let (ctx, scope) = lazy(mgr);
    assert!(ctx.lease().is_none(), "nothing made yet, no lease yet");
    let m = fresh(mgr, &ctx).await;
    let lease = ctx.lease().expect("the prepare made the lazy lease");
    let held = |id: &str| {
        mgr.root()
            .leases
            .list_resources(&lease)
            .unwrap()
            .iter()
            .any(|r| r.id == id)
    };
    assert!(held(m.id()));
    std::fs::write(mgr.root().snapshots.fs_dir(m.id()).unwrap().join("f"), "x").unwrap();
    let old = m.id().to_owned();
    let a = m.commit(&ctx).await.unwrap();
    assert!(held(a.id()), "the committed snapshot is held");
    assert!(!held(&old), "the active key it replaced is let go");
    let b = {
        let m = fresh(mgr, &ctx).await;
        m.commit(&ctx).await.unwrap()
    };
    let merged = mgr
        .merge(&ctx, &[Some(&a), Some(&b)], &RefOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert!(held(merged.id()));
    let chain = a.export_chain(&ctx, &RefConfig::default()).await.unwrap();
    let blob = chain.layers[0].descriptor.digest.to_string();
    assert!(held(&blob), "the exported blob is held");
    // Nothing else holds any of it: releasing the scope lets it all go.
    drop((a, b, merged));
    scope.release().unwrap();
    mgr.root().collector.collect(GcOptions::default()).unwrap();
    assert_eq!(snapshot_count(mgr), 0);
    assert!(
        mgr.root()
            .content
            .info(&chain.layers[0].descriptor.digest)
            .is_err()
    );
    assert_clean(mgr);
}

/// Layers that try to write outside their snapshot, imported through the
/// cache manager onto the backend's own snapshots (on overlay and btrfs a
/// layer is written on its parent's tree): climbing names, symlinks in the
/// same layer or a lower one, hard links and whiteouts pointing out. Each
/// import fails naming its layer or writes inside; nothing outside
/// changes; the stores stay consistent and a good import still works.
async fn hostile_layers_never_write_outside(backend: &str) {
    use strata_testkit::layer_tar::entry;
    use tar::EntryType;
    let e = env(backend);
    let mgr = &e.mgr;
    let ctx = OpCtx::new();
    let victim = tempfile::tempdir().unwrap();
    let sentinel = victim.path().join("sentinel");
    std::fs::write(&sentinel, "untouched").unwrap();
    let out = victim.path().display().to_string();
    let up = format!("../../../../../../../../../..{out}");
    let layer = |entries: Vec<Vec<u8>>| put_tar(mgr, &strata_testkit::layer_tar::archive(&entries));
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("climbing name", vec![file(&format!("{up}/p1"), "x")]),
        (
            "absolute symlink, then a file through it",
            vec![
                entry("link", EntryType::Symlink, b"", &out),
                file("link/p2", "x"),
            ],
        ),
        (
            "climbing symlink, then a directory and a file through it",
            vec![
                entry("up", EntryType::Symlink, b"", &up),
                dir("up/d"),
                file("up/d/p3", "x"),
            ],
        ),
        (
            "hard link to a file outside",
            vec![entry("h", EntryType::Link, b"", format!("{up}/sentinel"))],
        ),
        (
            "whiteout outside",
            vec![whiteout(&format!("{up}/sentinel"))],
        ),
        (
            "whiteout through a symlink",
            vec![
                entry("w", EntryType::Symlink, b"", &out),
                whiteout("w/sentinel"),
            ],
        ),
    ];
    let mut n = 0;
    for (what, entries) in cases {
        n += 1;
        let img = image(mgr, &format!("hostile:{n}"), vec![layer(entries)]);
        match mgr
            .import_image(&ctx, &img, &ImportOptions::default())
            .await
        {
            Ok(_) => {}
            Err(err) => {
                let msg = format!("{err:#}");
                assert!(
                    msg.contains(&img.layers[0].digest.to_string()),
                    "{what}: the error names the layer: {msg}"
                );
            }
        }
        assert_eq!(
            std::fs::read_to_string(&sentinel).unwrap(),
            "untouched",
            "{what}"
        );
        let left: Vec<_> = std::fs::read_dir(victim.path())
            .unwrap()
            .map(|d| d.unwrap().file_name())
            .collect();
        assert_eq!(left, ["sentinel"], "{what}: nothing lands outside");
    }
    // A symlink planted by a lower layer, followed by the next layer.
    let img = image(
        mgr,
        "hostile:two-layers",
        vec![
            layer(vec![entry("planted", EntryType::Symlink, b"", &up)]),
            layer(vec![
                dir("planted/d"),
                file("planted/d/p4", "x"),
                file("planted/p5", "x"),
            ]),
        ],
    );
    let _ = mgr
        .import_image(&ctx, &img, &ImportOptions::default())
        .await;
    assert_eq!(std::fs::read_to_string(&sentinel).unwrap(), "untouched");
    assert_eq!(
        std::fs::read_dir(victim.path()).unwrap().count(),
        1,
        "nothing lands outside"
    );
    assert_clean(mgr);
    let good = image(mgr, "good:1", three_layers(mgr));
    mgr.import_image(&ctx, &good, &ImportOptions::default())
        .await
        .expect("a good import after the hostile ones");
}

async fn readers_stay_inside_the_ref(backend: &str) {
    let e = env(backend);
    let mgr = &e.mgr;
    let tmp = e.dir.path();
    let ctx = OpCtx::new();
    let m = fresh(mgr, &ctx).await;
    let rw = m.mount(&ctx, false).await.unwrap();
    with_mounted(&rw, tmp, |p| {
        std::fs::create_dir_all(p.join("etc/conf.d")).unwrap();
        std::fs::write(p.join("etc/passwd"), "inside").unwrap();
        std::fs::write(p.join("etc/conf.d/a.conf"), "a").unwrap();
        std::fs::write(p.join("etc/conf.d/b.txt"), "b").unwrap();
        std::os::unix::fs::symlink("../../../../../etc/passwd", p.join("etc/conf.d/up")).unwrap();
    });
    drop(rw);
    // A mutable ref reads as it is now.
    let live = m.reader(&ctx).await.unwrap();
    assert_eq!(
        live.read_file("etc/passwd".as_ref(), None).unwrap(),
        b"inside"
    );
    drop(live);
    let r = m.commit(&ctx).await.unwrap();
    let reader = r.reader(&ctx).await.unwrap();
    assert_eq!(
        reader.read_file("etc/conf.d/up".as_ref(), None).unwrap(),
        b"inside",
        "a symlink climbing out resolves inside the ref"
    );
    assert_eq!(
        reader
            .read_file("etc/passwd".as_ref(), Some((2, 3)))
            .unwrap(),
        b"sid"
    );
    let names: Vec<_> = reader
        .read_dir("etc/conf.d".as_ref(), &["*.conf".into(), "u?".into()])
        .unwrap()
        .into_iter()
        .map(|s| s.name.into_string().unwrap())
        .collect();
    assert_eq!(names, ["a.conf", "up"]);
    let st = reader.stat("etc/conf.d/up".as_ref()).unwrap();
    assert_eq!(st.kind, strata_sys::FileKind::Symlink);
    assert_eq!(st.link_target.unwrap(), "../../../../../etc/passwd");
    assert!(
        reader
            .read_file("../../etc/hostname".as_ref(), None)
            .is_err_and(|e| {
                // `..` cannot climb out: it names the ref's own (missing) file.
                e.to_string().contains("hostname")
            })
    );
    drop(reader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_and_sequential_imports_make_the_same_tree() {
    if !strata_testkit::require_root(
        "strata-cache parallel_and_sequential_imports_make_the_same_tree",
    ) {
        return;
    }
    use strata_testkit::layer_tar::entry;
    let mut rendered = Vec::new();
    for parallel in [1, 4] {
        let e = env("overlay");
        let mgr = &e.mgr;
        let mut layers = three_layers(mgr);
        layers.push(put_layer(
            mgr,
            &[
                // A hard link to a file of a lower layer and a file whose
                // parent the layer does not carry: both need the lowers.
                entry("usr/lib/b-link", tar::EntryType::Link, b"", "usr/lib/b"),
                file("etc/added", "later"),
            ],
        ));
        layers.push(put_layer(
            mgr,
            &[
                dir("var/"),
                file("var/v", "v"),
                whiteout("usr/lib/c"),
                dir("etc/"),
                whiteout("etc/hostname"),
            ],
        ));
        let img = image(mgr, "example.com/parallel:1", layers);
        let ctx = OpCtx::new();
        let top = mgr
            .import_image(
                &ctx,
                &img,
                &ImportOptions {
                    parallel: Some(parallel),
                    ..ImportOptions::default()
                },
            )
            .await
            .unwrap();
        let m = top.mount(&ctx).await.unwrap();
        let tree = with_mounted(&m, e.dir.path(), strata_testkit::tree::render);
        drop(m);
        // The chain is the layers in order, whichever way they were made.
        let chain = top.export_chain(&ctx, &RefConfig::default()).await.unwrap();
        let digests: Vec<_> = chain
            .layers
            .iter()
            .map(|l| l.descriptor.digest.clone())
            .collect();
        assert_eq!(
            digests,
            img.layers
                .iter()
                .map(|l| l.digest.clone())
                .collect::<Vec<_>>()
        );
        assert_clean(mgr);
        rendered.push(tree);
    }
    assert!(rendered[0].contains("/usr/lib/b-link"), "{}", rendered[0]);
    assert!(!rendered[0].contains("/usr/lib/c "), "{}", rendered[0]);
    assert_eq!(
        rendered[0], rendered[1],
        "parallel unpack renders the same tree"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn loading_persistent_rows_replaces_them_and_skips_unknown_snapshots() {
    use strata_cache::{ImportedLayerRow, PersistentMetadataRows, SnapshotContentRow};
    let e = env("native");
    let mgr = &e.mgr;
    let ctx = OpCtx::new();
    let m = fresh(mgr, &ctx).await;
    let a = m.commit(&ctx).await.unwrap();
    let digest = put_blob(mgr, "text/plain", b"row").digest;
    let row = |parent: &str, snapshot: &str| ImportedLayerRow {
        parent_snapshot_id: parent.into(),
        digest: digest.clone(),
        snapshot_id: snapshot.into(),
    };
    let rows = PersistentMetadataRows {
        snapshot_content: vec![
            SnapshotContentRow {
                snapshot_id: a.id().into(),
                digest: digest.clone(),
            },
            SnapshotContentRow {
                snapshot_id: "unknown".into(),
                digest: digest.clone(),
            },
        ],
        imported_by_blob: vec![row("", a.id()), row("unknown", a.id()), row("", "")],
        imported_by_diff: vec![row("", a.id())],
    };
    let before = mgr.snapshot_size(a.id()).await.unwrap();
    mgr.load_persistent_metadata(&rows).unwrap();
    let got = mgr.persistent_metadata_rows().unwrap();
    assert_eq!(got.snapshot_content.len(), 1);
    assert_eq!(got.imported_by_blob, vec![row("", a.id())]);
    assert_eq!(got.imported_by_diff, vec![row("", a.id())]);
    assert_clean(mgr);
    assert_eq!(
        mgr.snapshot_size(a.id()).await.unwrap(),
        before + 3,
        "the recorded blob counts"
    );
    mgr.load_persistent_metadata(&PersistentMetadataRows::default())
        .unwrap();
    assert_eq!(
        mgr.persistent_metadata_rows().unwrap(),
        PersistentMetadataRows::default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_root_left_with_mounts_opens_clean() {
    if !strata_testkit::require_root("strata-cache a_root_left_with_mounts_opens_clean") {
        return;
    }
    let e = env("overlay");
    let path = e.root_path();
    let mgr = e.mgr;
    let ctx = OpCtx::new();
    let m = fresh(&mgr, &ctx).await;
    let r = m.commit(&ctx).await.unwrap();
    // What a killed process leaves: a view mounted under tmp/ and a shared
    // mount under mounts/, never unmounted.
    let ro = r.mount(&ctx).await.unwrap();
    let left_tmp = path.join("tmp/left-mount");
    let left_pool = path.join("mounts/left-pool");
    for dir in [&left_tmp, &left_pool] {
        std::fs::create_dir_all(dir).unwrap();
        strata_sys::mount::mount_all(&ro.mounts, dir).unwrap();
    }
    drop((ro, r, m));
    drop(mgr);
    let mgr = open_at(&path, "overlay");
    for dir in [&left_tmp, &left_pool] {
        assert!(!dir.exists(), "{} was detached and removed", dir.display());
    }
    let left: Vec<_> = strata_sys::mount::info::mounts()
        .unwrap()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(&path))
        .collect();
    assert!(
        left.is_empty(),
        "nothing of the root stays mounted: {left:?}"
    );
    assert_clean(&mgr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn linked_variants_go_together_when_nothing_holds_them() {
    let e = env("native");
    let mgr = &e.mgr;
    let (ctx, scope) = lazy(mgr);
    let m = fresh(mgr, &ctx).await;
    std::fs::write(
        mgr.root().snapshots.fs_dir(m.id()).unwrap().join("f"),
        "data",
    )
    .unwrap();
    let r = m.commit(&ctx).await.unwrap();
    let gzip = r.export_chain(&ctx, &RefConfig::default()).await.unwrap();
    let zstd = r.export_chain(&ctx, &forced_zstd()).await.unwrap();
    let (a, b) = (
        gzip.layers[0].descriptor.digest.clone(),
        zstd.layers[0].descriptor.digest.clone(),
    );
    assert_ne!(a, b);
    // Each names the other (a loop); holding one keeps both.
    mgr.root()
        .leases
        .create(strata_leases::LeaseSpec {
            id: Some("keep-gzip".into()),
            ..Default::default()
        })
        .unwrap();
    mgr.root()
        .leases
        .add_resource("keep-gzip", &strata_leases::Resource::content(&a))
        .unwrap();
    drop(r);
    scope.release().unwrap();
    mgr.root().collector.collect(GcOptions::default()).unwrap();
    assert!(
        mgr.root().content.info(&b).is_ok(),
        "the variant is kept through its label"
    );
    mgr.root().leases.delete("keep-gzip").unwrap();
    mgr.root().collector.collect(GcOptions::default()).unwrap();
    assert!(mgr.root().content.info(&a).is_err() && mgr.root().content.info(&b).is_err());
    assert_clean(mgr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn non_distributable_layers_keep_their_urls_when_asked() {
    let e = env("native");
    let mgr = &e.mgr;
    let ctx = OpCtx::new().with_lease_id("nd");
    mgr.root()
        .leases
        .create(strata_leases::LeaseSpec {
            id: Some("nd".into()),
            ..Default::default()
        })
        .unwrap();
    let mut layer = put_layer(mgr, &[file("f", "foreign")]);
    layer.media_type = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip".into();
    layer.urls = vec!["https://example.com/layer".into()];
    let img = image(mgr, "example.com/nd:1", vec![layer.clone()]);
    let top = mgr
        .import_image(&ctx, &img, &ImportOptions::default())
        .await
        .unwrap();
    let plain = top.export_chain(&ctx, &RefConfig::default()).await.unwrap();
    let d = &plain.layers[0].descriptor;
    assert_eq!(d.media_type, "application/vnd.oci.image.layer.v1.tar+gzip");
    assert!(d.urls.is_empty());
    let nd = top
        .export_chain(
            &ctx,
            &RefConfig {
                prefer_non_distributable: true,
                ..RefConfig::default()
            },
        )
        .await
        .unwrap();
    let d = &nd.layers[0].descriptor;
    assert_eq!(d.media_type, layer.media_type);
    assert_eq!(d.urls, layer.urls);
    assert_eq!(d.digest, layer.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clean_close_is_trusted_and_a_kill_is_reconciled() {
    let e = env("native");
    let path = e.root_path();
    drop(e.mgr);
    // Something no row knows, as a crash could leave.
    let stray = path.join("snapshots/strayaaaaaaaaaaaaaaaaaaaaa");
    std::fs::create_dir_all(stray.join("fs")).unwrap();
    let mgr = open_at(&path, "native");
    assert_eq!(mgr.root().last_close, strata_metadata::LastClose::Clean);
    assert!(
        stray.exists(),
        "after a clean close the stores trust their rows"
    );
    assert!(
        !mgr.root().snapshots.check().unwrap().is_empty(),
        "strata check still sees it"
    );
    drop(mgr);
    strata_metadata::MetaDb::open(&path.join("meta.redb"))
        .unwrap()
        .mark_open()
        .unwrap();
    let mgr = open_at(&path, "native");
    assert_eq!(mgr.root().last_close, strata_metadata::LastClose::Unclean);
    assert!(!stray.exists(), "after a kill everything is reconciled");
    assert_clean(&mgr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_naming_a_collected_blob_exports_it_again() {
    let e = env("native");
    let mgr = &e.mgr;
    let (ctx, _scope) = lazy(mgr);
    let m = fresh(mgr, &ctx).await;
    std::fs::write(mgr.root().snapshots.fs_dir(m.id()).unwrap().join("f"), "x").unwrap();
    let r = m.commit(&ctx).await.unwrap();
    let first = r.export_chain(&ctx, &RefConfig::default()).await.unwrap();
    let blob = first.layers[0].descriptor.digest.clone();
    // What a kill between recording the blob and holding it can come to.
    mgr.root().content.delete(&blob).unwrap();
    assert_eq!(r.metadata().unwrap().blob(), Some(blob.clone()));
    let again = r.export_chain(&ctx, &RefConfig::default()).await.unwrap();
    assert_eq!(again, first, "the same layer, written again");
    mgr.root().content.info(&blob).expect("the blob is back");
    assert_clean(mgr);
}

async fn trees_as_deep_as_a_path_may_be_import_merge_and_export(backend: &str) {
    let e = env(backend);
    let mgr = &e.mgr;
    let (ctx, _scope) = lazy(mgr);
    // 1,000 nested directories and a file at the bottom: a 2,005-byte path.
    let deep = put_tar(mgr, &strata_testkit::layer_tar::deep(1000));
    let img = image(
        mgr,
        "example.com/deep:1",
        vec![deep, put_layer(mgr, &[file("top", "t")])],
    );
    let top = mgr
        .import_image(&ctx, &img, &ImportOptions::default())
        .await
        .unwrap();
    let other = mgr
        .import_image(
            &ctx,
            &image(
                mgr,
                "example.com/o:1",
                vec![put_layer(mgr, &[file("o", "o")])],
            ),
            &ImportOptions::default(),
        )
        .await
        .unwrap();
    let merged = mgr
        .merge(&ctx, &[Some(&other), Some(&top)], &RefOptions::default())
        .await
        .unwrap()
        .unwrap();
    let bottom = format!("{}file", "d/".repeat(1000));
    let reader = merged.reader(&ctx).await.unwrap();
    assert_eq!(reader.read_file(bottom.as_ref(), None).unwrap(), b"deep");
    drop(reader);
    let chain = merged
        .export_chain(&ctx, &RefConfig::default())
        .await
        .unwrap();
    assert!(!chain.layers.is_empty());
    assert_clean(mgr);
}
