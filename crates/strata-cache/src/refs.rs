//! Ref handles: [`ImmutableRef`] and [`MutableRef`], released when
//! dropped, and [`RefMount`], the mounts a ref yields with whatever keeps
//! them valid (a view lease, a shared mount) released when it is dropped.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use strata_core::{Classify as _, Labels, Mount, id};
use strata_diff::{USAGE_INODES_LABEL, USAGE_SIZE_LABEL};
use strata_leases::{LeaseManager, LeaseSpec, OpCtx, labels as lease_labels, temporary_labels};
use strata_metadata::records::{RefRecord, from_system_time};
use strata_snapshot::mounts::read_only;
use strata_snapshot::{Snapshotter, Usage};

use crate::error::{CacheError, Result};
use crate::manager::CacheManager;
use crate::metadata::{self, Edit, RecordType, RefMetadata, Value};
use crate::pool::PoolGuard;

/// What both ref kinds share: the record's id and the metadata setters.
#[derive(Debug)]
pub struct RefCore {
    pub(crate) mgr: CacheManager,
    id: String,
    released: AtomicBool,
}

impl RefCore {
    fn new(mgr: CacheManager, id: &str) -> RefCore {
        RefCore {
            mgr,
            id: id.to_owned(),
            released: AtomicBool::new(false),
        }
    }

    /// The ref's id (its snapshot's key).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The snapshot the ref stands for (the same as its id).
    pub fn snapshot_id(&self) -> &str {
        &self.id
    }

    /// True once released.
    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    fn check(&self) -> Result<()> {
        if self.is_released() {
            return Err(CacheError::invalid(&self.id, "the ref was released"));
        }
        Ok(())
    }

    /// A copy of the record's metadata.
    pub fn metadata(&self) -> Result<RefMetadata> {
        self.mgr
            .metadata(&self.id)?
            .ok_or_else(|| CacheError::NotFound(self.id.clone()))
    }

    fn edit(&self, edit: Edit) -> Result<()> {
        self.mgr.update(&self.id, edit).map(drop)
    }

    /// Sets the description.
    pub fn set_description(&self, d: &str) -> Result<()> {
        self.edit(Edit::default().set(metadata::DESCRIPTION, &d))
    }

    /// Sets the creation time.
    pub fn set_created_at(&self, t: SystemTime) -> Result<()> {
        self.edit(Edit::default().set(metadata::CREATED_AT, &from_system_time(t)))
    }

    /// Sets the record type.
    pub fn set_record_type(&self, t: &RecordType) -> Result<()> {
        self.edit(Edit::default().set(metadata::RECORD_TYPE, &t.as_str()))
    }

    /// Sets `key` to the string `value`, indexed by `index` (none when
    /// empty).
    pub fn set_string(&self, key: &str, value: &str, index: &str) -> Result<()> {
        metadata::validate_key(key)?;
        let mut v = Value::new(&value)?;
        v.index = index.to_owned();
        self.edit(Edit::default().set_value(key, Some(v)))
    }

    /// Sets (or with `None` removes) `key`.
    pub fn set_value(&self, key: &str, value: Option<Value>) -> Result<()> {
        metadata::validate_key(key)?;
        self.edit(Edit::default().set_value(key, value))
    }

    /// Stores opaque bytes at `key` (not indexed, not JSON).
    pub fn set_external(&self, key: &str, bytes: &[u8]) -> Result<()> {
        metadata::validate_key(key)?;
        self.edit(Edit::default().set_external(key, bytes.to_vec()))
    }

    /// Removes `key` and drops the record from index
    /// `index_prefix + <the key's string value>`.
    pub fn clear_value_and_index(&self, key: &str, index_prefix: &str) -> Result<()> {
        let current = self.metadata()?.get_string(key);
        self.edit(
            Edit::default()
                .remove(key)
                .unindex(format!("{index_prefix}{current}")),
        )
    }

    /// Image references recorded on the ref.
    pub fn add_image_ref(&self, r: &str) -> Result<()> {
        self.edit(Edit::default().append(metadata::IMAGE_REFS, &[r.to_owned()]))
    }

    /// Size: the snapshot's own usage plus its blob and the blob's
    /// variants. Cached; for mutable refs call `invalidate_size` after
    /// writing.
    pub async fn size(&self) -> Result<u64> {
        self.mgr.size_of(&self.id).await
    }

