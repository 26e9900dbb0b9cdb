//! Disk usage and prune on real roots: hard links a merge shares with its
//! inputs count as shared, never twice; prune takes only what nothing else
//! holds, least recently used first under a space target, explains what
//! it keeps, and leaves clean checks. Needs root (mounts).

mod common;

use std::time::Duration;

use common::*;
use strata_cache::{
    CacheManager, ImmutableRef, PruneOptions, RecordType, RefOptions, UsageInfo, ref_lease,
};
use strata_core::Filter;
use strata_leases::OpCtx;

/// A committed record of one file, kept the way the library's policy keeps
/// a record ([`CacheManager::keep`], [`CacheManager::commit_kept`]): its
/// own lease moves from the mutable record to the committed one.
async fn committed(mgr: &CacheManager, name: &str, bytes: usize, opts: RefOptions) -> ImmutableRef {
    let ctx = OpCtx::new();
    let m = mgr.new_ref(&ctx, None, &opts).await.unwrap();
    mgr.keep(m.id()).await.unwrap();
    let mutable = m.id().to_owned();
    let rw = m.mount(&ctx, false).await.unwrap();
    let tmp = mgr.root().path.parent().unwrap().to_path_buf();
    with_mounted(&rw, &tmp, |p| {
        std::fs::write(p.join(name), vec![b'x'; bytes]).unwrap();
    });
    drop(rw);
    let r = mgr.commit_kept(&ctx, m).await.unwrap();
    let leases: Vec<String> = mgr
        .root()
        .leases
        .list(&Filter::default())
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert!(leases.contains(&ref_lease(r.id())), "{leases:?}");
    assert!(!leases.contains(&ref_lease(&mutable)), "{leases:?}");
    r
}

