//! The garbage collector: tri-colour mark and sweep over the metadata graph.
//!
//! Roots are the resources of unexpired leases, objects labelled
//! `containerd.io/gc.root`, objects whose `containerd.io/gc.expire` lies in
//! the future, and objects a store reports in use (mounted snapshots, ingests
//! with an open writer). Edges are snapshot parents and the `gc.ref` labels
//! of content and snapshots. What a flat lease names is kept with its
//! snapshots' parents, but its label references are not followed from there.
//! Unreached content and snapshots are swept, as are expired leases and
//! unreached ingests idle for longer than a grace period.
//!
//! The sweep deletes rows in one write transaction, then asks each store
//! (through [`Collect`]) to remove the files. A crash in between leaves files
//! without rows, which the stores remove when they next open.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use strata_core::Labels;
use strata_metadata::records::{
    ContentRecord, GcRecord, IngestRecord, LeaseRecord, LeaseResourceRecord, SnapshotRecord, now,
    to_system_time,
};
use strata_metadata::{MetaDb, Reader, keys};

use crate::ctx::{OpCtx, ProgressEvent};
use crate::error::LeaseError;
use crate::labels::{
    GC_EXPIRE, GC_FLAT, GC_REF_CONTENT, GC_REF_SNAPSHOT, GC_ROOT, expired, parse_time,
};

/// An object the collector knows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    /// A blob, by digest.
    Content(String),
    /// A snapshot, by key.
    Snapshot(String),
    /// An ingest, by ref.
    Ingest(String),
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Content(d) => write!(f, "content {d}"),
            Node::Snapshot(k) => write!(f, "snapshot {k}"),
            Node::Ingest(r) => write!(f, "ingest {r}"),
        }
    }
}

/// What a collection removed (or, in a dry run, would remove).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Digests of removed blobs.
    pub content: Vec<String>,
    /// Removed snapshots: (key, directory id).
    pub snapshots: Vec<(String, String)>,
    /// Removed ingests: (ref, directory id).
    pub ingests: Vec<(String, String)>,
    /// Removed expired leases: (namespace, id).
    pub leases: Vec<(String, String)>,
}

impl Swept {
    /// Objects removed, leases included.
    pub fn len(&self) -> usize {
        self.content.len() + self.snapshots.len() + self.ingests.len() + self.leases.len()
    }

    /// True when nothing was removed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The seam between the collector and a store: what must survive right now,
/// and removal of the files of swept rows.
pub trait Collect: Send + Sync {
    /// Objects in use that must survive this collection.
    fn in_use(&self) -> Result<Vec<Node>, LeaseError>;

    /// Removes the files of swept objects this store owns (the rows are
    /// already gone), calling `done` once per object removed.
    fn remove(&self, swept: &Swept, done: &(dyn Fn() + Sync)) -> Result<(), LeaseError>;
}

/// Options of one collection.
#[derive(Clone, Copy, Debug, Default)]
pub struct GcOptions {
    /// Decide, report, remove nothing.
    pub dry_run: bool,
    /// For every survivor, the chain that pins it.
    pub explain: bool,
}

/// What one collection found and did.
#[derive(Clone, Debug, Default)]
pub struct GcReport {
    /// Removed (or, when dry, removable) objects.
    pub swept: Swept,
    /// Objects kept.
    pub kept: usize,
    /// With `explain`: each survivor and the chain that pins it, root first.
    pub pins: Vec<(Node, Vec<String>)>,
    /// Time the write transaction was held (the pause other writers saw).
    pub pause: Duration,
    /// Time of the whole collection.
    pub duration: Duration,
}

/// Why a node was reached: the first path found.
#[derive(Clone, Debug)]
enum Reason {
    Lease { ns: String, id: String, flat: bool },
    Label(&'static str),
    InUse,
    Parent(Node),
    Reference(Node, String),
}

struct Graph {
    content: BTreeMap<String, ContentRecord>,
    snapshots: BTreeMap<String, SnapshotRecord>,
    ingests: BTreeMap<String, IngestRecord>,
    leases: BTreeMap<String, LeaseRecord>,
    resources: Vec<String>,
}

impl Graph {
    fn load(tx: &impl Reader) -> Result<Graph, LeaseError> {
        Ok(Graph {
            content: tx.scan::<ContentRecord>("")?.into_iter().collect(),
            snapshots: tx.scan::<SnapshotRecord>("")?.into_iter().collect(),
            ingests: tx.scan::<IngestRecord>("")?.into_iter().collect(),
            leases: tx.scan::<LeaseRecord>("")?.into_iter().collect(),
            resources: tx
                .scan::<LeaseResourceRecord>("")?
                .into_iter()
                .map(|(k, _)| k)
                .collect(),
        })
    }

