//! Crash test of the snapshot store: a child process prepares, fills,
//! commits and removes snapshots in a loop and is killed with SIGKILL many
//! times, aimed in turn at preparing (a copy of the parent), filling,
//! committing and removing. After every kill the metadata checks clean
//! before any repair, the root reopens, the metadata and store checks are
//! clean, no orphan directory is left, and every snapshot whose commit the
//! child saw succeed (and did not later remove) is there, committed, with
//! its whole tree: its own files and every ancestor's, each with its
//! contents. The harness is `strata_testkit::crash`.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use strata_core::{Filter, Labels};
use strata_metadata::MetaDb;
use strata_native::Native;
use strata_snapshot::{Info, Kind, SnapshotStore, Snapshotter};
use strata_testkit::crash::{self, AckLog, Phase, Rng};

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
    let phase = Phase::new(dir);
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
                phase.enter("remove");
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
        phase.enter("prepare");
        s.prepare(&key, parent.as_deref(), Labels::new())
            .await
            .unwrap();
        phase.enter("fill");
        if let Some(p) = &parent {
            parents.insert(p.clone());
        }
        let fs_dir = s.fs_dir(&key).unwrap();
        let n = rng.below(20);
        for f in 0..n {
            fs::write(fs_dir.join(format!("{name}+{f}")), name.as_bytes()).unwrap();
        }
        fs::write(fs_dir.join(&name), name.as_bytes()).unwrap();
        fs::write(fs_dir.join(format!("{name}.count")), n.to_string()).unwrap();
        if rng.below(8) == 0 {
            continue; // an active snapshot left behind
        }
        phase.enter("commit");
        s.commit(&name, &key, Labels::new()).await.unwrap();
        phase.enter("acknowledge");
        log.added(&name);
        committed.push(name);
    }
}

/// A snapshot's whole tree: for every `X.count` in it (its own and each
/// ancestor's), the files `X` and `X+0`..`X+(n-1)` hold `X`, and nothing
/// else is there.
fn check_tree(tree: &Path, name: &str, round: usize) {
    let mut want: HashSet<String> = HashSet::new();
    let files: HashSet<String> = fs::read_dir(tree)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for f in &files {
        let Some(writer) = f.strip_suffix(".count") else {
            continue;
        };
        let n: u64 = fs::read_to_string(tree.join(f)).unwrap().parse().unwrap();
        want.insert(f.clone());
        want.insert(writer.to_owned());
        want.extend((0..n).map(|i| format!("{writer}+{i}")));
    }
    assert!(
        files.contains(&format!("{name}.count")),
        "round {round}: {name} lost its own files"
    );
    assert_eq!(files, want, "round {round}: the tree of {name}");
    for f in want.iter().filter(|f| !f.ends_with(".count")) {
        let writer = f.split_once('+').map_or(f.as_str(), |(w, _)| w);
        assert_eq!(
            fs::read_to_string(tree.join(f)).unwrap(),
            writer,
            "round {round}: {name}/{f}"
        );
    }
}

fn verify(dir: &Path, round: usize, rt: &tokio::runtime::Runtime) -> usize {
    // Before any repair, the metadata file must check clean: every change
    // to it was one committed transaction or none.
    let before = MetaDb::open(&dir.join("meta.redb"))
        .unwrap()
        .check()
        .unwrap();
    crash::assert_none(round, "metadata before repair", &before);
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
        check_tree(&s.fs_dir(name).unwrap(), name, round);
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
        &["prepare", "fill", "commit", "remove"],
        |dir, seed| rt.block_on(child(dir, seed)),
        |dir, round| verify(dir, round, &rt),
    );
}
