//! The integrity check: every row decodes, and every reference between
//! tables points at a row that exists. It reports all violations rather than
//! stopping at the first.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::MetaError;
use crate::codec::{Record, decode};
use crate::keys;
use crate::records::*;
use crate::tx::{ReadTx, Reader};

/// One broken rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Table holding the offending row.
    pub table: &'static str,
    /// Its key (composite parts shown joined with `/`).
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}: {}", self.table, self.key, self.problem)
    }
}

struct Checker<'a> {
    tx: &'a ReadTx,
    out: Vec<Violation>,
}

impl Checker<'_> {
    fn report(&mut self, table: &'static str, key: &str, problem: impl Into<String>) {
        self.out.push(Violation {
            table,
            key: key.replace(keys::SEP, "/"),
            problem: problem.into(),
        });
    }

    /// Decodes every row of `R`'s table, reporting those that fail.
    fn rows<R: Record>(&mut self) -> Result<BTreeMap<String, R>, MetaError> {
        let mut out = BTreeMap::new();
        for (key, bytes) in self.tx.raw_rows(R::TABLE)? {
            match decode::<R>(&bytes) {
                Ok(r) => {
                    out.insert(key, r);
                }
                Err(reason) => self.report(R::TABLE, &key, format!("undecodable record: {reason}")),
            }
        }
        Ok(out)
    }

    /// Reports keys of `R`'s table that do not have `parts` parts.
    fn composite<R: Record>(
        &mut self,
        parts: usize,
    ) -> Result<Vec<(String, Vec<String>)>, MetaError> {
        let rows = self.rows::<R>()?;
        let mut out = Vec::new();
        for key in rows.keys() {
            let split: Vec<String> = keys::split(key).into_iter().map(str::to_owned).collect();
            if split.len() == parts {
                out.push((key.clone(), split));
            } else {
                self.report(
                    R::TABLE,
                    key,
                    format!("key has {} parts, expected {parts}", split.len()),
                );
            }
        }
        Ok(out)
    }
}

pub(crate) fn run(tx: &ReadTx) -> Result<Vec<Violation>, MetaError> {
    let mut c = Checker {
        tx,
        out: Vec::new(),
    };
    let content = c.rows::<ContentRecord>()?;
    for key in content.keys() {
        if let Err(e) = strata_core::Digest::parse(key) {
            c.report(ContentRecord::TABLE, key, e.to_string());
        }
    }
    c.rows::<IngestRecord>()?;
    c.rows::<GcRecord>()?;
    c.rows::<SettingRecord>()?;

    let snapshots = c.rows::<SnapshotRecord>()?;
    let mut ids = BTreeMap::new();
    for (key, s) in &snapshots {
        if let Some(other) = ids.insert(s.id.as_str(), key) {
            c.report(
                SnapshotRecord::TABLE,
                key,
                format!("id {} is also used by {other:?}", s.id),
            );
        }
        if let Some(parent) = &s.parent {
            match snapshots.get(parent) {
                None => c.report(
                    SnapshotRecord::TABLE,
                    key,
                    format!("parent {parent:?} does not exist"),
                ),
                Some(p) if p.kind != SnapshotKind::Committed => c.report(
                    SnapshotRecord::TABLE,
                    key,
                    format!("parent {parent:?} is not committed"),
                ),
                Some(_) => {}
            }
        }
        if s.lazy && s.kind != SnapshotKind::Committed {
            c.report(SnapshotRecord::TABLE, key, "lazy, but not committed");
        }
    }

    let indexed: BTreeSet<String> =
        c.tx.index_scan(SNAPSHOT_CHILDREN, "")?
            .into_iter()
            .collect();
    let expected: BTreeSet<String> = snapshots
        .iter()
        .filter_map(|(k, s)| s.parent.as_ref().map(|p| keys::join(&[p, k])))
        .collect();
    for missing in expected.difference(&indexed) {
        c.report(
            SNAPSHOT_CHILDREN,
            missing,
            "snapshot missing from the parent index",
        );
    }
    for extra in indexed.difference(&expected) {
        c.report(
            SNAPSHOT_CHILDREN,
            extra,
            "index entry of no such snapshot and parent",
        );
    }

    let leases: BTreeSet<String> = c.rows::<LeaseRecord>()?.into_keys().collect();
    for (key, parts) in c.composite::<LeaseResourceRecord>(4)? {
        let lease = keys::join(&[&parts[0], &parts[1]]);
        if !leases.contains(&lease) {
            c.report(
                LeaseResourceRecord::TABLE,
                &key,
                format!(
                    "lease {:?} of namespace {:?} does not exist",
                    parts[1], parts[0]
                ),
            );
        }
    }

    let refs = c.rows::<RefRecord>()?;
    for (id, r) in &refs {
        if !snapshots.contains_key(&r.snapshot) {
            c.report(
                RefRecord::TABLE,
                id,
                format!("snapshot {:?} does not exist", r.snapshot),
            );
        }
    }
    for (key, parts) in c.composite::<RefIndexRecord>(2)? {
        let (index, id) = (&parts[0], &parts[1]);
        match refs.get(id) {
            None => c.report(
                RefIndexRecord::TABLE,
                &key,
                format!("ref {id:?} does not exist"),
            ),
            Some(r)
                if !r
                    .values
                    .values()
                    .any(|v| v.index.as_deref() == Some(index.as_str())) =>
            {
                c.report(
                    RefIndexRecord::TABLE,
                    &key,
                    format!("ref {id:?} has no value indexed {index:?}"),
                )
            }
            Some(_) => {}
        }
    }

    let import_blob: Vec<_> = c
        .rows::<ImportByBlobRecord>()?
        .into_iter()
        .map(|(k, r)| (ImportByBlobRecord::TABLE, k, r.snapshot))
        .collect();
    let import_diff: Vec<_> = c
        .rows::<ImportByDiffRecord>()?
        .into_iter()
        .map(|(k, r)| (ImportByDiffRecord::TABLE, k, r.snapshot))
        .collect();
    for (table, key, snapshot) in import_blob.into_iter().chain(import_diff) {
        let parts = keys::split(&key);
        if parts.len() != 2 {
            c.report(
                table,
                &key,
                format!("key has {} parts, expected 2", parts.len()),
            );
            continue;
        }
        if !parts[0].is_empty() && !snapshots.contains_key(parts[0]) {
            c.report(
                table,
                &key,
                format!("parent snapshot {:?} does not exist", parts[0]),
            );
        }
        if !snapshots.contains_key(&snapshot) {
            c.report(table, &key, format!("snapshot {snapshot:?} does not exist"));
        }
    }

    for (key, parts) in c.composite::<SnapshotContentRecord>(2)? {
        if !snapshots.contains_key(&parts[0]) {
            c.report(
                SnapshotContentRecord::TABLE,
                &key,
                format!("snapshot {:?} does not exist", parts[0]),
            );
        }
        if !content.contains_key(&parts[1]) {
            c.report(
                SnapshotContentRecord::TABLE,
                &key,
                format!("content {:?} does not exist", parts[1]),
            );
        }
    }
    Ok(c.out)
}
