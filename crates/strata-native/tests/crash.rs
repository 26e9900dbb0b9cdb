//! Crash test of the snapshot store: a child process prepares, fills,
//! commits and removes snapshots in a loop and is killed with SIGKILL at
//! random moments, many times. After every kill the root reopens, the
//! metadata and store checks are clean, no orphan directory is left, and
//! every snapshot whose commit the child saw succeed (and did not later
//! remove) is there, committed, with its files. The harness is
//! `strata_testkit::crash`.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use strata_core::{Filter, Labels};
use strata_metadata::MetaDb;
use strata_native::Native;
use strata_snapshot::{Info, Kind, SnapshotStore, Snapshotter};
use strata_testkit::crash::{self, AckLog, Rng};

fn open(dir: &Path) -> (Arc<MetaDb>, SnapshotStore) {
    let db = Arc::new(MetaDb::open(&dir.join("meta.redb")).expect("reopen metadata"));
    let store =
        SnapshotStore::open(dir, Arc::clone(&db), Arc::new(Native)).expect("reopen snapshots");
    (db, store)
}

async fn all(s: &SnapshotStore) -> Vec<Info> {
    let mut out = Vec::new();
    s.walk(&Filter::default(), &mut |i: Info| {
        out.push(i);
        Box::pin(async { Ok(()) })
    })
    .await
    .unwrap();
    out
}

async fn child(dir: &Path, seed: u64) {
    let (_db, s) = open(dir);
    let log = AckLog::new(dir);
    let mut rng = Rng::new(seed);
    let infos = all(&s).await;
    let mut committed: Vec<String> = infos
        .iter()
        .filter(|i| i.kind == Kind::Committed)
        .map(|i| i.name.clone())
        .collect();
    let mut parents: HashSet<String> = infos.iter().filter_map(|i| i.parent.clone()).collect();
    for i in 0.. {
        let name = format!("s-{seed}-{i}");
        let key = format!("{name}-active");
        if rng.below(6) == 0 {
            // Remove a committed snapshot without children.
            let leaves: Vec<String> = committed
                .iter()
                .filter(|c| !parents.contains(*c))
                .cloned()
                .collect();
            if !leaves.is_empty() {
                let victim = leaves[rng.below(leaves.len() as u64) as usize].clone();
                log.removing(&victim);
                s.remove(&victim).await.unwrap();
                committed.retain(|c| *c != victim);
                continue;
            }
        }
        let parent = if committed.is_empty() || rng.below(3) == 0 {
            None
        } else {
            Some(committed[rng.below(committed.len() as u64) as usize].clone())
        };
        s.prepare(&key, parent.as_deref(), Labels::new())
            .await
            .unwrap();
        if let Some(p) = &parent {
            parents.insert(p.clone());
        }
        let fs_dir = s.fs_dir(&key).unwrap();
        for f in 0..rng.below(20) {
            fs::write(fs_dir.join(format!("{name}-{f}")), name.as_bytes()).unwrap();
        }
        fs::write(fs_dir.join(&name), name.as_bytes()).unwrap();
        if rng.below(8) == 0 {
            continue; // an active snapshot left behind
        }
        s.commit(&name, &key, Labels::new()).await.unwrap();
        log.added(&name);
        committed.push(name);
    }
}

fn verify(dir: &Path, round: usize, rt: &tokio::runtime::Runtime) -> usize {
    let (db, s) = open(dir);
    let meta = db.check().unwrap();
    assert!(meta.is_empty(), "round {round}: metadata check: {meta:?}");
    let problems = s.check().unwrap();
    assert!(
        problems.is_empty(),
        "round {round}: store check: {problems:?}"
    );
    let infos = rt.block_on(all(&s));
    let dirs = fs::read_dir(dir.join("snapshots")).unwrap().count();
    assert_eq!(
        dirs,
        infos.len(),
        "round {round}: orphan snapshot directories after open"
    );
    let live = AckLog::new(dir).live();
    for name in &live {
        let info = rt
            .block_on(s.stat(name))
            .unwrap_or_else(|e| panic!("round {round}: acknowledged snapshot {name} lost: {e}"));
        assert_eq!(info.kind, Kind::Committed, "round {round}: {name}");
        let data = fs::read(s.fs_dir(name).unwrap().join(name))
            .unwrap_or_else(|e| panic!("round {round}: {name} lost its file: {e}"));
        assert_eq!(data, name.as_bytes());
    }
    live.len()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    crash::run(
        "snapshot_crash_loop",
        150,
        |dir, seed| rt.block_on(child(dir, seed)),
        |dir, round| verify(dir, round, &rt),
    );
}
