//! Typed access to the tables inside read and write transactions. Every
//! table maps a string key to an encoded [`Record`]; the `meta` table holds
//! counters and the schema version.

use redb::{ReadableTable, TableDefinition};

use crate::MetaError;
use crate::codec::{Record, decode, encode};

pub(crate) type RawTable = TableDefinition<'static, &'static str, &'static [u8]>;
pub(crate) const META: TableDefinition<'static, &'static str, u64> = TableDefinition::new("meta");

pub(crate) fn table_of<R: Record>() -> RawTable {
    TableDefinition::new(R::TABLE)
}

fn corrupt<R: Record>(key: &str, reason: String) -> MetaError {
    MetaError::Corrupt {
        table: R::TABLE,
        key: key.to_owned(),
        reason,
    }
}

fn get_in<R: Record>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<R>, MetaError> {
    match t.get(key).map_err(|e| MetaError::storage("get", e))? {
        Some(v) => decode(v.value())
            .map(Some)
            .map_err(|r| corrupt::<R>(key, r)),
        None => Ok(None),
    }
}

fn scan_in<R: Record>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
) -> Result<Vec<(String, R)>, MetaError> {
    let mut out = Vec::new();
    for row in t
        .range(prefix..)
        .map_err(|e| MetaError::storage("scan", e))?
    {
        let (k, v) = row.map_err(|e| MetaError::storage("scan", e))?;
        let key = k.value();
        if !key.starts_with(prefix) {
            break;
        }
        let record = decode(v.value()).map_err(|r| corrupt::<R>(key, r))?;
        out.push((key.to_owned(), record));
    }
    Ok(out)
}

/// Raw rows of one table, for `check`: undecoded so one bad row does not
/// hide the others.
pub(crate) fn raw_rows_in(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<(String, Vec<u8>)>, MetaError> {
    let mut out = Vec::new();
    for row in t.iter().map_err(|e| MetaError::storage("scan", e))? {
        let (k, v) = row.map_err(|e| MetaError::storage("scan", e))?;
        out.push((k.value().to_owned(), v.value().to_vec()));
    }
    Ok(out)
}

mod sealed {
    use super::*;

    /// Opening tables, for both kinds of transaction.
    pub trait Tables {
        type Raw<'a>: ReadableTable<&'static str, &'static [u8]>
        where
            Self: 'a;
        type Meta<'a>: ReadableTable<&'static str, u64>
        where
            Self: 'a;

        fn raw_table(&self, def: RawTable) -> Result<Self::Raw<'_>, MetaError>;

        fn meta_table(&self) -> Result<Self::Meta<'_>, MetaError>;
    }

    impl Tables for ReadTx {
        type Raw<'a> = redb::ReadOnlyTable<&'static str, &'static [u8]>;
        type Meta<'a> = redb::ReadOnlyTable<&'static str, u64>;

        fn raw_table(&self, def: RawTable) -> Result<Self::Raw<'_>, MetaError> {
            self.open(def)
        }

        fn meta_table(&self) -> Result<Self::Meta<'_>, MetaError> {
            self.tx
                .open_table(META)
                .map_err(|e| MetaError::storage("open table", e))
        }
    }

    impl Tables for WriteTx {
        type Raw<'a> = redb::Table<'a, &'static str, &'static [u8]>;
        type Meta<'a> = redb::Table<'a, &'static str, u64>;

        fn raw_table(&self, def: RawTable) -> Result<Self::Raw<'_>, MetaError> {
            self.open(def)
        }

        fn meta_table(&self) -> Result<Self::Meta<'_>, MetaError> {
            self.tx
                .open_table(META)
                .map_err(|e| MetaError::storage("open table", e))
        }
    }
}

/// Reads, the same in a [`ReadTx`] and (seeing its own changes) a
/// [`WriteTx`].
pub trait Reader: sealed::Tables {
    /// The record at `key`.
    fn get<R: Record>(&self, key: &str) -> Result<Option<R>, MetaError> {
        get_in(&self.raw_table(table_of::<R>())?, key)
    }

    /// Every record whose key starts with `prefix` (all for `""`), in key
    /// order.
    fn scan<R: Record>(&self, prefix: &str) -> Result<Vec<(String, R)>, MetaError> {
        scan_in(&self.raw_table(table_of::<R>())?, prefix)
    }

    /// Keys of index table `table` that start with `prefix`, in order.
    fn index_scan(&self, table: &'static str, prefix: &str) -> Result<Vec<String>, MetaError> {
        let t = self.raw_table(TableDefinition::new(table))?;
        let mut out = Vec::new();
        for row in t
            .range(prefix..)
            .map_err(|e| MetaError::storage("scan", e))?
        {
            let (k, _) = row.map_err(|e| MetaError::storage("scan", e))?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push(k.value().to_owned());
        }
        Ok(out)
    }

    /// A counter or setting of the `meta` table.
    fn meta(&self, name: &str) -> Result<Option<u64>, MetaError> {
        let t = self.meta_table()?;
        Ok(t.get(name)
            .map_err(|e| MetaError::storage("get", e))?
            .map(|v| v.value()))
    }
}

impl Reader for ReadTx {}

impl Reader for WriteTx {}

/// A consistent read-only view of every table.
pub struct ReadTx {
    tx: redb::ReadTransaction,
}

impl std::fmt::Debug for ReadTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadTx")
    }
}

impl ReadTx {
    pub(crate) fn new(tx: redb::ReadTransaction) -> Self {
        ReadTx { tx }
    }

