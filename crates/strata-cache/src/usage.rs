//! Disk usage and prune, beyond the seed (BuildKit's `du` and `prune`).
//!
//! Usage is exact: every snapshot's own directory is walked and each inode
//! counted once, so files a merge shares by hard link with its inputs are
//! `shared`, not counted twice; a record's `size` is its exclusive bytes
//! plus its blobs (and their variants).
//!
//! Prune lets go of records' own leases (`ref/<id>`, [`ref_lease`]) and
//! lets the collector reclaim the space. A record is prunable when nothing
//! else holds it: not in use (held mutable, or mounted), no live child
//! snapshot, no lease but its own, old enough for `keep_duration`, passing
//! the filters, and not `internal`/`frontend` unless `all`. Without space
//! targets every prunable record goes; with them the least recently used
//! go first until the targets are met, never below `reserved_space`. A dry
//! run explains what keeps each record.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use strata_core::{Filter, Filterable};
use strata_leases::gc::GcOptions;
use strata_leases::{OpCtx, ProgressEvent};
use strata_metadata::Reader;
use strata_metadata::records::{RefRecord, SnapshotRecord};
use strata_snapshot::Snapshotter;

use crate::error::{CacheError, Result};
use crate::manager::CacheManager;
use crate::metadata::RecordType;

/// The prefix of a record's own lease.
pub const REF_LEASE_PREFIX: &str = "ref/";

/// The id of record `id`'s own lease: the one prune may let go of.
pub fn ref_lease(id: &str) -> String {
    format!("{REF_LEASE_PREFIX}{id}")
}

/// The per-record lease policy that makes prune useful: a record an
/// embedder keeps is held by its own lease (`ref/<id>`, with its chain and
/// blobs), the only kind of lease prune lets go of; [`CacheManager::let_go`]
/// drops it, and what nothing else holds goes at the next collection.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let root = strata_cache::Root::open(&strata_cache::RootOptions {
/// #     path: Some(dir.path().join("root")),
/// #     backend: strata_cache::BackendChoice::Native,
/// # })?;
/// # let mgr = strata_cache::CacheManager::new(root)?;
/// # let ctx = strata_cache::OpCtx::new();
/// use strata_cache::PruneOptions;
///
/// let m = mgr.new_ref(&ctx, None, &Default::default()).await?;
/// mgr.keep(m.id()).await?;
/// // ... write through a mount, then commit: the committed record is
/// // kept instead of the mutable one.
/// let r = mgr.commit_kept(&ctx, m).await?;
/// let id = r.id().to_owned();
/// drop(r);
/// // A collection leaves it; prune lets go of its lease and takes it.
/// mgr.root().collector.collect(Default::default())?;
/// assert!(mgr.metadata(&id)?.is_some());
/// let report = mgr.prune(&PruneOptions::default()).await?;
/// assert!(report.removed.iter().any(|u| u.id == id));
/// # Ok(()) }
/// ```
impl CacheManager {
    /// Keeps record `id` (its snapshot, ancestors and blobs) under its own
    /// lease until [`CacheManager::let_go`] or prune.
    pub async fn keep(&self, id: &str) -> Result<()> {
        self.attach_lease(&ref_lease(id), id).await
    }

    /// Lets go of record `id`'s own lease (none is fine).
    pub async fn let_go(&self, id: &str) -> Result<()> {
        self.remove_lease(&ref_lease(id)).await
    }

    /// Commits `m` and moves its own lease to the committed record: the
    /// new record is kept, the mutable one (gone) let go of.
    pub async fn commit_kept(
        &self,
        ctx: &OpCtx,
        m: crate::MutableRef,
    ) -> Result<crate::ImmutableRef> {
        let mutable = m.id().to_owned();
        let r = m.commit(ctx).await?;
        self.keep(r.id()).await?;
        self.let_go(&mutable).await?;
        Ok(r)
    }
}

