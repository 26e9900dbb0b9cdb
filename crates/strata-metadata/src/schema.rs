//! Schema version and migrations. The `meta` table's `schema_version` row
//! says which layout a file has. A new file is built whole beside its name
//! and renamed into place; opening creates every table, runs the migrations
//! from an older version in one write transaction (so a crash leaves the old
//! version intact), and refuses a newer version with an error naming both.

use std::path::Path;

use crate::records::{SettingRecord, SnapshotRecord, TABLES};
use crate::tx::{META, RawTable, Reader, WriteTx};
use crate::{MetaDb, MetaError};

/// The schema version this build writes (2: the `snapshot_children`
/// index; 3: the `settings` table, the snapshot backend by name; 4: lazy
/// snapshots, whose placeholder directories an older build would take for
/// empty layers).
pub const SCHEMA_VERSION: u32 = 4;

const VERSION_ROW: &str = "schema_version";

/// One step from schema `from` to `from + 1`.
pub(crate) struct Migration {
    pub(crate) from: u32,
    pub(crate) run: fn(&WriteTx) -> Result<(), MetaError>,
}

/// The migrations of this build.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        from: 1,
        run: rewrite_snapshots,
    },
    Migration {
        from: 2,
        run: backend_by_name,
    },
    Migration {
        from: 3,
        run: rewrite_snapshots,
    },
];

/// Where schema 2 kept the root's backend (1 overlay, 2 native) and where
/// schema 3 keeps its name.
const BACKEND_ROW: &str = "snapshot_backend";

/// 2 to 3: the root's snapshot backend is a setting holding its name (any
/// backend, an embedder's own too), no longer a code in `meta` that only
/// the two built-in backends had.
fn backend_by_name(tx: &WriteTx) -> Result<(), MetaError> {
    let name = match tx.meta(BACKEND_ROW)? {
        None => return Ok(()),
        Some(1) => "overlay",
        Some(2) => "native",
        Some(code) => {
            return Err(MetaError::Corrupt {
                table: "meta",
                key: BACKEND_ROW.into(),
                reason: format!("unknown snapshot backend code {code}"),
            });
        }
    };
    tx.put(BACKEND_ROW, &SettingRecord { value: name.into() })?;
    tx.remove_meta(BACKEND_ROW)
}

/// Every snapshot row written afresh: 1 to 2 indexes each by its parent
/// (a row written is indexed); 3 to 4 writes each in the record's current
/// encoding (version 2, with `lazy`), so no file of schema 4 mixes
/// encodings.
fn rewrite_snapshots(tx: &WriteTx) -> Result<(), MetaError> {
    for (key, r) in tx.scan::<SnapshotRecord>("")? {
        tx.delete::<SnapshotRecord>(&key)?;
        tx.put(&key, &r)?;
    }
    Ok(())
}

pub(crate) fn open(
    path: &Path,
    version: u32,
    migrations: &[Migration],
) -> Result<MetaDb, MetaError> {
    if !path.exists() {
        create(path, version)?;
    }
    let db = redb::Database::create(path).map_err(|e| database(path, e))?;
    prepare(&db, path, version, migrations)?;
    Ok(MetaDb {
        db,
        path: path.to_path_buf(),
        unsettled: Default::default(),
        failed: Default::default(),
        guard: None,
    })
}

fn database(path: &Path, e: impl Into<redb::Error>) -> MetaError {
    MetaError::Database {
        path: path.to_path_buf(),
        source: Box::new(e.into()),
    }
}

/// Makes a new database at `path` whole or not at all: it is built beside
/// (`meta.redb.new`, tables and version written, synced), then renamed into
/// place and the directory synced. A creation cut short (a failed fsync, a
/// power cut) leaves no half-made file under the real name that would
/// refuse every later open; its leftover is replaced by the next attempt.
fn create(path: &Path, version: u32) -> Result<(), MetaError> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    let fresh = path.with_file_name(name);
    match std::fs::remove_file(&fresh) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(database(&fresh, e)),
        _ => {}
    }
    {
        let db = redb::Database::create(&fresh).map_err(|e| database(&fresh, e))?;
        prepare(&db, &fresh, version, &[])?;
    }
    std::fs::rename(&fresh, path).map_err(|e| database(path, e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| database(dir, e))
}

