//! What a snapshotter reports: [`Info`], [`Kind`] and [`Usage`].

use std::time::SystemTime;

use strata_core::{Filterable, Labels};
use strata_metadata::records::{SnapshotKind, SnapshotRecord, UsageRecord, to_system_time};

/// The kind of a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Writable; may be committed.
    Active,
    /// Read-only view of a parent; cannot be committed.
    View,
    /// Immutable; may be a parent.
    Committed,
}

impl Kind {
    /// `active`, `view` or `committed`, as filters and output spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Active => "active",
            Kind::View => "view",
            Kind::Committed => "committed",
        }
    }

    pub(crate) fn from_record(k: SnapshotKind) -> Self {
        match k {
            SnapshotKind::Active => Kind::Active,
            SnapshotKind::View => Kind::View,
            SnapshotKind::Committed => Kind::Committed,
        }
    }

    pub(crate) fn to_record(self) -> SnapshotKind {
        match self {
            Kind::Active => SnapshotKind::Active,
            Kind::View => SnapshotKind::View,
            Kind::Committed => SnapshotKind::Committed,
        }
    }
}

/// A snapshot's public description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// Its key (the name, once committed).
    pub name: String,
    /// Its parent's key.
    pub parent: Option<String>,
    /// Active, view or committed.
    pub kind: Kind,
    /// Labels.
    pub labels: Labels,
    /// Creation time.
    pub created: SystemTime,
    /// Last change.
    pub updated: SystemTime,
}

impl Info {
    pub(crate) fn from_record(name: &str, r: &SnapshotRecord) -> Self {
        Info {
            name: name.to_owned(),
            parent: r.parent.clone(),
            kind: Kind::from_record(r.kind),
            labels: r.labels.clone(),
            created: to_system_time(r.created),
            updated: to_system_time(r.updated),
        }
    }
}

impl Filterable for Info {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "name" => Some(self.name.clone()),
            [f] if f == "parent" => Some(self.parent.clone().unwrap_or_default()),
            [f] if f == "kind" => Some(self.kind.as_str().to_owned()),
            [f, key] if f == "labels" => self.labels.get(key).cloned(),
            _ => None,
        }
    }
}

/// Disk usage of a snapshot's own layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Usage {
    /// Bytes allocated.
    pub size: u64,
    /// Inodes (hard links counted once).
    pub inodes: u64,
}

impl From<UsageRecord> for Usage {
    fn from(u: UsageRecord) -> Self {
        Usage {
            size: u.size,
            inodes: u.inodes,
        }
    }
}

impl From<Usage> for UsageRecord {
    fn from(u: Usage) -> Self {
        UsageRecord {
            size: u.size,
            inodes: u.inodes,
        }
    }
}
