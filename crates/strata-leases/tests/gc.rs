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
            lazy: false,
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
fn the_scheduler_rests_in_proportion_to_the_pause() {
    let e = env();
    // Writers may spend a millionth of their time paused: after any real
    // collection the scheduler rests far longer than this test waits.
    let config = SchedulerConfig {
        mutation_threshold: 1,
        delay: Duration::ZERO,
        pause_threshold: 0.000_001,
    };
    let sched = Scheduler::start(Arc::clone(&e.gc), config);
    e.content("a", Labels::new());
    sched.trigger();
    assert_eq!(sched.wait_for_runs(1, Duration::from_secs(30)), 1);
    sched.trigger();
    assert_eq!(
        sched.wait_for_runs(2, Duration::from_secs(1)),
        1,
        "a request while resting waits for the rest"
    );
    // A stop is not held up by the rest.
    let started = std::time::Instant::now();
    drop(sched);
    assert!(started.elapsed() < Duration::from_secs(10));
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

/// A node of the model: (is a snapshot, index).
type MNode = (bool, usize);

/// One object of the model: its parent (snapshots), the objects its
/// labels reference, and its root labels.
#[derive(Debug, Default, Clone)]
struct MObject {
    parent: Option<usize>,
    refs: BTreeSet<MNode>,
    /// `containerd.io/gc.root`.
    root: bool,
    /// `containerd.io/gc.expire`: Some(true) in the future, Some(false) past.
    expire: Option<bool>,
}

/// The reference model: objects, their edges, leases, what is in use;
/// reachability written plainly from the rules (a flat reach follows
/// parents only, a full one labels too, and is never downgraded).
#[derive(Debug, Default, Clone)]
struct Model {
    objects: BTreeMap<MNode, MObject>,
    /// id -> (flat, expired, resources)
    leases: BTreeMap<usize, (bool, bool, BTreeSet<MNode>)>,
    in_use: BTreeSet<MNode>,
}

impl Model {
    fn reachable(&self) -> BTreeSet<MNode> {
        let mut reached: BTreeMap<MNode, bool> = BTreeMap::new();
        let mut queue: Vec<(MNode, bool)> = Vec::new();
        let mut roots: Vec<(MNode, bool)> = Vec::new();
        for (flat, expired, res) in self.leases.values() {
            if !expired {
                roots.extend(res.iter().map(|n| (*n, !flat)));
            }
        }
        for (n, o) in &self.objects {
            if o.root || o.expire == Some(true) {
                roots.push((*n, true));
            }
        }
        roots.extend(self.in_use.iter().map(|n| (*n, true)));
        let visit = |n: MNode,
                     full: bool,
                     reached: &mut BTreeMap<MNode, bool>,
                     queue: &mut Vec<(MNode, bool)>| {
            match reached.get(&n) {
                Some(&was_full) if was_full || !full => {}
                _ => {
                    reached.insert(n, full);
                    queue.push((n, full));
                }
            }
        };
        for (n, full) in roots {
            visit(n, full, &mut reached, &mut queue);
        }
        while let Some((n, full)) = queue.pop() {
            let Some(o) = self.objects.get(&n) else {
                continue;
            };
            if let Some(p) = o.parent {
                visit((true, p), full, &mut reached, &mut queue);
            }
            if full {
                for r in &o.refs {
                    visit(*r, true, &mut reached, &mut queue);
                }
            }
        }
        reached
            .into_keys()
            .filter(|n| self.objects.contains_key(n))
            .collect()
    }

    fn collect(&mut self) {
        let keep = self.reachable();
        self.objects.retain(|n, _| keep.contains(n));
        self.leases.retain(|_, (_, expired, _)| !*expired);
        self.in_use.retain(|n| keep.contains(n));
    }

    fn alive(&self) -> BTreeSet<String> {
        self.objects.keys().map(|n| name(*n)).collect()
    }
}

/// The record key of a model node.
fn name((is_snapshot, i): MNode) -> String {
    if is_snapshot {
        format!("s{i}")
    } else {
        d(&format!("c{i}"))
    }
}

/// The labels of a model object, as a store would set them.
fn object_labels(o: &MObject) -> Labels {
    let mut l = Labels::new();
    for (k, r) in o.refs.iter().enumerate() {
        if r.0 {
            l.insert(
                format!("containerd.io/gc.ref.snapshot.overlay.{k}"),
                name(*r),
            );
        } else {
            l.insert(format!("containerd.io/gc.ref.content.{k}"), name(*r));
        }
    }
    if o.root {
        l.insert(GC_ROOT.into(), "x".into());
    }
    if let Some(future) = o.expire {
        l.insert(GC_EXPIRE.into(), hour_from_now(future));
    }
    l
}

/// An RFC 3339 time an hour from now (or an hour ago).
fn hour_from_now(future: bool) -> String {
    let hour = Duration::from_secs(3600);
    let now = SystemTime::now();
    format_time(if future { now + hour } else { now - hour })
}

#[derive(Debug, Clone)]
enum Op {
    Object(MNode, Option<usize>, Vec<MNode>, bool, Option<bool>),
    Lease(usize, bool, bool),
    Attach(usize, MNode),
    Detach(usize, MNode),
    DropLease(usize),
    InUse(MNode, bool),
    Collect,
}

fn node() -> impl Strategy<Value = MNode> {
    (any::<bool>(), 0..6usize)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (
            node(),
            proptest::option::of(0..6usize),
            proptest::collection::vec(node(), 0..3),
            proptest::bool::weighted(0.1),
            proptest::option::weighted(0.15, any::<bool>()),
        )
            .prop_map(|(n, p, r, root, exp)| Op::Object(n, p, r, root, exp)),
        1 => (0..3usize, any::<bool>(), proptest::bool::weighted(0.2)).prop_map(|(l, f, x)| Op::Lease(l, f, x)),
        3 => (0..3usize, node()).prop_map(|(l, n)| Op::Attach(l, n)),
        1 => (0..3usize, node()).prop_map(|(l, n)| Op::Detach(l, n)),
        1 => (0..3usize).prop_map(Op::DropLease),
        1 => (node(), proptest::bool::weighted(0.7)).prop_map(|(n, on)| Op::InUse(n, on)),
        1 => Just(Op::Collect),
    ]
}

