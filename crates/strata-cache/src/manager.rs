//! The cache manager (the seed's `SnapshotManager`): records over
//! snapshots, handed out as refs; merge and diff; sizes; search.
//!
//! Records are durable (redb), keyed by their snapshot's key, which is also
//! the ref id. Whether a mutable record is held is process state: a
//! restart unlocks everything, as the holders are gone. Snapshot work never
//! runs under a lock other than the per-key ones.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use strata_core::Classify;
use strata_core::{Digest, Labels, id};
use strata_diff::{Comparison, Diff, Exporter, Merger, Unpacker};
use strata_leases::{LeaseSpec, OpCtx, Resource};
use strata_metadata::records::{RefIndexRecord, RefRecord, SnapshotRecord};
use strata_metadata::{Reader, keys};
use strata_snapshot::{Kind, SnapshotError, Snapshotter, Usage};

use crate::error::{CacheError, Result};
use crate::keyed::KeyedLocks;
use crate::metadata::{self, Edit, RecordType, RefMetadata};
use crate::pool::MountPool;
use crate::refs::{ImmutableRef, MutableRef};
use crate::root::Root;
use crate::uses::Uses;

/// The key (and lease id) of the shared empty snapshot.
pub const SCRATCH: &str = "strata-scratch-rootfs-v1";

/// Options for the records a call creates (the seed's `RefOption`s).
/// Applied only when a record is made, never to an existing one.
#[derive(Clone, Debug, Default)]
pub struct RefOptions {
    /// A human description.
    pub description: Option<String>,
    /// The record type (`regular` when unset).
    pub record_type: Option<RecordType>,
    /// The creation time (now when unset).
    pub created_at: Option<SystemTime>,
    /// An image reference to record.
    pub image_ref: Option<String>,
    /// Releasing the returned immutable ref does not count as a use.
    pub no_update_last_used: bool,
}

impl RefOptions {
    /// Options with a description.
    pub fn described(description: impl Into<String>) -> RefOptions {
        RefOptions {
            description: Some(description.into()),
            ..RefOptions::default()
        }
    }
}

/// What `snapshot_record_metadata` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRecordMetadata {
    /// The record type.
    pub record_type: RecordType,
    /// The description.
    pub description: String,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) root: Root,
    pub(crate) merger: Merger,
    pub(crate) unpacker: Unpacker,
    pub(crate) exporter: Exporter,
    locked: Mutex<HashSet<String>>,
    pub(crate) import_locks: KeyedLocks,
    pub(crate) owner_locks: KeyedLocks,
    pub(crate) export_locks: KeyedLocks,
    size_locks: KeyedLocks,
    pub(crate) pool: MountPool,
    scratch: tokio::sync::Mutex<()>,
    pub(crate) uses: Uses,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.uses.is_empty() {
            return;
        }
        if let Err(e) = write_uses(&self.root, &self.uses) {
            tracing::warn!(error = %e, "could not write the refs' last uses");
        }
    }
}

/// One write transaction with every use waiting in `uses`, not synced:
/// uses are advisory, and the next durable commit or the clean close
/// makes them durable.
fn write_uses(root: &Root, uses: &Uses) -> Result<()> {
    let tx = root.db.write_deferred()?;
    uses.write(&tx)?;
    Ok(tx.commit()?)
}

/// The cache manager of one open root. Cheap to clone.
///
/// ```
/// use strata_cache::{BackendChoice, CacheManager, OpCtx, RefOptions, Root, RootOptions, with_lease};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let root = Root::open(&RootOptions {
///     path: Some(dir.path().join("root")),
///     backend: BackendChoice::Native,
/// })?;
/// let mgr = CacheManager::new(root)?;
/// // Everything made under `ctx` is held by one lease until `guard` goes.
/// let (ctx, guard) = with_lease(&OpCtx::new(), &mgr.root().leases)?;
/// let step = mgr.new_ref(&ctx, None, &RefOptions::described("step")).await?;
/// // ... write through `step.mount(&ctx, false)` ...
/// let done = step.commit(&ctx).await?;
/// let again = mgr.get(done.id(), &RefOptions::default()).await?;
/// assert_eq!(again.metadata()?.description(), "step");
/// let id = done.id().to_owned();
/// drop((done, again)); // each release counts a use
/// assert_eq!(mgr.metadata(&id)?.unwrap().usage_count(), 2);
/// guard.release()?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct CacheManager {
    pub(crate) inner: Arc<Inner>,
}

