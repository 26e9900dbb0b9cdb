//! containerd's `Snapshots` service over a Strata snapshot store.
//!
//! Every snapshot containerd prepares, views or commits is held by one flat
//! lease, [`SERVED_LEASE`], in the transaction that records it, so Strata's
//! collector never takes what containerd still names; containerd's own
//! metadata decides what goes and says so with Remove, which takes the key
//! out of the lease in the same transaction (the lease lives as long as the
//! root, and must not grow with every container run). Cleanup sweeps the
//! directories removals left behind.

use std::collections::HashMap;
use std::time::SystemTime;

use futures_util::stream;
use strata_api::containerd::services::snapshots::v1 as wire;
use strata_api::containerd::services::snapshots::v1::snapshots_server::Snapshots;
use strata_api::containerd::types::Mount as WireMount;
use strata_core::{Filter, Labels};
use strata_leases::{LeaseManager, LeaseSpec, OpCtx, labels as lease_labels};
use strata_snapshot::{Info, Kind, SnapshotError, SnapshotStore, Snapshotter};
use tonic::{Request, Response, Status};

use crate::convert;

/// The lease holding every snapshot served to containerd.
pub const SERVED_LEASE: &str = "containerd/snapshots";

/// How many infos one List message carries.
const LIST_BATCH: usize = 100;

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

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Snapshots for Service {
    #[tracing::instrument(skip_all, fields(key = %r.get_ref().key))]
    async fn prepare(
        &self,
        r: Request<wire::PrepareSnapshotRequest>,
    ) -> Reply<wire::PrepareSnapshotResponse> {
        let r = r.into_inner();
        let mounts = self
            .create(Kind::Active, &r.key, &r.parent, r.labels)
            .await?;
        Ok(Response::new(wire::PrepareSnapshotResponse { mounts }))
    }

    #[tracing::instrument(skip_all, fields(key = %r.get_ref().key))]
    async fn view(
        &self,
        r: Request<wire::ViewSnapshotRequest>,
    ) -> Reply<wire::ViewSnapshotResponse> {
        let r = r.into_inner();
        let mounts = self.create(Kind::View, &r.key, &r.parent, r.labels).await?;
        Ok(Response::new(wire::ViewSnapshotResponse { mounts }))
    }

    #[tracing::instrument(skip_all, fields(key = %r.get_ref().key))]
    async fn mounts(&self, r: Request<wire::MountsRequest>) -> Reply<wire::MountsResponse> {
        let m = self.store.mounts(&r.get_ref().key).await.map_err(wire)?;
        Ok(Response::new(wire::MountsResponse { mounts: mounts(m) }))
    }

    #[tracing::instrument(skip_all, fields(key = %r.get_ref().key, name = %r.get_ref().name))]
    async fn commit(&self, r: Request<wire::CommitSnapshotRequest>) -> Reply<()> {
        let r = r.into_inner();
        self.store
            .commit(&r.name, &r.key, convert::labels(r.labels))
            .await
            .map_err(wire)?;
        Ok(Response::new(()))
    }

    #[tracing::instrument(skip_all, fields(key = %r.get_ref().key))]
    async fn remove(&self, r: Request<wire::RemoveSnapshotRequest>) -> Reply<()> {
        self.store.remove(&r.get_ref().key).await.map_err(wire)?;
        Ok(Response::new(()))
    }

    #[tracing::instrument(skip_all, fields(key = %r.get_ref().key))]
    async fn stat(
        &self,
        r: Request<wire::StatSnapshotRequest>,
    ) -> Reply<wire::StatSnapshotResponse> {
        let info = self.store.stat(&r.get_ref().key).await.map_err(wire)?;
        Ok(Response::new(wire::StatSnapshotResponse {
            info: Some(convert::info_to_wire(info)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn update(
        &self,
        r: Request<wire::UpdateSnapshotRequest>,
    ) -> Reply<wire::UpdateSnapshotResponse> {
        let r = r.into_inner();
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("update: the request carries no info"))?;
        let info = convert::info_from_wire(info).map_err(wire)?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let info = self.store.update(info, &paths).await.map_err(wire)?;
        Ok(Response::new(wire::UpdateSnapshotResponse {
            info: Some(convert::info_to_wire(info)),
        }))
    }

    type ListStream = stream::Iter<std::vec::IntoIter<Result<wire::ListSnapshotsResponse, Status>>>;

    #[tracing::instrument(skip_all)]
    async fn list(&self, r: Request<wire::ListSnapshotsRequest>) -> Reply<Self::ListStream> {
        let filter = Filter::parse(&r.get_ref().filters)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut found: Vec<Info> = Vec::new();
        self.store
            .walk(&filter, &mut |i| {
                found.push(i);
                Box::pin(async { Ok(()) })
            })
            .await
            .map_err(wire)?;
        let infos: Vec<wire::Info> = found.into_iter().map(convert::info_to_wire).collect();
        let batches: Vec<_> = infos
            .chunks(LIST_BATCH)
            .map(|c| Ok(wire::ListSnapshotsResponse { info: c.to_vec() }))
            .collect();
        Ok(Response::new(stream::iter(batches)))
    }

    #[tracing::instrument(skip_all, fields(key = %r.get_ref().key))]
    async fn usage(&self, r: Request<wire::UsageRequest>) -> Reply<wire::UsageResponse> {
        let u = self.store.usage(&r.get_ref().key).await.map_err(wire)?;
        Ok(Response::new(convert::usage_to_wire(u)))
    }

    #[tracing::instrument(skip_all)]
    async fn cleanup(&self, _r: Request<wire::CleanupRequest>) -> Reply<()> {
        let removed = self.store.cleanup().map_err(wire)?;
        tracing::debug!(removed, "cleanup");
        Ok(Response::new(()))
    }
}