fn resource((is_snapshot, i): MNode) -> Resource {
    if is_snapshot {
        snap(&format!("s{i}"))
    } else {
        Resource::content(&Digest::parse(&d(&format!("c{i}"))).unwrap())
    }
}

/// `PROPTEST_CASES` when set (the long runs), else 64.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64)
}

/// Collects and checks the store against the model.
fn collect_and_check(e: &Env, m: &mut Model) -> Result<(), TestCaseError> {
    *e.rec.in_use.lock().unwrap() = m
        .in_use
        .iter()
        .map(|&(s, i)| {
            if s {
                Node::Snapshot(format!("s{i}"))
            } else {
                Node::Content(d(&format!("c{i}")))
            }
        })
        .collect();
    e.collect();
    m.collect();
    prop_assert_eq!(e.alive(), m.alive());
    let leases: BTreeSet<String> =
        e.lm.list(&strata_core::Filter::default())
            .unwrap()
            .into_iter()
            .map(|l| l.id)
            .collect();
    let want: BTreeSet<String> = m.leases.keys().map(|l| format!("l{l}")).collect();
    prop_assert_eq!(leases, want, "expired leases go, the others stay");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Random graphs of content and snapshots (parents, content and
    /// snapshot references), leases (flat, expired), gc.root and gc.expire
    /// labels and in-use objects, collected at random points and always at
    /// the end: what survives is exactly what the model reaches.
    #[test]
    fn collection_matches_the_reference_model(ops in proptest::collection::vec(op(), 1..40)) {
        let e = env();
        let mut m = Model::default();
        for op in ops {
            match op {
                Op::Object(n, parent, refs, root, expire) if !m.objects.contains_key(&n) => {
                    let parent = parent.filter(|p| n.0 && m.objects.contains_key(&(true, *p)) && *p != n.1);
                    let o = MObject { parent, refs: refs.into_iter().collect(), root, expire };
                    let l = object_labels(&o);
                    if n.0 {
                        e.snapshot(&name(n), parent.map(|p| format!("s{p}")).as_deref(), l);
                    } else {
                        e.content(&format!("c{}", n.1), l);
                    }
                    m.objects.insert(n, o);
                }
                Op::Lease(l, flat, expired) if !m.leases.contains_key(&l) => {
                    let mut lab = if flat { labels(&[(GC_FLAT, "x")]) } else { Labels::new() };
                    if expired {
                        lab.insert(GC_EXPIRE.into(), hour_from_now(false));
                    }
                    e.lease(&format!("l{l}"), lab, &[]);
                    m.leases.insert(l, (flat, expired, BTreeSet::new()));
                }
                Op::Attach(l, n) if m.leases.contains_key(&l) => {
                    e.lm.add_resource(&format!("l{l}"), &resource(n)).unwrap();
                    m.leases.get_mut(&l).unwrap().2.insert(n);
                }
                Op::Detach(l, n) if m.leases.contains_key(&l) => {
                    e.lm.delete_resource(&format!("l{l}"), &resource(n)).unwrap();
                    m.leases.get_mut(&l).unwrap().2.remove(&n);
                }
                Op::DropLease(l) if m.leases.contains_key(&l) => {
                    e.lm.delete(&format!("l{l}")).unwrap();
                    m.leases.remove(&l);
                }
                Op::InUse(n, on) if m.objects.contains_key(&n) => {
                    if on { m.in_use.insert(n); } else { m.in_use.remove(&n); }
                }
                Op::Collect => collect_and_check(&e, &mut m)?,
                _ => {}
            }
        }
        collect_and_check(&e, &mut m)?;
    }
}
