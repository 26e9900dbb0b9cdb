//! Strata's metadata: one redb file per root (`<root>/meta.redb`) holding
//! every table the stores need, with versioned record encodings, a schema
//! version row, migrations, and an integrity check.
//!
//! Each state change of a store is one [`WriteTx`]: it commits durably
//! (redb's `Durability::Immediate`) or not at all. The one exception,
//! [`MetaDb::write_deferred`], is for changes a crash may lose. The on-disk format is
//! described in `docs/metadata-format.md`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cascade;
mod check;
mod codec;
pub mod keys;
pub mod records;
mod schema;
mod tx;

use redb::ReadableDatabase as _;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use strata_core::{Classify, ErrorKind};

pub use check::Violation;
pub use codec::{Record, decode, encode};
pub use schema::SCHEMA_VERSION;
pub use tx::{ReadTx, Reader, WriteTx};

/// A failure of the metadata store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    /// The database could not be opened or read.
    #[error("metadata {}: {source}", path.display())]
    Database {
        /// The metadata file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: Box<redb::Error>,
    },
    /// A redb operation failed inside a transaction.
    #[error("metadata {op}: {source}")]
    Storage {
        /// The operation (`get`, `scan`, `commit`, ...).
        op: &'static str,
        /// redb's error.
        #[source]
        source: Box<redb::Error>,
    },
    /// A transaction refused because an earlier commit failed (the
    /// database must be opened again).
    #[error("metadata {op}: refused after an earlier commit failed ({first})")]
    Refused {
        /// The operation refused.
        op: &'static str,
        /// The failure of the earlier commit, as text.
        first: String,
    },
    /// The file was written by a newer Strata.
    #[error(
        "metadata {} has schema version {found}, newer than the {supported} this strata supports; upgrade strata",
        path.display()
    )]
    TooNew {
        /// The metadata file.
        path: PathBuf,
        /// The schema version the file has.
        found: u32,
        /// The newest schema version this build reads
        /// ([`SCHEMA_VERSION`]).
        supported: u32,
    },
    /// A record could not be decoded.
    #[error("metadata table {table}, key {key:?}: {reason}")]
    Corrupt {
        /// The table holding the record.
        table: &'static str,
        /// The record's key.
        key: String,
        /// What is wrong with the stored bytes.
        reason: String,
    },
}

impl MetaError {
    pub(crate) fn storage(op: &'static str, e: impl Into<redb::Error>) -> Self {
        MetaError::Storage {
            op,
            source: Box::new(e.into()),
        }
    }
}

impl Classify for MetaError {
    fn kind(&self) -> ErrorKind {
        match self {
            MetaError::Database { source, .. }
                if matches!(**source, redb::Error::DatabaseAlreadyOpen) =>
            {
                ErrorKind::Locked
            }
            MetaError::TooNew { .. } => ErrorKind::FailedPrecondition,
            MetaError::Corrupt { .. } => ErrorKind::Invalid,
            _ => ErrorKind::Internal,
        }
    }
}

/// How a root was last closed, from the `meta` table's `open` row: a
/// store whose root closed cleanly can skip reconciling its files with its
/// rows at open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastClose {
    /// Closed by its owner; disk and rows agree.
    Clean,
    /// Killed, crashed, or never marked: reconcile.
    Unclean,
}

const OPEN_ROW: &str = "open";

/// The metadata database of one root.
pub struct MetaDb {
    db: redb::Database,
    path: PathBuf,
    /// Set when a store left files for the next open to reconcile.
    unsettled: AtomicBool,
    /// The first commit that failed: redb refuses every write after it,
    /// and those refusals say what it was.
    failed: FirstFailure,
    /// Dropped after the database closes (fields drop in order): the
    /// owner's lock on the root, so no other process gets the root while
    /// this file is still open.
    guard: Option<Box<dyn std::any::Any + Send + Sync>>,
}

/// The first failed commit of a database, shared with its transactions.
pub(crate) type FirstFailure = Arc<OnceLock<String>>;

impl std::fmt::Debug for MetaDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaDb").field("path", &self.path).finish()
    }
}