    fn labels(&self, node: &Node) -> Option<&Labels> {
        match node {
            Node::Content(d) => self.content.get(d).map(|r| &r.labels),
            Node::Snapshot(k) => self.snapshots.get(k).map(|r| &r.labels),
            Node::Ingest(_) => None,
        }
    }
}

/// The mark phase's result: every reached node, whether it was reached
/// fully (labels followed), and why.
struct Marks {
    reached: HashMap<Node, (Reason, bool)>,
}

impl Marks {
    fn chain(&self, node: &Node) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = node.clone();
        // Bounded by the number of reached nodes: reasons form a forest.
        for _ in 0..=self.reached.len() {
            out.push(cur.to_string());
            let Some((reason, _)) = self.reached.get(&cur) else {
                break;
            };
            match reason {
                Reason::Lease { ns, id, flat } => {
                    out.push(format!(
                        "lease {ns}/{id}{}",
                        if *flat { " (flat)" } else { "" }
                    ));
                    break;
                }
                Reason::Label(l) => {
                    out.push(format!("label {l}"));
                    break;
                }
                Reason::InUse => {
                    out.push("in use".into());
                    break;
                }
                Reason::Parent(child) => cur = child.clone(),
                Reason::Reference(from, label) => {
                    out.push(format!("via label {label}"));
                    cur = from.clone();
                }
            }
        }
        out.reverse();
        out
    }
}

fn mark(g: &Graph, backend: &str, in_use: &[Node], at: SystemTime) -> Marks {
    let mut reached: HashMap<Node, (Reason, bool)> = HashMap::new();
    let mut queue: VecDeque<(Node, bool)> = VecDeque::new();
    let mut visit = |node: Node, reason: Reason, full: bool, queue: &mut VecDeque<(Node, bool)>| {
        match reached.get_mut(&node) {
            Some((_, was_full)) if *was_full || !full => return,
            // Reached flat before, fully now: follow its labels too.
            Some(entry) => entry.1 = true,
            None => {
                reached.insert(node.clone(), (reason, full));
            }
        }
        queue.push_back((node, full));
    };
    let snapshot_kind = format!("snapshots/{backend}");
    for key in &g.resources {
        let parts = keys::split(key);
        let [ns, id, kind, res] = parts[..] else {
            continue;
        };
        let Some(lease) = g.leases.get(&keys::join(&[ns, id])) else {
            continue;
        };
        if expired(&lease.labels, at) {
            continue;
        }
        let flat = lease.labels.contains_key(GC_FLAT);
        let node = match kind {
            "content" => Node::Content(res.to_owned()),
            "ingests" => Node::Ingest(res.to_owned()),
            k if k == snapshot_kind => Node::Snapshot(res.to_owned()),
            _ => continue,
        };
        let reason = Reason::Lease {
            ns: ns.to_owned(),
            id: id.to_owned(),
            flat,
        };
        visit(node, reason, !flat, &mut queue);
    }
    let labelled = g
        .content
        .iter()
        .map(|(k, r)| (Node::Content(k.clone()), &r.labels))
        .chain(
            g.snapshots
                .iter()
                .map(|(k, r)| (Node::Snapshot(k.clone()), &r.labels)),
        );
    for (node, labels) in labelled {
        if labels.contains_key(GC_ROOT) {
            visit(node, Reason::Label(GC_ROOT), true, &mut queue);
        } else if labels
            .get(GC_EXPIRE)
            .and_then(|v| parse_time(v))
            .is_some_and(|t| t > at)
        {
            visit(node, Reason::Label(GC_EXPIRE), true, &mut queue);
        }
    }
    for node in in_use {
        visit(node.clone(), Reason::InUse, true, &mut queue);
    }
    let snapshot_prefix = format!("{GC_REF_SNAPSHOT}{backend}");
    while let Some((node, full)) = queue.pop_front() {
        if let Node::Snapshot(key) = &node
            && let Some(parent) = g.snapshots.get(key).and_then(|r| r.parent.clone())
        {
            visit(
                Node::Snapshot(parent),
                Reason::Parent(node.clone()),
                full,
                &mut queue,
            );
        }
        if !full {
            continue;
        }
        for (label, value) in g.labels(&node).into_iter().flatten() {
            let target = if label.starts_with(GC_REF_CONTENT) {
                Node::Content(value.clone())
            } else if label == &snapshot_prefix
                || label
                    .strip_prefix(&snapshot_prefix)
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('/'))
            {
                Node::Snapshot(value.clone())
            } else {
                continue;
            };
            visit(
                target,
                Reason::Reference(node.clone(), label.clone()),
                true,
                &mut queue,
            );
        }
    }
    Marks { reached }
}