    fn mark_released(&self) -> bool {
        !self.released.swap(true, Ordering::AcqRel)
    }
}

/// A read-only handle on a committed snapshot.
#[derive(Debug)]
pub struct ImmutableRef {
    core: RefCore,
    update_last_used: bool,
}

impl Deref for ImmutableRef {
    type Target = RefCore;
    fn deref(&self) -> &RefCore {
        &self.core
    }
}

/// Mounts handed out by a ref and what keeps them valid; dropping it lets
/// go (a view's lease, a share of a cache mount).
#[derive(Debug)]
pub struct RefMount {
    /// The mounts, to be mounted by the caller (or by
    /// `strata_snapshot::mounts::LocalMount`).
    pub mounts: Vec<Mount>,
    _view: Option<ViewLease>,
    _pool: Option<PoolGuard>,
}

/// The lease of a read-only view of an immutable ref.
#[derive(Debug)]
struct ViewLease {
    lm: LeaseManager,
    id: String,
}

impl Drop for ViewLease {
    fn drop(&mut self) {
        match self.lm.delete(&self.id) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::warn!(lease = self.id, error = %e, "could not delete a view lease"),
        }
    }
}

impl ImmutableRef {
    pub(crate) fn new(mgr: CacheManager, id: &str, update_last_used: bool) -> ImmutableRef {
        ImmutableRef {
            core: RefCore::new(mgr, id),
            update_last_used,
        }
    }

    /// Mounts of a read-only view of the snapshot, held by a temporary
    /// flat lease of its own until the returned value is dropped (a crash
    /// leaves the lease to the next open, which drops temporary leases).
    pub async fn mount(&self, _ctx: &OpCtx) -> Result<RefMount> {
        self.check()?;
        let mgr = &self.mgr;
        let root = mgr.root();
        let lease_id = id::new_id();
        let mut labels = temporary_labels();
        labels.insert(
            lease_labels::GC_FLAT.to_owned(),
            lease_labels::format_time(SystemTime::now()),
        );
        root.leases.create(LeaseSpec {
            id: Some(lease_id.clone()),
            labels,
            expire: None,
        })?;
        let lease = ViewLease {
            lm: root.leases.clone(),
            id: lease_id.clone(),
        };
        let view = format!("{lease_id}-view");
        root.leases
            .add_resource(&lease_id, &mgr.snapshot_resource(&view))?;
        let mounts = root
            .snapshots
            .view(&view, Some(self.snapshot_id()), Labels::new())
            .await?;
        Ok(RefMount {
            mounts,
            _view: Some(lease),
            _pool: None,
        })
    }

    /// Releases the handle (counting a use unless made with
    /// `no_update_last_used`). Idempotent; also done on drop. The use is
    /// counted in memory and written with later metadata writes, so a
    /// release does no I/O on the caller's thread; readers of the record
    /// see it at once.
    pub fn release(&self) -> Result<()> {
        if self.mark_released() && self.update_last_used {
            self.mgr.count_use(self.id());
        }
        Ok(())
    }
}

impl Drop for ImmutableRef {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// A writable handle on an active snapshot; one holder at a time.
#[derive(Debug)]
pub struct MutableRef {
    core: RefCore,
}

impl Deref for MutableRef {
    type Target = RefCore;
    fn deref(&self) -> &RefCore {
        &self.core
    }
}

impl MutableRef {
    pub(crate) fn new(mgr: CacheManager, id: &str) -> MutableRef {
        MutableRef {
            core: RefCore::new(mgr, id),
        }
    }

    /// The snapshot's mounts (read-only when asked). Cache-mount records
    /// share one kernel mount among all their users, so an upper directory
    /// is never mounted twice.
    pub async fn mount(&self, _ctx: &OpCtx, readonly: bool) -> Result<RefMount> {
        self.check()?;
        let mounts = self.mgr.root().snapshots.mounts(self.id()).await?;
        let (mounts, pool) = if self.metadata()?.record_type() == RecordType::CacheMount {
            let (shared, guard) = self.mgr.inner.pool.share(self.id(), &mounts)?;
            (shared, Some(guard))
        } else {
            (mounts, None)
        };
        let mounts = if readonly { read_only(&mounts) } else { mounts };
        Ok(RefMount {
            mounts,
            _view: None,
            _pool: pool,
        })
    }

