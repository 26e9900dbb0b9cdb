//! Between Strata's snapshot types and containerd's wire types: infos,
//! kinds, mounts (containerd's flat option form, rendered and read by
//! strata-core), usage and error codes.

use std::collections::HashMap;
use std::path::PathBuf;

use containerd_snapshots as cs;
use containerd_snapshots::api::types::Mount as WireMount;
use containerd_snapshots::tonic::{Code, Status};
use strata_core::{Classify, ErrorKind, Labels, Mount};
use strata_snapshot::{Info, Kind, SnapshotError, Usage};

/// containerd's gRPC code for a Strata error (what its proxy client turns
/// back into `errdefs`).
pub fn status(e: &SnapshotError) -> Status {
    let code = match e.kind() {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Invalid => Code::InvalidArgument,
        ErrorKind::Locked | ErrorKind::Unavailable => Code::Unavailable,
        _ => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// A Strata error for a gRPC status (the client side).
pub fn error(s: &Status) -> SnapshotError {
    let m = s.message().to_owned();
    match s.code() {
        Code::NotFound => SnapshotError::NotFound(m),
        Code::AlreadyExists => SnapshotError::AlreadyExists(m),
        Code::FailedPrecondition => SnapshotError::FailedPrecondition {
            key: String::new(),
            reason: m,
        },
        Code::InvalidArgument => SnapshotError::Invalid(m),
        _ => SnapshotError::Task(format!("{:?}: {m}", s.code())),
    }
}

pub fn kind_to_wire(k: Kind) -> cs::Kind {
    match k {
        Kind::Active => cs::Kind::Active,
        Kind::View => cs::Kind::View,
        Kind::Committed => cs::Kind::Committed,
    }
}

pub fn kind_from_wire(k: &cs::Kind) -> Option<Kind> {
    match k {
        cs::Kind::Active => Some(Kind::Active),
        cs::Kind::View => Some(Kind::View),
        cs::Kind::Committed => Some(Kind::Committed),
        cs::Kind::Unknown => None,
    }
}

pub fn info_to_wire(i: Info) -> cs::Info {
    cs::Info {
        kind: kind_to_wire(i.kind),
        name: i.name,
        parent: i.parent.unwrap_or_default(),
        labels: i.labels.into_iter().collect(),
        created_at: i.created,
        updated_at: i.updated,
    }
}

/// containerd's info as Strata's; an unknown kind is invalid.
pub fn info_from_wire(i: cs::Info) -> Result<Info, SnapshotError> {
    let kind = kind_from_wire(&i.kind)
        .ok_or_else(|| SnapshotError::Invalid(format!("snapshot {:?}: unknown kind", i.name)))?;
    Ok(Info {
        kind,
        parent: Some(i.parent).filter(|p| !p.is_empty()),
        name: i.name,
        labels: i.labels.into_iter().collect(),
        created: i.created_at,
        updated: i.updated_at,
    })
}

pub fn labels(l: HashMap<String, String>) -> Labels {
    l.into_iter().collect()
}

pub fn parent(p: &str) -> Option<&str> {
    Some(p).filter(|p| !p.is_empty())
}

pub fn mount_to_wire(m: &Mount) -> WireMount {
    WireMount {
        r#type: m.kind.name().to_owned(),
        source: m.source.display().to_string(),
        target: String::new(),
        options: m.flat_options(),
    }
}

pub fn mount_from_wire(m: &WireMount) -> Mount {
    Mount::from_flat(&m.r#type, PathBuf::from(&m.source), &m.options)
}

pub fn usage_to_wire(u: Usage) -> cs::Usage {
    cs::Usage {
        size: i64::try_from(u.size).unwrap_or(i64::MAX),
        inodes: i64::try_from(u.inodes).unwrap_or(i64::MAX),
    }
}
