//! The snapshotter conformance suite through the wire: a Strata client
//! (`GrpcSnapshotter`) over a unix socket to the served overlay store, so
//! every case holds for client, socket, server and backend together.

use std::path::Path;
use std::sync::Arc;

use strata_containerd::{GrpcSnapshotter, Service, bind, serve_on};
use strata_leases::LeaseManager;
use strata_metadata::MetaDb;
use strata_overlay::{Overlay, OverlayConfig};
use strata_snapshot::{SnapshotStore, Snapshotter};

fn served_overlay(root: &Path, db: Arc<MetaDb>) -> Arc<dyn Snapshotter> {
    let backend =
        Overlay::new(&root.join("snapshots"), OverlayConfig::default()).expect("overlay backend");
    let store = SnapshotStore::open(root, Arc::clone(&db), Arc::new(backend)).expect("open store");
    let service = Service::new(&store, &LeaseManager::new(db)).expect("service");
    let socket = root.join("strata.sock");
    let listener = bind(&socket, 0o600, None).expect("bind");
    let path = socket.clone();
    tokio::spawn(async move { serve_on(service, listener, &path, std::future::pending()).await });
    Arc::new(GrpcSnapshotter::lazy(&socket, "overlay"))
}

strata_snapshot::conformance_suite!("grpc", served_overlay, dir_renames = false);