    /// Commits the snapshot as a new immutable ref (a new id); this handle
    /// is released.
    pub async fn commit(&self, ctx: &OpCtx) -> Result<ImmutableRef> {
        self.commit_labels(ctx, Labels::new()).await
    }

    /// Commits with a usage the caller measured (it overrides the
    /// backend's, as merges do).
    pub async fn commit_with_usage(&self, ctx: &OpCtx, usage: Usage) -> Result<ImmutableRef> {
        let labels = Labels::from([
            (USAGE_SIZE_LABEL.to_owned(), usage.size.to_string()),
            (USAGE_INODES_LABEL.to_owned(), usage.inodes.to_string()),
        ]);
        self.commit_labels(ctx, labels).await
    }

    async fn commit_labels(&self, ctx: &OpCtx, labels: Labels) -> Result<ImmutableRef> {
        self.commit_as_new(ctx, labels)
            .await
            .map_err(CacheError::during("commit", self.id()))
    }

    async fn commit_as_new(&self, ctx: &OpCtx, labels: Labels) -> Result<ImmutableRef> {
        self.check()?;
        let mgr = &self.mgr;
        let root = mgr.root();
        let new = id::new_id();
        // The new record first, then the snapshot, then the old record
        // goes (two synced transactions and one that need not be, beside
        // the snapshot store's): a crash in between leaves a record whose snapshot is
        // missing, which the next open drops.
        let (old, fresh) = (self.id().to_owned(), new.clone());
        mgr.write_off_executor(move |root| {
            let tx = root.db.write()?;
            let mut record = strata_metadata::Reader::get::<RefRecord>(&tx, &old)?
                .ok_or_else(|| CacheError::NotFound(old.clone()))?;
            record.snapshot = fresh.clone();
            record
                .values
                .insert(metadata::COMMITTED.into(), json_value(&true));
            record.values.remove(metadata::SIZE);
            metadata::put_record(&tx, &fresh, None, &record)?;
            Ok(tx.commit()?)
        })
        .await?;
        // The record that goes: the new one if the snapshot did not commit,
        // else the mutable one.
        let committed = root
            .snapshots
            .under(ctx)
            .commit(&new, self.id(), labels)
            .await;
        let gone = match &committed {
            Ok(()) => self.id().to_owned(),
            Err(_) => new.clone(),
        };
        // Not synced: a crash that loses it leaves a record whose snapshot
        // is gone, which the next (unclean) open drops.
        let cleaned = mgr
            .write_off_executor(move |root| {
                let tx = root.db.write_deferred()?;
                metadata::delete_record(&tx, &gone)?;
                Ok(tx.commit()?)
            })
            .await;
        match (committed, cleaned) {
            (Ok(()), cleaned) => cleaned?,
            // The commit's own error is the one to report; the record left
            // behind names a missing snapshot, which the next open drops.
            (Err(e), Err(undo)) => {
                tracing::warn!(id = self.id(), error = %undo, "could not remove the record of a failed commit");
                return Err(e.into());
            }
            (Err(e), Ok(())) => return Err(e.into()),
        }
        self.mark_released();
        mgr.unlock(self.id());
        Ok(ImmutableRef::new(mgr.clone(), &new, true))
    }

    /// Forgets the cached size (after writing into the snapshot).
    pub fn invalidate_size(&self) -> Result<()> {
        self.mgr
            .update(self.id(), Edit::default().remove(metadata::SIZE))
            .map(drop)
    }

    /// Lets go of the lock; the record and the active snapshot stay (the
    /// snapshot as long as a lease holds it) and `get_mutable` can take it
    /// again. Idempotent; also done on drop.
    pub fn release(&self) {
        if self.mark_released() {
            self.mgr.unlock(self.id());
        }
    }
}

impl Drop for MutableRef {
    fn drop(&mut self) {
        self.release();
    }
}

fn json_value(v: &impl serde::Serialize) -> strata_metadata::records::RefValue {
    strata_metadata::records::RefValue {
        index: None,
        value: serde_json::to_vec(v).expect("json values serialize"),
    }
}
