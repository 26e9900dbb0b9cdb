//! Ref metadata, durable in the `refs` and `ref_index` tables: the seed's
//! keys (description, times, record type, blob, diffID, ...) as JSON
//! values, callers' own values with an optional index string (searchable
//! exactly or by prefix), and external byte values.
//!
//! Unlike the seed, which keeps this in memory and loses it on restart,
//! every change is one write transaction. Two keys of one record may share
//! an index string; the record leaves that index only when no key has it
//! any more (the seed drops it when either is cleared).

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;
use serde::de::DeserializeOwned;
use strata_core::Digest;
use strata_metadata::records::{
    RefIndexRecord, RefRecord, RefValue, from_system_time, to_system_time,
};
use strata_metadata::{Reader, WriteTx, keys};

use crate::error::{CacheError, Result};

/// `snapshot.size`: cached size in bytes (absent or -1: unknown).
pub const SIZE: &str = "snapshot.size";
/// `cache.description`.
pub const DESCRIPTION: &str = "cache.description";
/// `cache.createdAt`: Unix nanoseconds.
pub const CREATED_AT: &str = "cache.createdAt";
/// `cache.lastUsedAt`: Unix nanoseconds.
pub const LAST_USED_AT: &str = "cache.lastUsedAt";
/// `cache.usageCount`.
pub const USAGE_COUNT: &str = "cache.usageCount";
/// `cache.recordType`.
pub const RECORD_TYPE: &str = "cache.recordType";
/// `snapshot.committed`: false for a mutable record.
pub const COMMITTED: &str = "snapshot.committed";
/// `cache.diffID`.
pub const DIFF_ID: &str = "cache.diffID";
/// `cache.blob`.
pub const BLOB: &str = "cache.blob";
/// `cache.mediatype`.
pub const MEDIA_TYPE: &str = "cache.mediatype";
/// `cache.blobsize`.
pub const BLOB_SIZE: &str = "cache.blobsize";
/// `cache.imageRefs`.
pub const IMAGE_REFS: &str = "cache.imageRefs";
/// `cache.layer.urls`.
pub const URLS: &str = "cache.layer.urls";

/// Keys of external values start with this (a NUL, which no caller key
/// may contain), so they never collide with JSON values.
const EXTERNAL: &str = "\0ext/";

/// What a record is used for (BuildKit's usage record types).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum RecordType {
    /// Ordinary layers and results.
    #[default]
    Regular,
    /// The engine's own bookkeeping.
    Internal,
    /// Frontend state.
    Frontend,
    /// A local source.
    SourceLocal,
    /// A git checkout.
    SourceGitCheckout,
    /// A cache mount: mutable refs of this type share one mount.
    CacheMount,
    /// Any other type, kept as given.
    Other(String),
}

impl RecordType {
    /// The stored name.
    pub fn as_str(&self) -> &str {
        match self {
            RecordType::Regular => "regular",
            RecordType::Internal => "internal",
            RecordType::Frontend => "frontend",
            RecordType::SourceLocal => "source.local",
            RecordType::SourceGitCheckout => "source.git.checkout",
            RecordType::CacheMount => "exec.cachemount",
            RecordType::Other(s) => s,
        }
    }

    /// Parses a stored name (unknown names are kept).
    pub fn parse(s: &str) -> RecordType {
        match s {
            "regular" | "" => RecordType::Regular,
            "internal" => RecordType::Internal,
            "frontend" => RecordType::Frontend,
            "source.local" => RecordType::SourceLocal,
            "source.git.checkout" => RecordType::SourceGitCheckout,
            "exec.cachemount" => RecordType::CacheMount,
            other => RecordType::Other(other.to_owned()),
        }
    }
}

/// A JSON value with an optional index string (the seed's `Value`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    /// The JSON encoding.
    pub json: Vec<u8>,
    /// The index string; empty for none.
    pub index: String,
}

impl Value {
    /// Encodes `v` with no index.
    pub fn new(v: &impl Serialize) -> Result<Value> {
        let json = serde_json::to_vec(v)
            .map_err(|e| CacheError::invalid("metadata value", e.to_string()))?;
        Ok(Value {
            json,
            index: String::new(),
        })
    }

    /// Decodes the value.
    pub fn unmarshal<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.json)
            .map_err(|e| CacheError::invalid("metadata value", e.to_string()))
    }
}

/// A read-only copy of one record's metadata (the seed's `RefMetadata`
/// getters; setters live on the refs).
#[derive(Clone, Debug)]
pub struct RefMetadata {
    id: String,
    pub(crate) record: RefRecord,
}

impl RefMetadata {
    pub(crate) fn new(id: &str, record: RefRecord) -> RefMetadata {
        RefMetadata {
            id: id.to_owned(),
            record,
        }
    }

