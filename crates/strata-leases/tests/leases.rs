//! The lease manager and the operation context on a real metadata file:
//! creation, namespaces, resources, temporary-lease cleanup, the lazy scope
//! (once under contention, error after release), guards and adoption.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use strata_core::{Algorithm, Classify, Digest, ErrorKind, Filter, Labels};
use strata_leases::labels::{GC_EXPIRE, TEMPORARY, parse_time};
use strata_leases::{LazyScope, LeaseManager, LeaseSpec, OpCtx, Resource, new_lease, with_lease};
use strata_metadata::MetaDb;

fn manager() -> (tempfile::TempDir, LeaseManager) {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(MetaDb::open(&dir.path().join("meta.redb")).unwrap());
    (dir, LeaseManager::new(db))
}

fn digest(s: &str) -> Digest {
    Digest::of_bytes(Algorithm::Sha256, s.as_bytes())
}

#[test]
fn create_list_delete() {
    let (_d, lm) = manager();
    let a = lm
        .create(LeaseSpec {
            id: Some("a".into()),
            labels: Labels::from([("k".into(), "v".into())]),
            expire: None,
        })
        .unwrap();
    assert_eq!(a.id, "a");
    let err = lm
        .create(LeaseSpec {
            id: Some("a".into()),
            ..LeaseSpec::default()
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    let r = lm
        .create(LeaseSpec {
            expire: Some(Duration::from_secs(3600)),
            ..LeaseSpec::default()
        })
        .unwrap();
    assert_eq!(r.id.len(), 25, "random ids");
    let expiry = parse_time(&r.labels[GC_EXPIRE]).unwrap();
    assert!(expiry > std::time::SystemTime::now() + Duration::from_secs(3500));
    assert_eq!(lm.list(&Filter::default()).unwrap().len(), 2);
    assert_eq!(
        lm.list(&Filter::parse(&["labels.k==v"]).unwrap()).unwrap()[0].id,
        "a"
    );
    assert_eq!(
        lm.list(&Filter::parse(&["id==a"]).unwrap()).unwrap().len(),
        1
    );
    lm.delete("a").unwrap();
    assert_eq!(lm.delete("a").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(
        lm.create(LeaseSpec {
            id: Some(String::new()),
            ..LeaseSpec::default()
        })
        .unwrap_err()
        .kind(),
        ErrorKind::Invalid
    );
}

#[test]
fn namespaces_are_separate() {
    let (_d, lm) = manager();
    let other = lm.with_namespace("other").unwrap();
    lm.create(LeaseSpec {
        id: Some("x".into()),
        ..LeaseSpec::default()
    })
    .unwrap();
    other
        .create(LeaseSpec {
            id: Some("x".into()),
            ..LeaseSpec::default()
        })
        .unwrap();
    other
        .create(LeaseSpec {
            id: Some("y".into()),
            ..LeaseSpec::default()
        })
        .unwrap();
    assert_eq!(lm.list(&Filter::default()).unwrap().len(), 1);
    assert_eq!(other.list(&Filter::default()).unwrap().len(), 2);
    other.add_resource("x", &Resource::ingest("r")).unwrap();
    assert!(lm.list_resources("x").unwrap().is_empty());
    assert_eq!(other.namespace(), "other");
}

#[test]
fn resources() {
    let (_d, lm) = manager();
    lm.create(LeaseSpec {
        id: Some("l".into()),
        ..LeaseSpec::default()
    })
    .unwrap();
    let c = Resource::content(&digest("not stored yet"));
    lm.add_resource("l", &c).unwrap();
    lm.add_resource("l", &c).unwrap();
    lm.add_resource("l", &Resource::snapshot("overlay", "key/with/slashes"))
        .unwrap();
    lm.add_resource("l", &Resource::ingest("ref")).unwrap();
    let listed = lm.list_resources("l").unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0], c);
    lm.delete_resource("l", &c).unwrap();
    lm.delete_resource("l", &c).unwrap();
    assert_eq!(lm.list_resources("l").unwrap().len(), 2);
    for bad in [
        Resource {
            kind: "images".into(),
            id: "x".into(),
        },
        Resource {
            kind: "content".into(),
            id: "sha256:nope".into(),
        },
        Resource {
            kind: "snapshots/".into(),
            id: "x".into(),
        },
        Resource::ingest(""),
    ] {
        assert_eq!(
            lm.add_resource("l", &bad).unwrap_err().kind(),
            ErrorKind::Invalid,
            "{bad:?}"
        );
    }
    assert_eq!(
        lm.add_resource("missing", &Resource::ingest("r"))
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    lm.delete("l").unwrap();
    assert_eq!(
        lm.list_resources("l").unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn hold_makes_the_lease_and_holds_at_once() {
    let (_d, lm) = manager();
    let c = Resource::content(&digest("held"));
    lm.hold("object/1", &c).unwrap();
    assert_eq!(
        lm.list_resources("object/1").unwrap(),
        std::slice::from_ref(&c)
    );
    // An existing lease keeps its labels and gains the resource.
    lm.create(LeaseSpec {
        id: Some("named".into()),
        labels: Labels::from([("k".into(), "v".into())]),
        expire: None,
    })
    .unwrap();
    lm.hold("named", &c).unwrap();
    lm.hold("named", &c).unwrap();
    assert_eq!(lm.get("named").unwrap().labels["k"], "v");
    assert_eq!(lm.list_resources("named").unwrap(), [c]);
    // Bad input makes no lease.
    assert_eq!(
        lm.hold("bad", &Resource::ingest("")).unwrap_err().kind(),
        ErrorKind::Invalid
    );
    assert_eq!(lm.get("bad").unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn create_and_delete_inside_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(MetaDb::open(&dir.path().join("meta.redb")).unwrap());
    let lm = LeaseManager::new(Arc::clone(&db));
    lm.create(LeaseSpec {
        id: Some("old".into()),
        ..LeaseSpec::default()
    })
    .unwrap();
    // "old" replaced by "new" in one transaction, not yet committed.
    let replace = || {
        let tx = db.write().unwrap();
        lm.delete_in(&tx, "old").unwrap();
        let spec = LeaseSpec {
            id: Some("new".into()),
            ..LeaseSpec::default()
        };
        lm.create_in(&tx, spec).unwrap();
        tx
    };
    // Dropped uncommitted, nothing changes.
    drop(replace());
    assert!(lm.get("old").is_ok());
    assert_eq!(lm.get("new").unwrap_err().kind(), ErrorKind::NotFound);
    let tx = replace();
    assert_eq!(
        lm.delete_in(&tx, "old").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    tx.commit().unwrap();
    assert_eq!(lm.get("old").unwrap_err().kind(), ErrorKind::NotFound);
    assert!(lm.get("new").is_ok());
}

#[test]
fn temporary_leases_are_removed_at_open() {
    let (_d, lm) = manager();
    let other = lm.with_namespace("n2").unwrap();
    let temp = Labels::from([(TEMPORARY.to_string(), "2026-01-01T00:00:00Z".to_string())]);
    lm.create(LeaseSpec {
        id: Some("t1".into()),
        labels: temp.clone(),
        expire: None,
    })
    .unwrap();
    lm.add_resource("t1", &Resource::ingest("r")).unwrap();
    other
        .create(LeaseSpec {
            id: Some("t2".into()),
            labels: temp,
            expire: None,
        })
        .unwrap();
    lm.create(LeaseSpec {
        id: Some("keep".into()),
        ..LeaseSpec::default()
    })
    .unwrap();
    assert_eq!(lm.remove_temporary().unwrap(), 2);
    assert_eq!(lm.list(&Filter::default()).unwrap().len(), 1);
    assert!(other.list(&Filter::default()).unwrap().is_empty());
}

#[test]
fn lazy_scope_creates_one_lease_under_contention() {
    let (_d, lm) = manager();
    let scope = LazyScope::new(lm.clone(), Labels::new());
    let ctx = OpCtx::new().with_lazy_scope(Arc::clone(&scope));
    assert!(ctx.has_lazy_scope());
    assert_eq!(ctx.lease(), None, "reads do not materialise the lease");
    let barrier = Arc::new(Barrier::new(8));
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (ctx, barrier) = (ctx.clone(), Arc::clone(&barrier));
                s.spawn(move || {
                    barrier.wait();
                    ctx.ensure_lease().unwrap().unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ids.iter().all(|i| *i == ids[0]));
    // Work deliberately outside the operation lease sees none.
    let outside = ctx.without_lease();
    assert!(!outside.has_lazy_scope());
    assert_eq!(outside.ensure_lease().unwrap(), None);
    assert_eq!(lm.list(&Filter::default()).unwrap().len(), 1);
    // Nested scopes collapse into the outer one.
    let inner = LazyScope::new(lm.clone(), Labels::new());
    assert_eq!(
        ctx.with_lazy_scope(inner).ensure_lease().unwrap().unwrap(),
        ids[0]
    );
    scope.release().unwrap();
    scope.release().unwrap();
    assert!(lm.list(&Filter::default()).unwrap().is_empty());
    assert_eq!(
        ctx.ensure_lease().unwrap_err().kind(),
        ErrorKind::FailedPrecondition
    );
}

#[test]
fn with_lease_guard_and_adoption() {
    let (_d, lm) = manager();
    let (ctx, guard) = with_lease(&OpCtx::new(), &lm).unwrap();
    let id = ctx.lease().unwrap();
    assert!(lm.get(&id).unwrap().labels.contains_key(TEMPORARY));
    let (same, noop) = with_lease(&ctx, &lm).unwrap();
    assert_eq!(same.lease(), Some(id.clone()));
    noop.release().unwrap();
    assert!(lm.get(&id).is_ok(), "the inner guard owns nothing");
    drop(guard);
    assert_eq!(
        lm.get(&id).unwrap_err().kind(),
        ErrorKind::NotFound,
        "dropping the guard deletes the lease"
    );

    lm.create(LeaseSpec {
        id: Some("target".into()),
        ..LeaseSpec::default()
    })
    .unwrap();
    let temp = new_lease(&lm, Labels::new()).unwrap();
    lm.add_resource(temp.id(), &Resource::ingest("a")).unwrap();
    lm.add_resource(temp.id(), &Resource::content(&digest("b")))
        .unwrap();
    assert!(temp.adopt(None).is_err());
    temp.adopt(Some("target")).unwrap();
    assert_eq!(lm.list_resources("target").unwrap().len(), 2);
    assert_eq!(lm.get(temp.id()).unwrap_err().kind(), ErrorKind::NotFound);

    let dropped = new_lease(&lm, Labels::new()).unwrap();
    let dropped_id = dropped.id().to_owned();
    drop(dropped);
    assert_eq!(lm.get(&dropped_id).unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn cancellation_and_progress() {
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let s = Arc::clone(&seen);
    let ctx = OpCtx::new().with_progress(move |n| {
        s.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    });
    ctx.progress(10);
    ctx.clone().progress(5);
    assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), 15);
    ctx.check().unwrap();
    ctx.clone().cancel();
    assert!(ctx.is_cancelled());
    assert_eq!(
        ctx.check().unwrap_err().kind(),
        ErrorKind::FailedPrecondition
    );
}