fn find<'a>(usage: &'a [UsageInfo], id: &str) -> &'a UsageInfo {
    usage.iter().find(|u| u.id == id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_counts_shared_inodes_once() {
    for backend in ["overlay", "native"] {
        if !strata_testkit::require_root(&format!("strata-cache usage::{backend}")) {
            return;
        }
        let e = env(backend);
        let mgr = &e.mgr;
        let a = committed(mgr, "a", 64 << 10, RefOptions::default()).await;
        let b = committed(mgr, "b", 128 << 10, RefOptions::default()).await;
        let ctx = OpCtx::new();
        let merged = mgr
            .merge(
                &ctx,
                &[Some(&a), Some(&b)],
                &RefOptions::described("merged"),
            )
            .await
            .unwrap()
            .unwrap();
        let usage = mgr.disk_usage(&Filter::default()).await.unwrap();
        let (ua, ub, um) = (
            find(&usage, a.id()),
            find(&usage, b.id()),
            find(&usage, merged.id()),
        );
        if backend == "overlay" {
            // The first input is the merge's base: its files stay its own.
            assert!(ua.size >= 64 << 10, "{backend}: {ua:?}");
        } else {
            assert_eq!(ua.size, 0, "{backend}: {ua:?}");
            assert!(ua.shared >= 64 << 10, "{backend}: {ua:?}");
        }
        assert_eq!(
            ub.size, 0,
            "{backend}: b's file is shared with the merge: {ub:?}"
        );
        assert!(ub.shared >= 128 << 10, "{backend}: {ub:?}");
        assert!(um.shared >= 128 << 10, "{backend}: {um:?}");
        assert!(
            um.size < 64 << 10,
            "{backend}: the merge owns no file data: {um:?}"
        );
        let total: u64 = usage.iter().map(|u| u.size).sum();
        assert!(
            total < (64 + 128 + 64) << 10,
            "{backend}: nothing counted twice: {total}"
        );
        let only = mgr
            .disk_usage(&Filter::parse(&["description==merged"]).unwrap())
            .await
            .unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].id, merged.id());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prune_takes_what_nothing_else_holds() {
    for backend in ["overlay", "native"] {
        if !strata_testkit::require_root(&format!("strata-cache prune::{backend}")) {
            return;
        }
        let e = env(backend);
        let mgr = &e.mgr;
        let old = committed(mgr, "old", 32 << 10, RefOptions::default()).await;
        let pinned = committed(mgr, "pinned", 32 << 10, RefOptions::default()).await;
        mgr.attach_lease("image/pinned", pinned.snapshot_id())
            .await
            .unwrap();
        let internal = committed(
            mgr,
            "internal",
            32 << 10,
            RefOptions {
                record_type: Some(RecordType::Internal),
                ..RefOptions::default()
            },
        )
        .await;
        let ctx = OpCtx::new();
        let held = mgr
            .new_ref(&ctx, Some(&old), &RefOptions::default())
            .await
            .unwrap();
        mgr.attach_lease(&ref_lease(held.id()), held.id())
            .await
            .unwrap();
        let dry = mgr
            .prune(&PruneOptions {
                dry_run: true,
                ..PruneOptions::default()
            })
            .await
            .unwrap();
        let reason = |id: &str| {
            dry.kept
                .iter()
                .find(|(u, _)| u.id == id)
                .map(|(_, why)| why.clone())
                .unwrap_or_default()
        };
        assert!(dry.removed.is_empty(), "{backend}: {:?}", dry.removed);
        assert_eq!(reason(held.id()), "in use");
        assert_eq!(reason(old.id()), format!("parent of {}", held.id()));
        assert_eq!(reason(pinned.id()), "held by lease image/pinned");
        assert!(reason(internal.id()).starts_with("record type internal"));
        // Let go of the mutable ref: it and then its parent become prunable.
        drop(held);
        // Through a context whose events are recorded: prune reports its
        // measuring and the collection's sweep, each ending complete.
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&events);
        let ctx = OpCtx::new().with_events(move |e| seen.lock().unwrap().push(e.clone()));
        let report = mgr.prune_in(&ctx, &PruneOptions::default()).await.unwrap();
        let events = events.lock().unwrap().clone();
        for item in ["du", "gc"] {
            let last = events.iter().rfind(|e| e.item == item);
            let last = last.unwrap_or_else(|| panic!("{backend}: no {item} event: {events:?}"));
            assert!(
                last.total > 0 && last.current == last.total,
                "{backend}: {item} ends at {}/{}",
                last.current,
                last.total
            );
        }
        let mut gone: Vec<String> = report.removed.iter().map(|u| u.id.clone()).collect();
        gone.sort();
        assert_eq!(report.removed.len(), 2, "{backend}: {gone:?}");
        assert!(gone.contains(&old.id().to_owned()));
        assert!(mgr.metadata(old.id()).unwrap().is_none(), "collected");
        assert!(mgr.metadata(pinned.id()).unwrap().is_some());
        assert!(mgr.metadata(internal.id()).unwrap().is_some());
        let all = mgr
            .prune(&PruneOptions {
                all: true,
                ..PruneOptions::default()
            })
            .await
            .unwrap();
        assert_eq!(
            all.removed.len(),
            1,
            "{backend}: --all takes internal records"
        );
        let v = mgr.root().db.check().unwrap();
        assert!(v.is_empty(), "{backend}: {v:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prune_meets_space_targets_least_recently_used_first() {
    if !strata_testkit::require_root("strata-cache prune::space") {
        return;
    }
    let e = env("overlay");
    let mgr = &e.mgr;
    let mut refs = Vec::new();
    for i in 0..4 {
        refs.push(committed(mgr, &format!("f{i}"), 256 << 10, RefOptions::default()).await);
    }
    // Use them in the order 2, 0, 3, 1: 1 is the most recently used.
    for i in [2, 0, 3, 1] {
        mgr.get(refs[i].id(), &RefOptions::default())
            .await
            .unwrap()
            .release()
            .unwrap();
    }
    let total: u64 = mgr
        .disk_usage(&Filter::default())
        .await
        .unwrap()
        .iter()
        .map(|u| u.size)
        .sum();
    let report = mgr
        .prune(&PruneOptions {
            max_used_space: total - (300 << 10),
            dry_run: true,
            ..PruneOptions::default()
        })
        .await
        .unwrap();
    let gone: Vec<&str> = report.removed.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(gone, vec![refs[2].id(), refs[0].id()]);
    let kept = mgr
        .prune(&PruneOptions {
            keep_duration: Some(Duration::from_secs(3600)),
            ..PruneOptions::default()
        })
        .await
        .unwrap();
    assert!(kept.removed.is_empty(), "all were used within the hour");
    let reserved = mgr
        .prune(&PruneOptions {
            reserved_space: total - (100 << 10),
            ..PruneOptions::default()
        })
        .await
        .unwrap();
    assert!(
        reserved.removed.is_empty(),
        "removing any would go below the reserve"
    );
}
