//! The record types of every table, with their table names and encoding
//! versions. Keys are strings; composite keys use [`crate::keys`].
//!
//! | table | key | record |
//! |---|---|---|
//! | `content` | digest | [`ContentRecord`] |
//! | `ingests` | ingest ref | [`IngestRecord`] |
//! | `snapshots` | snapshot key | [`SnapshotRecord`] |
//! | `leases` | namespace, lease id | [`LeaseRecord`] |
//! | `lease_resources` | namespace, lease id, type, resource id | [`LeaseResourceRecord`] |
//! | `refs` | ref id | [`RefRecord`] |
//! | `ref_index` | index value, ref id | [`RefIndexRecord`] |
//! | `import_by_blob` | parent snapshot, blob digest | [`ImportByBlobRecord`] |
//! | `import_by_diff` | parent snapshot, diffID | [`ImportByDiffRecord`] |
//! | `snapshot_content` | snapshot, digest | [`SnapshotContentRecord`] |
//! | `gc` | name | [`GcRecord`] |
//! | `settings` | name | [`SettingRecord`] |
//! | `snapshot_children` | parent, child | (index of `snapshots` by parent) |

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use strata_core::Labels;

use crate::codec::Record;

/// Nanoseconds since the Unix epoch, as stored in records.
pub type Nanos = i64;

/// The current time in [`Nanos`].
pub fn now() -> Nanos {
    from_system_time(SystemTime::now())
}

/// Converts a `SystemTime` (clamped to the representable range).
pub fn from_system_time(t: SystemTime) -> Nanos {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

/// Converts back to a `SystemTime`.
pub fn to_system_time(n: Nanos) -> SystemTime {
    if n >= 0 {
        UNIX_EPOCH + Duration::from_nanos(n.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_nanos(n.unsigned_abs())
    }
}

/// A committed blob of the content store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentRecord {
    /// Size in bytes.
    pub size: u64,
    /// When it was committed.
    pub created: Nanos,
    /// When it or its labels last changed.
    pub updated: Nanos,
    /// Labels.
    pub labels: Labels,
}

impl Record for ContentRecord {
    const TABLE: &'static str = "content";
    const VERSION: u8 = 1;
}

/// An ingest in progress: the partial data lives in `content/ingest/<id>/`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestRecord {
    /// Directory name under `content/ingest/`.
    pub id: String,
    /// Expected total size, when the writer was told.
    pub expected_size: Option<u64>,
    /// Expected digest, when the writer was told.
    pub expected: Option<String>,
    /// When the ingest began.
    pub started: Nanos,
    /// When it was last written to.
    pub updated: Nanos,
}

impl Record for IngestRecord {
    const TABLE: &'static str = "ingests";
    const VERSION: u8 = 1;
}

/// The kind of a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SnapshotKind {
    /// Writable, may be committed.
    Active,
    /// Read-only view of a parent.
    View,
    /// Immutable, may be a parent.
    Committed,
}

/// Disk usage of a snapshot's own layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Bytes.
    pub size: u64,
    /// Inodes.
    pub inodes: u64,
}

/// A snapshot's bookkeeping (the directory work is the backend's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Random id: the directory name under `snapshots/`.
    pub id: String,
    /// Active, view or committed.
    pub kind: SnapshotKind,
    /// Key of the parent snapshot.
    pub parent: Option<String>,
    /// Labels.
    pub labels: Labels,
    /// Creation time.
    pub created: Nanos,
    /// Last change.
    pub updated: Nanos,
    /// Usage fixed at commit.
    pub usage: Option<UsageRecord>,
    /// A committed snapshot whose layer has not been fetched yet (an image
    /// pulled lazily): its directory is an empty placeholder, which the
    /// snapshot store never hands out as the layer's tree (v2).
    pub lazy: bool,
}

/// A [`SnapshotRecord`] as version 1 encoded it: no `lazy`.
#[derive(Deserialize)]
struct SnapshotRecordV1 {
    id: String,
    kind: SnapshotKind,
    parent: Option<String>,
    labels: Labels,
    created: Nanos,
    updated: Nanos,
    usage: Option<UsageRecord>,
}

/// Index table of snapshots by parent: key (parent, child), no value.
pub const SNAPSHOT_CHILDREN: &str = "snapshot_children";