/// Runs collections for one root.
pub struct Collector {
    db: Arc<MetaDb>,
    backend: String,
    stores: Vec<Arc<dyn Collect>>,
    ingest_grace: Duration,
    running: Mutex<()>,
}

impl fmt::Debug for Collector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Collector")
            .field("backend", &self.backend)
            .finish()
    }
}

/// How long an ingest no lease holds may sit idle before it is collected
/// (containerd's is a day).
pub const DEFAULT_INGEST_GRACE: Duration = Duration::from_secs(24 * 3600);

impl Collector {
    /// A collector for the root's metadata; `backend` names the snapshot
    /// resource type it follows (`snapshots/<backend>`).
    pub fn new(db: Arc<MetaDb>, backend: &str, stores: Vec<Arc<dyn Collect>>) -> Collector {
        Collector {
            db,
            backend: backend.to_owned(),
            stores,
            ingest_grace: DEFAULT_INGEST_GRACE,
            running: Mutex::new(()),
        }
    }

    /// The same collector with another ingest grace period.
    pub fn with_ingest_grace(mut self, grace: Duration) -> Collector {
        self.ingest_grace = grace;
        self
    }

    fn in_use(&self) -> Result<Vec<Node>, LeaseError> {
        let mut out = Vec::new();
        for s in &self.stores {
            out.extend(s.in_use()?);
        }
        Ok(out)
    }

