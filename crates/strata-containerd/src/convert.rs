//! Between Strata's snapshot types and containerd's wire types: infos,
//! kinds, mounts (containerd's flat option form, rendered and read by
//! strata-core), usage and error codes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::SystemTime;

use strata_api::containerd::services::snapshots::v1 as wire;
use strata_api::containerd::types::Mount as WireMount;
use strata_core::{Classify, ErrorKind, Labels, Mount};
use strata_snapshot::{Info, Kind, SnapshotError, Usage};
use tonic::{Code, Status};

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

fn kind_to_wire(k: Kind) -> wire::Kind {
    match k {
        Kind::Active => wire::Kind::Active,
        Kind::View => wire::Kind::View,
        Kind::Committed => wire::Kind::Committed,
    }
}

fn time_from_wire(
    name: &str,
    t: Option<prost_types::Timestamp>,
) -> Result<SystemTime, SnapshotError> {
    match t {
        None => Ok(SystemTime::UNIX_EPOCH),
        Some(t) => SystemTime::try_from(t)
            .map_err(|e| SnapshotError::Invalid(format!("snapshot {name:?}: bad time: {e}"))),
    }
}

pub fn info_to_wire(i: Info) -> wire::Info {
    wire::Info {
        kind: kind_to_wire(i.kind).into(),
        name: i.name,
        parent: i.parent.unwrap_or_default(),
        labels: i.labels.into_iter().collect(),
        created_at: Some(i.created.into()),
        updated_at: Some(i.updated.into()),
    }
}

/// containerd's info as Strata's; an unknown kind or a time out of range
/// is invalid.
pub fn info_from_wire(i: wire::Info) -> Result<Info, SnapshotError> {
    let kind = match wire::Kind::try_from(i.kind) {
        Ok(wire::Kind::Active) => Kind::Active,
        Ok(wire::Kind::View) => Kind::View,
        Ok(wire::Kind::Committed) => Kind::Committed,
        Ok(wire::Kind::Unknown) | Err(_) => {
            return Err(SnapshotError::Invalid(format!(
                "snapshot {:?}: unknown kind {}",
                i.name, i.kind
            )));
        }
    };
    Ok(Info {
        kind,
        created: time_from_wire(&i.name, i.created_at)?,
        updated: time_from_wire(&i.name, i.updated_at)?,
        parent: Some(i.parent).filter(|p| !p.is_empty()),
        name: i.name,
        labels: i.labels.into_iter().collect(),
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

pub fn usage_to_wire(u: Usage) -> wire::UsageResponse {
    wire::UsageResponse {
        size: i64::try_from(u.size).unwrap_or(i64::MAX),
        inodes: i64::try_from(u.inodes).unwrap_or(i64::MAX),
    }
}
