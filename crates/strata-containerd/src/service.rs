//! containerd's `Snapshots` service over a Strata snapshot store.
//!
//! Every snapshot containerd prepares, views or commits is held by one flat
//! lease, [`SERVED_LEASE`], in the transaction that records it, so Strata's
//! collector never takes what containerd still names; containerd's own
//! metadata decides what goes and says so with Remove. Cleanup sweeps the
//! directories removals left behind.

use std::collections::HashMap;
use std::time::SystemTime;

use containerd_snapshots as cs;
use containerd_snapshots::api::types::Mount as WireMount;
use containerd_snapshots::tonic::Status;
use futures_util::stream;
use strata_core::{Filter, Labels};
use strata_leases::{LeaseManager, LeaseSpec, OpCtx, labels as lease_labels};
use strata_snapshot::{Info, Kind, SnapshotError, SnapshotStore, Snapshotter};

use crate::convert;

/// The lease holding every snapshot served to containerd.
pub const SERVED_LEASE: &str = "containerd/snapshots";

/// The service: a snapshot store acting under [`SERVED_LEASE`].
#[derive(Debug)]
pub struct Service {
    store: SnapshotStore,
}

impl Service {
    /// Serves `store`; makes [`SERVED_LEASE`] if it is missing.
    pub fn new(store: &SnapshotStore, leases: &LeaseManager) -> Result<Service, SnapshotError> {
        match leases.create(LeaseSpec {
            id: Some(SERVED_LEASE.to_owned()),
            labels: Labels::from([(
                lease_labels::GC_FLAT.to_owned(),
                lease_labels::format_time(SystemTime::now()),
            )]),
            expire: None,
        }) {
            Ok(_) => {}
            Err(e) if strata_core::Classify::is_already_exists(&e) => {}
            Err(e) => return Err(e.into()),
        }
        let ctx = OpCtx::new().with_lease_id(SERVED_LEASE);
        Ok(Service {
            store: store.under(&ctx),
        })
    }
}

impl Service {
    /// Prepare (`Active`) or View: the new snapshot's mounts.
    async fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<WireMount>, Status> {
        let (parent, labels) = (convert::parent(parent), convert::labels(labels));
        let made = match kind {
            Kind::View => self.store.view(key, parent, labels).await,
            _ => self.store.prepare(key, parent, labels).await,
        };
        Ok(mounts(made.map_err(wire)?))
    }
}

fn wire(e: SnapshotError) -> Status {
    convert::status(&e)
}

fn mounts(m: Vec<strata_core::Mount>) -> Vec<WireMount> {
    m.iter().map(convert::mount_to_wire).collect()
}

#[cs::tonic::async_trait]
impl cs::Snapshotter for Service {
    type Error = Status;

    #[tracing::instrument(skip(self))]
    async fn stat(&self, key: String) -> Result<cs::Info, Status> {
        Ok(convert::info_to_wire(
            self.store.stat(&key).await.map_err(wire)?,
        ))
    }

    #[tracing::instrument(skip(self, info))]
    async fn update(
        &self,
        info: cs::Info,
        fieldpaths: Option<Vec<String>>,
    ) -> Result<cs::Info, Status> {
        let info = convert::info_from_wire(info).map_err(wire)?;
        let paths = fieldpaths.unwrap_or_default();
        Ok(convert::info_to_wire(
            self.store.update(info, &paths).await.map_err(wire)?,
        ))
    }

    #[tracing::instrument(skip(self))]
    async fn usage(&self, key: String) -> Result<cs::Usage, Status> {
        Ok(convert::usage_to_wire(
            self.store.usage(&key).await.map_err(wire)?,
        ))
    }

    #[tracing::instrument(skip(self))]
    async fn mounts(&self, key: String) -> Result<Vec<WireMount>, Status> {
        Ok(mounts(self.store.mounts(&key).await.map_err(wire)?))
    }

    #[tracing::instrument(skip(self, labels))]
    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<WireMount>, Status> {
        self.create(Kind::Active, &key, &parent, labels).await
    }

    #[tracing::instrument(skip(self, labels))]
    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<WireMount>, Status> {
        self.create(Kind::View, &key, &parent, labels).await
    }

    #[tracing::instrument(skip(self, labels))]
    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Status> {
        self.store
            .commit(&name, &key, convert::labels(labels))
            .await
            .map_err(wire)
    }

    #[tracing::instrument(skip(self))]
    async fn remove(&self, key: String) -> Result<(), Status> {
        self.store.remove(&key).await.map_err(wire)
    }

    #[tracing::instrument(skip(self))]
    async fn clear(&self) -> Result<(), Status> {
        let removed = self.store.cleanup().map_err(wire)?;
        tracing::debug!(removed, "cleanup");
        Ok(())
    }

    type InfoStream = stream::Iter<std::vec::IntoIter<Result<cs::Info, Status>>>;

    // The stream's error type is the trait's (tonic's Status), large or not.
    #[allow(clippy::result_large_err)]
    #[tracing::instrument(skip(self))]
    async fn list(
        &self,
        _snapshotter: String,
        filters: Vec<String>,
    ) -> Result<Self::InfoStream, Status> {
        let filter =
            Filter::parse(&filters).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut found: Vec<Info> = Vec::new();
        self.store
            .walk(&filter, &mut |i| {
                found.push(i);
                Box::pin(async { Ok(()) })
            })
            .await
            .map_err(wire)?;
        Ok(stream::iter(
            found
                .into_iter()
                .map(|i| Ok(convert::info_to_wire(i)))
                .collect::<Vec<_>>(),
        ))
    }
}
