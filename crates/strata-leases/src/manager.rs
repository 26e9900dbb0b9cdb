//! [`LeaseManager`]: leases and their resources in the metadata store,
//! scoped to a namespace. A resource may be added before the object it
//! names exists (imports rely on it); the lease must exist.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use strata_core::{Digest, Filter, Filterable, Labels, id, labels};
use strata_metadata::records::{GcRecord, LeaseRecord, LeaseResourceRecord, now, to_system_time};
use strata_metadata::{MetaDb, Reader, WriteTx, keys};

use crate::error::LeaseError;
use crate::labels::{GC_EXPIRE, TEMPORARY, format_time};

/// The namespace a manager uses unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "default";

/// What to create.
#[derive(Clone, Debug, Default)]
pub struct LeaseSpec {
    /// The id; a random one when `None`.
    pub id: Option<String>,
    /// Labels.
    pub labels: Labels,
    /// Expire this long from now (sets `containerd.io/gc.expire`).
    pub expire: Option<Duration>,
}

/// A lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Its id (unique within the namespace).
    pub id: String,
    /// When it was created.
    pub created: SystemTime,
    /// Labels.
    pub labels: Labels,
}

impl Filterable for Lease {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "id" => Some(self.id.clone()),
            [f, k] if f == "labels" => self.labels.get(k).cloned(),
            _ => None,
        }
    }
}

/// Something a lease holds: `content` (a digest), `snapshots/<backend>` (a
/// key) or `ingests` (a ref).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resource {
    /// The resource type.
    pub kind: String,
    /// Its id within the type.
    pub id: String,
}

impl Resource {
    /// A content resource.
    pub fn content(d: &Digest) -> Resource {
        Resource {
            kind: "content".into(),
            id: d.to_string(),
        }
    }

    /// A snapshot resource of `backend`.
    pub fn snapshot(backend: &str, key: &str) -> Resource {
        Resource {
            kind: format!("snapshots/{backend}"),
            id: key.to_owned(),
        }
    }

    /// An ingest resource.
    pub fn ingest(reference: &str) -> Resource {
        Resource {
            kind: "ingests".into(),
            id: reference.to_owned(),
        }
    }

    fn validate(&self) -> Result<(), LeaseError> {
        let ok_type = self.kind == "content"
            || self.kind == "ingests"
            || self
                .kind
                .strip_prefix("snapshots/")
                .is_some_and(|b| !b.is_empty() && !b.contains('/'));
        if !ok_type {
            return Err(LeaseError::Invalid(format!(
                "resource type {:?} is not content, ingests or snapshots/<backend>",
                self.kind
            )));
        }
        if self.id.is_empty() || !keys::valid_part(&self.id) {
            return Err(LeaseError::Invalid(format!(
                "resource id {:?} is empty or has a NUL byte",
                self.id
            )));
        }
        if self.kind == "content" {
            Digest::parse(&self.id).map_err(|e| LeaseError::Invalid(e.to_string()))?;
        }
        Ok(())
    }
}

/// Leases of one namespace.
#[derive(Clone, Debug)]
pub struct LeaseManager {
    db: Arc<MetaDb>,
    ns: String,
}

fn validate_id(what: &str, id: &str) -> Result<(), LeaseError> {
    if id.is_empty() || id.len() > 1024 || !keys::valid_part(id) {
        return Err(LeaseError::Invalid(format!(
            "{what} {id:?} must be 1 to 1024 bytes without NUL"
        )));
    }
    Ok(())
}

/// Counts a change that may have made something unreachable, for the
/// collector's scheduler.
pub(crate) fn count_mutation(tx: &WriteTx) -> Result<(), LeaseError> {
    let mut state = tx.get::<GcRecord>("state")?.unwrap_or_default();
    state.mutations += 1;
    tx.put("state", &state)?;
    Ok(())
}

impl LeaseManager {
    /// The manager of the default namespace.
    pub fn new(db: Arc<MetaDb>) -> LeaseManager {
        LeaseManager {
            db,
            ns: DEFAULT_NAMESPACE.into(),
        }
    }