/// One record's usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageInfo {
    /// The record (and snapshot) id.
    pub id: String,
    /// True for a mutable record.
    pub mutable: bool,
    /// Held as a mutable ref in this process, or mounted.
    pub in_use: bool,
    /// Bytes only this record holds (its own layer's unshared inodes and
    /// its blobs).
    pub size: u64,
    /// Bytes of its layer shared with other snapshots (hard links).
    pub shared: u64,
    /// Inodes of its own layer.
    pub inodes: u64,
    /// The parent snapshot.
    pub parent: Option<String>,
    /// Creation time.
    pub created_at: Option<SystemTime>,
    /// Last release of an immutable ref.
    pub last_used_at: Option<SystemTime>,
    /// Releases of immutable refs.
    pub usage_count: u64,
    /// Description.
    pub description: String,
    /// Record type.
    pub record_type: RecordType,
}

impl Filterable for UsageInfo {
    fn field(&self, path: &[String]) -> Option<String> {
        let [f] = path else { return None };
        Some(match f.as_str() {
            "id" => self.id.clone(),
            "type" | "record-type" => self.record_type.as_str().to_owned(),
            "description" => self.description.clone(),
            "mutable" => self.mutable.to_string(),
            "inuse" | "in-use" => self.in_use.to_string(),
            "parent" => self.parent.clone()?,
            _ => return None,
        })
    }
}

/// What prune may do.
#[derive(Clone, Debug, Default)]
pub struct PruneOptions {
    /// Only records matching this filter.
    pub filter: Filter,
    /// Also `internal` and `frontend` records.
    pub all: bool,
    /// Keep records used (or made) within this long.
    pub keep_duration: Option<Duration>,
    /// Never prune below this many bytes of cache.
    pub reserved_space: u64,
    /// Prune until the cache is at most this many bytes (0: no target).
    pub max_used_space: u64,
    /// Prune until the root's file system has this many bytes free (0: no
    /// target).
    pub min_free_space: u64,
    /// Only report.
    pub dry_run: bool,
}

/// What prune did (or, dry, would do).
#[derive(Clone, Debug, Default)]
pub struct PruneReport {
    /// Records let go, least recently used first.
    pub removed: Vec<UsageInfo>,
    /// Bytes those records held exclusively.
    pub reclaimed: u64,
    /// Every record kept and why.
    pub kept: Vec<(UsageInfo, String)>,
}

/// Inodes of one directory tree: (dev, ino) -> bytes allocated.
fn inodes_of(dir: &Path) -> Result<HashMap<(u64, u64), u64>> {
    let root = strata_sys::Root::open(dir)?;
    let mut out = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for (name, md) in root.read_dir_stat(&rel)? {
            if md.kind == strata_sys::FileKind::Dir {
                stack.push(rel.join(&name));
            }
            out.insert((md.dev, md.ino), md.blocks * 512);
        }
    }
    Ok(out)
}

