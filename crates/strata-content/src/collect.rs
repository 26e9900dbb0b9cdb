//! The content store's side of the garbage collector: ingests with an open
//! writer are in use, and the files of swept blobs and ingests are removed.
//! A swept digest that was committed again since the sweep keeps its file:
//! the check and the unlink happen under the commit lock.

use std::io;

use strata_leases::{Collect, LeaseError, Node, Swept};
use strata_metadata::Reader;
use strata_metadata::records::ContentRecord;

use crate::store::{ContentStore, remove_dir};

fn collect_error(what: String, e: impl std::fmt::Display) -> LeaseError {
    LeaseError::Collect {
        what,
        reason: e.to_string(),
    }
}

impl Collect for ContentStore {
    fn in_use(&self) -> Result<Vec<Node>, LeaseError> {
        Ok(self
            .inner
            .active_refs()
            .into_iter()
            .map(Node::Ingest)
            .collect())
    }

    fn remove(&self, swept: &Swept, done: &(dyn Fn() + Sync)) -> Result<(), LeaseError> {
        let _guard = self.inner.commit_guard();
        let tx = self.inner.db.read()?;
        for d in &swept.content {
            // Every swept blob counts as handled, removed or not.
            let Ok(digest) = strata_core::Digest::parse(d) else {
                done();
                continue;
            };
            if tx.get::<ContentRecord>(d)?.is_some() {
                done();
                continue;
            }
            let path = self.inner.blob_path(&digest);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(collect_error(format!("blob {}", path.display()), e)),
            }
            done();
        }
        for (reference, id) in &swept.ingests {
            remove_dir(&self.inner.ingest_dir(id))
                .map_err(|e| collect_error(format!("ingest {reference:?}"), e))?;
            done();
        }
        Ok(())
    }
}
