//! containerd's content-store scenarios (Writer, UpdateStatus, CommitExists,
//! Resume, ResumeTruncate, ResumeDiscard, ResumeCopy, SmallBlob, Labels,
//! CommitErrorState) against the real store on a real redb file, plus
//! walks, deletes and reopening.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use strata_content::{ContentError, ContentStore};
use strata_core::{Algorithm, Classify, Digest, ErrorKind, Filter, Labels};
use strata_metadata::MetaDb;

struct Env {
    dir: tempfile::TempDir,
    cs: ContentStore,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(MetaDb::open(&dir.path().join("meta.redb")).unwrap());
    let cs = ContentStore::open(&dir.path().join("content"), db).unwrap();
    Env { dir, cs }
}

fn reopen(env: Env) -> Env {
    let Env { dir, cs } = env;
    drop(cs);
    let db = Arc::new(MetaDb::open(&dir.path().join("meta.redb")).unwrap());
    let cs = ContentStore::open(&dir.path().join("content"), db).unwrap();
    Env { dir, cs }
}

static SEED: AtomicU64 = AtomicU64::new(1);

/// Distinct pseudo-random content per call.
fn content(size: usize) -> (Vec<u8>, Digest) {
    let mut x = SEED
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let bytes: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let d = Digest::of_bytes(Algorithm::Sha256, &bytes);
    (bytes, d)
}

fn gc_root() -> Labels {
    Labels::from([(
        "containerd.io/gc.root".to_string(),
        "2026-01-01T00:00:00Z".to_string(),
    )])
}

fn read_all(cs: &ContentStore, d: &Digest) -> Vec<u8> {
    let mut out = Vec::new();
    cs.reader_at(d).unwrap().read_to_end(&mut out).unwrap();
    out
}

fn between(t: SystemTime, a: SystemTime, b: SystemTime) {
    assert!(t >= a && t <= b, "{t:?} not within {a:?}..{b:?}");
}

#[test]
fn writer() {
    let e = env();
    for (i, (size, with_digest)) in [
        (None, false),
        (Some(256), false),
        (None, true),
        (Some(256), true),
    ]
    .into_iter()
    .enumerate()
    {
        let (bytes, d) = content(256);
        let mut w =
            e.cs.writer(&format!("c{i}"), size, with_digest.then_some(&d))
                .unwrap();
        for chunk in bytes.chunks(32) {
            w.write_all(chunk).unwrap();
        }
        let before = SystemTime::now();
        let got = w.commit(0, None, &gc_root()).unwrap();
        let after = SystemTime::now();
        assert_eq!(got, d);
        assert_eq!(w.digest(), d);
        let info = e.cs.info(&d).unwrap();
        assert_eq!((info.size, &info.labels), (256, &gc_root()));
        between(info.created, before, after);
        between(info.updated, before, after);
        assert_eq!(read_all(&e.cs, &d), bytes);
    }
}

