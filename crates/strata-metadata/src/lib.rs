//! Strata's metadata: one redb file per root (`<root>/meta.redb`) holding
//! every table the stores need, with versioned record encodings, a schema
//! version row, migrations, and an integrity check.
//!
//! Each state change of a store is one [`WriteTx`]: it commits durably
//! (redb's `Durability::Immediate`) or not at all. The on-disk format is
//! described in `docs/metadata-format.md`.
#![forbid(unsafe_code)]

pub mod cascade;
mod check;
mod codec;
pub mod keys;
pub mod records;
mod schema;
mod tx;

use redb::ReadableDatabase as _;

use std::path::{Path, PathBuf};

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
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    /// A redb operation failed inside a transaction.
    #[error("metadata {op}: {source}")]
    Storage {
        op: &'static str,
        #[source]
        source: Box<redb::Error>,
    },
    /// The file was written by a newer Strata.
    #[error(
        "metadata {} has schema version {found}, newer than the {supported} this strata supports; upgrade strata",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// A record could not be decoded.
    #[error("metadata table {table}, key {key:?}: {reason}")]
    Corrupt {
        table: &'static str,
        key: String,
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
}

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

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts a read transaction: a consistent snapshot of every table.
    pub fn read(&self) -> Result<ReadTx, MetaError> {
        let tx = self
            .db
            .begin_read()
            .map_err(|e| MetaError::storage("begin read", e))?;
        Ok(ReadTx::new(tx))
    }

    /// Starts the (single) write transaction; waits for another writer of
    /// this process to finish.
    pub fn write(&self) -> Result<WriteTx, MetaError> {
        let tx = self
            .db
            .begin_write()
            .map_err(|e| MetaError::storage("begin write", e))?;
        Ok(WriteTx::new(tx))
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

    /// Records a clean close (everything the owner did is settled).
    pub fn mark_closed(&self) -> Result<(), MetaError> {
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
