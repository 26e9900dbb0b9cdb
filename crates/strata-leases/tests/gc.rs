//! The collector on a real metadata file: roots, edges, flat leases, expiry,
//! label chains and cycles, in-use objects, ingests, explain; a model-based
//! property test against a small reference model; and collection racing
//! lease attachment on several threads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use strata_core::{Algorithm, Digest, Labels};
use strata_leases::gc::{GcOptions, Scheduler, SchedulerConfig};
use strata_leases::labels::{GC_EXPIRE, GC_FLAT, GC_ROOT, format_time};
use strata_leases::{
    Collect, Collector, LeaseError, LeaseManager, LeaseSpec, Node, Resource, Swept,
};
use strata_metadata::records::{ContentRecord, IngestRecord, SnapshotKind, SnapshotRecord, now};
use strata_metadata::{MetaDb, Reader};

/// A store stand-in for the seam: reports what is in use and records what
/// the collector asks it to remove. (The real stores' implementations are
/// tested with their crates.)
#[derive(Default)]
struct Recorder {
    in_use: Mutex<Vec<Node>>,
    removed: Mutex<Vec<Swept>>,
}

impl Collect for Recorder {
    fn in_use(&self) -> Result<Vec<Node>, LeaseError> {
        Ok(self.in_use.lock().unwrap().clone())
    }

    fn remove(&self, swept: &Swept, done: &(dyn Fn() + Sync)) -> Result<(), LeaseError> {
        self.removed.lock().unwrap().push(swept.clone());
        for _ in 0..swept.content.len() + swept.snapshots.len() + swept.ingests.len() {
            done();
        }
        Ok(())
    }
}

struct Env {
    _dir: tempfile::TempDir,
    db: Arc<MetaDb>,
    lm: LeaseManager,
    rec: Arc<Recorder>,
    gc: Arc<Collector>,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(MetaDb::open(&dir.path().join("meta.redb")).unwrap());
    let rec = Arc::new(Recorder::default());
    let gc = Arc::new(Collector::new(
        Arc::clone(&db),
        "overlay",
        vec![rec.clone() as Arc<dyn Collect>],
    ));
    Env {
        _dir: dir,
        lm: LeaseManager::new(Arc::clone(&db)),
        db,
        rec,
        gc,
    }
}