impl CacheManager {
    /// A manager over an open root. Records whose snapshot is gone (a
    /// crash between a snapshot commit and its record) are dropped.
    pub fn new(root: Root) -> Result<CacheManager> {
        if root.last_close == strata_metadata::LastClose::Unclean {
            let tx = root.db.write()?;
            let mut gone = Vec::new();
            for (id, r) in tx.scan::<RefRecord>("")? {
                if tx.get::<SnapshotRecord>(&r.snapshot)?.is_none() {
                    gone.push(id);
                }
            }
            for id in &gone {
                tracing::info!(id, "dropping a ref record whose snapshot is gone");
                metadata::delete_record(&tx, id)?;
            }
            tx.commit()?;
        }
        let merger = Merger::new(root.snapshots.clone(), root.tmp.clone());
        let pool = MountPool::new(root.mounts.clone());
        let unpacker = Unpacker::new(root.snapshots.clone(), root.tmp.clone());
        let exporter = Exporter::new(
            root.snapshots.clone(),
            root.content.clone(),
            root.tmp.clone(),
        );
        Ok(CacheManager {
            inner: Arc::new(Inner {
                root,
                merger,
                unpacker,
                exporter,
                locked: Mutex::default(),
                import_locks: KeyedLocks::default(),
                owner_locks: KeyedLocks::default(),
                export_locks: KeyedLocks::default(),
                size_locks: KeyedLocks::default(),
                pool,
                scratch: tokio::sync::Mutex::new(()),
                uses: Uses::default(),
            }),
        })
    }

    /// The open root underneath.
    pub fn root(&self) -> &Root {
        &self.inner.root
    }

    /// The lease resource of snapshot `key`.
    pub(crate) fn snapshot_resource(&self, key: &str) -> Resource {
        Resource::snapshot(self.inner.root.snapshots.name(), key)
    }