    /// The same leases seen through namespace `ns`.
    pub fn with_namespace(&self, ns: &str) -> Result<LeaseManager, LeaseError> {
        validate_id("namespace", ns)?;
        Ok(LeaseManager {
            db: Arc::clone(&self.db),
            ns: ns.to_owned(),
        })
    }

    /// This manager's namespace.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    fn key(&self, id: &str) -> String {
        keys::join(&[&self.ns, id])
    }

    fn resource_key(&self, id: &str, r: &Resource) -> String {
        keys::join(&[&self.ns, id, &r.kind, &r.id])
    }

    fn require(&self, tx: &impl Reader, id: &str) -> Result<LeaseRecord, LeaseError> {
        tx.get::<LeaseRecord>(&self.key(id))?
            .ok_or_else(|| LeaseError::NotFound(id.to_owned()))
    }

    /// Creates a lease.
    pub fn create(&self, spec: LeaseSpec) -> Result<Lease, LeaseError> {
        let id = spec.id.clone().unwrap_or_else(id::new_id);
        let spec = LeaseSpec {
            id: Some(id.clone()),
            ..spec
        };
        (|| {
            let tx = self.db.write()?;
            let lease = self.create_in(&tx, spec)?;
            tx.commit()?;
            Ok(lease)
        })()
        .map_err(LeaseError::at(&id))
    }

    /// [`LeaseManager::create`] inside the caller's transaction.
    pub fn create_in(&self, tx: &WriteTx, spec: LeaseSpec) -> Result<Lease, LeaseError> {
        let id = spec.id.unwrap_or_else(id::new_id);
        validate_id("lease id", &id)?;
        let mut lease_labels = spec.labels;
        if let Some(d) = spec.expire {
            lease_labels.insert(GC_EXPIRE.into(), format_time(SystemTime::now() + d));
        }
        labels::validate_all(&lease_labels).map_err(|e| LeaseError::Invalid(e.to_string()))?;
        if tx.get::<LeaseRecord>(&self.key(&id))?.is_some() {
            return Err(LeaseError::AlreadyExists(id));
        }
        let record = LeaseRecord {
            created: now(),
            labels: lease_labels,
        };
        tx.put(&self.key(&id), &record)?;
        Ok(Lease {
            id,
            created: to_system_time(record.created),
            labels: record.labels,
        })
    }

    /// A lease by id.
    pub fn get(&self, id: &str) -> Result<Lease, LeaseError> {
        let r = self.require(&self.db.read()?, id)?;
        Ok(Lease {
            id: id.to_owned(),
            created: to_system_time(r.created),
            labels: r.labels,
        })
    }

    /// Deletes a lease and its resource list (what it held becomes
    /// collectable). NotFound when absent.
    pub fn delete(&self, id: &str) -> Result<(), LeaseError> {
        (|| {
            let tx = self.db.write()?;
            self.delete_in(&tx, id)?;
            Ok(tx.commit()?)
        })()
        .map_err(LeaseError::at(id))
    }

    /// [`LeaseManager::delete`] inside the caller's transaction.
    pub fn delete_in(&self, tx: &WriteTx, id: &str) -> Result<(), LeaseError> {
        self.require(tx, id)?;
        tx.delete::<LeaseRecord>(&self.key(id))?;
        tx.delete_prefix::<LeaseResourceRecord>(&keys::prefix(&[&self.ns, id]))?;
        count_mutation(tx)
    }

    /// Deletes a lease, then runs a collection right away so what it held is
    /// gone when this returns.
    pub fn delete_sync(
        &self,
        id: &str,
        collector: &crate::Collector,
    ) -> Result<crate::gc::GcReport, LeaseError> {
        self.delete(id)?;
        collector.collect(crate::gc::GcOptions::default())
    }

    /// Leases of this namespace that pass `filter` (fields `id`, `labels`).
    pub fn list(&self, filter: &Filter) -> Result<Vec<Lease>, LeaseError> {
        let rows = self
            .db
            .read()?
            .scan::<LeaseRecord>(&keys::prefix(&[&self.ns]))?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, r)| {
                let id = keys::split(&k).get(1)?.to_string();
                Some(Lease {
                    id,
                    created: to_system_time(r.created),
                    labels: r.labels,
                })
            })
            .filter(|l| filter.matches(l))
            .collect())
    }

    /// Adds a resource to a lease (idempotent). The lease must exist; the
    /// object need not yet.
    pub fn add_resource(&self, id: &str, r: &Resource) -> Result<(), LeaseError> {
        (|| {
            let tx = self.db.write()?;
            self.add_resource_in(&tx, id, r)?;
            Ok(tx.commit()?)
        })()
        .map_err(LeaseError::at(id))
    }

    /// Adds a resource to the lease `id`, creating the lease (no labels)
    /// when it is missing, in one transaction: a failure leaves no empty
    /// lease behind.
    pub fn hold(&self, id: &str, r: &Resource) -> Result<(), LeaseError> {
        validate_id("lease id", id)?;
        r.validate()?;
        (|| {
            let tx = self.db.write()?;
            if tx.get::<LeaseRecord>(&self.key(id))?.is_none() {
                let record = LeaseRecord {
                    created: now(),
                    labels: Labels::new(),
                };
                tx.put(&self.key(id), &record)?;
            }
            tx.put(&self.resource_key(id, r), &LeaseResourceRecord {})?;
            Ok(tx.commit()?)
        })()
        .map_err(LeaseError::at(id))
    }

    /// [`LeaseManager::add_resource`] inside the caller's transaction: a
    /// store records an object and its hold at once.
    pub fn add_resource_in(&self, tx: &WriteTx, id: &str, r: &Resource) -> Result<(), LeaseError> {
        r.validate()?;
        self.require(tx, id)?;
        tx.put(&self.resource_key(id, r), &LeaseResourceRecord {})?;
        Ok(())
    }

    /// Removes a resource inside the caller's transaction (absent is
    /// fine).
    pub fn delete_resource_in(
        &self,
        tx: &WriteTx,
        id: &str,
        r: &Resource,
    ) -> Result<(), LeaseError> {
        if tx.delete::<LeaseResourceRecord>(&self.resource_key(id, r))? {
            count_mutation(tx)?;
        }
        Ok(())
    }

    /// Removes a resource from a lease (absent is fine; the lease must
    /// exist).
    pub fn delete_resource(&self, id: &str, r: &Resource) -> Result<(), LeaseError> {
        (|| {
            let tx = self.db.write()?;
            self.require(&tx, id)?;
            if tx.delete::<LeaseResourceRecord>(&self.resource_key(id, r))? {
                count_mutation(&tx)?;
            }
            Ok(tx.commit()?)
        })()
        .map_err(LeaseError::at(id))
    }

    /// A lease's resources, ordered by type and id.
    pub fn list_resources(&self, id: &str) -> Result<Vec<Resource>, LeaseError> {
        let tx = self.db.read()?;
        self.require(&tx, id)?;
        Ok(tx
            .scan::<LeaseResourceRecord>(&keys::prefix(&[&self.ns, id]))?
            .into_iter()
            .filter_map(|(k, _)| {
                let parts = keys::split(&k);
                Some(Resource {
                    kind: parts.get(2)?.to_string(),
                    id: parts.get(3)?.to_string(),
                })
            })
            .collect())
    }

    /// Deletes the temporary leases of every namespace: run when a root is
    /// opened, when any such lease belongs to a process that is gone.
    /// Returns how many went.
    pub fn remove_temporary(&self) -> Result<usize, LeaseError> {
        let tx = self.db.write()?;
        let temporary: Vec<String> = tx
            .scan::<LeaseRecord>("")?
            .into_iter()
            .filter(|(_, r)| r.labels.contains_key(TEMPORARY))
            .map(|(k, _)| k)
            .collect();
        for key in &temporary {
            tx.delete::<LeaseRecord>(key)?;
            let mut prefix = key.clone();
            prefix.push(keys::SEP);
            tx.delete_prefix::<LeaseResourceRecord>(&prefix)?;
        }
        if !temporary.is_empty() {
            count_mutation(&tx)?;
        }
        tx.commit()?;
        Ok(temporary.len())
    }
}
