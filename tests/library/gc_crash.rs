//! Crash test of the garbage collector: a child keeps making leased objects
//! and garbage (blobs and snapshots) and collecting, and is killed with
//! SIGKILL at random moments, sweeps included. After every kill the root
//! reopens with clean checks, every leased object is intact, and a second
//! collection finishes the job: nothing unleased is left. The harness is
//! `strata_testkit::crash`.

use std::path::Path;

use strata_cache::{BackendChoice, Root, RootOptions};
use strata_core::{Algorithm, Digest, Filter, Labels};
use strata_leases::gc::GcOptions;
use strata_leases::{LeaseSpec, Resource};
use strata_metadata::Reader;
use strata_metadata::records::{ContentRecord, SnapshotRecord};
use strata_snapshot::Snapshotter;
use strata_testkit::crash::{self, AckLog, Rng};

fn open(dir: &Path) -> Root {
    Root::open(&RootOptions {
        path: Some(dir.to_path_buf()),
        backend: BackendChoice::Native,
    })
    .expect("reopen the root")
}

async fn child(dir: &Path, seed: u64) {
    let r = open(dir);
    let log = AckLog::new(dir);
    let mut rng = Rng::new(seed);
    for i in 0.. {
        let name = format!("o-{seed}-{i}");
        let keep = rng.below(3) == 0;
        if keep {
            r.leases
                .create(LeaseSpec {
                    id: Some(name.clone()),
                    ..LeaseSpec::default()
                })
                .unwrap();
        }
        if rng.below(2) == 0 {
            let data = format!("{name}-{}", rng.next_u64());
            let d = Digest::of_bytes(Algorithm::Sha256, data.as_bytes());
            if keep {
                r.leases
                    .add_resource(&name, &Resource::content(&d))
                    .unwrap();
            }
            r.content
                .ingest(&name, data.as_bytes(), None, Some(&d), &Labels::new())
                .unwrap();
            if keep {
                log.added(&format!("c:{d}"));
            }
        } else {
            if keep {
                r.leases
                    .add_resource(&name, &Resource::snapshot("native", &name))
                    .unwrap();
            }
            r.snapshots
                .prepare(&name, None, Labels::new())
                .await
                .unwrap();
            std::fs::write(r.snapshots.fs_dir(&name).unwrap().join("f"), &name).unwrap();
            if keep {
                log.added(&format!("s:{name}"));
            }
        }
        if rng.below(4) == 0 {
            r.collector.collect(GcOptions::default()).unwrap();
        }
    }
}

fn verify(dir: &Path, round: usize, rt: &tokio::runtime::Runtime) -> usize {
    let r = open(dir);
    let meta = r.db.check().unwrap();
    assert!(meta.is_empty(), "round {round}: metadata check: {meta:?}");
    let content = r.content.check(true).unwrap();
    assert!(
        content.is_empty(),
        "round {round}: content check: {content:?}"
    );
    let snaps = r.snapshots.check().unwrap();
    assert!(snaps.is_empty(), "round {round}: snapshot check: {snaps:?}");
    let live = AckLog::new(dir).live();
    let check_live = |when: &str| {
        for item in &live {
            match item.split_once(':') {
                Some(("c", d)) => {
                    let d = Digest::parse(d).unwrap();
                    r.content
                        .info(&d)
                        .unwrap_or_else(|e| panic!("round {round} {when}: leased {d} lost: {e}"));
                }
                Some(("s", key)) => {
                    rt.block_on(r.snapshots.stat(key)).unwrap_or_else(|e| {
                        panic!("round {round} {when}: leased snapshot {key} lost: {e}")
                    });
                    let data = std::fs::read_to_string(r.snapshots.fs_dir(key).unwrap().join("f"))
                        .unwrap();
                    assert_eq!(data, key);
                }
                _ => panic!("bad ack line {item}"),
            }
        }
    };
    check_live("after reopen");
    // A second collection finishes whatever the killed one started.
    r.collector.collect(GcOptions::default()).unwrap();
    check_live("after collecting");
    let tx = r.db.read().unwrap();
    let blobs = tx.scan::<ContentRecord>("").unwrap().len();
    let snapshots = tx.scan::<SnapshotRecord>("").unwrap().len();
    let leases = r.leases.list(&Filter::default()).unwrap();
    let held: usize = leases
        .iter()
        .map(|l| r.leases.list_resources(&l.id).unwrap().len())
        .sum();
    assert!(
        blobs + snapshots <= held,
        "round {round}: {blobs} blobs and {snapshots} snapshots left for {held} leased"
    );
    assert!(r.content.check(true).unwrap().is_empty() && r.snapshots.check().unwrap().is_empty());
    live.len()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    crash::run(
        "gc_crash_loop",
        150,
        |dir, seed| rt.block_on(child(dir, seed)),
        |dir, round| verify(dir, round, &rt),
    );
}