#[test]
fn update_status() {
    let e = env();
    let (bytes, d) = content(256);
    let t0 = SystemTime::now();
    let mut w = e.cs.writer("c1", Some(256), Some(&d)).unwrap();
    let t1 = SystemTime::now();
    let st = w.status();
    assert_eq!(
        (
            st.reference.as_str(),
            st.offset,
            st.total,
            st.expected.as_ref()
        ),
        ("c1", 0, 256, Some(&d))
    );
    between(st.started, t0, t1);
    assert_eq!(w.digest(), Digest::of_bytes(Algorithm::Sha256, b""));
    for (from, to) in [(0, 64), (64, 192), (192, 256)] {
        let u0 = SystemTime::now();
        w.write_all(&bytes[from..to]).unwrap();
        let u1 = SystemTime::now();
        let st = w.status();
        assert_eq!(st.offset, to as u64);
        between(st.updated, u0, u1);
        between(st.started, t0, t1);
        assert_eq!(
            w.digest(),
            Digest::of_bytes(Algorithm::Sha256, &bytes[..to])
        );
    }
    // The store reports the same ingest while the writer is open.
    let listed =
        e.cs.list_statuses(&Filter::parse(&["ref==c1"]).unwrap())
            .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].offset, 256);
    w.commit(0, None, &gc_root()).unwrap();
    assert_eq!(e.cs.info(&d).unwrap().labels, gc_root());
    assert_eq!(e.cs.status("c1").unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn commit_exists() {
    let e = env();
    let (bytes, d) = content(256);
    e.cs.ingest("c1", &bytes[..], None, Some(&d), &Labels::new())
        .unwrap();
    let before = e.cs.info(&d).unwrap();
    for (i, expected) in [Some(&d), None].into_iter().enumerate() {
        let mut w =
            e.cs.writer(&format!("c1-commitexists-{i}"), None, None)
                .unwrap();
        w.write_all(&bytes).unwrap();
        let err = w
            .commit(
                256,
                expected,
                &Labels::from([("new".into(), "label".into())]),
            )
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
        assert!(err.to_string().contains(d.as_str()));
    }
    // The existing blob and its row are untouched.
    assert_eq!(e.cs.info(&d).unwrap(), before);
    assert_eq!(read_all(&e.cs, &d), bytes);
    assert!(e.cs.list_statuses(&Filter::default()).unwrap().is_empty());
}

#[test]
fn resume_writer() {
    let e = env();
    let (bytes, d) = content(256);
    let t0 = SystemTime::now();
    let mut w1 = e.cs.writer("cb", Some(256), Some(&d)).unwrap();
    let t1 = SystemTime::now();
    w1.write_all(&bytes[..128]).unwrap();
    let first = w1.status();
    drop(w1);
    let mut w2 = e.cs.writer("cb", Some(256), Some(&d)).unwrap();
    let resumed = w2.status();
    assert_eq!(resumed.offset, 128);
    assert_eq!(resumed.total, 256);
    assert_eq!(resumed.started, first.started);
    between(resumed.started, t0, t1);
    assert_eq!(
        w2.digest(),
        Digest::of_bytes(Algorithm::Sha256, &bytes[..128])
    );
    w2.write_all(&bytes[128..]).unwrap();
    assert_eq!(w2.digest(), d);
    w2.commit(0, None, &Labels::new()).unwrap();
    assert_eq!(e.cs.info(&d).unwrap().size, 256);
}

/// containerd's checkResume: sizes × truncation points, then a resume
/// strategy that must end in a committed blob.
fn check_resume(strategy: fn(&ContentStore, strata_content::Writer, &str, &[u8], u64, &Digest)) {
    let e = env();
    for (i, size) in [500usize, 5000, 50000].into_iter().enumerate() {
        for (j, frac) in [0.0, 0.1, 0.5, 0.9, 1.0].into_iter().enumerate() {
            let (bytes, d) = content(size);
            let limit = (size as f64 * frac) as usize;
            let reference = format!("ref-{i}-{j}");
            let mut w =
                e.cs.writer(&reference, Some(size as u64), Some(&d))
                    .unwrap();
            w.write_all(&bytes[..limit]).unwrap();
            drop(w);
            let w =
                e.cs.writer(&reference, Some(size as u64), Some(&d))
                    .unwrap();
            assert_eq!(w.status().offset, limit as u64);
            strategy(&e.cs, w, &reference, &bytes, limit as u64, &d);
            assert_eq!(e.cs.info(&d).unwrap().size, size as u64);
            assert_eq!(read_all(&e.cs, &d), bytes);
        }
    }
}

#[test]
fn resume_truncate() {
    check_resume(|_, mut w, _, bytes, _, d| {
        w.truncate(0).unwrap();
        assert_eq!(w.status().offset, 0);
        for chunk in bytes.chunks(1024) {
            w.write_all(chunk).unwrap();
        }
        w.commit(bytes.len() as u64, Some(d), &Labels::new())
            .unwrap();
    });
}

#[test]
fn resume_discard() {
    check_resume(|_, mut w, _, bytes, written, d| {
        w.write_all(&bytes[written as usize..]).unwrap();
        w.commit(bytes.len() as u64, Some(d), &Labels::new())
            .unwrap();
    });
}

#[test]
fn resume_copy() {
    // The ingest helper skips what the ingest already holds, reading the
    // source from its start as containerd's content.Copy does. The writer
    // handed in is released first so the helper can take the ref.
    check_resume(|cs, w, reference, bytes, _, d| {
        drop(w);
        let size = bytes.len() as u64;
        let got = cs
            .ingest(reference, bytes, Some(size), Some(d), &Labels::new())
            .unwrap();
        assert_eq!(
            (got.digest, got.size, got.already_existed),
            (d.clone(), size, false)
        );
    });
}

#[test]
fn resume_after_reopen() {
    let e = env();
    let (bytes, d) = content(10_000);
    let mut w = e.cs.writer("survivor", None, Some(&d)).unwrap();
    w.write_all(&bytes[..4000]).unwrap();
    drop(w);
    let e = reopen(e);
    let st = e.cs.status("survivor").unwrap();
    assert_eq!((st.offset, st.expected.as_ref()), (4000, Some(&d)));
    let mut w = e.cs.writer("survivor", None, None).unwrap();
    w.write_all(&bytes[4000..]).unwrap();
    assert_eq!(w.commit(0, None, &Labels::new()).unwrap(), d);
}

/// Hands out its bytes in odd pieces, is interrupted once, and fails for
/// good after `fail_at` bytes.
struct Trickle<'a> {
    bytes: &'a [u8],
    at: usize,
    fail_at: usize,
    interrupted: bool,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.interrupted && self.at > 3 << 20 {
            self.interrupted = true;
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        if self.at >= self.fail_at {
            return Err(std::io::Error::other("the source went away"));
        }
        let n = buf
            .len()
            .min(100_003)
            .min(self.bytes.len() - self.at)
            .min(self.fail_at - self.at);
        buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[test]
fn large_ingest_in_chunks_fails_and_resumes() {
    // Past a few 1 MiB chunks and 8 MiB writeback windows, not a multiple
    // of either.
    let e = env();
    let (bytes, d) = content((19 << 20) + 123);
    let source = |fail_at| Trickle {
        bytes: &bytes,
        at: 0,
        fail_at,
        interrupted: false,
    };
    let err =
        e.cs.ingest(
            "big",
            source((10 << 20) + 5),
            None,
            Some(&d),
            &Labels::new(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("the source went away"), "{err}");
    // What was read before the failure was written and stays for a resume.
    assert_eq!(e.cs.status("big").unwrap().offset, (10 << 20) + 5);
    let got =
        e.cs.ingest("big", source(usize::MAX), None, Some(&d), &Labels::new())
            .unwrap();
    assert_eq!(
        (got.digest.clone(), got.size),
        (d.clone(), bytes.len() as u64)
    );
    assert_eq!(read_all(&e.cs, &d), bytes);
    assert!(e.cs.list_statuses(&Filter::default()).unwrap().is_empty());
}

#[test]
fn small_blob() {
    let e = env();
    let blob = b"foobar";
    let d = Digest::of_bytes(Algorithm::Sha256, blob);
    let mut w = e.cs.writer("small", Some(6), Some(&d)).unwrap();
    w.write_all(blob).unwrap();
    w.commit(6, Some(&d), &Labels::new()).unwrap();
    let r = e.cs.reader_at(&d).unwrap();
    let mut buf = [0u8; 7];
    assert_eq!(r.read_at(&mut buf, 0).unwrap(), 6);
    assert_eq!(&buf[..6], blob);
    assert_eq!(r.read_at(&mut buf, 6).unwrap(), 0);
    let mut r = e.cs.reader_at(&d).unwrap();
    r.seek(SeekFrom::Start(3)).unwrap();
    let mut tail = String::new();
    r.read_to_string(&mut tail).unwrap();
    assert_eq!(tail, "bar");
}

#[test]
fn labels() {
    let e = env();
    let (bytes, d) = content(256);
    let root = "2026-11-28T00:00:00Z".to_string();
    let mut labels = Labels::from([
        ("k1".to_string(), "v1".to_string()),
        ("k2".into(), "v2".into()),
        ("containerd.io/gc.root".into(), root.clone()),
    ]);
    let mut w = e.cs.writer("c1-checklabels", Some(256), Some(&d)).unwrap();
    w.write_all(&bytes).unwrap();
    w.commit(0, None, &labels).unwrap();
    let mut info = e.cs.info(&d).unwrap();
    assert_eq!(info.labels, labels);

    labels.insert("k1".into(), "newvalue".into());
    labels.remove("k2");
    labels.insert("k3".into(), "v3".into());
    info.labels = labels.clone();
    let u0 = SystemTime::now();
    let updated = e.cs.update(&info, &[]).unwrap();
    between(updated.updated, u0, SystemTime::now());
    assert_eq!(e.cs.info(&d).unwrap().labels, labels);

    info.labels = Labels::from([
        ("k1".to_string(), "v1".to_string()),
        ("containerd.io/gc.root".into(), root),
    ]);
    e.cs.update(&info, &["labels.k3", "labels.k1"]).unwrap();
    assert_eq!(e.cs.info(&d).unwrap().labels, info.labels);

    let err = e.cs.update(&info, &["size"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    info.labels.insert("big".into(), "x".repeat(5000));
    assert_eq!(
        e.cs.update(&info, &["labels.big"]).unwrap_err().kind(),
        ErrorKind::Invalid
    );
}

/// Editors adding to one label from many threads at once all keep their
/// part (a read then an `update` would lose some), an edit that returns
/// `None` writes nothing, and an edit past the size limit is refused.
#[test]
fn label_edits_from_many_threads_all_stay() {
    let e = env();
    let (bytes, d) = content(64);
    e.cs.ingest("edits", &bytes[..], None, Some(&d), &gc_root())
        .unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (cs, d) = (&e.cs, &d);
            s.spawn(move || {
                for i in 0..25 {
                    cs.edit_label(d, "list", |cur| {
                        let item = format!("t{t}i{i}");
                        Some(cur.map_or(item.clone(), |c| format!("{c},{item}")))
                    })
                    .unwrap();
                }
            });
        }
    });
    let info = e.cs.info(&d).unwrap();
    let list = info.labels.get("list").expect("the label was written");
    assert_eq!(list.split(',').count(), 100, "edits were lost: {list}");

    let kept = e.cs.edit_label(&d, "list", |_| None).unwrap();
    assert_eq!(kept.updated, info.updated, "an edit of None wrote the blob");
    let err = e.cs.edit_label(&d, "big", |_| Some("x".repeat(5000)));
    assert_eq!(err.unwrap_err().kind(), ErrorKind::Invalid);
    assert!(!e.cs.info(&d).unwrap().labels.contains_key("big"));
    let missing = content(8).1;
    let err = e.cs.edit_label(&missing, "k", |_| Some("v".into()));
    assert_eq!(err.unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn commit_error_state() {
    let e = env();
    let (c1, d1) = content(256);
    let (_, d2) = content(256);
    e.cs.ingest("c1", &c1[..], None, Some(&d1), &Labels::new())
        .unwrap();
    let r = "c1-commiterror-state";
    let in_use = |cs: &ContentStore| {
        let err = cs.writer(r, None, None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    };

    let mut w = e.cs.writer(r, None, None).unwrap();
    w.write_all(&c1).unwrap();
    in_use(&e.cs);
    assert_eq!(
        w.commit(256, Some(&d1), &Labels::new()).unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    drop(w);

    let mut w = e.cs.writer(r, None, None).unwrap();
    in_use(&e.cs);
    assert_eq!(
        w.status().offset,
        0,
        "an AlreadyExists commit ends the ingest"
    );
    w.write_all(&c1).unwrap();
    assert_eq!(
        w.commit(256, None, &Labels::new()).unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    drop(w);

    let mut w = e.cs.writer(r, None, None).unwrap();
    in_use(&e.cs);
    w.write_all(&c1).unwrap();
    w.write_all(b"more").unwrap();
    let err = w.commit(260, Some(&d2), &Labels::new()).unwrap_err();
    match &err {
        ContentError::DigestMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &d2);
            assert_ne!(actual, &d2);
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert!(err.to_string().contains(d2.as_str()));
    assert!(
        e.cs.info(&d2).is_err(),
        "nothing is committed on a mismatch"
    );
    drop(w);

    let mut w = e.cs.writer(r, None, None).unwrap();
    in_use(&e.cs);
    let err = w.commit(256, None, &Labels::new()).unwrap_err();
    assert!(
        matches!(
            err,
            ContentError::SizeMismatch {
                expected: 256,
                actual: 260,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::Invalid);
    drop(w);

    let mut w = e.cs.writer(r, None, None).unwrap();
    in_use(&e.cs);
    let committed = w.commit(260, None, &Labels::new()).unwrap();
    assert_eq!(e.cs.info(&committed).unwrap().size, 260);
    drop(w);

    let mut w = e.cs.writer(r, None, None).unwrap();
    w.write_all(&c1).unwrap();
    in_use(&e.cs);
    assert_eq!(
        w.commit(256, Some(&d1), &Labels::new()).unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    drop(w);
    let w = e.cs.writer(r, None, None).unwrap();
    in_use(&e.cs);
    drop(w);
    drop(e.cs.writer(r, None, None).unwrap());
}

#[test]
fn expectation_conflicts_on_resume() {
    let e = env();
    let (_, d1) = content(10);
    let (_, d2) = content(10);
    drop(e.cs.writer("x", Some(10), Some(&d1)).unwrap());
    let err = e.cs.writer("x", None, Some(&d2)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert!(err.to_string().contains(d1.as_str()) && err.to_string().contains(d2.as_str()));
    assert_eq!(
        e.cs.writer("x", Some(11), None).unwrap_err().kind(),
        ErrorKind::FailedPrecondition
    );
    // The failed attempts released the ref.
    drop(e.cs.writer("x", Some(10), Some(&d1)).unwrap());
}

#[test]
fn walk_filters_delete_and_abort() {
    let e = env();
    let mut digests = Vec::new();
    for i in 0..4 {
        let (bytes, d) = content(100 + i);
        let labels = Labels::from([(
            "group".to_string(),
            if i % 2 == 0 { "even" } else { "odd" }.to_string(),
        )]);
        e.cs.ingest(&format!("w{i}"), &bytes[..], None, None, &labels)
            .unwrap();
        digests.push(d);
    }
    let even =
        e.cs.list(&Filter::parse(&["labels.group==even"]).unwrap())
            .unwrap();
    assert_eq!(even.len(), 2);
    let one =
        e.cs.list(&Filter::parse(&[format!("digest=={}", digests[3])]).unwrap())
            .unwrap();
    assert_eq!(one[0].size, 103);
    let either =
        e.cs.list(&Filter::parse(&["size==100", "size==101"]).unwrap())
            .unwrap();
    assert_eq!(either.len(), 2);
    let mut seen = 0;
    e.cs.walk::<ContentError>(&Filter::default(), |_| {
        seen += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, 4);

    e.cs.delete(&digests[0]).unwrap();
    assert_eq!(
        e.cs.info(&digests[0]).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        e.cs.delete(&digests[0]).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        e.cs.reader_at(&digests[0]).unwrap_err().kind(),
        ErrorKind::NotFound
    );

    let mut w = e.cs.writer("partial", None, None).unwrap();
    w.write_all(b"abc").unwrap();
    assert_eq!(
        e.cs.abort("partial").unwrap_err().kind(),
        ErrorKind::Unavailable
    );
    drop(w);
    e.cs.abort("partial").unwrap();
    assert_eq!(
        e.cs.status("partial").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        e.cs.abort("partial").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(
        std::fs::read_dir(e.cs.dir().join("ingest"))
            .unwrap()
            .next()
            .is_none()
    );
    assert!(e.cs.check(true).unwrap().is_empty());
}

#[test]
fn other_algorithms() {
    let e = env();
    let data = b"blake3 and sha512 are accepted too";
    for alg in [Algorithm::Sha512, Algorithm::Blake3] {
        let d = Digest::of_bytes(alg, data);
        let got =
            e.cs.ingest(
                &format!("alg-{alg}"),
                &data[..],
                None,
                Some(&d),
                &Labels::new(),
            )
            .unwrap();
        assert_eq!(got.digest, d);
        assert!(
            e.cs.dir()
                .join("blobs")
                .join(alg.as_str())
                .join(d.hex())
                .is_file()
        );
    }
    // Expecting a sha512 of bytes hashed as sha256 on the way is still checked.
    let d = Digest::of_bytes(Algorithm::Sha512, b"late");
    let mut w = e.cs.writer("late", None, None).unwrap();
    w.write_all(b"late").unwrap();
    assert_eq!(w.commit(0, Some(&d), &Labels::new()).unwrap(), d);
}

#[test]
fn check_and_reconcile_find_disk_damage() {
    let e = env();
    let (bytes, d) = content(1000);
    e.cs.ingest("a", &bytes[..], None, None, &Labels::new())
        .unwrap();
    let blob = e.cs.dir().join("blobs/sha256").join(d.hex());
    // Corrupt in place (as a disk error would).
    let mut perms = std::fs::metadata(&blob).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&blob, perms).unwrap();
    let mut damaged = bytes.clone();
    damaged[10] ^= 1;
    std::fs::write(&blob, &damaged).unwrap();
    assert!(e.cs.check(false).unwrap().is_empty(), "sizes still match");
    let found = e.cs.check(true).unwrap();
    assert_eq!(found.len(), 1);
    assert!(
        found[0].to_string().contains("blob hashes to"),
        "{}",
        found[0]
    );

    // A blob file without a row and a stray ingest directory.
    let stray = e.cs.dir().join("blobs/sha256").join("0".repeat(64));
    std::fs::write(&stray, b"x").unwrap();
    std::fs::create_dir(e.cs.dir().join("ingest/leftover")).unwrap();
    let problems: Vec<String> =
        e.cs.check(false)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    std::fs::remove_file(&blob).unwrap();
    let e = reopen(e);
    assert!(!stray.exists());
    assert!(!e.cs.dir().join("ingest/leftover").exists());
    assert_eq!(
        e.cs.info(&d).unwrap_err().kind(),
        ErrorKind::NotFound,
        "a row whose blob vanished is dropped"
    );
    assert!(e.cs.check(true).unwrap().is_empty());
}

#[test]
fn bad_refs_are_rejected() {
    let e = env();
    assert_eq!(
        e.cs.writer("", None, None).unwrap_err().kind(),
        ErrorKind::Invalid
    );
    assert_eq!(
        e.cs.writer("a\0b", None, None).unwrap_err().kind(),
        ErrorKind::Invalid
    );
}
