//! Crash test: a child process writes, commits and deletes blobs in a loop
//! and is killed with SIGKILL many times, aimed in turn at writing,
//! committing and deleting. After every kill a check without repair may
//! find only what a kill leaves by design (a blob file or ingest directory
//! without its row); then the store reopens (and reconciles), the metadata
//! check and the verifying content check are clean, and every blob whose
//! commit the child saw succeed (and did not later delete) is there with
//! the right bytes. The harness is `strata_testkit::crash`.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use strata_content::ContentStore;
use strata_core::{Algorithm, Digest, Labels};
use strata_metadata::MetaDb;
use strata_testkit::crash::{self, AckLog, Phase, Rng};

fn open(dir: &Path) -> (Arc<MetaDb>, ContentStore) {
    let db = Arc::new(MetaDb::open(&dir.join("meta.redb")).expect("reopen metadata"));
    let cs = ContentStore::open(&dir.join("content"), Arc::clone(&db)).expect("reopen content");
    (db, cs)
}

/// Before any repair: the problems a kill may leave by design are files
/// whose rows were never committed, and an ingest row whose data a commit
/// had already moved into place; a content row without its blob (or a blob
/// that does not match its digest) would be a loss.
fn check_before_repair(dir: &Path, round: usize) {
    let db = Arc::new(MetaDb::open(&dir.join("meta.redb")).expect("open metadata"));
    let cs = ContentStore::open_after(
        &dir.join("content"),
        Arc::clone(&db),
        strata_metadata::LastClose::Clean,
    )
    .expect("open content without reconciling");
    crash::assert_none(round, "metadata before repair", &db.check().unwrap());
    for v in cs.check(true).unwrap() {
        assert!(
            [
                "blob file has no row",
                "ingest directory has no row",
                "ingest row has no data file"
            ]
            .contains(&v.problem.as_str()),
            "round {round}: before repair: {v:?}"
        );
    }
}

fn child(dir: &Path, seed: u64) {
    let (_db, cs) = open(dir);
    let log = AckLog::new(dir);
    let phase = Phase::new(dir);
    let mut rng = Rng::new(seed);
    let mut committed: Vec<Digest> = Vec::new();
    for i in 0.. {
        let cap = if rng.below(8) == 0 { 1 << 20 } else { 64 << 10 };
        let size = rng.below(cap) as usize;
        let bytes: Vec<u8> = (0..size).map(|_| rng.next_u64() as u8).collect();
        let d = Digest::of_bytes(Algorithm::Sha256, &bytes);
        let reference = format!("ref-{seed}-{}", i % 7);
        match rng.below(10) {
            // Leave a partial ingest behind for a later resume.
            0 => {
                phase.enter("partial");
                let mut w = cs.writer(&reference, None, None).unwrap();
                w.write_all(&bytes[..size / 2]).unwrap();
            }
            // Delete something committed earlier.
            1 if !committed.is_empty() => {
                let victim = committed.swap_remove(rng.below(committed.len() as u64) as usize);
                log.removing(victim.as_str());
                phase.enter("delete");
                cs.delete(&victim).unwrap();
            }
            _ => {
                if let Err(e) = cs.abort(&reference) {
                    assert!(
                        matches!(e, strata_content::ContentError::IngestNotFound(_)),
                        "{e}"
                    );
                }
                phase.enter("write");
                let mut w = cs.writer(&reference, Some(size as u64), Some(&d)).unwrap();
                w.write_all(&bytes).unwrap();
                phase.enter("commit");
                // Random sizes repeat a blob now and then (an empty one,
                // say): one already stored counts as committed.
                let got = match w.commit(size as u64, Some(&d), &Labels::new()) {
                    Ok(got) | Err(strata_content::ContentError::AlreadyExists(got)) => got,
                    Err(e) => panic!("commit {d}: {e}"),
                };
                phase.enter("acknowledge");
                log.added(got.as_str());
                committed.push(got);
            }
        }
    }
}

fn verify(dir: &Path, round: usize) -> usize {
    check_before_repair(dir, round);
    let (db, cs) = open(dir);
    let meta = db.check().unwrap();
    assert!(meta.is_empty(), "round {round}: metadata check: {meta:?}");
    let content = cs.check(true).unwrap();
    assert!(
        content.is_empty(),
        "round {round}: content check: {content:?}"
    );
    let live = AckLog::new(dir).live();
    for d in &live {
        let d = Digest::parse(d).unwrap();
        let mut r = cs
            .reader_at(&d)
            .unwrap_or_else(|e| panic!("round {round}: acknowledged blob {d} lost: {e}"));
        let mut bytes = Vec::new();
        r.read_to_end(&mut bytes).unwrap();
        assert_eq!(
            Digest::of_bytes(Algorithm::Sha256, &bytes),
            d,
            "round {round}"
        );
    }
    // Statuses of leftover ingests are readable.
    cs.list_statuses(&strata_core::Filter::default()).unwrap();
    live.len()
}

fn main() {
    crash::run(
        "content_crash_loop",
        120,
        &["write", "commit", "delete"],
        child,
        verify,
    );
}