    fn decide(&self, g: &Graph, m: &Marks, at: SystemTime) -> Swept {
        let reached = |n: Node| m.reached.contains_key(&n);
        let grace_edge = at
            .checked_sub(self.ingest_grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Swept {
            content: g
                .content
                .keys()
                .filter(|d| !reached(Node::Content((*d).clone())))
                .cloned()
                .collect(),
            snapshots: g
                .snapshots
                .iter()
                .filter(|(k, _)| !reached(Node::Snapshot((*k).clone())))
                .map(|(k, r)| (k.clone(), r.id.clone()))
                .collect(),
            ingests: g
                .ingests
                .iter()
                .filter(|(k, r)| {
                    !reached(Node::Ingest((*k).clone())) && to_system_time(r.updated) < grace_edge
                })
                .map(|(k, r)| (k.clone(), r.id.clone()))
                .collect(),
            leases: g
                .leases
                .iter()
                .filter(|(_, r)| expired(&r.labels, at))
                .filter_map(|(k, _)| {
                    let parts = keys::split(k);
                    Some((parts.first()?.to_string(), parts.get(1)?.to_string()))
                })
                .collect(),
        }
    }

    /// One collection. Collections of one collector never overlap.
    pub fn collect(&self, opts: GcOptions) -> Result<GcReport, LeaseError> {
        self.collect_in(&OpCtx::new(), opts)
    }

    /// One collection reporting its sweep to `ctx`'s progress events: item
    /// `gc`, one unit per object whose files are removed.
    #[tracing::instrument(skip_all, fields(dry_run = opts.dry_run))]
    pub fn collect_in(&self, ctx: &OpCtx, opts: GcOptions) -> Result<GcReport, LeaseError> {
        let _one = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let start = Instant::now();
        let at = SystemTime::now();
        let mut report = GcReport::default();
        if opts.dry_run {
            let in_use = self.in_use()?;
            let g = Graph::load(&self.db.read()?)?;
            let m = mark(&g, &self.backend, &in_use, at);
            report.swept = self.decide(&g, &m, at);
            self.explain(&g, &m, opts, &mut report);
            report.duration = start.elapsed();
            return Ok(report);
        }
        let paused = Instant::now();
        let tx = self.db.write()?;
        // What is in use (the mount table) is read once no other write can
        // come between: a mount made before a lease or a name that held its
        // snapshots went (say, a lease let go once the mount holds them) is
        // seen, whichever write came last.
        let in_use = self.in_use()?;
        let g = Graph::load(&tx)?;
        let m = mark(&g, &self.backend, &in_use, at);
        let swept = self.decide(&g, &m, at);
        for d in &swept.content {
            tx.delete::<ContentRecord>(d)?;
        }
        for (k, _) in &swept.snapshots {
            tx.delete::<SnapshotRecord>(k)?;
        }
        strata_metadata::cascade::forget(
            &tx,
            &swept.snapshots.iter().map(|(k, _)| k.clone()).collect(),
            &swept.content.iter().cloned().collect(),
        )?;
        for (r, _) in &swept.ingests {
            tx.delete::<IngestRecord>(r)?;
        }
        for (ns, id) in &swept.leases {
            tx.delete::<LeaseRecord>(&keys::join(&[ns, id]))?;
            tx.delete_prefix::<LeaseResourceRecord>(&keys::prefix(&[ns, id]))?;
        }
        tx.put(
            "state",
            &GcRecord {
                mutations: 0,
                last_run: Some(now()),
            },
        )?;
        tx.commit()?;
        report.pause = paused.elapsed();
        self.explain(&g, &m, opts, &mut report);
        let mut failure = None;
        let total = (swept.content.len() + swept.snapshots.len() + swept.ingests.len()) as u64;
        let removed = AtomicU64::new(0);
        let done = || {
            let current = removed.fetch_add(1, Ordering::Relaxed) + 1;
            ctx.emit(&ProgressEvent {
                item: "gc".into(),
                current,
                total,
                unit: "objects".into(),
            });
        };
        for s in &self.stores {
            if let Err(e) = s.remove(&swept, &done) {
                self.db.leave_for_next_open();
                tracing::warn!(error = %e, "a store could not remove swept files; they go at its next open");
                failure.get_or_insert(e);
            }
        }
        report.swept = swept;
        report.duration = start.elapsed();
        match failure {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    fn explain(&self, g: &Graph, m: &Marks, opts: GcOptions, report: &mut GcReport) {
        let existing = g
            .content
            .keys()
            .map(|k| Node::Content(k.clone()))
            .chain(g.snapshots.keys().map(|k| Node::Snapshot(k.clone())))
            .chain(g.ingests.keys().map(|k| Node::Ingest(k.clone())));
        let mut kept: Vec<Node> = existing.filter(|n| m.reached.contains_key(n)).collect();
        kept.sort();
        report.kept = kept.len();
        if opts.explain {
            report.pins = kept.into_iter().map(|n| (n.clone(), m.chain(&n))).collect();
        }
    }

    /// Mutations since the last collection (lease deletes, resource
    /// removals, object removals that stores count).
    pub fn pending_mutations(&self) -> Result<u64, LeaseError> {
        Ok(self
            .db
            .read()?
            .get::<GcRecord>("state")?
            .map_or(0, |s| s.mutations))
    }
}

/// When the [`Scheduler`] runs a collection.
#[derive(Clone, Copy, Debug)]
pub struct SchedulerConfig {
    /// Collect after this many mutations.
    pub mutation_threshold: u64,
    /// Wait this long after a trigger before collecting, so bursts coalesce.
    pub delay: Duration,
    /// The share of time writers may spend paused by collections: after a
    /// collection that held the write transaction for P, the next waits
    /// until P / `pause_threshold` has passed (containerd's default, 0.02).
    pub pause_threshold: f64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            mutation_threshold: 100,
            delay: Duration::from_millis(0),
            pause_threshold: 0.02,
        }
    }
}

#[derive(Default)]
struct SchedState {
    mutations: u64,
    requested: bool,
    stop: bool,
    runs: u64,
    last_error: Option<String>,
}

struct SchedShared {
    state: Mutex<SchedState>,
    wake: Condvar,
    done: Condvar,
}

/// Runs collections on a background thread: after enough mutations, after
/// a lease delete, or on demand. Dropping it stops the thread.
pub struct Scheduler {
    shared: Arc<SchedShared>,
    config: SchedulerConfig,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("config", &self.config)
            .finish()
    }
}

