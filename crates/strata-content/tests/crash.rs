//! Crash test: a child process ingests, commits and deletes blobs in a loop
//! and is killed with SIGKILL at random moments, many times. After every
//! kill the root reopens, the metadata check and the verifying content check
//! are clean, and every blob whose commit the child saw succeed (and did not
//! later delete) is there with the right bytes.
//!
//! Runs without the libtest harness: the same binary is the parent and, with
//! `--child DIR`, the child.

// This program reports on stdout by design.
#![allow(clippy::print_stdout)]

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strata_content::ContentStore;
use strata_core::{Algorithm, Digest, Labels};
use strata_metadata::MetaDb;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn open(dir: &Path) -> (Arc<MetaDb>, ContentStore) {
    let db = Arc::new(MetaDb::open(&dir.join("meta.redb")).expect("reopen metadata"));
    let cs = ContentStore::open(&dir.join("content"), Arc::clone(&db)).expect("reopen content");
    (db, cs)
}

/// Appends a line to the acknowledgement log and makes it durable before the
/// next operation starts.
fn ack(log: &Path, line: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    // One write per line; a kill can still tear it, which the reader skips.
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
    f.sync_data().unwrap();
}

fn child(dir: &Path, seed: u64) -> ! {
    let (_db, cs) = open(dir);
    let log = dir.join("acked");
    let mut rng = Rng(seed | 1);
    let mut committed: Vec<Digest> = Vec::new();
    for i in 0.. {
        let cap = if rng.below(8) == 0 { 1 << 20 } else { 64 << 10 };
        let size = rng.below(cap) as usize;
        let bytes: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
        let d = Digest::of_bytes(Algorithm::Sha256, &bytes);
        let reference = format!("ref-{seed}-{}", i % 7);
        match rng.below(10) {
            // Leave a partial ingest behind for a later resume.
            0 => {
                let mut w = cs.writer(&reference, None, None).unwrap();
                w.write_all(&bytes[..size / 2]).unwrap();
            }
            // Delete something committed earlier. The intent is logged
            // first: a kill between the delete and a later log line must not
            // make the check expect a blob that is gone.
            1 if !committed.is_empty() => {
                let victim = committed.swap_remove(rng.below(committed.len() as u64) as usize);
                ack(&log, &format!("-{victim}"));
                cs.delete(&victim).unwrap();
            }
            _ => {
                let _ = cs.abort(&reference);
                let got = cs
                    .ingest(
                        &reference,
                        &bytes[..],
                        Some(size as u64),
                        Some(&d),
                        &Labels::new(),
                    )
                    .unwrap();
                ack(&log, &format!("+{}", got.digest));
                committed.push(got.digest);
            }
        }
    }
    unreachable!()
}

fn verify(dir: &Path, round: usize) -> usize {
    let (db, cs) = open(dir);
    let meta = db.check().unwrap();
    assert!(meta.is_empty(), "round {round}: metadata check: {meta:?}");
    let content = cs.check(true).unwrap();
    assert!(
        content.is_empty(),
        "round {round}: content check: {content:?}"
    );
    let mut live = BTreeSet::new();
    let log = fs::read_to_string(dir.join("acked")).unwrap_or_default();
    // Only newline-terminated lines were acknowledged; a torn last line was
    // cut by the kill before its fsync.
    let complete = log.rfind('\n').map_or("", |end| &log[..=end]);
    if complete.len() != log.len() {
        // Drop the torn tail so the next child's lines start cleanly.
        fs::write(dir.join("acked"), complete).unwrap();
    }
    for line in complete.lines() {
        let (op, d) = line.split_at(1);
        let d = Digest::parse(d).unwrap();
        if op == "+" {
            live.insert(d);
        } else {
            live.remove(&d);
        }
    }
    for d in &live {
        let mut r = cs
            .reader_at(d)
            .unwrap_or_else(|e| panic!("round {round}: acknowledged blob {d} lost: {e}"));
        let mut bytes = Vec::new();
        r.read_to_end(&mut bytes).unwrap();
        assert_eq!(
            &Digest::of_bytes(Algorithm::Sha256, &bytes),
            d,
            "round {round}"
        );
    }
    // Statuses of leftover ingests are readable.
    cs.list_statuses(&strata_core::Filter::default()).unwrap();
    live.len()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        let dir = PathBuf::from(&args[pos + 1]);
        let seed: u64 = args[pos + 2].parse().unwrap();
        child(&dir, seed);
    }
    if args.iter().any(|a| a == "--list") {
        println!("crash_loop: test");
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
    println!("crash_loop: {rounds} rounds, seed {seed}");
    let mut rng = Rng(seed | 1);
    let exe = std::env::current_exe().unwrap();
    let mut live = 0;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .arg("--child")
            .arg(dir)
            .arg((seed.wrapping_add(round as u64)).to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        // Random kill instants spread over startup, ingest, commit and delete.
        std::thread::sleep(Duration::from_millis(5 + rng.below(120)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(
            status.code().is_none(),
            "round {round}: child exited by itself: {status}"
        );
        live = verify(dir, round);
    }
    println!("crash_loop: {live} acknowledged blobs intact after {rounds} kills");
    println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}