    fn open(
        &self,
        def: RawTable,
    ) -> Result<redb::ReadOnlyTable<&'static str, &'static [u8]>, MetaError> {
        self.tx
            .open_table(def)
            .map_err(|e| MetaError::storage("open table", e))
    }

    pub(crate) fn raw_rows(
        &self,
        table: &'static str,
    ) -> Result<Vec<(String, Vec<u8>)>, MetaError> {
        raw_rows_in(&self.open(TableDefinition::new(table))?)
    }
}

/// The write transaction: every change of one operation, committed at once.
/// Dropping it without [`WriteTx::commit`] discards the changes.
pub struct WriteTx {
    tx: redb::WriteTransaction,
    failed: crate::FirstFailure,
}

impl std::fmt::Debug for WriteTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteTx")
    }
}

impl WriteTx {
    pub(crate) fn new(tx: redb::WriteTransaction, failed: crate::FirstFailure) -> Self {
        WriteTx { tx, failed }
    }

    fn open(
        &self,
        def: RawTable,
    ) -> Result<redb::Table<'_, &'static str, &'static [u8]>, MetaError> {
        self.tx
            .open_table(def)
            .map_err(|e| MetaError::storage("open table", e))
    }

    /// Inserts or replaces the record at `key` (and its index entries).
    pub fn put<R: Record>(&self, key: &str, record: &R) -> Result<(), MetaError> {
        if R::INDEXED {
            let old = self.get::<R>(key)?;
            self.reindex(key, old.as_ref(), Some(record))?;
        }
        let bytes = encode(record);
        self.open(table_of::<R>())?
            .insert(key, bytes.as_slice())
            .map_err(|e| MetaError::storage("insert", e))?;
        Ok(())
    }

    /// Removes the record at `key` (and its index entries); true when there
    /// was one.
    pub fn delete<R: Record>(&self, key: &str) -> Result<bool, MetaError> {
        if R::INDEXED {
            let old = self.get::<R>(key)?;
            self.reindex(key, old.as_ref(), None::<&R>)?;
        }
        let removed = self
            .open(table_of::<R>())?
            .remove(key)
            .map_err(|e| MetaError::storage("remove", e))?
            .is_some();
        Ok(removed)
    }

    /// Removes every record whose key starts with `prefix`; returns how many.
    pub fn delete_prefix<R: Record>(&self, prefix: &str) -> Result<usize, MetaError> {
        let keys: Vec<String> = {
            let table = self.open(table_of::<R>())?;
            let mut keys = Vec::new();
            for row in table
                .range(prefix..)
                .map_err(|e| MetaError::storage("scan", e))?
            {
                let (k, _) = row.map_err(|e| MetaError::storage("scan", e))?;
                if !k.value().starts_with(prefix) {
                    break;
                }
                keys.push(k.value().to_owned());
            }
            keys
        };
        for k in &keys {
            self.delete::<R>(k)?;
        }
        Ok(keys.len())
    }

    /// Moves the index entries of the record at `key` from `old` to `new`.
    fn reindex<R: Record>(
        &self,
        key: &str,
        old: Option<&R>,
        new: Option<&R>,
    ) -> Result<(), MetaError> {
        let before = old.map(|r| r.index_keys(key)).unwrap_or_default();
        let after = new.map(|r| r.index_keys(key)).unwrap_or_default();
        for (table, k) in before.iter().filter(|e| !after.contains(e)) {
            self.open(TableDefinition::new(table))?
                .remove(k.as_str())
                .map_err(|e| MetaError::storage("remove index", e))?;
        }
        for (table, k) in after.iter().filter(|e| !before.contains(e)) {
            self.open(TableDefinition::new(table))?
                .insert(k.as_str(), [].as_slice())
                .map_err(|e| MetaError::storage("insert index", e))?;
        }
        Ok(())
    }

    /// Sets a counter or setting of the `meta` table.
    pub fn set_meta(&self, name: &str, value: u64) -> Result<(), MetaError> {
        let mut t = self
            .tx
            .open_table(META)
            .map_err(|e| MetaError::storage("open table", e))?;
        t.insert(name, value)
            .map_err(|e| MetaError::storage("insert", e))?;
        Ok(())
    }

    /// Removes a counter or setting of the `meta` table.
    pub fn remove_meta(&self, name: &str) -> Result<(), MetaError> {
        let mut t = self
            .tx
            .open_table(META)
            .map_err(|e| MetaError::storage("open table", e))?;
        t.remove(name)
            .map_err(|e| MetaError::storage("remove", e))?;
        Ok(())
    }

    /// Increments the named sequence and returns its new value (first: 1).
    pub fn next_sequence(&self, name: &str) -> Result<u64, MetaError> {
        let next = self.meta(name)?.unwrap_or(0) + 1;
        self.set_meta(name, next)?;
        Ok(next)
    }

    /// Commits without syncing (see [`crate::MetaDb::write_deferred`]).
    pub(crate) fn defer(&mut self) {
        // Refused only for persistent savepoints and multi-process
        // databases, neither of which Strata uses.
        self.tx
            .set_durability(redb::Durability::None)
            .expect("a single-process database without persistent savepoints");
    }

    /// Commits (durably unless made by `write_deferred`).
    pub fn commit(self) -> Result<(), MetaError> {
        self.tx.commit().map_err(|e| {
            let e = MetaError::storage("commit", e);
            // Only the first is kept: later ones are its consequences.
            let _ = self.failed.set(e.to_string());
            e
        })
    }

    pub(crate) fn raw(&self) -> &redb::WriteTransaction {
        &self.tx
    }
}