/// Creates every table, migrates an older schema in one write
/// transaction, refuses a newer one, and records the version.
fn prepare(
    db: &redb::Database,
    path: &Path,
    version: u32,
    migrations: &[Migration],
) -> Result<(), MetaError> {
    let tx = WriteTx::new(
        db.begin_write()
            .map_err(|e| MetaError::storage("begin write", e))?,
        Default::default(),
    );
    for name in TABLES {
        tx.raw()
            .open_table(RawTable::new(name))
            .map_err(|e| MetaError::storage("create table", e))?;
    }
    tx.raw()
        .open_table(META)
        .map_err(|e| MetaError::storage("create table", e))?;
    match tx.meta(VERSION_ROW)? {
        None => {}
        Some(found) if found > u64::from(version) => {
            return Err(MetaError::TooNew {
                path: path.to_path_buf(),
                found: u32::try_from(found).unwrap_or(u32::MAX),
                supported: version,
            });
        }
        Some(found) => {
            let mut at = u32::try_from(found).expect("versions below the supported one fit");
            while at < version {
                let step =
                    migrations
                        .iter()
                        .find(|m| m.from == at)
                        .ok_or_else(|| MetaError::Corrupt {
                            table: "meta",
                            key: VERSION_ROW.into(),
                            reason: format!("no migration from schema version {at}"),
                        })?;
                tracing::info!(from = at, to = at + 1, "migrating metadata schema");
                (step.run)(&tx)?;
                at += 1;
            }
        }
    }
    tx.set_meta(VERSION_ROW, u64::from(version))?;
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::ContentRecord;
    use strata_core::{Classify, ErrorKind};

    fn content(size: u64) -> ContentRecord {
        ContentRecord {
            size,
            created: 1,
            updated: 1,
            labels: Default::default(),
        }
    }

    #[test]
    fn a_new_file_is_built_beside_its_name_and_replaces_a_leftover() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        // What a creation cut short leaves: not a database.
        std::fs::write(dir.path().join("meta.redb.new"), b"half made").unwrap();
        let db = MetaDb::open(&path).unwrap();
        assert_eq!(
            db.read().unwrap().meta(VERSION_ROW).unwrap(),
            Some(u64::from(SCHEMA_VERSION))
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["meta.redb"], "the leftover went");
    }

    #[test]
    fn files_left_for_the_next_open_keep_the_root_marked_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let db = MetaDb::open(&path).unwrap();
            db.mark_open().unwrap();
            db.mark_closed().unwrap();
            assert_eq!(db.last_close().unwrap(), crate::LastClose::Clean);
            db.mark_open().unwrap();
            db.leave_for_next_open();
            db.mark_closed().unwrap();
        }
        let db = MetaDb::open(&path).unwrap();
        assert_eq!(db.last_close().unwrap(), crate::LastClose::Unclean);
    }

    #[test]
    fn new_file_gets_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let db = MetaDb::open(&dir.path().join("meta.redb")).unwrap();
        assert_eq!(
            db.read().unwrap().meta(VERSION_ROW).unwrap(),
            Some(u64::from(SCHEMA_VERSION))
        );
    }

    #[test]
    fn newer_schema_is_refused_naming_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let db = MetaDb::open(&path).unwrap();
            let tx = db.write().unwrap();
            tx.set_meta(VERSION_ROW, 7).unwrap();
            tx.commit().unwrap();
        }
        let err = MetaDb::open(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
        let msg = err.to_string();
        assert!(
            msg.contains("schema version 7")
                && msg.contains(&format!("the {SCHEMA_VERSION} this strata supports")),
            "{msg}"
        );
    }

    fn double_sizes(tx: &WriteTx) -> Result<(), MetaError> {
        for (k, mut r) in tx.scan::<ContentRecord>("")? {
            r.size *= 2;
            tx.put(&k, &r)?;
        }
        Ok(())
    }

    #[test]
    fn older_schema_is_migrated_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let db = open(&path, 1, &[]).unwrap();
            let tx = db.write().unwrap();
            tx.put("sha256:a", &content(5)).unwrap();
            tx.commit().unwrap();
        }
        let steps = [
            Migration {
                from: 1,
                run: double_sizes,
            },
            Migration {
                from: 2,
                run: double_sizes,
            },
        ];
        let db = open(&path, 3, &steps).unwrap();
        let r = db.read().unwrap();
        assert_eq!(r.meta(VERSION_ROW).unwrap(), Some(3));
        assert_eq!(
            r.get::<ContentRecord>("sha256:a").unwrap().unwrap().size,
            20
        );
        drop(r);
        drop(db);
        // Re-opening at the same version runs nothing.
        let db = open(&path, 3, &steps).unwrap();
        assert_eq!(
            db.read()
                .unwrap()
                .get::<ContentRecord>("sha256:a")
                .unwrap()
                .unwrap()
                .size,
            20
        );
    }

    #[test]
    fn schema_1_snapshots_get_their_parent_index_and_the_current_encoding() {
        use crate::records::{SNAPSHOT_CHILDREN, SnapshotKind};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let table = RawTable::new(<SnapshotRecord as crate::Record>::TABLE);
        {
            let db = open(&path, 1, &[]).unwrap();
            let tx = db.write().unwrap();
            for (key, parent) in [("base", None), ("child", Some("base"))] {
                // Bytes as schema 1 wrote them: record version 1 (no
                // `lazy`), no index rows.
                let v1 = (
                    key,
                    SnapshotKind::Committed,
                    parent,
                    strata_core::Labels::new(),
                    1i64,
                    1i64,
                    None::<crate::records::UsageRecord>,
                );
                let mut bytes = vec![1u8];
                bytes.extend(postcard::to_stdvec(&v1).unwrap());
                tx.raw()
                    .open_table(table)
                    .unwrap()
                    .insert(key, bytes.as_slice())
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        let db = open(&path, SCHEMA_VERSION, MIGRATIONS).unwrap();
        let r = db.read().unwrap();
        assert_eq!(
            r.index_scan(SNAPSHOT_CHILDREN, "").unwrap(),
            [crate::keys::join(&["base", "child"])]
        );
        let child = r.get::<SnapshotRecord>("child").unwrap().unwrap();
        assert_eq!(child.parent.as_deref(), Some("base"));
        assert!(!child.lazy);
        let raw = r
            .raw_rows(<SnapshotRecord as crate::Record>::TABLE)
            .unwrap();
        assert!(raw.iter().all(|(_, bytes)| bytes.first() == Some(&2)));
        assert!(db.check().unwrap().is_empty());
    }

    #[test]
    fn schema_2_backend_codes_become_names() {
        for (code, name) in [(1, Some("overlay")), (2, Some("native")), (9, None)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("meta.redb");
            {
                let db = open(&path, 2, &[]).unwrap();
                let tx = db.write().unwrap();
                tx.set_meta(BACKEND_ROW, code).unwrap();
                tx.commit().unwrap();
            }
            match name {
                Some(name) => {
                    let db = open(&path, SCHEMA_VERSION, MIGRATIONS).unwrap();
                    let r = db.read().unwrap();
                    assert_eq!(
                        r.get::<SettingRecord>(BACKEND_ROW).unwrap().unwrap().value,
                        name
                    );
                    assert_eq!(r.meta(BACKEND_ROW).unwrap(), None);
                }
                None => {
                    let err = open(&path, SCHEMA_VERSION, MIGRATIONS).unwrap_err();
                    assert!(
                        err.to_string().contains("unknown snapshot backend code 9"),
                        "{err}"
                    );
                    // The failed migration changed nothing.
                    let db = open(&path, 2, &[]).unwrap();
                    assert_eq!(db.read().unwrap().meta(BACKEND_ROW).unwrap(), Some(9));
                }
            }
        }
    }

    #[test]
    fn missing_migration_leaves_the_file_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        drop(open(&path, 1, &[]).unwrap());
        let err = open(&path, 2, &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("no migration from schema version 1"),
            "{err}"
        );
        let db = open(&path, 1, &[]).unwrap();
        assert_eq!(db.read().unwrap().meta(VERSION_ROW).unwrap(), Some(1));
    }
}
