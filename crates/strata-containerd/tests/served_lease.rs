//! What `strata serve`'s one lease holds over a container's life, through
//! the wire as containerd drives it: every snapshot containerd still has,
//! and none it removed. The lease lives as long as the root, so a key left
//! in it would pile up with every container containerd ever ran, and would
//! hold whatever is made under that key again, out of Strata's collector's
//! reach.

use std::sync::Arc;

use strata_containerd::{GrpcSnapshotter, SERVED_LEASE, Service, bind, serve_on};
use strata_core::Labels;
use strata_leases::gc::GcOptions;
use strata_leases::{Collect, Collector, LeaseManager};
use strata_metadata::MetaDb;
use strata_native::Native;
use strata_snapshot::{SnapshotStore, Snapshotter};

#[tokio::test(flavor = "multi_thread")]
async fn the_served_lease_lets_go_of_what_containerd_removes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let db = Arc::new(MetaDb::open(&root.join("meta.redb")).unwrap());
    let store = SnapshotStore::open(root, Arc::clone(&db), Arc::new(Native)).unwrap();
    let leases = LeaseManager::new(Arc::clone(&db));
    let service = Service::new(&store, &leases).unwrap();
    let socket = root.join("strata.sock");
    let listener = bind(&socket, 0o600, None).unwrap();
    let path = socket.clone();
    tokio::spawn(async move { serve_on(service, listener, &path, std::future::pending()).await });
    let containerd = GrpcSnapshotter::lazy(&socket, "native");
    let held = || -> Vec<String> {
        let listed = leases.list_resources(SERVED_LEASE).unwrap();
        listed.into_iter().map(|r| r.id).collect()
    };

    // An image's layer, a container's snapshot on it, committed, and a
    // view of the commit: the calls `ctr run` and `ctr snapshots` make.
    let none = Labels::new;
    containerd.prepare("extract", None, none()).await.unwrap();
    containerd.commit("layer", "extract", none()).await.unwrap();
    containerd
        .prepare("container", Some("layer"), none())
        .await
        .unwrap();
    containerd
        .commit("committed", "container", none())
        .await
        .unwrap();
    containerd
        .view("view", Some("committed"), none())
        .await
        .unwrap();
    assert_eq!(held(), ["committed", "layer", "view"]);

    for key in ["view", "committed", "layer"] {
        containerd.remove(key).await.unwrap();
    }
    assert_eq!(held(), Vec::<String>::new());

    // A key made again outside the lease is Strata's collector's to take.
    store.prepare("layer", None, none()).await.unwrap();
    let gc = Collector::new(
        db,
        "native",
        vec![Arc::new(store.clone()) as Arc<dyn Collect>],
    );
    let report = gc.collect(GcOptions::default()).unwrap();
    let swept: Vec<&str> = report
        .swept
        .snapshots
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(swept, ["layer"]);
}