fn last_use(u: &UsageInfo) -> SystemTime {
    u.last_used_at
        .or(u.created_at)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

impl CacheManager {
    /// Usage of every record passing `filter`, largest first.
    pub async fn disk_usage(&self, filter: &Filter) -> Result<Vec<UsageInfo>> {
        self.disk_usage_in(&OpCtx::new(), filter).await
    }

    /// [`disk_usage`](Self::disk_usage) reporting to `ctx`'s progress
    /// events: item `du`, one unit per snapshot measured.
    pub async fn disk_usage_in(&self, ctx: &OpCtx, filter: &Filter) -> Result<Vec<UsageInfo>> {
        let mgr = self.clone();
        let filter = filter.clone();
        let ctx = ctx.clone();
        tokio::task::spawn_blocking(move || mgr.disk_usage_blocking(&ctx, &filter))
            .await
            .map_err(|e| CacheError::Task(e.to_string()))?
    }

    fn disk_usage_blocking(&self, ctx: &OpCtx, filter: &Filter) -> Result<Vec<UsageInfo>> {
        let root = self.root();
        let (records, snapshots) = {
            let tx = root.db.read()?;
            (
                tx.scan::<RefRecord>("")?,
                tx.scan::<SnapshotRecord>("")?
                    .into_iter()
                    .collect::<BTreeMap<_, _>>(),
            )
        };
        // Who holds each inode, over every snapshot's own directory.
        let mut owners: HashMap<(u64, u64), u32> = HashMap::new();
        let mut layers: HashMap<String, HashMap<(u64, u64), u64>> = HashMap::new();
        for (done, (key, s)) in snapshots.iter().enumerate() {
            ctx.emit(&ProgressEvent {
                item: "du".into(),
                current: done as u64,
                total: snapshots.len() as u64,
                unit: "snapshots".into(),
            });
            // A lazy one stores nothing yet (an attached one's directory
            // shows its layer as served).
            if s.lazy {
                continue;
            }
            let dir = root.path.join("snapshots").join(&s.id).join("fs");
            let inodes = match inodes_of(&dir) {
                Ok(i) => i,
                Err(e) => {
                    tracing::debug!(key, error = %e, "skipping a snapshot that went meanwhile");
                    continue;
                }
            };
            for k in inodes.keys() {
                *owners.entry(*k).or_default() += 1;
            }
            layers.insert(key.clone(), inodes);
        }
        ctx.emit(&ProgressEvent {
            item: "du".into(),
            current: snapshots.len() as u64,
            total: snapshots.len() as u64,
            unit: "snapshots".into(),
        });
        let mounted = root.snapshots.mounted()?;
        let mut out = Vec::new();
        for (id, r) in records {
            let md = self.inner.uses.view(&id, r);
            let Some(s) = snapshots.get(md.snapshot_id()) else {
                continue;
            };
            let (mut exclusive, mut shared, mut inodes) = (0, 0, 0);
            for (k, bytes) in layers.get(md.snapshot_id()).into_iter().flatten() {
                inodes += 1;
                if owners.get(k).copied().unwrap_or(0) > 1 {
                    shared += bytes;
                } else {
                    exclusive += bytes;
                }
            }
            let blobs = self.blob_bytes(&self.recorded_content(md.snapshot_id())?)?;
            out.push(UsageInfo {
                mutable: !md.is_committed(),
                in_use: self.is_locked(&id) || mounted.contains(&s.id),
                size: exclusive + blobs,
                shared,
                inodes,
                parent: s.parent.clone(),
                created_at: md.created_at(),
                last_used_at: md.last_used_at(),
                usage_count: md.usage_count(),
                description: md.description(),
                record_type: md.record_type(),
                id,
            });
        }
        out.retain(|u| filter.matches(u));
        out.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Lets go of prunable records' own leases (see the module docs) and
    /// collects.
    pub async fn prune(&self, opts: &PruneOptions) -> Result<PruneReport> {
        self.prune_in(&OpCtx::new(), opts).await
    }

    /// [`prune`](Self::prune) reporting to `ctx`'s progress events: the
    /// measuring (item `du`) and the collection (item `gc`).
    #[tracing::instrument(skip_all, fields(dry_run = opts.dry_run))]
    pub async fn prune_in(&self, ctx: &OpCtx, opts: &PruneOptions) -> Result<PruneReport> {
        let usage = self.disk_usage_in(ctx, &Filter::default()).await?;
        let root = self.root();
        let kind = format!("snapshots/{}", root.snapshots.name());
        // The leases holding each snapshot directly.
        let mut holders: HashMap<String, Vec<String>> = HashMap::new();
        for lease in root.leases.list(&Filter::default())? {
            for r in root.leases.list_resources(&lease.id)? {
                if r.kind == kind {
                    holders.entry(r.id).or_default().push(lease.id.clone());
                }
            }
        }
        let children: HashMap<String, Vec<String>> = {
            let tx = root.db.read()?;
            let mut m: HashMap<String, Vec<String>> = HashMap::new();
            for (key, s) in tx.scan::<SnapshotRecord>("")? {
                if let Some(p) = s.parent {
                    m.entry(p).or_default().push(key);
                }
            }
            m
        };
        let now = SystemTime::now();
        let mut total: u64 = usage.iter().map(|u| u.size).sum();
        let mut free = if opts.min_free_space > 0 {
            strata_sys::free_space(&root.path)?
        } else {
            0
        };
        let targets = opts.max_used_space > 0 || opts.min_free_space > 0;
        let mut gone: HashSet<String> = HashSet::new();
        let mut removed: Vec<UsageInfo> = Vec::new();
        let mut reasons: HashMap<String, String> = HashMap::new();
        loop {
            let mut candidates: Vec<&UsageInfo> = Vec::new();
            for u in &usage {
                if gone.contains(&u.id) {
                    continue;
                }
                match self.keeps(u, opts, now, &holders, &children, &gone) {
                    Some(why) => {
                        reasons.insert(u.id.clone(), why);
                    }
                    None => candidates.push(u),
                }
            }
            candidates.sort_by_key(|u| (last_use(u), u.id.clone()));
            let mut progressed = false;
            for u in candidates {
                let wanted = !targets
                    || (opts.max_used_space > 0 && total > opts.max_used_space)
                    || (opts.min_free_space > 0 && free < opts.min_free_space);
                if !wanted {
                    reasons.insert(u.id.clone(), "space targets are met".into());
                    continue;
                }
                if total.saturating_sub(u.size) < opts.reserved_space {
                    reasons.insert(u.id.clone(), "within the reserved space".into());
                    continue;
                }
                total = total.saturating_sub(u.size);
                free = free.saturating_add(u.size);
                gone.insert(u.id.clone());
                reasons.remove(&u.id);
                removed.push(u.clone());
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        if !opts.dry_run {
            for u in &removed {
                match root.leases.delete(&ref_lease(&u.id)) {
                    Ok(()) => {}
                    Err(e) if strata_core::Classify::is_not_found(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if !removed.is_empty() {
                let collector = std::sync::Arc::clone(&root.collector);
                let ctx = ctx.clone();
                tokio::task::spawn_blocking(move || {
                    collector.collect_in(&ctx, GcOptions::default())
                })
                .await
                .map_err(|e| CacheError::Task(e.to_string()))??;
            }
        }
        let kept = usage
            .iter()
            .filter(|u| !gone.contains(&u.id))
            .map(|u| {
                let why = reasons.get(&u.id).cloned().unwrap_or_default();
                (u.clone(), why)
            })
            .collect();
        Ok(PruneReport {
            reclaimed: removed.iter().map(|u| u.size).sum(),
            removed,
            kept,
        })
    }

    /// Why `u` must stay, or `None` when it may go.
    fn keeps(
        &self,
        u: &UsageInfo,
        opts: &PruneOptions,
        now: SystemTime,
        holders: &HashMap<String, Vec<String>>,
        children: &HashMap<String, Vec<String>>,
        gone: &HashSet<String>,
    ) -> Option<String> {
        if u.in_use {
            return Some("in use".into());
        }
        if let Some(c) = children
            .get(&u.id)
            .and_then(|cs| cs.iter().find(|c| !gone.contains(*c)))
        {
            return Some(format!("parent of {c}"));
        }
        let own = ref_lease(&u.id);
        // Owner leases pin whole chains: the lease of a record already let
        // go no longer counts.
        let released = |l: &str| {
            l.strip_prefix(REF_LEASE_PREFIX)
                .is_some_and(|id| gone.contains(id))
        };
        if let Some(other) = holders
            .get(&u.id)
            .and_then(|ls| ls.iter().find(|l| **l != own && !released(l)))
        {
            return Some(format!("held by lease {other}"));
        }
        if !opts.all && matches!(u.record_type, RecordType::Internal | RecordType::Frontend) {
            return Some(format!(
                "record type {} (prune --all takes it)",
                u.record_type.as_str()
            ));
        }
        if !opts.filter.matches(u) {
            return Some("filtered out".into());
        }
        if let Some(keep) = opts.keep_duration
            && now.duration_since(last_use(u)).unwrap_or_default() < keep
        {
            return Some("used within the keep duration".into());
        }
        None
    }

    fn is_locked(&self, id: &str) -> bool {
        self.locked_ids().contains(id)
    }
}
