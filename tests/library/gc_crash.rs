//! Crash test of the garbage collector: a child keeps making leased objects
//! and garbage (blobs and snapshots) and collecting, and is killed with
//! SIGKILL aimed in turn at making objects, at a collection's start and at
//! its sweep of files (rows gone, files going). After every kill the
//! metadata checks clean before any repair, the root reopens with clean
//! checks, every leased object is intact (whole snapshot contents
//! included), and a second collection finishes the job: what survives is
//! exactly a subset of what leases hold. The harness is
//! `strata_testkit::crash`.

use std::path::Path;

use strata_cache::{BackendChoice, Root, RootOptions};
use strata_core::{Algorithm, Digest, Filter, Labels};
use strata_leases::gc::GcOptions;
use strata_leases::{LeaseSpec, Resource};
use strata_metadata::Reader;
use strata_metadata::records::{ContentRecord, SnapshotRecord};
use strata_snapshot::Snapshotter;
use strata_testkit::crash::{self, AckLog, Phase, Rng};

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
    let phase = Phase::new(dir);
    let mut rng = Rng::new(seed);
    // The sweep reports each object whose files it removes: the first report
    // marks the phase where rows are gone and files are going.
    let sweeping = std::sync::Arc::new(Phase::new(dir));
    let marker = std::sync::Arc::clone(&sweeping);
    let ctx = strata_leases::OpCtx::new().with_events(move |e| {
        if e.item == "gc" && e.current == 1 {
            marker.enter("sweep-files");
        }
    });
    for i in 0.. {
        phase.enter("create");
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
            let fs_dir = r.snapshots.fs_dir(&name).unwrap();
            std::fs::write(fs_dir.join("f"), &name).unwrap();
            std::fs::create_dir(fs_dir.join("d")).unwrap();
            for j in 0..rng.below(4) {
                std::fs::write(fs_dir.join("d").join(j.to_string()), format!("{name}/{j}"))
                    .unwrap();
            }
            if keep {
                log.added(&format!("s:{name}"));
            }
        }
        if rng.below(4) == 0 {
            phase.enter("collect");
            r.collector.collect_in(&ctx, GcOptions::default()).unwrap();
        }
    }
}

/// The metadata file as the kill left it, before an open repairs anything:
/// its own checks (keys, references between tables) must be clean, since
/// every change to it was one committed transaction or none.
fn check_before_repair(dir: &Path, round: usize) {
    let db = strata_metadata::MetaDb::open(&dir.join("meta.redb")).expect("open metadata");
    crash::assert_none(round, "metadata before repair", &db.check().unwrap());
}

fn verify(dir: &Path, round: usize, rt: &tokio::runtime::Runtime) -> usize {
    check_before_repair(dir, round);
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
                    // The whole tree: the marker file and every file of d/.
                    let fs_dir = r.snapshots.fs_dir(key).unwrap();
                    let data = std::fs::read_to_string(fs_dir.join("f")).unwrap();
                    assert_eq!(data, key, "round {round}: {key}/f");
                    for e in std::fs::read_dir(fs_dir.join("d")).unwrap() {
                        let e = e.unwrap();
                        let want = format!("{key}/{}", e.file_name().to_string_lossy());
                        assert_eq!(std::fs::read_to_string(e.path()).unwrap(), want);
                    }
                }
                _ => panic!("bad ack line {item}"),
            }
        }
    };
    check_live("after reopen");
    // A second collection finishes whatever the killed one started.
    r.collector.collect(GcOptions::default()).unwrap();
    check_live("after collecting");
    // Every survivor is something a lease holds.
    let held: std::collections::BTreeSet<String> = r
        .leases
        .list(&Filter::default())
        .unwrap()
        .iter()
        .flat_map(|l| r.leases.list_resources(&l.id).unwrap())
        .map(|res| res.id)
        .collect();
    let tx = r.db.read().unwrap();
    let survivors = tx
        .scan::<ContentRecord>("")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .chain(
            tx.scan::<SnapshotRecord>("")
                .unwrap()
                .into_iter()
                .map(|(k, _)| k),
        );
    for s in survivors {
        assert!(
            held.contains(&s),
            "round {round}: {s} survived a collection no lease holds it in"
        );
    }
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
        &["create", "collect", "sweep-files"],
        |dir, seed| rt.block_on(child(dir, seed)),
        |dir, round| verify(dir, round, &rt),
    );
}