impl Scheduler {
    /// Starts the scheduler thread for `collector`.
    pub fn start(collector: Arc<Collector>, config: SchedulerConfig) -> Scheduler {
        let shared = Arc::new(SchedShared {
            state: Mutex::new(SchedState::default()),
            wake: Condvar::new(),
            done: Condvar::new(),
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("strata-gc".into())
            .spawn(move || {
                loop {
                    {
                        let mut st = worker.state.lock().unwrap_or_else(|p| p.into_inner());
                        while !st.requested && !st.stop {
                            st = worker.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                        }
                        if st.stop {
                            return;
                        }
                    }
                    if !config.delay.is_zero() {
                        std::thread::sleep(config.delay);
                    }
                    {
                        let mut st = worker.state.lock().unwrap_or_else(|p| p.into_inner());
                        st.requested = false;
                        st.mutations = 0;
                    }
                    let result = collector.collect(GcOptions::default());
                    let pause = result.as_ref().map_or(Duration::ZERO, |r| r.pause);
                    let mut st = worker.state.lock().unwrap_or_else(|p| p.into_inner());
                    st.runs += 1;
                    st.last_error = result.err().map(|e| e.to_string());
                    worker.done.notify_all();
                    // Rest so that writers spend at most `pause_threshold`
                    // of their time paused; requests made meanwhile wait,
                    // a stop does not.
                    if config.pause_threshold > 0.0 {
                        let rest = pause.div_f64(config.pause_threshold);
                        let until = Instant::now() + rest;
                        while !st.stop {
                            let left = until.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                break;
                            }
                            st = worker
                                .wake
                                .wait_timeout(st, left)
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                        }
                    }
                }
            })
            .expect("start the gc scheduler thread");
        Scheduler {
            shared,
            config,
            thread: Some(thread),
        }
    }

    fn request(&self, st: &mut SchedState) {
        st.requested = true;
        self.shared.wake.notify_all();
    }

    /// Counts one mutation; collects once the threshold is reached.
    pub fn mutated(&self) {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.mutations += 1;
        if st.mutations >= self.config.mutation_threshold {
            self.request(&mut st);
        }
    }

    /// A lease was deleted: collect soon.
    pub fn lease_deleted(&self) {
        self.trigger();
    }

    /// Collect soon.
    pub fn trigger(&self) {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        self.request(&mut st);
    }

    /// Collections finished so far, and the last one's error if it failed.
    pub fn runs(&self) -> (u64, Option<String>) {
        let st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        (st.runs, st.last_error.clone())
    }

    /// Waits until at least `n` collections have finished, or `timeout`
    /// passes; returns the number finished.
    pub fn wait_for_runs(&self, n: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        while st.runs < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = self
                .shared
                .done
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        st.runs
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        {
            let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            st.stop = true;
            self.shared.wake.notify_all();
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the gc scheduler thread panicked");
        }
    }
}