    /// A create boundary: puts `r` in the context's lease (made now if the
    /// context has a lazy scope) before the object exists, so no window
    /// leaves it unheld. Without any lease nothing is held.
    pub(crate) fn hold(&self, ctx: &OpCtx, r: &Resource) -> Result<()> {
        if let Some(lease) = ctx.ensure_lease()? {
            self.inner.root.leases.add_resource(&lease, r)?;
        }
        Ok(())
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.inner.locked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ids of the mutable refs held in this process.
    pub(crate) fn locked_ids(&self) -> HashSet<String> {
        self.locked().clone()
    }

    pub(crate) fn unlock(&self, id: &str) {
        self.locked().remove(id);
    }

    /// The record of `id`, if any.
    pub fn metadata(&self, id: &str) -> Result<Option<RefMetadata>> {
        let tx = self.inner.root.db.read()?;
        Ok(tx
            .get::<RefRecord>(id)?
            .map(|r| self.inner.uses.view(id, r)))
    }

    /// Every record, in id order.
    pub fn records(&self) -> Result<Vec<RefMetadata>> {
        let tx = self.inner.root.db.read()?;
        Ok(tx
            .scan::<RefRecord>("")?
            .into_iter()
            .map(|(id, r)| self.inner.uses.view(&id, r))
            .collect())
    }

    /// Applies `edit` to record `id` in one write transaction.
    pub(crate) fn update(&self, id: &str, edit: Edit) -> Result<RefMetadata> {
        let tx = self.inner.root.db.write()?;
        self.inner.uses.write(&tx)?;
        let r = metadata::apply_edit(&tx, id, edit)?;
        tx.commit()?;
        Ok(RefMetadata::new(id, r))
    }

    /// The record of `id` after checking its snapshot still exists; a
    /// record whose snapshot is gone is dropped and reported not found.
    async fn record(&self, id: &str) -> Result<(RefMetadata, strata_snapshot::Info)> {
        let md = self
            .metadata(id)?
            .ok_or_else(|| CacheError::NotFound(id.to_owned()))?;
        match self.inner.root.snapshots.stat(md.snapshot_id()).await {
            Ok(info) => Ok((md, info)),
            Err(e) if e.is_not_found() => {
                let tx = self.inner.root.db.write()?;
                metadata::delete_record(&tx, id)?;
                tx.commit()?;
                Err(CacheError::NotFound(md.snapshot_id().to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the record of an existing snapshot that has none (the seed's
    /// rehydration), checking the snapshot's kind (the seed trusts the
    /// caller).
    async fn rehydrate(&self, sid: &str, committed: bool, opts: &RefOptions) -> Result<()> {
        if sid.is_empty() {
            return Err(CacheError::invalid(sid, "empty snapshot id"));
        }
        if self.metadata(sid)?.is_some() {
            return Ok(());
        }
        let info = match self.inner.root.snapshots.stat(sid).await {
            Ok(i) => i,
            Err(e) if e.is_not_found() => return Err(CacheError::NotFound(sid.to_owned())),
            Err(e) => return Err(e.into()),
        };
        let want = if committed {
            Kind::Committed
        } else {
            Kind::Active
        };
        if info.kind != want {
            return Err(CacheError::invalid(
                sid,
                format!("snapshot is {}, not {}", info.kind.as_str(), want.as_str()),
            ));
        }
        let mut opts = opts.clone();
        opts.description
            .get_or_insert_with(|| "rehydrated persisted snapshot".into());
        let tx = self.inner.root.db.write()?;
        if tx.get::<RefRecord>(sid)?.is_none() {
            metadata::put_record(&tx, sid, None, &metadata::new_record(sid, committed, &opts))?;
        }
        tx.commit()?;
        Ok(())
    }

    /// An immutable ref to the known record `id`.
    #[tracing::instrument(skip_all, fields(id))]
    pub async fn get(&self, id: &str, opts: &RefOptions) -> Result<ImmutableRef> {
        let (md, _) = self.record(id).await?;
        if !md.is_committed() {
            return Err(CacheError::invalid(id, "is mutable"));
        }
        Ok(ImmutableRef::new(
            self.clone(),
            id,
            !opts.no_update_last_used,
        ))
    }

    /// Like [`CacheManager::get`], making the record of a committed
    /// snapshot that has none.
    pub async fn get_by_snapshot_id(&self, sid: &str, opts: &RefOptions) -> Result<ImmutableRef> {
        self.rehydrate(sid, true, opts).await?;
        self.get(sid, opts).await
    }

    /// Locks and returns the mutable ref of record `id`; `Locked` while
    /// another holder has it.
    #[tracing::instrument(skip_all, fields(id))]
    pub async fn get_mutable(&self, id: &str, _opts: &RefOptions) -> Result<MutableRef> {
        let (md, _) = self.record(id).await?;
        if md.is_committed() {
            return Err(CacheError::invalid(id, "is not mutable"));
        }
        self.check_volatile(id).await?;
        if !self.locked().insert(id.to_owned()) {
            return Err(CacheError::Locked(id.to_owned()));
        }
        Ok(MutableRef::new(self.clone(), id))
    }

    /// Like [`CacheManager::get_mutable`], making the record of an active
    /// snapshot that has none (reopening a persisted cache volume).
    pub async fn get_mutable_by_snapshot_id(
        &self,
        sid: &str,
        opts: &RefOptions,
    ) -> Result<MutableRef> {
        self.rehydrate(sid, false, opts).await?;
        self.get_mutable(sid, opts).await
    }

    /// A volatile overlay that was mounted when its process died may be
    /// torn: its record is treated as gone (the snapshot stays for GC).
    async fn check_volatile(&self, id: &str) -> Result<()> {
        let mounts = self.inner.root.snapshots.mounts(id).await?;
        let torn = mounts
            .first()
            .and_then(|m| m.layers.as_ref())
            .is_some_and(|l| {
                l.volatile
                    && l.work
                        .as_ref()
                        .is_some_and(|w| w.join("work/incompat").exists())
            });
        if torn {
            let tx = self.inner.root.db.write()?;
            metadata::delete_record(&tx, id)?;
            tx.commit()?;
            return Err(CacheError::NotFound(format!(
                "{id} (a volatile overlay left dirty by a crash)"
            )));
        }
        Ok(())
    }

    /// A new active snapshot on `parent` (empty without one), returned as
    /// a locked mutable ref.
    ///
    /// Writing through a mount needs the privilege to mount:
    ///
    /// ```no_run
    /// use strata_cache::{LocalMount, MountOptions, RefOptions};
    /// # async fn f(mgr: strata_cache::CacheManager, ctx: strata_cache::OpCtx, base: strata_cache::ImmutableRef) -> Result<(), Box<dyn std::error::Error>> {
    /// let step = mgr.new_ref(&ctx, Some(&base), &RefOptions::described("run")).await?;
    /// let mounts = step.mount(&ctx, false).await?;
    /// let target = tempfile::tempdir()?;
    /// let m = LocalMount::mount(&mounts.mounts, target.path(), MountOptions::default())?;
    /// std::fs::write(m.path().join("out"), "built")?;
    /// m.unmount()?;
    /// drop(mounts);
    /// let done = step.commit(&ctx).await?;
    /// # Ok(()) }
    /// ```
    #[tracing::instrument(skip_all)]
    pub async fn new_ref(
        &self,
        ctx: &OpCtx,
        parent: Option<&ImmutableRef>,
        opts: &RefOptions,
    ) -> Result<MutableRef> {
        let id = id::new_id();
        let parent_sid = parent.map(|p| p.snapshot_id().to_owned());
        self.inner
            .root
            .snapshots
            .under(ctx)
            .prepare(&id, parent_sid.as_deref(), Labels::new())
            .await?;
        let record = metadata::new_record(&id, false, opts);
        let key = id.clone();
        self.write_off_executor(move |root| {
            let tx = root.db.write()?;
            metadata::put_record(&tx, &key, None, &record)?;
            Ok(tx.commit()?)
        })
        .await?;
        self.locked().insert(id.clone());
        Ok(MutableRef::new(self.clone(), &id))
    }

    /// Counts a use of record `id` (an immutable ref released). When many
    /// wait, they are written off the caller's thread when it runs on an
    /// async executor, inline otherwise.
    pub(crate) fn count_use(&self, id: &str) {
        if !self.inner.uses.record(id) {
            return;
        }
        let mgr = self.clone();
        let write = move || {
            if let Err(e) = write_uses(mgr.root(), &mgr.inner.uses) {
                mgr.inner.uses.unschedule();
                tracing::warn!(error = %e, "could not write the refs' last uses");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(write)),
            Err(_) => write(),
        }
    }

    /// Runs `f`, metadata writes whose commit syncs the file, on the
    /// blocking pool, so an fsync never stalls the caller's executor.
    pub(crate) async fn write_off_executor<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Root) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let mgr = self.clone();
        tokio::task::spawn_blocking(move || f(mgr.root()))
            .await
            .map_err(|e| CacheError::Task(e.to_string()))?
    }

    /// The shared empty snapshot, held by its own permanent lease.
    pub async fn scratch(&self) -> Result<ImmutableRef> {
        let _one = self.inner.scratch.lock().await;
        let sn = &self.inner.root.snapshots;
        let lm = &self.inner.root.leases;
        match lm.create(LeaseSpec {
            id: Some(SCRATCH.into()),
            labels: Labels::from([(
                strata_leases::labels::GC_FLAT.to_owned(),
                strata_leases::labels::format_time(SystemTime::now()),
            )]),
            expire: None,
        }) {
            Ok(_) => {}
            Err(e) if e.is_already_exists() => {}
            Err(e) => return Err(e.into()),
        }
        lm.add_resource(SCRATCH, &self.snapshot_resource(SCRATCH))?;
        match sn.stat(SCRATCH).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {
                let key = format!("{SCRATCH}-{}", id::new_id());
                lm.add_resource(SCRATCH, &self.snapshot_resource(&key))?;
                sn.prepare(&key, None, Labels::new()).await?;
                let committed = sn.commit(SCRATCH, &key, Labels::new()).await;
                lm.delete_resource(SCRATCH, &self.snapshot_resource(&key))?;
                match committed {
                    Ok(()) => {}
                    Err(SnapshotError::AlreadyExists(_)) => {
                        if let Err(e) = sn.remove(&key).await {
                            tracing::debug!(key, error = %e, "removing a losing scratch prepare");
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
        let opts = RefOptions {
            no_update_last_used: true,
            description: Some("scratch".into()),
            ..RefOptions::default()
        };
        self.get_by_snapshot_id(SCRATCH, &opts).await
    }

    /// Records the committed snapshot `id`, just made by a merge or diff.
    fn record_new(&self, id: &str, opts: &RefOptions) -> Result<()> {
        let tx = self.inner.root.db.write()?;
        metadata::put_record(&tx, id, None, &metadata::new_record(id, true, opts))?;
        tx.commit()?;
        Ok(())
    }

    async fn merge_into(
        &self,
        ctx: &OpCtx,
        diffs: &[Diff],
        opts: &RefOptions,
    ) -> Result<ImmutableRef> {
        let id = id::new_id();
        self.hold(ctx, &self.snapshot_resource(&id))?;
        self.inner
            .merger
            .merge(ctx, &id, diffs, Labels::new())
            .await?;
        // Image refs are not carried by merges and diffs (as in the seed).
        let opts = RefOptions {
            image_ref: None,
            ..opts.clone()
        };
        self.record_new(&id, &opts)?;
        Ok(ImmutableRef::new(self.clone(), &id, true))
    }

    /// Merges the full trees of `parents` in order (later ones win) into
    /// one new snapshot. `None` entries are skipped; nothing left gives
    /// `None`; one left gives a new ref to it.
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
    /// let a = mgr.new_ref(&ctx, None, &Default::default()).await?.commit(&ctx).await?;
    /// let b = mgr.new_ref(&ctx, None, &Default::default()).await?.commit(&ctx).await?;
    /// let merged = mgr.merge(&ctx, &[Some(&a), None, Some(&b)], &Default::default()).await?;
    /// assert!(merged.is_some_and(|m| m.id() != a.id() && m.id() != b.id()));
    /// assert!(mgr.merge(&ctx, &[None], &Default::default()).await?.is_none());
    /// # Ok(()) }
    /// ```
    #[tracing::instrument(skip_all)]
    pub async fn merge(
        &self,
        ctx: &OpCtx,
        parents: &[Option<&ImmutableRef>],
        opts: &RefOptions,
    ) -> Result<Option<ImmutableRef>> {
        let present: Vec<&ImmutableRef> = parents.iter().flatten().copied().collect();
        match present.as_slice() {
            [] => Ok(None),
            [one] => {
                let opts = RefOptions {
                    no_update_last_used: true,
                    ..opts.clone()
                };
                Ok(Some(
                    self.get_by_snapshot_id(one.snapshot_id(), &opts).await?,
                ))
            }
            many => {
                let diffs: Vec<Diff> = many.iter().map(|p| Diff::whole(p.snapshot_id())).collect();
                let ids: Vec<&str> = many.iter().map(|p| p.id()).collect();
                Ok(Some(
                    self.merge_into(ctx, &diffs, opts)
                        .await
                        .map_err(CacheError::during("merge", ids.join(", ")))?,
                ))
            }
        }
    }

    /// A new parentless snapshot holding what `upper` adds or changes over
    /// `lower` (deletions are not represented). Both `None` gives `None`;
    /// no lower gives a new ref to `upper`.
    #[tracing::instrument(skip_all)]
    pub async fn apply_snapshot_diff(
        &self,
        ctx: &OpCtx,
        lower: Option<&ImmutableRef>,
        upper: Option<&ImmutableRef>,
        opts: &RefOptions,
    ) -> Result<Option<ImmutableRef>> {
        let Some(lower) = lower else {
            let Some(upper) = upper else { return Ok(None) };
            let opts = RefOptions {
                no_update_last_used: true,
                ..opts.clone()
            };
            return Ok(Some(
                self.get_by_snapshot_id(upper.snapshot_id(), &opts).await?,
            ));
        };
        let diffs = match upper {
            Some(u) if u.snapshot_id() == lower.snapshot_id() => Vec::new(),
            upper => vec![Diff {
                lower: Some(lower.snapshot_id().to_owned()),
                upper: upper.map(|u| u.snapshot_id().to_owned()),
                comparison: Comparison::ContentOnMetadataMatch,
            }],
        };
        let subject = format!("{} to {}", lower.id(), upper.map_or("nothing", |u| u.id()));
        Ok(Some(
            self.merge_into(ctx, &diffs, opts)
                .await
                .map_err(CacheError::during("diff", subject))?,
        ))
    }

    /// Digests of the blobs recorded against snapshot `sid`.
    pub(crate) fn recorded_content(&self, sid: &str) -> Result<Vec<Digest>> {
        let tx = self.inner.root.db.read()?;
        Ok(tx
            .scan::<strata_metadata::records::SnapshotContentRecord>(&keys::prefix(&[sid]))?
            .into_iter()
            .filter_map(|(k, _)| keys::split(&k).get(1).and_then(|d| Digest::parse(d).ok()))
            .collect())
    }

    /// Sizes of `digests` and of every compression variant reachable from
    /// them, each blob counted once.
    pub(crate) fn blob_bytes(&self, digests: &[Digest]) -> Result<u64> {
        let mut seen = HashSet::new();
        let mut total = 0;
        let mut queue: Vec<Digest> = digests.to_vec();
        while let Some(d) = queue.pop() {
            if !seen.insert(d.clone()) {
                continue;
            }
            match self.inner.root.content.info(&d) {
                Ok(info) => {
                    total += info.size;
                    queue.extend(crate::export::variants_of(&info.labels));
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(total)
    }

    async fn usage_or_zero(&self, sid: &str) -> Result<Usage> {
        match self.inner.merger.usage(sid).await {
            Ok(u) => Ok(u),
            Err(strata_diff::DiffError::Snapshot(e)) if e.is_not_found() => Ok(Usage::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// A ref's size: its snapshot's own usage plus its blob and the blob's
    /// variants; computed once per snapshot at a time and cached until
    /// invalidated.
    pub(crate) async fn size_of(&self, id: &str) -> Result<u64> {
        let _one = self.inner.size_locks.lock(id).await;
        let md = self
            .metadata(id)?
            .ok_or_else(|| CacheError::NotFound(id.to_owned()))?;
        if let Some(size) = md.size() {
            return Ok(size);
        }
        let usage = self.usage_or_zero(md.snapshot_id()).await?;
        let blobs: Vec<Digest> = md.blob().into_iter().collect();
        let size = usage.size + self.blob_bytes(&blobs)?;
        self.update(
            id,
            Edit::default().set(metadata::SIZE, &i64::try_from(size).unwrap_or(i64::MAX)),
        )?;
        Ok(size)
    }

    /// Snapshot `sid`'s usage plus every blob recorded against it (and
    /// their variants); not cached.
    pub async fn snapshot_size(&self, sid: &str) -> Result<u64> {
        if sid.is_empty() {
            return Err(CacheError::invalid(sid, "snapshot size: empty snapshot id"));
        }
        let usage = match self.inner.merger.usage(sid).await {
            Ok(u) => u,
            Err(strata_diff::DiffError::Snapshot(e)) if e.is_not_found() => {
                return Err(CacheError::NotFound(sid.to_owned()));
            }
            Err(e) => return Err(e.into()),
        };
        Ok(usage.size + self.blob_bytes(&self.recorded_content(sid)?)?)
    }

    /// The record type and description of snapshot `sid`'s record, if it
    /// has one.
    pub fn snapshot_record_metadata(&self, sid: &str) -> Result<Option<SnapshotRecordMetadata>> {
        if sid.is_empty() {
            return Err(CacheError::invalid(
                sid,
                "snapshot record metadata: empty snapshot id",
            ));
        }
        Ok(self.metadata(sid)?.map(|md| SnapshotRecordMetadata {
            record_type: md.record_type(),
            description: md.description(),
        }))
    }

    /// Records whose values are indexed `index` (or start with it when
    /// `prefix`), sorted by id.
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
    /// let m = mgr.new_ref(&ctx, None, &Default::default()).await?;
    /// m.set_string("app.cache-key", "deps-v1", "app.cache-key:deps-v1")?;
    /// let found = mgr.search("app.cache-key:", true)?;
    /// assert_eq!(found[0].id(), m.id());
    /// assert_eq!(found[0].get_string("app.cache-key"), "deps-v1");
    /// # Ok(()) }
    /// ```
    pub fn search(&self, index: &str, prefix: bool) -> Result<Vec<RefMetadata>> {
        let tx = self.inner.root.db.read()?;
        let scan = if prefix {
            index.to_owned()
        } else {
            keys::prefix(&[index])
        };
        let ids: BTreeSet<String> = tx
            .scan::<RefIndexRecord>(&scan)?
            .into_iter()
            .filter_map(|(k, _)| keys::split(&k).get(1).map(|s| (*s).to_owned()))
            .collect();
        let mut out = Vec::new();
        for id in ids {
            if let Some(r) = tx.get::<RefRecord>(&id)? {
                out.push(self.inner.uses.view(&id, r));
            }
        }
        Ok(out)
    }

    /// Closes the snapshotter; the root's lock is released when the last
    /// clone of the manager is dropped.
    pub async fn close(&self) -> Result<()> {
        Ok(self.inner.root.snapshots.close().await?)
    }
}
