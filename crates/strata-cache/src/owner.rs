//! Owner leases (seed §5.6) and the persistent rows (§3.8).
//!
//! An owner lease pins a snapshot, every ancestor and every blob recorded
//! against them; blobs recorded later are added to the owner leases of
//! their snapshot. Which leases own a snapshot is read from the lease
//! tables (the seed keeps it in memory and needs every attach repeated
//! after a restart). Attach and remove of one lease id exclude each other
//! for their whole duration (the seed's race fix). The rows (snapshot
//! content, import dedupe) are durable here; the export and load calls stay
//! for callers that keep their own database.

use std::time::SystemTime;

use strata_core::{Classify, Digest, Filter, Labels};
use strata_leases::{LeaseSpec, Resource, labels as lease_labels};
use strata_metadata::records::{
    ImportByBlobRecord, ImportByDiffRecord, LeaseRecord, LeaseResourceRecord,
    SnapshotContentRecord, SnapshotRecord,
};
use strata_metadata::{Reader, keys};
use strata_snapshot::Snapshotter;

use crate::error::{CacheError, Result};
use crate::manager::CacheManager;

/// A blob recorded against a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SnapshotContentRow {
    /// The snapshot.
    pub snapshot_id: String,
    /// The blob.
    pub digest: Digest,
}

/// A dedupe row: the snapshot a blob or diffID was imported into on a
/// parent (`""` for none).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ImportedLayerRow {
    /// The parent snapshot.
    pub parent_snapshot_id: String,
    /// The blob digest or the diffID.
    pub digest: Digest,
    /// The snapshot made.
    pub snapshot_id: String,
}

/// The three persistent tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersistentMetadataRows {
    /// Blobs recorded against snapshots.
    pub snapshot_content: Vec<SnapshotContentRow>,
    /// Dedupe by blob digest.
    pub imported_by_blob: Vec<ImportedLayerRow>,
    /// Dedupe by diffID.
    pub imported_by_diff: Vec<ImportedLayerRow>,
}

/// The prefix of the owner leases `delete_stale_owner_leases` sweeps by
/// default.
pub const OWNER_LEASE_PREFIX: &str = "strata/owner/";

fn import_rows<R: strata_metadata::Record>(
    tx: &impl Reader,
    snapshot: impl Fn(&R) -> &str,
) -> Result<Vec<ImportedLayerRow>> {
    let mut out = Vec::new();
    for (k, r) in tx.scan::<R>("")? {
        let parts = keys::split(&k);
        if let [parent, d] = parts[..]
            && let Ok(digest) = Digest::parse(d)
        {
            out.push(ImportedLayerRow {
                parent_snapshot_id: parent.to_owned(),
                digest,
                snapshot_id: snapshot(&r).to_owned(),
            });
        }
    }
    Ok(out)
}