fn d(name: &str) -> String {
    Digest::of_bytes(Algorithm::Sha256, name.as_bytes()).to_string()
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Env {
    fn content(&self, name: &str, l: Labels) {
        let tx = self.db.write().unwrap();
        tx.put(
            &d(name),
            &ContentRecord {
                size: 1,
                created: now(),
                updated: now(),
                labels: l,
            },
        )
        .unwrap();
        tx.commit().unwrap();
    }

    fn snapshot(&self, key: &str, parent: Option<&str>, l: Labels) {
        let tx = self.db.write().unwrap();
        let r = SnapshotRecord {
            id: format!("id-{key}"),
            kind: SnapshotKind::Committed,
            parent: parent.map(str::to_owned),
            labels: l,
            created: now(),
            updated: now(),
            usage: None,
        };
        tx.put(key, &r).unwrap();
        tx.commit().unwrap();
    }

    fn lease(&self, id: &str, l: Labels, resources: &[Resource]) {
        self.lm
            .create(LeaseSpec {
                id: Some(id.into()),
                labels: l,
                expire: None,
            })
            .unwrap();
        for r in resources {
            self.lm.add_resource(id, r).unwrap();
        }
    }

    fn alive(&self) -> BTreeSet<String> {
        let r = self.db.read().unwrap();
        let mut out: BTreeSet<String> = r
            .scan::<ContentRecord>("")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        out.extend(
            r.scan::<SnapshotRecord>("")
                .unwrap()
                .into_iter()
                .map(|(k, _)| k),
        );
        out.extend(
            r.scan::<IngestRecord>("")
                .unwrap()
                .into_iter()
                .map(|(k, _)| format!("ingest:{k}")),
        );
        out
    }

    fn collect(&self) -> strata_leases::gc::GcReport {
        self.gc.collect(GcOptions::default()).unwrap()
    }
}

fn snap(key: &str) -> Resource {
    Resource::snapshot("overlay", key)
}

#[test]
fn leases_hold_snapshots_with_parents_and_the_rest_goes() {
    let e = env();
    e.snapshot("base", None, Labels::new());
    e.snapshot("mid", Some("base"), Labels::new());
    e.snapshot("top", Some("mid"), Labels::new());
    e.snapshot("stray", Some("base"), Labels::new());
    e.content("kept", Labels::new());
    e.content("lost", Labels::new());
    e.lease(
        "l",
        Labels::new(),
        &[
            snap("top"),
            Resource::content(&Digest::parse(&d("kept")).unwrap()),
        ],
    );
    // A resource of another backend does not hold ours.
    e.lm.add_resource("l", &Resource::snapshot("native", "stray"))
        .unwrap();
    let report = e.collect();
    assert_eq!(
        e.alive(),
        BTreeSet::from(["base".into(), "mid".into(), "top".into(), d("kept")])
    );
    assert_eq!(report.swept.content, [d("lost")]);
    assert_eq!(
        report.swept.snapshots,
        [("stray".to_string(), "id-stray".to_string())]
    );
    assert_eq!(
        e.rec.removed.lock().unwrap()[0],
        report.swept,
        "the seam gets exactly what was swept"
    );
    // Deleting the lease frees the chain at the next collection.
    e.lm.delete("l").unwrap();
    e.collect();
    assert!(e.alive().is_empty());
}

#[test]
fn expired_leases_hold_nothing_and_are_removed() {
    let e = env();
    e.content("a", Labels::new());
    let past = format_time(SystemTime::now() - Duration::from_secs(5));
    e.lease(
        "old",
        labels(&[(GC_EXPIRE, &past)]),
        &[Resource::content(&Digest::parse(&d("a")).unwrap())],
    );
    let future = format_time(SystemTime::now() + Duration::from_secs(600));
    e.content("b", Labels::new());
    e.lease(
        "new",
        labels(&[(GC_EXPIRE, &future)]),
        &[Resource::content(&Digest::parse(&d("b")).unwrap())],
    );
    let report = e.collect();
    assert_eq!(e.alive(), BTreeSet::from([d("b")]));
    assert_eq!(
        report.swept.leases,
        [("default".to_string(), "old".to_string())]
    );
    assert!(e.lm.get("old").is_err() && e.lm.get("new").is_ok());
}

#[test]
fn flat_leases_keep_parents_but_not_label_references() {
    let e = env();
    let blob = d("blob");
    e.content("blob", Labels::new());
    e.snapshot(
        "base",
        None,
        labels(&[("containerd.io/gc.ref.content.layer", &blob)]),
    );
    e.snapshot(
        "top",
        Some("base"),
        labels(&[("containerd.io/gc.ref.content.x", &blob)]),
    );
    e.lease("owner", labels(&[(GC_FLAT, "now")]), &[snap("top")]);
    e.collect();
    assert_eq!(e.alive(), BTreeSet::from(["base".into(), "top".into()]));
    // The same snapshot reached through a full lease follows labels.
    e.content("blob", Labels::new());
    e.lease("full", Labels::new(), &[snap("base")]);
    e.collect();
    assert_eq!(
        e.alive(),
        BTreeSet::from(["base".into(), "top".into(), blob])
    );
}

#[test]
fn root_and_expire_labels_and_reference_chains() {
    let e = env();
    let (c1, c2, c3) = (d("c1"), d("c2"), d("c3"));
    e.content("c3", Labels::new());
    e.content("c2", labels(&[("containerd.io/gc.ref.content.next", &c3)]));
    e.content(
        "c1",
        labels(&[(GC_ROOT, "yes"), ("containerd.io/gc.ref.content.next", &c2)]),
    );
    e.snapshot("snap-target", None, Labels::new());
    let soon = format_time(SystemTime::now() + Duration::from_secs(600));
    e.content(
        "expiring",
        labels(&[
            (GC_EXPIRE, &soon),
            ("containerd.io/gc.ref.snapshot.overlay/1", "snap-target"),
        ]),
    );
    let gone = format_time(SystemTime::now() - Duration::from_secs(1));
    e.content("expired", labels(&[(GC_EXPIRE, &gone)]));
    e.collect();
    assert_eq!(
        e.alive(),
        BTreeSet::from([c1, c2, c3, d("expiring"), "snap-target".into()])
    );
}

#[test]
fn cycles_neither_keep_themselves_nor_hang() {
    let e = env();
    let (a, b) = (d("a"), d("b"));
    e.content("a", labels(&[("containerd.io/gc.ref.content.b", &b)]));
    e.content("b", labels(&[("containerd.io/gc.ref.content.a", &a)]));
    e.snapshot(
        "s",
        None,
        labels(&[("containerd.io/gc.ref.snapshot.overlay", "s")]),
    );
    e.collect();
    assert!(e.alive().is_empty());
    e.content("a", labels(&[("containerd.io/gc.ref.content.b", &b)]));
    e.content("b", labels(&[("containerd.io/gc.ref.content.a", &a)]));
    e.lease(
        "l",
        Labels::new(),
        &[Resource::content(&Digest::parse(&a).unwrap())],
    );
    e.collect();
    assert_eq!(e.alive(), BTreeSet::from([a, b]));
}

#[test]
fn in_use_objects_and_ingests() {
    let e = env();
    e.snapshot("mounted", None, Labels::new());
    e.rec
        .in_use
        .lock()
        .unwrap()
        .push(Node::Snapshot("mounted".into()));
    let tx = e.db.write().unwrap();
    let old = now() - 48 * 3600 * 1_000_000_000;
    for (r, updated) in [("old", old), ("fresh", now()), ("leased", old)] {
        tx.put(
            r,
            &IngestRecord {
                id: format!("dir-{r}"),
                expected_size: None,
                expected: None,
                started: updated,
                updated,
            },
        )
        .unwrap();
    }
    tx.commit().unwrap();
    e.lease("l", Labels::new(), &[Resource::ingest("leased")]);
    let report = e.collect();
    assert_eq!(
        report.swept.ingests,
        [("old".to_string(), "dir-old".to_string())]
    );
    assert_eq!(
        e.alive(),
        BTreeSet::from([
            "mounted".into(),
            "ingest:fresh".into(),
            "ingest:leased".into()
        ])
    );
}

#[test]
fn dry_run_and_explain() {
    let e = env();
    e.snapshot("base", None, Labels::new());
    e.snapshot("top", Some("base"), Labels::new());
    e.content("loose", Labels::new());
    e.lease("build", Labels::new(), &[snap("top")]);
    let report =
        e.gc.collect(GcOptions {
            dry_run: true,
            explain: true,
        })
        .unwrap();
    assert_eq!(report.swept.content, [d("loose")]);
    assert_eq!(e.alive().len(), 3, "a dry run removes nothing");
    assert!(e.rec.removed.lock().unwrap().is_empty());
    let pins: BTreeMap<String, Vec<String>> = report
        .pins
        .iter()
        .map(|(n, c)| (n.to_string(), c.clone()))
        .collect();
    assert_eq!(
        pins["snapshot base"],
        ["lease default/build", "snapshot top", "snapshot base"]
    );
    assert_eq!(
        pins["snapshot top"],
        ["lease default/build", "snapshot top"]
    );
    assert_eq!(report.kept, 2);
}

#[test]
fn scheduler_collects_after_threshold_lease_delete_or_demand() {
    let e = env();
    let config = SchedulerConfig {
        mutation_threshold: 3,
        delay: Duration::ZERO,
        pause_threshold: 1.0,
    };
    let sched = Scheduler::start(Arc::clone(&e.gc), config);
    e.content("a", Labels::new());
    sched.mutated();
    sched.mutated();
    assert_eq!(sched.runs().0, 0, "below the threshold nothing runs");
    sched.mutated();
    assert_eq!(sched.wait_for_runs(1, Duration::from_secs(10)), 1);
    assert!(e.alive().is_empty());
    e.lease("l", Labels::new(), &[]);
    e.lm.delete("l").unwrap();
    sched.lease_deleted();
    assert_eq!(sched.wait_for_runs(2, Duration::from_secs(10)), 2);
    sched.trigger();
    assert_eq!(sched.wait_for_runs(3, Duration::from_secs(10)), 3);
    assert_eq!(sched.runs().1, None);
    assert_eq!(e.gc.pending_mutations().unwrap(), 0);
    // A synchronous delete collects before it returns.
    e.content("held", Labels::new());
    e.lease(
        "sync",
        Labels::new(),
        &[Resource::content(&Digest::parse(&d("held")).unwrap())],
    );
    e.collect();
    assert_eq!(e.alive(), BTreeSet::from([d("held")]));
    let report = e.lm.delete_sync("sync", &e.gc).unwrap();
    assert_eq!(report.swept.content, [d("held")]);
}

#[test]
fn attaching_while_collecting_never_loses_the_attached() {
    let e = env();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let collector = s.spawn(|| {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                e.collect();
                runs += 1;
            }
            runs
        });
        let writers: Vec<_> = (0..2)
            .map(|t| {
                let e = &e;
                s.spawn(move || {
                    for i in 0..60 {
                        let name = format!("t{t}-{i}");
                        // Create the lease first, attach, then the object:
                        // the order imports use (leases may name objects to
                        // come).
                        e.lease(&name, Labels::new(), &[snap(&name)]);
                        e.snapshot(&name, None, Labels::new());
                        if i % 3 == 0 {
                            e.lm.delete(&name).unwrap();
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Release);
        assert!(collector.join().unwrap() > 0);
    });
    e.collect();
    let alive = e.alive();
    for t in 0..2 {
        for i in 0..60 {
            let name = format!("t{t}-{i}");
            assert_eq!(alive.contains(&name), i % 3 != 0, "{name}");
        }
    }
}

/// The reference model: objects, their edges, leases; reachability by
/// plain recursion.
#[derive(Debug, Default, Clone)]
struct Model {
    content: BTreeMap<usize, BTreeSet<usize>>,
    snapshots: BTreeMap<usize, (Option<usize>, BTreeSet<usize>)>,
    leases: BTreeMap<usize, (bool, BTreeSet<(bool, usize)>)>,
}

impl Model {
    fn reachable(&self) -> (BTreeSet<usize>, BTreeSet<usize>) {
        fn content(m: &Model, c: usize, out: &mut (BTreeSet<usize>, BTreeSet<usize>)) {
            if m.content.contains_key(&c) && out.0.insert(c) {
                for &n in &m.content[&c] {
                    content(m, n, out);
                }
            }
        }
        fn snapshot(
            m: &Model,
            s: usize,
            full: bool,
            out: &mut (BTreeSet<usize>, BTreeSet<usize>),
            seen_full: &mut BTreeSet<usize>,
        ) {
            let Some((parent, refs)) = m.snapshots.get(&s) else {
                return;
            };
            let first = out.1.insert(s);
            if full && seen_full.insert(s) {
                for &c in refs {
                    content(m, c, out);
                }
            } else if !first {
                return;
            }
            if let Some(p) = parent {
                snapshot(m, *p, full, out, seen_full);
            }
        }
        let mut out = (BTreeSet::new(), BTreeSet::new());
        let mut seen_full = BTreeSet::new();
        for (flat, res) in self.leases.values() {
            for &(is_snapshot, i) in res {
                if is_snapshot {
                    snapshot(self, i, !flat, &mut out, &mut seen_full);
                } else if self.content.contains_key(&i) {
                    if *flat {
                        out.0.insert(i);
                    } else {
                        content(self, i, &mut out);
                    }
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
enum Op {
    Content(usize, Vec<usize>),
    Snapshot(usize, Option<usize>, Vec<usize>),
    Lease(usize, bool),
    Attach(usize, bool, usize),
    Detach(usize, bool, usize),
    DropLease(usize),
    Collect,
}

fn op() -> impl Strategy<Value = Op> {
    let n = 6usize;
    prop_oneof![
        (0..n, proptest::collection::vec(0..n, 0..3)).prop_map(|(i, r)| Op::Content(i, r)),
        (
            0..n,
            proptest::option::of(0..n),
            proptest::collection::vec(0..n, 0..2)
        )
            .prop_map(|(i, p, r)| Op::Snapshot(i, p, r)),
        (0..3usize, any::<bool>()).prop_map(|(l, f)| Op::Lease(l, f)),
        (0..3usize, any::<bool>(), 0..n).prop_map(|(l, s, i)| Op::Attach(l, s, i)),
        (0..3usize, any::<bool>(), 0..n).prop_map(|(l, s, i)| Op::Detach(l, s, i)),
        (0..3usize).prop_map(Op::DropLease),
        Just(Op::Collect),
    ]
}

fn resource(is_snapshot: bool, i: usize) -> Resource {
    if is_snapshot {
        snap(&format!("s{i}"))
    } else {
        Resource::content(&Digest::parse(&d(&format!("c{i}"))).unwrap())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn collection_matches_the_reference_model(ops in proptest::collection::vec(op(), 1..40)) {
        let e = env();
        let mut m = Model::default();
        for op in ops {
            match op {
                Op::Content(i, refs) if !m.content.contains_key(&i) => {
                    let l: Labels = refs.iter().map(|r| (format!("containerd.io/gc.ref.content.{r}"), d(&format!("c{r}")))).collect();
                    e.content(&format!("c{i}"), l);
                    m.content.insert(i, refs.into_iter().collect());
                }
                Op::Snapshot(i, parent, refs) if !m.snapshots.contains_key(&i) => {
                    let parent = parent.filter(|p| m.snapshots.contains_key(p));
                    let l: Labels = refs.iter().map(|r| (format!("containerd.io/gc.ref.content.{r}"), d(&format!("c{r}")))).collect();
                    e.snapshot(&format!("s{i}"), parent.map(|p| format!("s{p}")).as_deref(), l);
                    m.snapshots.insert(i, (parent, refs.into_iter().collect()));
                }
                Op::Lease(l, flat) if !m.leases.contains_key(&l) => {
                    let lab = if flat { labels(&[(GC_FLAT, "x")]) } else { Labels::new() };
                    e.lease(&format!("l{l}"), lab, &[]);
                    m.leases.insert(l, (flat, BTreeSet::new()));
                }
                Op::Attach(l, s, i) if m.leases.contains_key(&l) => {
                    e.lm.add_resource(&format!("l{l}"), &resource(s, i)).unwrap();
                    m.leases.get_mut(&l).unwrap().1.insert((s, i));
                }
                Op::Detach(l, s, i) if m.leases.contains_key(&l) => {
                    e.lm.delete_resource(&format!("l{l}"), &resource(s, i)).unwrap();
                    m.leases.get_mut(&l).unwrap().1.remove(&(s, i));
                }
                Op::DropLease(l) if m.leases.contains_key(&l) => {
                    e.lm.delete(&format!("l{l}")).unwrap();
                    m.leases.remove(&l);
                }
                Op::Collect => {
                    e.collect();
                    let (rc, rs) = m.reachable();
                    m.content.retain(|c, _| rc.contains(c));
                    m.snapshots.retain(|s, _| rs.contains(s));
                    let mut expect: BTreeSet<String> = m.content.keys().map(|c| d(&format!("c{c}"))).collect();
                    expect.extend(m.snapshots.keys().map(|s| format!("s{s}")));
                    prop_assert_eq!(e.alive(), expect);
                }
                _ => {}
            }
        }
    }
}
