//! What the store reports about blobs ([`Info`]) and ingests ([`Status`]).

use std::time::SystemTime;

use strata_core::{Digest, Filterable, Labels};
use strata_metadata::records::{ContentRecord, to_system_time};

/// A committed blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// When it was committed.
    pub created: SystemTime,
    /// When it or its labels last changed.
    pub updated: SystemTime,
    /// Its labels.
    pub labels: Labels,
}

impl Info {
    pub(crate) fn from_record(digest: Digest, r: ContentRecord) -> Self {
        Info {
            digest,
            size: r.size,
            created: to_system_time(r.created),
            updated: to_system_time(r.updated),
            labels: r.labels,
        }
    }
}

impl Filterable for Info {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "digest" => Some(self.digest.to_string()),
            [f] if f == "size" => Some(self.size.to_string()),
            [f, key] if f == "labels" => self.labels.get(key).cloned(),
            _ => None,
        }
    }
}

/// An ingest in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The ingest's ref.
    pub reference: String,
    /// Bytes written so far.
    pub offset: u64,
    /// Expected total size (0 when unknown).
    pub total: u64,
    /// Expected digest, when known.
    pub expected: Option<Digest>,
    /// When the ingest began.
    pub started: SystemTime,
    /// When it was last written to.
    pub updated: SystemTime,
}

impl Filterable for Status {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "ref" => Some(self.reference.clone()),
            [f] if f == "expected" => self.expected.as_ref().map(ToString::to_string),
            _ => None,
        }
    }
}