impl Record for SnapshotRecord {
    const TABLE: &'static str = "snapshots";
    const VERSION: u8 = 2;
    const INDEXED: bool = true;

    fn upgrade(version: u8, payload: &[u8]) -> Result<Self, String> {
        if version != 1 {
            return Err(format!("no upgrade from record version {version}"));
        }
        let v1: SnapshotRecordV1 = postcard::from_bytes(payload).map_err(|e| e.to_string())?;
        Ok(SnapshotRecord {
            id: v1.id,
            kind: v1.kind,
            parent: v1.parent,
            labels: v1.labels,
            created: v1.created,
            updated: v1.updated,
            usage: v1.usage,
            lazy: false,
        })
    }

    fn index_keys(&self, key: &str) -> Vec<(&'static str, String)> {
        self.parent
            .iter()
            .map(|p| (SNAPSHOT_CHILDREN, crate::keys::join(&[p, key])))
            .collect()
    }
}

/// A lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Creation time.
    pub created: Nanos,
    /// Labels (`containerd.io/gc.expire`, `containerd.io/gc.flat`, ...).
    pub labels: Labels,
}

impl Record for LeaseRecord {
    const TABLE: &'static str = "leases";
    const VERSION: u8 = 1;
}

/// A resource held by a lease; the key says which.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LeaseResourceRecord {}

impl Record for LeaseResourceRecord {
    const TABLE: &'static str = "lease_resources";
    const VERSION: u8 = 1;
}

/// A value stored on a ref, optionally indexed for prefix search.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefValue {
    /// Index string (searchable by prefix), if any.
    pub index: Option<String>,
    /// The JSON-encoded value.
    pub value: Vec<u8>,
}

/// A cache ref's metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefRecord {
    /// The snapshot key the ref stands for.
    pub snapshot: String,
    /// Named values (description, created-at, blob, ...).
    pub values: BTreeMap<String, RefValue>,
}

impl Record for RefRecord {
    const TABLE: &'static str = "refs";
    const VERSION: u8 = 1;
}

/// Index entry: the key is (index value, ref id).
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RefIndexRecord {}

impl Record for RefIndexRecord {
    const TABLE: &'static str = "ref_index";
    const VERSION: u8 = 1;
}

/// The snapshot a layer blob was imported into on a parent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportByBlobRecord {
    /// Snapshot key.
    pub snapshot: String,
}

impl Record for ImportByBlobRecord {
    const TABLE: &'static str = "import_by_blob";
    const VERSION: u8 = 1;
}

/// The snapshot a layer diffID was imported into on a parent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportByDiffRecord {
    /// Snapshot key.
    pub snapshot: String,
}

impl Record for ImportByDiffRecord {
    const TABLE: &'static str = "import_by_diff";
    const VERSION: u8 = 1;
}

/// Link between a snapshot and a blob that describes it.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SnapshotContentRecord {}

impl Record for SnapshotContentRecord {
    const TABLE: &'static str = "snapshot_content";
    const VERSION: u8 = 1;
}

/// Garbage-collector bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GcRecord {
    /// Mutations since the last collection.
    pub mutations: u64,
    /// When the last collection finished.
    pub last_run: Option<Nanos>,
}

impl Record for GcRecord {
    const TABLE: &'static str = "gc";
    const VERSION: u8 = 1;
}

/// A setting of the root, by name: `snapshot_backend` holds the name of
/// the backend the root was made with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingRecord {
    /// The setting's value.
    pub value: String,
}

impl Record for SettingRecord {
    const TABLE: &'static str = "settings";
    const VERSION: u8 = 1;
}

/// Every record and index table, for creation at open and for `check`.
pub const TABLES: [&str; 13] = [
    SNAPSHOT_CHILDREN,
    ContentRecord::TABLE,
    IngestRecord::TABLE,
    SnapshotRecord::TABLE,
    LeaseRecord::TABLE,
    LeaseResourceRecord::TABLE,
    RefRecord::TABLE,
    RefIndexRecord::TABLE,
    ImportByBlobRecord::TABLE,
    ImportByDiffRecord::TABLE,
    SnapshotContentRecord::TABLE,
    GcRecord::TABLE,
    SettingRecord::TABLE,
];
