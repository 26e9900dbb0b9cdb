//! Crash test of the snapshot store: a child process prepares, fills,
//! commits and removes snapshots in a loop and is killed with SIGKILL at
//! random moments, many times. After every kill the root reopens, the
//! metadata and store checks are clean, no orphan directory is left, and
//! every snapshot whose commit the child saw succeed (and did not later
//! remove) is there, committed, with its files.
//!
//! Runs without the libtest harness: the same binary is the parent and,
//! with `--child DIR SEED`, the child.

// This program reports on stdout by design.
#![allow(clippy::print_stdout)]

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strata_core::{Filter, Labels};
use strata_metadata::MetaDb;
use strata_native::Native;
use strata_snapshot::{Info, Kind, SnapshotStore, Snapshotter};

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn open(dir: &Path) -> (Arc<MetaDb>, SnapshotStore) {
    let db = Arc::new(MetaDb::open(&dir.join("meta.redb")).expect("reopen metadata"));
    let store =
        SnapshotStore::open(dir, Arc::clone(&db), Arc::new(Native)).expect("reopen snapshots");
    (db, store)
}

fn ack(log: &Path, line: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
    f.sync_data().unwrap();
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
    let log = dir.join("acked");
    let mut rng = Rng(seed | 1);
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
            let leaves: Vec<&String> = committed.iter().filter(|c| !parents.contains(*c)).collect();
            if let Some(victim) = leaves
                .get(rng.below(leaves.len().max(1) as u64) as usize)
                .map(|v| (*v).clone())
            {
                ack(&log, &format!("-{victim}"));
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
        ack(&log, &format!("+{name}"));
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

    let log = fs::read_to_string(dir.join("acked")).unwrap_or_default();
    let complete = log.rfind('\n').map_or("", |end| &log[..=end]);
    if complete.len() != log.len() {
        fs::write(dir.join("acked"), complete).unwrap();
    }
    let mut live = BTreeSet::new();
    for line in complete.lines() {
        let (op, name) = line.split_at(1);
        if op == "+" {
            live.insert(name.to_owned());
        } else {
            live.remove(name);
        }
    }
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
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        let dir = PathBuf::from(&args[pos + 1]);
        let seed: u64 = args[pos + 2].parse().unwrap();
        rt.block_on(child(&dir, seed));
        return;
    }
    if args.iter().any(|a| a == "--list") {
        println!("snapshot_crash_loop: test");
        return;
    }
    let rounds: usize = std::env::var("STRATA_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("snapshot_crash_loop: {rounds} rounds, seed {seed}");
    let mut rng = Rng(seed | 1);
    let exe = std::env::current_exe().unwrap();
    let mut live = 0;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .arg("--child")
            .arg(dir)
            .arg(seed.wrapping_add(round as u64).to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(5 + rng.below(150)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(
            status.code().is_none(),
            "round {round}: child exited by itself: {status}"
        );
        live = verify(dir, round, &rt);
    }
    println!("snapshot_crash_loop: {live} acknowledged snapshots intact after {rounds} kills");
    println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}