impl CacheManager {
    /// Records blob `d` against snapshot `sid` and adds it to the
    /// snapshot's owner leases.
    pub(crate) fn record_content(&self, sid: &str, d: &Digest) -> Result<()> {
        let tx = self.root().db.write()?;
        tx.put(&keys::join(&[sid, d.as_str()]), &SnapshotContentRecord {})?;
        tx.commit()?;
        let owners = self.owner_leases(sid)?;
        for lease in owners {
            match self
                .root()
                .leases
                .add_resource(&lease, &Resource::content(d))
            {
                Ok(()) => {}
                Err(e) if e.is_not_found() || e.is_already_exists() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The owner leases (flat leases) that hold snapshot `sid`: read from
    /// the lease tables, so they survive a restart without re-attaching.
    fn owner_leases(&self, sid: &str) -> Result<Vec<String>> {
        let root = self.root();
        let kind = format!("snapshots/{}", root.snapshots.name());
        let ns = root.leases.namespace().to_owned();
        let tx = root.db.read()?;
        let mut out = Vec::new();
        for (key, _) in tx.scan::<LeaseResourceRecord>(&keys::prefix(&[&ns]))? {
            let parts = keys::split(&key);
            if let [_, lease, k, id] = parts[..]
                && k == kind
                && id == sid
                && tx
                    .get::<LeaseRecord>(&keys::join(&[&ns, lease]))?
                    .is_some_and(|l| l.labels.contains_key(lease_labels::GC_FLAT))
            {
                out.push(lease.to_owned());
            }
        }
        Ok(out)
    }

    /// Makes (or extends) the flat lease `lease_id` hold snapshot `sid`,
    /// every ancestor and their recorded blobs, in one transaction (no
    /// crash leaves it holding part of the chain).
    #[tracing::instrument(skip_all, fields(lease = lease_id, snapshot = sid))]
    pub async fn attach_lease(&self, lease_id: &str, sid: &str) -> Result<()> {
        if lease_id.is_empty() {
            return Err(CacheError::invalid(
                lease_id,
                "attach lease: empty lease id",
            ));
        }
        if sid.is_empty() {
            return Err(CacheError::invalid(sid, "attach lease: empty snapshot id"));
        }
        let _one = self.inner.owner_locks.lock(lease_id).await;
        let held = self.chain_resources(sid).await?;
        let lm = &self.root().leases;
        let tx = self.root().db.write()?;
        match lm.create_in(
            &tx,
            LeaseSpec {
                id: Some(lease_id.to_owned()),
                labels: Labels::from([(
                    lease_labels::GC_FLAT.to_owned(),
                    lease_labels::format_time(SystemTime::now()),
                )]),
                expire: None,
            },
        ) {
            Ok(_) => {}
            Err(e) if e.is_already_exists() => {}
            Err(e) => return Err(e.into()),
        }
        for r in &held {
            lm.add_resource_in(&tx, lease_id, r)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// What holding snapshot `sid` takes: it, every ancestor, and the blobs
    /// recorded for each. NotFound names a missing snapshot.
    pub(crate) async fn chain_resources(&self, sid: &str) -> Result<Vec<Resource>> {
        let sn = &self.root().snapshots;
        let mut held = Vec::new();
        let mut next = Some(sid.to_owned());
        while let Some(key) = next {
            let info = match sn.stat(&key).await {
                Ok(i) => i,
                Err(e) if e.is_not_found() => return Err(CacheError::NotFound(key)),
                Err(e) => return Err(e.into()),
            };
            next = info.parent.clone();
            held.push(self.snapshot_resource(&key));
            held.extend(self.recorded_content(&key)?.iter().map(Resource::content));
        }
        Ok(held)
    }

    /// Deletes owner lease `lease_id` (missing is fine) and forgets it.
    #[tracing::instrument(skip_all, fields(lease = lease_id))]
    pub async fn remove_lease(&self, lease_id: &str) -> Result<()> {
        if lease_id.is_empty() {
            return Ok(());
        }
        let _one = self.inner.owner_locks.lock(lease_id).await;
        match self.root().leases.delete(lease_id) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes every lease whose id starts with `prefix` and is not in
    /// `keep`; every one is tried, the first failure is returned.
    pub async fn delete_stale_owner_leases(&self, prefix: &str, keep: &[String]) -> Result<usize> {
        let leases = self.root().leases.list(&Filter::default())?;
        let mut removed = 0;
        let mut failure = None;
        for l in leases {
            if !l.id.starts_with(prefix) || keep.contains(&l.id) {
                continue;
            }
            match self.remove_lease(&l.id).await {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(lease = l.id, error = %e, "could not remove a stale owner lease");
                    failure.get_or_insert(e);
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    /// The three persistent tables as rows.
    pub fn persistent_metadata_rows(&self) -> Result<PersistentMetadataRows> {
        let tx = self.root().db.read()?;
        let mut snapshot_content = Vec::new();
        for (k, _) in tx.scan::<SnapshotContentRecord>("")? {
            let parts = keys::split(&k);
            if let [sid, d] = parts[..]
                && let Ok(digest) = Digest::parse(d)
            {
                snapshot_content.push(SnapshotContentRow {
                    snapshot_id: sid.to_owned(),
                    digest,
                });
            }
        }
        Ok(PersistentMetadataRows {
            snapshot_content,
            imported_by_blob: import_rows::<ImportByBlobRecord>(&tx, |r| &r.snapshot)?,
            imported_by_diff: import_rows::<ImportByDiffRecord>(&tx, |r| &r.snapshot)?,
        })
    }

    /// Replaces the three tables with `rows` (rows with an empty or unknown
    /// snapshot id are skipped; the parent may be empty), in one
    /// transaction.
    pub fn load_persistent_metadata(&self, rows: &PersistentMetadataRows) -> Result<()> {
        let tx = self.root().db.write()?;
        tx.delete_prefix::<SnapshotContentRecord>("")?;
        tx.delete_prefix::<ImportByBlobRecord>("")?;
        tx.delete_prefix::<ImportByDiffRecord>("")?;
        // Rows naming snapshots this root does not have would dangle (and
        // fail `strata check`): they are left out too.
        let exists = |s: &str| -> Result<bool> {
            Ok(!s.is_empty() && keys::valid_part(s) && tx.get::<SnapshotRecord>(s)?.is_some())
        };
        for r in &rows.snapshot_content {
            if exists(&r.snapshot_id)? {
                tx.put(
                    &keys::join(&[&r.snapshot_id, r.digest.as_str()]),
                    &SnapshotContentRecord {},
                )?;
            }
        }
        let imports = [
            (&rows.imported_by_blob, true),
            (&rows.imported_by_diff, false),
        ];
        for (list, by_blob) in imports {
            for r in list.iter() {
                let parent_ok = r.parent_snapshot_id.is_empty() || exists(&r.parent_snapshot_id)?;
                if !parent_ok || !exists(&r.snapshot_id)? {
                    continue;
                }
                let key = keys::join(&[&r.parent_snapshot_id, r.digest.as_str()]);
                let snapshot = r.snapshot_id.clone();
                if by_blob {
                    tx.put(&key, &ImportByBlobRecord { snapshot })?;
                } else {
                    tx.put(&key, &ImportByDiffRecord { snapshot })?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}