impl MetaDb {
    /// Opens (creating if missing) the database at `path`, migrating an
    /// older schema and refusing a newer one.
    #[tracing::instrument(skip_all, fields(path = %path.display()))]
    pub fn open(path: &Path) -> Result<MetaDb, MetaError> {
        schema::open(path, SCHEMA_VERSION, schema::MIGRATIONS)
    }

    /// [`MetaDb::open`], keeping `guard` (a lock on what the file belongs
    /// to) until the database has closed, however long something holds it.
    pub fn open_holding(
        path: &Path,
        guard: impl std::any::Any + Send + Sync,
    ) -> Result<MetaDb, MetaError> {
        let mut db = MetaDb::open(path)?;
        db.guard = Some(Box::new(guard));
        Ok(db)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts a read transaction: a consistent snapshot of every table.
    pub fn read(&self) -> Result<ReadTx, MetaError> {
        let tx = self
            .db
            .begin_read()
            .map_err(|e| self.refused("begin read", e))?;
        Ok(ReadTx::new(tx))
    }

    /// Starts the (single) write transaction; waits for another writer of
    /// this process to finish.
    pub fn write(&self) -> Result<WriteTx, MetaError> {
        let tx = self
            .db
            .begin_write()
            .map_err(|e| self.refused("begin write", e))?;
        Ok(WriteTx::new(tx, Arc::clone(&self.failed)))
    }

    /// Starts a write transaction whose commit is not synced: it is
    /// visible at once and becomes durable with the next durable commit
    /// (or the clean close). Only for changes a crash may lose because the
    /// next open rebuilds them or they are advisory, such as dropping a
    /// record the reconciliation of an unclean open drops anyway.
    pub fn write_deferred(&self) -> Result<WriteTx, MetaError> {
        let mut tx = self.write()?;
        tx.defer();
        Ok(tx)
    }

    /// A transaction redb would not start: after a failed commit it
    /// refuses all, which says why.
    fn refused(&self, op: &'static str, e: redb::TransactionError) -> MetaError {
        let previous = matches!(
            e,
            redb::TransactionError::Storage(redb::StorageError::PreviousIo)
        );
        if !previous {
            return MetaError::storage(op, e);
        }
        // The failed commit's own thread records it just after redb lets
        // the next writer in: give it a moment.
        for _ in 0..50 {
            if let Some(first) = self.failed.get() {
                return MetaError::Refused {
                    op,
                    first: first.clone(),
                };
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        MetaError::storage(op, e)
    }

    /// How the root was last closed ([`MetaDb::mark_open`] and
    /// [`MetaDb::mark_closed`] keep it).
    pub fn last_close(&self) -> Result<LastClose, MetaError> {
        Ok(match self.read()?.meta(OPEN_ROW)? {
            Some(0) => LastClose::Clean,
            _ => LastClose::Unclean,
        })
    }

    /// Records that the root is in use: until [`MetaDb::mark_closed`], the
    /// next open reconciles.
    pub fn mark_open(&self) -> Result<(), MetaError> {
        let tx = self.write()?;
        tx.set_meta(OPEN_ROW, 1)?;
        tx.commit()
    }

    /// Says that a store left files behind for the next open to reconcile
    /// (a removal that failed after its transaction): the root must not be
    /// marked closed cleanly, or the next open would trust its rows and
    /// never sweep them.
    pub fn leave_for_next_open(&self) {
        self.unsettled.store(true, Ordering::SeqCst);
    }

    /// Records a clean close (everything the owner did is settled), unless
    /// a store left files for the next open ([`MetaDb::leave_for_next_open`]):
    /// then the root stays marked open.
    pub fn mark_closed(&self) -> Result<(), MetaError> {
        if self.unsettled.load(Ordering::SeqCst) {
            tracing::info!(path = %self.path.display(), "files were left for the next open; the root stays marked open");
            return Ok(());
        }
        let tx = self.write()?;
        tx.set_meta(OPEN_ROW, 0)?;
        tx.commit()
    }

    /// Verifies referential integrity and that every row decodes; returns
    /// every violation found (empty when clean).
    pub fn check(&self) -> Result<Vec<Violation>, MetaError> {
        check::run(&self.read()?)
    }
}

// The README's examples compile and run as doc tests, so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
