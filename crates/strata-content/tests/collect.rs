//! The content store behind the collector: swept blobs and idle ingests lose
//! their files, ingests with an open writer survive, and a blob committed
//! again after the sweep keeps its file.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use strata_content::ContentStore;
use strata_core::{Algorithm, Digest, Labels};
use strata_leases::gc::GcOptions;
use strata_leases::{Collect, Collector, LeaseManager, LeaseSpec, Resource, Swept};
use strata_metadata::MetaDb;

#[test]
fn collection_removes_files_of_what_no_lease_holds() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(MetaDb::open(&dir.path().join("meta.redb")).unwrap());
    let cs = ContentStore::open(&dir.path().join("content"), Arc::clone(&db)).unwrap();
    let lm = LeaseManager::new(Arc::clone(&db));
    let gc = Collector::new(
        Arc::clone(&db),
        "overlay",
        vec![Arc::new(cs.clone()) as Arc<dyn Collect>],
    )
    .with_ingest_grace(Duration::ZERO);

    let kept = cs
        .ingest("a", &b"kept"[..], None, None, &Labels::new())
        .unwrap()
        .digest;
    let lost = cs
        .ingest("b", &b"lost"[..], None, None, &Labels::new())
        .unwrap()
        .digest;
    lm.create(LeaseSpec {
        id: Some("l".into()),
        ..LeaseSpec::default()
    })
    .unwrap();
    lm.add_resource("l", &Resource::content(&kept)).unwrap();
    let mut open_writer = cs.writer("busy", None, None).unwrap();
    open_writer.write_all(b"partial").unwrap();
    drop(cs.writer("idle", None, None).unwrap());

    let report = gc.collect(GcOptions::default()).unwrap();
    assert_eq!(report.swept.content, [lost.to_string()]);
    assert_eq!(
        report
            .swept
            .ingests
            .iter()
            .map(|(r, _)| r.as_str())
            .collect::<Vec<_>>(),
        ["idle"]
    );
    assert!(cs.info(&kept).is_ok() && cs.info(&lost).is_err());
    let blobs = dir.path().join("content/blobs/sha256");
    assert!(blobs.join(kept.hex()).exists() && !blobs.join(lost.hex()).exists());
    assert!(
        cs.status("busy").is_ok(),
        "an ingest with an open writer is in use"
    );
    assert!(cs.check(true).unwrap().is_empty());
    drop(open_writer);

    // A digest swept and then committed again keeps its new file.
    let again = cs
        .ingest("c", &b"lost"[..], None, None, &Labels::new())
        .unwrap()
        .digest;
    assert_eq!(again, lost);
    let handled = std::sync::atomic::AtomicU64::new(0);
    cs.remove(
        &Swept {
            content: vec![lost.to_string()],
            ..Swept::default()
        },
        &|| {
            handled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        },
    )
    .unwrap();
    assert_eq!(handled.into_inner(), 1, "a kept blob counts as handled");
    assert!(blobs.join(lost.hex()).exists());
    assert_eq!(
        Digest::of_bytes(
            Algorithm::Sha256,
            &std::fs::read(blobs.join(lost.hex())).unwrap()
        ),
        lost
    );
}