    /// The record's id (the snapshot id).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The snapshot the record stands for.
    pub fn snapshot_id(&self) -> &str {
        &self.record.snapshot
    }

    fn decode<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.record
            .values
            .get(key)
            .and_then(|v| serde_json::from_slice(&v.value).ok())
    }

    /// A copy of the value at `key`.
    pub fn get(&self, key: &str) -> Option<Value> {
        self.record.values.get(key).map(|v| Value {
            json: v.value.clone(),
            index: v.index.clone().unwrap_or_default(),
        })
    }

    /// The string at `key`, or `""`.
    pub fn get_string(&self, key: &str) -> String {
        self.decode(key).unwrap_or_default()
    }

    /// The external bytes at `key`.
    pub fn get_external(&self, key: &str) -> Option<Vec<u8>> {
        self.record
            .values
            .get(&format!("{EXTERNAL}{key}"))
            .map(|v| v.value.clone())
    }

    /// The description.
    pub fn description(&self) -> String {
        self.get_string(DESCRIPTION)
    }

    /// When the record was made.
    pub fn created_at(&self) -> Option<SystemTime> {
        self.decode::<i64>(CREATED_AT)
            .filter(|&n| n != 0)
            .map(to_system_time)
    }

    /// When an immutable ref of it was last released.
    pub fn last_used_at(&self) -> Option<SystemTime> {
        self.decode::<i64>(LAST_USED_AT)
            .filter(|&n| n != 0)
            .map(to_system_time)
    }

    /// How many times an immutable ref of it was released.
    pub fn usage_count(&self) -> u64 {
        self.decode(USAGE_COUNT).unwrap_or(0)
    }

    /// The record type.
    pub fn record_type(&self) -> RecordType {
        RecordType::parse(&self.get_string(RECORD_TYPE))
    }

    /// False for a mutable record.
    pub fn is_committed(&self) -> bool {
        self.decode(COMMITTED).unwrap_or(false)
    }

    /// The cached size, when known.
    pub fn size(&self) -> Option<u64> {
        self.decode::<i64>(SIZE).and_then(|s| u64::try_from(s).ok())
    }

    fn digest(&self, key: &str) -> Option<Digest> {
        Digest::parse(&self.get_string(key)).ok()
    }

    /// The layer blob's digest.
    pub fn blob(&self) -> Option<Digest> {
        self.digest(BLOB)
    }

    /// The uncompressed layer's digest.
    pub fn diff_id(&self) -> Option<Digest> {
        self.digest(DIFF_ID)
    }

    /// The blob's media type.
    pub fn media_type(&self) -> String {
        self.get_string(MEDIA_TYPE)
    }

    /// The blob's size, when known.
    pub fn blob_size(&self) -> Option<u64> {
        self.decode::<i64>(BLOB_SIZE)
            .and_then(|s| u64::try_from(s).ok())
    }

    /// Image references recorded on it.
    pub fn image_refs(&self) -> Vec<String> {
        self.decode(IMAGE_REFS).unwrap_or_default()
    }

    /// The blob's download URLs (non-distributable layers).
    pub fn urls(&self) -> Vec<String> {
        self.decode(URLS).unwrap_or_default()
    }
}

impl strata_core::Filterable for RefMetadata {
    fn field(&self, path: &[String]) -> Option<String> {
        let [f] = path else { return None };
        Some(match f.as_str() {
            "id" => self.id.clone(),
            "type" | "record-type" => self.record_type().as_str().to_owned(),
            "description" => self.description(),
            "mutable" => (!self.is_committed()).to_string(),
            "blob" => self.blob()?.to_string(),
            "diffid" | "diff-id" => self.diff_id()?.to_string(),
            _ => return None,
        })
    }
}

/// Changes to one record, applied in one write transaction by
/// [`update_record`].
#[derive(Debug, Default)]
pub(crate) struct Edit {
    sets: Vec<(String, Option<RefValue>)>,
    appends: Vec<(String, Vec<String>)>,
    unindex: Vec<String>,
}

impl Edit {
    pub(crate) fn set(mut self, key: &str, v: &impl Serialize) -> Edit {
        let value = serde_json::to_vec(v).expect("metadata values serialize");
        self.sets
            .push((key.to_owned(), Some(RefValue { index: None, value })));
        self
    }

    pub(crate) fn set_value(mut self, key: &str, v: Option<Value>) -> Edit {
        let v = v.map(|v| RefValue {
            index: Some(v.index).filter(|i| !i.is_empty()),
            value: v.json,
        });
        self.sets.push((key.to_owned(), v));
        self
    }

    pub(crate) fn set_external(mut self, key: &str, bytes: Vec<u8>) -> Edit {
        self.sets.push((
            format!("{EXTERNAL}{key}"),
            Some(RefValue {
                index: None,
                value: bytes,
            }),
        ));
        self
    }

