//! Rows that name a snapshot or a blob go with it: when a store or the
//! collector removes objects, [`forget`] deletes, in the same write
//! transaction, the cache rows that would otherwise dangle (ref records and
//! their index entries, import dedupe rows, snapshot-content links), so the
//! integrity check stays clean after any removal.

use std::collections::HashSet;

use crate::records::{
    ImportByBlobRecord, ImportByDiffRecord, RefIndexRecord, RefRecord, SnapshotContentRecord,
};
use crate::{MetaError, Reader, WriteTx, keys};

/// Deletes every cache row naming one of `snapshots` (keys) or `content`
/// (digests). One scan per table, whatever the number of objects.
pub fn forget(
    tx: &WriteTx,
    snapshots: &HashSet<String>,
    content: &HashSet<String>,
) -> Result<(), MetaError> {
    if snapshots.is_empty() && content.is_empty() {
        return Ok(());
    }
    if !snapshots.is_empty() {
        for (id, r) in tx.scan::<RefRecord>("")? {
            if snapshots.contains(&r.snapshot) || snapshots.contains(&id) {
                for v in r.values.values() {
                    if let Some(index) = &v.index {
                        tx.delete::<RefIndexRecord>(&keys::join(&[index, &id]))?;
                    }
                }
                tx.delete::<RefRecord>(&id)?;
            }
        }
        for (key, r) in tx.scan::<ImportByBlobRecord>("")? {
            if snapshots.contains(&r.snapshot) || names_parent(&key, snapshots) {
                tx.delete::<ImportByBlobRecord>(&key)?;
            }
        }
        for (key, r) in tx.scan::<ImportByDiffRecord>("")? {
            if snapshots.contains(&r.snapshot) || names_parent(&key, snapshots) {
                tx.delete::<ImportByDiffRecord>(&key)?;
            }
        }
    }
    for (key, _) in tx.scan::<SnapshotContentRecord>("")? {
        let parts = keys::split(&key);
        let gone = parts.first().is_some_and(|s| snapshots.contains(*s))
            || parts.get(1).is_some_and(|d| content.contains(*d));
        if gone {
            tx.delete::<SnapshotContentRecord>(&key)?;
        }
    }
    Ok(())
}

fn names_parent(key: &str, snapshots: &HashSet<String>) -> bool {
    keys::split(key)
        .first()
        .is_some_and(|p| !p.is_empty() && snapshots.contains(*p))
}
