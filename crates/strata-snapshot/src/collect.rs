//! The snapshot store's side of the garbage collector: snapshots whose
//! directories take part in a mount are in use
//! ([`SnapshotStore::mounted`]), and the directories of swept snapshots are
//! removed.

use strata_leases::{Collect, LeaseError, Node, Swept};
use strata_metadata::Reader;
use strata_metadata::records::SnapshotRecord;

use crate::store::SnapshotStore;

impl Collect for SnapshotStore {
    fn in_use(&self) -> Result<Vec<Node>, LeaseError> {
        let mounted = self.mounted().map_err(|e| LeaseError::Collect {
            what: "the mounts in use".into(),
            reason: e.to_string(),
        })?;
        let rows = self.db().read()?.scan::<SnapshotRecord>("")?;
        Ok(rows
            .into_iter()
            .filter(|(_, r)| mounted.contains(&r.id))
            .map(|(key, _)| Node::Snapshot(key))
            .collect())
    }

    fn remove(&self, swept: &Swept, done: &(dyn Fn() + Sync)) -> Result<(), LeaseError> {
        // Removing trees is metadata-bound and independent per snapshot: a
        // few threads keep the disk busy.
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
        let chunk = swept.snapshots.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            for part in swept.snapshots.chunks(chunk) {
                scope.spawn(move || {
                    for (_, id) in part {
                        self.remove_snapshot_dir(id);
                        done();
                    }
                });
            }
        });
        Ok(())
    }
}