    pub(crate) fn remove(mut self, key: &str) -> Edit {
        self.sets.push((key.to_owned(), None));
        self
    }

    /// Appends `values` not already present to the string list at `key`.
    pub(crate) fn append(mut self, key: &str, values: &[String]) -> Edit {
        if !values.is_empty() {
            self.appends.push((key.to_owned(), values.to_vec()));
        }
        self
    }

    /// Drops the record from index `index` (the seed's ClearValueAndIndex
    /// second half).
    pub(crate) fn unindex(mut self, index: String) -> Edit {
        self.unindex.push(index);
        self
    }

    /// Applies the sets and appends to `record` in memory (dropping an
    /// index entry needs the transaction: see [`apply_edit`]).
    pub(crate) fn apply_to(&self, record: &mut RefRecord) {
        for (key, v) in &self.sets {
            match v {
                Some(v) => record.values.insert(key.clone(), v.clone()),
                None => record.values.remove(key),
            };
        }
        for (key, values) in &self.appends {
            let mut list: Vec<String> = record
                .values
                .get(key)
                .and_then(|v| serde_json::from_slice(&v.value).ok())
                .unwrap_or_default();
            let mut changed = false;
            for v in values {
                if !list.contains(v) {
                    list.push(v.clone());
                    changed = true;
                }
            }
            if changed {
                let value = serde_json::to_vec(&list).expect("string lists serialize");
                record
                    .values
                    .insert(key.clone(), RefValue { index: None, value });
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.sets.is_empty() && self.appends.is_empty() && self.unindex.is_empty()
    }
}

pub(crate) fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() || key.contains('\0') {
        return Err(CacheError::invalid(
            key,
            "metadata keys are non-empty and have no NUL byte",
        ));
    }
    Ok(())
}

fn indexes(values: &BTreeMap<String, RefValue>) -> std::collections::BTreeSet<String> {
    values.values().filter_map(|v| v.index.clone()).collect()
}

/// Writes `record` as ref `id`, keeping `ref_index` in step with the
/// indexes its values had (`before`) and have now.
pub(crate) fn put_record(
    tx: &WriteTx,
    id: &str,
    before: Option<&RefRecord>,
    record: &RefRecord,
) -> Result<()> {
    let old = before.map(|r| indexes(&r.values)).unwrap_or_default();
    let new = indexes(&record.values);
    for gone in old.difference(&new) {
        tx.delete::<RefIndexRecord>(&keys::join(&[gone, id]))?;
    }
    for added in new.difference(&old) {
        if !keys::valid_part(added) {
            return Err(CacheError::invalid(id, "index strings have no NUL byte"));
        }
        tx.put(&keys::join(&[added, id]), &RefIndexRecord {})?;
    }
    tx.put(id, record)?;
    Ok(())
}

/// Deletes ref `id` and its index entries.
pub(crate) fn delete_record(tx: &WriteTx, id: &str) -> Result<Option<RefRecord>> {
    let Some(r) = tx.get::<RefRecord>(id)? else {
        return Ok(None);
    };
    for index in indexes(&r.values) {
        tx.delete::<RefIndexRecord>(&keys::join(&[&index, id]))?;
    }
    tx.delete::<RefRecord>(id)?;
    Ok(Some(r))
}

/// Applies `edit` to ref `id` inside `tx`.
pub(crate) fn apply_edit(tx: &WriteTx, id: &str, edit: Edit) -> Result<RefRecord> {
    let before = tx
        .get::<RefRecord>(id)?
        .ok_or_else(|| CacheError::NotFound(id.to_owned()))?;
    let mut record = before.clone();
    edit.apply_to(&mut record);
    put_record(tx, id, Some(&before), &record)?;
    for index in edit.unindex {
        if !indexes(&record.values).contains(&index) {
            tx.delete::<RefIndexRecord>(&keys::join(&[&index, id]))?;
        }
    }
    Ok(record)
}

/// A fresh record for snapshot `id`.
pub(crate) fn new_record(id: &str, committed: bool, opts: &crate::RefOptions) -> RefRecord {
    let mut values = BTreeMap::new();
    let mut put = |k: &str, v: serde_json::Value| {
        values.insert(
            k.to_owned(),
            RefValue {
                index: None,
                value: serde_json::to_vec(&v).expect("json values serialize"),
            },
        );
    };
    put(COMMITTED, committed.into());
    let created = opts.created_at.unwrap_or_else(SystemTime::now);
    put(CREATED_AT, from_system_time(created).into());
    if let Some(d) = &opts.description {
        put(DESCRIPTION, d.as_str().into());
    }
    if let Some(t) = &opts.record_type {
        put(RECORD_TYPE, t.as_str().into());
    }
    if let Some(r) = &opts.image_ref {
        put(IMAGE_REFS, vec![r.clone()].into());
    }
    RefRecord {
        snapshot: id.to_owned(),
        values,
    }
}
