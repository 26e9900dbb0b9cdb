//! Lazy layers served through a real FUSE mount (root, as in CI): random
//! trees written as eStargz read back through the mount as the same tree
//! (hard links, modes, owners, xattrs, times to the nanosecond); a source
//! that goes away gives EIO and then the right bytes once it is back; a
//! corrupt chunk is never served nor cached; a TOC of another digest is
//! refused; the cache outlives its process, and a cache file changed on
//! disk is fetched anew; a read stalled on the network holds up no lookup;
//! an image of a plain and an eStargz layer mounts stacked, as its tree;
//! a finished prefetch leaves the blob it read through kept whole.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use strata_core::Digest;
use strata_diff::estargz::EStargzOptions;
use strata_diff::{Comparison, Compression, WriteOptions, walk_changes, write_layer};
use strata_lazy::{
    BlobCache, ChunkCache, ImageLayer, ImageMount, ImageOptions, Layer, LayerOptions, Link,
    Prefetch, RangeSource, Readers, mount,
};
use strata_testkit::crash::Rng;
use strata_testkit::tree::{render, without_sockets};

/// A blob in memory that can be taken away or stalled, counting what it
/// serves.
struct Blob {
    bytes: Vec<u8>,
    down: AtomicBool,
    /// Reads wait while it is set, as over a link that has stopped.
    stall: AtomicBool,
    /// Reads that have waited.
    stalled: AtomicU64,
    served: AtomicU64,
}

impl RangeSource for Blob {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        if self.stall.load(Ordering::SeqCst) {
            self.stalled.fetch_add(1, Ordering::SeqCst);
        }
        while self.stall.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "the test's registry is down",
            ));
        }
        self.served.fetch_add(len, Ordering::SeqCst);
        let (at, end) = (offset as usize, (offset + len) as usize);
        Ok(self.bytes[at..end].to_vec())
    }
}

/// `dir` as an eStargz blob with small chunks, and its TOC digest.
fn estargz(dir: &Path, chunk_size: u64) -> (Vec<u8>, Digest) {
    let (blob, written) = layer(None, dir, Compression::EStargz, chunk_size);
    (blob, written.toc_digest.unwrap())
}

/// The changes from `lower` to `dir` as a layer blob (eStargz with chunks
/// of `chunk_size`), and what was written.
fn layer(
    lower: Option<&Path>,
    dir: &Path,
    compression: Compression,
    chunk_size: u64,
) -> (Vec<u8>, strata_diff::Written) {
    let opts = WriteOptions {
        compression,
        estargz: EStargzOptions {
            chunk_size,
            ..EStargzOptions::default()
        },
        ..WriteOptions::default()
    };
    let (written, blob) = write_layer(&strata_leases::OpCtx::new(), Vec::new(), dir, &opts, |w| {
        walk_changes(lower, dir, Comparison::Compat, &mut |c| w.change(&c))
    })
    .unwrap();
    (blob, written)
}

fn open(blob: &Arc<Blob>, toc: &Digest, cache: &Path) -> io::Result<Arc<Layer>> {
    open_on(blob, toc, cache, std::time::Duration::ZERO)
}

/// Opened on a link of its own whose prefetch waits `quiet` after reads.
fn open_on(
    blob: &Arc<Blob>,
    toc: &Digest,
    cache: &Path,
    quiet: std::time::Duration,
) -> io::Result<Arc<Layer>> {
    layer_of(blob.clone(), toc, Arc::new(ChunkCache::open(cache)?), quiet)
}

/// The layer `src` holds (TOC digest `toc`) over chunk cache `cache`, on a
/// link of its own whose prefetch waits `quiet` after reads.
fn layer_of(
    src: Arc<dyn RangeSource>,
    toc: &Digest,
    cache: Arc<ChunkCache>,
    quiet: std::time::Duration,
) -> io::Result<Arc<Layer>> {
    Layer::open(
        src,
        cache,
        &LayerOptions {
            name: "test-layer".into(),
            toc_digest: toc.clone(),
            opaque_xattr: "trusted.overlay.opaque".into(),
            link: Arc::new(Link::new(quiet)),
        },
    )
    .map(Arc::new)
}

fn readers(threads: usize) -> Arc<Readers> {
    Readers::new(threads).unwrap()
}

/// A listing without the root's own line (the layer has no entry for it).
fn below_root(dir: &Path) -> String {
    let r = without_sockets(&render(dir));
    r.lines().skip(1).collect::<Vec<_>>().join("\n")
}

/// Every non-directory's modification time to the nanosecond (the
/// listing has whole seconds), sockets left out.
fn nanos(dir: &Path) -> Vec<(String, i64, i64)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = fs::symlink_metadata(e.path()).unwrap();
            if md.is_dir() {
                stack.push(e.path());
            } else if !md.file_type().is_socket() {
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, md.mtime(), md.mtime_nsec()));
            }
        }
    }
    out.sort();
    out
}

/// A temporary directory with empty `src` and `mnt` directories in it.
fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let (src, mnt) = (t.path().join("src"), t.path().join("mnt"));
    fs::create_dir(&src).unwrap();
    fs::create_dir(&mnt).unwrap();
    (t, src, mnt)
}

fn blob_of(bytes: Vec<u8>) -> Arc<Blob> {
    Arc::new(Blob {
        bytes,
        down: AtomicBool::new(false),
        stall: AtomicBool::new(false),
        stalled: AtomicU64::new(0),
        served: AtomicU64::new(0),
    })
}

/// `dir` archived by GNU tar in PAX form (modification times to the
/// nanosecond, as containerd's layers carry them) and re-framed as
/// eStargz: the blob and its TOC digest.
fn pax_estargz(dir: &Path, chunk_size: u64) -> (Vec<u8>, Digest) {
    let tar = std::process::Command::new("tar")
        .args(["--format=pax", "--xattrs", "--xattrs-include=*", "-C"])
        .arg(dir)
        .args(["-cf", "-", "."])
        .output()
        .expect("run tar");
    assert!(
        tar.status.success(),
        "{}",
        String::from_utf8_lossy(&tar.stderr)
    );
    let opts = EStargzOptions {
        chunk_size,
        ..EStargzOptions::default()
    };
    let (written, blob) =
        strata_diff::estargz::write(&tar.stdout[..], Vec::new(), &opts, None, 2).unwrap();
    (blob, written.toc_digest)
}

#[test]
fn random_trees_read_back_through_fuse_as_they_were() {
    for seed in strata_testkit::random_tree::seeds("lazy_round_trip", 4) {
        let mut rng = Rng::new(seed);
        let t = tempfile::tempdir().unwrap();
        let (src, mnt, eager) = (
            t.path().join("src"),
            t.path().join("mnt"),
            t.path().join("eager"),
        );
        for d in [&src, &mnt, &eager] {
            fs::create_dir(d).unwrap();
        }
        strata_testkit::random_tree::populate(&src, &mut rng, 80);
        strata_testkit::random_tree::utf8_names_only(&src);
        let (bytes, toc) = pax_estargz(&src, 1 + rng.below(16384));
        strata_diff::apply(
            &strata_leases::OpCtx::new(),
            &bytes[..],
            &eager,
            &strata_diff::ApplyOptions {
                // As an import does: checked against the TOC, the
                // format's entries hidden.
                estargz: strata_diff::estargz::Index::read(&mut io::Cursor::new(&bytes))
                    .unwrap()
                    .map(Arc::new),
                ..strata_diff::ApplyOptions::default()
            },
        )
        .unwrap();
        let blob = blob_of(bytes);
        let layer = open(&blob, &toc, &t.path().join("cache")).unwrap();
        // The footer and the TOC only, so far.
        let toc_bytes = blob.served.load(Ordering::SeqCst);
        assert!(
            toc_bytes < blob.size(),
            "seed {seed}: opening read the whole blob"
        );
        let m = mount(layer, &mnt, readers(2)).unwrap();
        assert_eq!(below_root(&mnt), below_root(&src), "seed {seed}");
        // What an eager import of the same blob gives, to the nanosecond.
        assert_eq!(below_root(&mnt), below_root(&eager), "seed {seed}");
        assert_eq!(nanos(&mnt), nanos(&eager), "seed {seed}");
        assert!(
            nanos(&mnt).iter().any(|(_, _, ns)| *ns != 0),
            "seed {seed}: no fractions to compare"
        );
        m.unmount().unwrap();
    }
}

#[test]
fn a_source_gone_mid_read_gives_eio_then_the_right_bytes() {
    let (t, src, mnt) = dirs();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(src.join("a"), &data).unwrap();
    fs::write(src.join("b"), b"small").unwrap();
    let (bytes, toc) = estargz(&src, 65536);
    let blob = blob_of(bytes);
    let cache = t.path().join("cache");
    let layer = open(&blob, &toc, &cache).unwrap();
    let m = mount(layer.clone(), &mnt, readers(2)).unwrap();
    blob.down.store(true, Ordering::SeqCst);
    let err = fs::read(mnt.join("a")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "{err}");
    // Metadata needs no fetch.
    assert_eq!(
        fs::metadata(mnt.join("a")).unwrap().len(),
        data.len() as u64
    );
    blob.down.store(false, Ordering::SeqCst);
    assert_eq!(fs::read(mnt.join("a")).unwrap(), data);
    m.unmount().unwrap();

    // The cache outlives the process that filled it: a new cache over the
    // same directory, with the source down, serves what was fetched.
    let source = blob_of(blob.bytes.clone());
    let again = open(&source, &toc, &cache).unwrap();
    source.down.store(true, Ordering::SeqCst);
    let m = mount(again, &mnt, readers(2)).unwrap();
    assert_eq!(fs::read(mnt.join("a")).unwrap(), data);
    m.unmount().unwrap();
}

#[test]
fn a_stalled_fetch_holds_up_no_lookup() {
    let (t, src, mnt) = dirs();
    // Three files of other bytes (one chunk digest would share a fetch).
    let data = |k: u32| -> Vec<u8> {
        (0..300_000u32)
            .map(|i| ((i * 13 + k) % 251) as u8)
            .collect()
    };
    for (k, f) in ["a", "b", "c"].iter().enumerate() {
        fs::write(src.join(f), data(k as u32)).unwrap();
    }
    fs::create_dir(src.join("d")).unwrap();
    fs::write(src.join("d/x"), b"x").unwrap();
    let (bytes, toc) = estargz(&src, 65536);
    let blob = blob_of(bytes);
    let layer = open(&blob, &toc, &t.path().join("cache")).unwrap();
    let m = mount(layer, &mnt, readers(3)).unwrap();
    blob.stall.store(true, Ordering::SeqCst);
    // Three reads wait on the source: more than the session has threads.
    let reads: Vec<_> = ["a", "b", "c"]
        .map(|f| {
            let file = mnt.join(f);
            std::thread::spawn(move || fs::read(file))
        })
        .into();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while blob.stalled.load(Ordering::SeqCst) < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let waiting = blob.stalled.load(Ordering::SeqCst);
    // The rest of the tree answers meanwhile.
    let (tx, rx) = std::sync::mpsc::channel();
    let d = mnt.join("d");
    std::thread::spawn(move || {
        let size = fs::metadata(d.join("x")).map(|m| m.len());
        let listed = fs::read_dir(&d).map(|r| r.count());
        let _ = tx.send((size.ok(), listed.ok()));
    });
    let got = rx.recv_timeout(std::time::Duration::from_secs(5));
    blob.stall.store(false, Ordering::SeqCst);
    assert!(waiting >= 3, "only {waiting} reads reached the source");
    assert_eq!(
        got.expect("a lookup waited for a stalled fetch"),
        (Some(1), Some(1))
    );
    for (k, r) in reads.into_iter().enumerate() {
        assert_eq!(r.join().unwrap().unwrap(), data(k as u32));
    }
    m.unmount().unwrap();
}

#[test]
fn a_corrupt_chunk_is_never_served_nor_cached() {
    let (t, src, mnt) = dirs();
    // Incompressible, so the member is as long as the data.
    let data: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(src.join("a"), &data).unwrap();
    fs::write(src.join("b"), b"fine").unwrap();
    let (mut bytes, toc) = estargz(&src, 1 << 20);
    let index = strata_diff::estargz::Index::read(&mut io::Cursor::new(&bytes))
        .unwrap()
        .unwrap();
    let a = index.toc.entries.iter().find(|e| e.name == "a").unwrap();
    // A byte in the middle of a's compressed data.
    let at = a.offset as usize + 2_000;
    bytes[at] ^= 0x40;
    let blob = blob_of(bytes);
    let cache = t.path().join("cache");
    let m = mount(open(&blob, &toc, &cache).unwrap(), &mnt, readers(2)).unwrap();
    let err = fs::read(mnt.join("a")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "{err}");
    assert_eq!(fs::read(mnt.join("b")).unwrap(), b"fine");
    m.unmount().unwrap();
    let digest = Digest::parse(&a.chunk_digest).unwrap();
    assert!(
        !cache.join("sha256").join(digest.hex()).exists(),
        "the corrupt chunk was cached"
    );
}

#[test]
fn a_changed_cache_file_is_fetched_anew() {
    let (t, src, mnt) = dirs();
    fs::write(src.join("a"), b"the real bytes").unwrap();
    let (bytes, toc) = estargz(&src, 1 << 20);
    let blob = blob_of(bytes);
    let cache = t.path().join("cache");
    let layer = open(&blob, &toc, &cache).unwrap();
    drop(Prefetch::start(layer.clone()).unwrap());
    assert_eq!(
        layer
            .read(layer.tree().child(1, "a").unwrap(), 0, 100)
            .unwrap(),
        b"the real bytes"
    );
    let file = fs::read_dir(cache.join("sha256"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    fs::write(&file, b"the fake bytes").unwrap();
    // A new process checks each cache file once before it uses it.
    let served = blob.served.load(Ordering::SeqCst);
    let m = mount(open(&blob, &toc, &cache).unwrap(), &mnt, readers(2)).unwrap();
    assert_eq!(fs::read(mnt.join("a")).unwrap(), b"the real bytes");
    m.unmount().unwrap();
    assert!(
        blob.served.load(Ordering::SeqCst) > served,
        "not fetched again"
    );
    assert_eq!(fs::read(&file).unwrap(), b"the real bytes");
}

#[test]
fn prefetch_caches_every_chunk() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    strata_testkit::random_tree::populate(&src, &mut Rng::new(7), 60);
    strata_testkit::random_tree::utf8_names_only(&src);
    let (bytes, toc) = estargz(&src, 4096);
    let blob = blob_of(bytes);
    let layer = open(&blob, &toc, &t.path().join("cache")).unwrap();
    let p = Prefetch::start(layer.clone()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !p.is_finished() {
        assert!(std::time::Instant::now() < deadline, "prefetch did not end");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    blob.down.store(true, Ordering::SeqCst);
    for (ino, node) in layer.tree().iter() {
        if let strata_lazy::Kind::File(_) = node.kind {
            assert_eq!(
                layer.read(ino, 0, node.size).unwrap().len() as u64,
                node.size
            );
        }
    }
    // Runs of members went out in few reads.
    let stats = layer.stats();
    assert!(
        stats.requests.load(Ordering::SeqCst) < stats.chunks.load(Ordering::SeqCst),
        "{stats:?}"
    );
}

#[test]
fn prefetch_yields_the_link_to_reads() {
    let (t, src, _) = dirs();
    let data: Vec<u8> = (0..400_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(src.join("a"), &data).unwrap();
    fs::write(src.join("b"), vec![7u8; 300_000]).unwrap();
    let (bytes, toc) = estargz(&src, 65536);
    let blob = blob_of(bytes);
    let quiet = std::time::Duration::from_secs(2);
    let layer = open_on(&blob, &toc, &t.path().join("cache"), quiet).unwrap();
    let opened = blob.served.load(Ordering::SeqCst);
    let p = Prefetch::start(layer.clone()).unwrap();
    // A fresh mount's first reads come first.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        blob.served.load(Ordering::SeqCst),
        opened,
        "prefetch fetched before the quiet period"
    );
    // While a read waits for its fetch, prefetch fetches nothing, however
    // long the read waits.
    blob.stall.store(true, Ordering::SeqCst);
    let reader = {
        let layer = layer.clone();
        let ino = layer.tree().child(1, "a").unwrap();
        std::thread::spawn(move || layer.read(ino, 0, 400_000))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while blob.stalled.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        blob.stalled.load(Ordering::SeqCst),
        1,
        "the read never waited"
    );
    std::thread::sleep(quiet + std::time::Duration::from_millis(500));
    let waited = blob.stalled.load(Ordering::SeqCst);
    blob.stall.store(false, Ordering::SeqCst);
    assert_eq!(reader.join().unwrap().unwrap(), data);
    assert_eq!(waited, 1, "prefetch fetched while a read waited");
    // Once reads are quiet, prefetch fetches the rest.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !p.is_finished() {
        assert!(std::time::Instant::now() < deadline, "prefetch did not end");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    blob.down.store(true, Ordering::SeqCst);
    let b = layer.tree().child(1, "b").unwrap();
    assert_eq!(layer.read(b, 0, 300_000).unwrap(), vec![7u8; 300_000]);
}

#[test]
fn a_layer_opened_again_fetches_no_toc() {
    let (t, src, _) = dirs();
    fs::write(src.join("a"), b"kept").unwrap();
    let (bytes, toc) = estargz(&src, 1 << 20);
    let blob = blob_of(bytes);
    let cache = t.path().join("cache");
    let first = open(&blob, &toc, &cache).unwrap();
    assert_eq!(
        first.stats().requests.load(Ordering::SeqCst),
        2,
        "footer and TOC"
    );
    // Another process, the registry away: the TOC comes from the cache.
    blob.down.store(true, Ordering::SeqCst);
    let again = open(&blob, &toc, &cache).unwrap();
    assert_eq!(again.stats().requests.load(Ordering::SeqCst), 0);
    assert_eq!(again.tree().len(), first.tree().len());
    // A kept TOC changed on disk is not used: it is fetched again.
    let kept = fs::read_dir(cache.join("tocs/sha256"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut tail = fs::read(&kept).unwrap();
    let mid = tail.len() / 2;
    tail[mid] ^= 0x20;
    fs::write(&kept, tail).unwrap();
    assert!(open(&blob, &toc, &cache).is_err(), "a changed TOC was used");
    blob.down.store(false, Ordering::SeqCst);
    let fetched = open(&blob, &toc, &cache).unwrap();
    assert_eq!(fetched.stats().requests.load(Ordering::SeqCst), 2);
    assert_eq!(
        fetched
            .read(fetched.tree().child(1, "a").unwrap(), 0, 4)
            .unwrap(),
        b"kept"
    );
}

#[test]
fn a_toc_of_another_digest_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), b"x").unwrap();
    let (bytes, _) = estargz(&src, 1 << 20);
    let other = Digest::of_bytes(strata_core::Algorithm::Sha256, b"another TOC");
    let err = open(&blob_of(bytes), &other, &t.path().join("cache")).unwrap_err();
    assert!(err.to_string().contains(other.as_str()), "{err}");
    // And a blob that is no eStargz at all.
    let err = open(&blob_of(vec![0u8; 4096]), &other, &t.path().join("cache")).unwrap_err();
    assert!(err.to_string().contains("no eStargz footer"), "{err}");
}

#[test]
fn the_cache_is_pruned_used_longest_ago_first_under_a_live_mount() {
    let (t, src, mnt) = dirs();
    // Three files of distinct content, one chunk each, and one read only
    // after the cache is emptied.
    for (name, fill) in [("old", b'o'), ("mid", b'm'), ("new", b'n'), ("late", b'l')] {
        fs::write(src.join(name), vec![fill; 4000]).unwrap();
    }
    let (bytes, toc) = estargz(&src, 1 << 20);
    let blob = blob_of(bytes);
    let cache_dir = t.path().join("cache");
    let cache = Arc::new(ChunkCache::open(&cache_dir).unwrap());
    let layer = layer_of(blob.clone(), &toc, cache.clone(), std::time::Duration::ZERO).unwrap();
    let m = mount(layer, &mnt, readers(2)).unwrap();
    // Read in order, each chunk file then dated a day after the last.
    let day = std::time::Duration::from_secs(86_400);
    let start = std::time::SystemTime::now() - day * 10;
    for (i, name) in ["old", "mid", "new"].into_iter().enumerate() {
        let got = fs::read(mnt.join(name)).unwrap();
        let chunk = cache_dir.join("sha256").join(sha256_hex(&got));
        let when = start + day * i as u32;
        let times = fs::FileTimes::new().set_accessed(when).set_modified(when);
        fs::File::options()
            .write(true)
            .open(&chunk)
            .unwrap()
            .set_times(times)
            .unwrap();
    }
    let toc_bytes: u64 = fs::read_dir(cache_dir.join("tocs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    // Room for the TOC (used just now) and one chunk: the two chunks used
    // longest ago go.
    let pruned = strata_lazy::prune(cache.prunable().unwrap(), toc_bytes + 4000).unwrap();
    assert_eq!(
        (pruned.removed, pruned.removed_bytes),
        (2, 8000),
        "{pruned:?}"
    );
    assert_eq!((pruned.kept, pruned.kept_bytes), (2, toc_bytes + 4000));
    assert_eq!(pruned.in_use, 0);
    let left: Vec<String> = fs::read_dir(cache_dir.join("sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, [sha256_hex(&vec![b'n'; 4000])]);
    // A layer opened anew fetches what was pruned, and only that.
    let again = open(&blob, &toc, &cache_dir).unwrap();
    let read = |name: &str| {
        let served = blob.served.load(Ordering::SeqCst);
        let got = again
            .read(again.tree().child(1, name).unwrap(), 0, 4000)
            .unwrap();
        (got, blob.served.load(Ordering::SeqCst) > served)
    };
    assert_eq!(read("new"), (vec![b'n'; 4000], false));
    assert_eq!(read("old"), (vec![b'o'; 4000], true));
    // Nothing kept: everything goes. The live mount reads on: what it read
    // before (from the kernel's page cache or its open chunk files), and
    // a file it had not read, fetched into the emptied cache.
    let all = strata_lazy::prune(cache.prunable().unwrap(), 0).unwrap();
    assert_eq!((all.kept, all.kept_bytes), (0, 0), "{all:?}");
    for (name, fill) in [("old", b'o'), ("mid", b'm'), ("new", b'n')] {
        assert_eq!(fs::read(mnt.join(name)).unwrap(), vec![fill; 4000]);
    }
    let served = blob.served.load(Ordering::SeqCst);
    assert_eq!(fs::read(mnt.join("late")).unwrap(), vec![b'l'; 4000]);
    assert!(blob.served.load(Ordering::SeqCst) > served, "not fetched");
    let late = cache_dir.join("sha256").join(sha256_hex(&[b'l'; 4000]));
    assert!(late.is_file(), "not cached");
    m.unmount().unwrap();
}

/// `err` names layer `i` (of digest `d`) in front, and only there.
fn names_once(err: &io::Error, i: usize, d: &Digest) {
    let said = err.to_string();
    assert!(said.starts_with(&format!("layer {i} ({d}): ")), "{said}");
    assert_eq!(said.matches(d.as_str()).count(), 1, "{said}");
}

/// Whether `dir` is a mount point, by its mount table line.
fn is_mounted(dir: &Path) -> bool {
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.canonicalize().unwrap();
    table
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap()))
}

#[test]
fn an_image_of_a_plain_and_a_lazy_layer_mounts_stacked_as_its_tree() {
    let t = tempfile::tempdir().unwrap();
    let [base, full, dir, cache] = ["base", "full", "dir", "cache"].map(|n| t.path().join(n));
    fs::create_dir_all(base.join("d")).unwrap();
    fs::write(base.join("a"), "alpha").unwrap();
    fs::write(base.join("b"), "bravo").unwrap();
    fs::write(base.join("d/x"), "x-ray").unwrap();
    fs::write(base.join("d/y"), "yankee").unwrap();
    // The image's tree: b and d/x deleted, c added, over the base.
    let status = std::process::Command::new("cp")
        .args(["-a", "--"])
        .arg(&base)
        .arg(&full)
        .status()
        .unwrap();
    assert!(status.success());
    fs::remove_file(full.join("b")).unwrap();
    fs::remove_file(full.join("d/x")).unwrap();
    let mut rng = Rng::new(24);
    let c: Vec<u8> = (0..200_000).map(|_| rng.below(256) as u8).collect();
    fs::write(full.join("c"), &c).unwrap();
    fs::create_dir(&dir).unwrap();

    let (plain, plain_written) = layer(None, &base, Compression::Gzip, 0);
    let (lazy, lazy_written) = layer(Some(&base), &full, Compression::EStargz, 16 << 10);
    let (plain, lazy) = (blob_of(plain), blob_of(lazy));
    let image = |toc: Option<Digest>| {
        vec![
            ImageLayer {
                digest: plain_written.digest.clone(),
                media_type: None,
                toc_digest: None,
                diff_id: Some(plain_written.diff_id.clone()),
                source: plain.clone(),
            },
            ImageLayer {
                digest: lazy_written.digest.clone(),
                media_type: None,
                toc_digest: toc,
                diff_id: Some(lazy_written.diff_id.clone()),
                source: lazy.clone(),
            },
        ]
    };
    let toc = lazy_written.toc_digest.clone();
    let opts = ImageOptions {
        threads: 2,
        prefetch: false,
        ..ImageOptions::default()
    };

    // A TOC of another digest fails the mount, naming the layer, and
    // leaves the directory as it was.
    let wrong = Some(plain_written.diff_id.clone());
    let err = ImageMount::mount(&cache, image(wrong), &dir, &opts).unwrap_err();
    names_once(&err, 1, &lazy_written.digest);
    assert!(!is_mounted(&dir), "a failed mount left {}", dir.display());

    let m = ImageMount::mount(&cache, image(toc.clone()), &dir, &opts).unwrap();
    assert!(is_mounted(&dir));
    assert_eq!(below_root(&dir), below_root(&full));
    assert_eq!(fs::read(dir.join("c")).unwrap(), c);
    let reports = m.layers();
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0].toc_digest, None);
    assert_eq!(reports[0].unpacked_fetched, Some(plain.size()));
    assert_eq!(reports[1].toc_digest, toc);
    assert_eq!(reports[1].unpacked_fetched, None);
    assert!(reports[1].inodes.is_some());
    let totals = m.totals();
    assert!(totals.chunks >= 200_000 / (16 << 10), "{totals:?}");
    assert!(totals.bytes >= plain.size(), "{totals:?}");
    let (end, ended) = m.unmount(std::time::Duration::from_secs(5)).unwrap();
    assert!(ended);
    assert_eq!(end.chunks, totals.chunks);
    assert!(!is_mounted(&dir), "unmount left the stack");
    // The plain blob was read whole, so it is kept whole.
    let kept = cache.join("blobs/sha256").join(plain_written.digest.hex());
    assert_eq!(fs::read(&kept).unwrap(), plain.bytes);

    // Mounted again: the plain layer is found unpacked, the chunks in the
    // cache; dropping the mount unmounts it.
    let served = plain.served.load(Ordering::SeqCst) + lazy.served.load(Ordering::SeqCst);
    let m = ImageMount::mount(&cache, image(toc), &dir, &opts).unwrap();
    assert_eq!(m.layers()[0].unpacked_fetched, Some(0));
    assert_eq!(fs::read(dir.join("c")).unwrap(), c);
    assert_eq!(
        plain.served.load(Ordering::SeqCst) + lazy.served.load(Ordering::SeqCst),
        served,
        "a second mount fetched again"
    );
    drop(m);
    assert!(!is_mounted(&dir), "drop left the stack");
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);

    // A plain layer that fails its diffID over a lazy layer already
    // mounted: that layer's mount goes too.
    let (whole, whole_written) = layer(None, &full, Compression::EStargz, 16 << 10);
    let failing = vec![
        ImageLayer {
            digest: whole_written.digest.clone(),
            media_type: None,
            toc_digest: whole_written.toc_digest.clone(),
            diff_id: None,
            source: blob_of(whole),
        },
        ImageLayer {
            diff_id: Some(whole_written.diff_id.clone()),
            ..image(None).remove(0)
        },
    ];
    let err = ImageMount::mount(&cache, failing, &dir, &opts).unwrap_err();
    names_once(&err, 1, &plain_written.digest);
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let cached = cache.canonicalize().unwrap();
    assert!(
        !table.contains(cached.to_str().unwrap()),
        "a failed mount left a layer mounted: {table}"
    );
    assert!(!is_mounted(&dir), "a failed mount left {}", dir.display());

    // A file to mount on is refused before anything is fetched or made.
    let served = plain.served.load(Ordering::SeqCst) + lazy.served.load(Ordering::SeqCst);
    let file = full.join("a");
    let fresh = cache.with_file_name("fresh-cache");
    let err = ImageMount::mount(&fresh, image(lazy_written.toc_digest.clone()), &file, &opts)
        .unwrap_err();
    assert!(!fresh.exists(), "a refused mount made its cache");
    assert_eq!(err.kind(), io::ErrorKind::NotADirectory, "{err}");
    assert!(err.to_string().contains(file.to_str().unwrap()), "{err}");
    assert_eq!(
        plain.served.load(Ordering::SeqCst) + lazy.served.load(Ordering::SeqCst),
        served
    );
}

#[test]
fn a_finished_prefetch_leaves_the_blob_kept_whole() {
    let (t, src, _mnt) = dirs();
    // Directories, symlinks and empty files between the files: members
    // no chunk starts, which prefetch has no chunk to read for. Over 2 MB
    // in all, so the whole blob is more than prefetch fetches to complete
    // one.
    let mut rng = Rng::new(7);
    for i in 0..700 {
        let d = src.join(format!("d{i}"));
        fs::create_dir(&d).unwrap();
        std::os::unix::fs::symlink("f", d.join("link")).unwrap();
        fs::write(d.join("empty"), "").unwrap();
        let data: Vec<u8> = (0..3000).map(|_| rng.below(256) as u8).collect();
        fs::write(d.join("f"), data).unwrap();
    }
    let (bytes, toc) = estargz(&src, 4096);
    assert!(bytes.len() > 2 << 20, "{} bytes", bytes.len());
    let digest = Digest::of_bytes(strata_core::Algorithm::Sha256, &bytes);
    let blob = blob_of(bytes.clone());
    let chunks = t.path().join("cache");
    // Opened once without keeping, so the TOC comes from the cache below
    // and the recording never reads it.
    drop(open(&blob, &toc, &chunks).unwrap());
    // Prefetched through a recording into `blobs`: the layer's stats.
    let prefetched = |blobs: &Path| {
        let blobs = BlobCache::open(blobs).unwrap();
        let layer = layer_of(
            blobs.recording(&digest, blob.clone()),
            &toc,
            Arc::new(ChunkCache::open(&chunks).unwrap()),
            std::time::Duration::ZERO,
        )
        .unwrap();
        let prefetch = Prefetch::start(layer.clone()).unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !prefetch.is_finished() {
            assert!(std::time::Instant::now() < until, "prefetch did not finish");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let requests = layer.stats().requests.load(Ordering::SeqCst);
        // The last of the layer's source waits for the blob's check.
        drop((prefetch, layer));
        requests
    };
    let requests = prefetched(&t.path().join("blobs"));
    let kept = t.path().join("blobs/sha256").join(digest.hex());
    assert!(kept.is_file(), "the blob is not kept whole");
    assert_eq!(fs::read(&kept).unwrap(), bytes);
    // Runs of chunks go out as a few reads of up to 2 MiB (the members
    // between them taken in), then the TOC: not one read per file.
    assert!(requests <= 8, "{requests} requests for 700 files");

    // Every chunk already cached: nothing kept of the blob, and fetching
    // it whole is left to a pull.
    let served = blob.served.load(Ordering::SeqCst);
    let again = t.path().join("blobs-again");
    assert_eq!(prefetched(&again), 0);
    assert_eq!(blob.served.load(Ordering::SeqCst), served);
    assert!(!again.join("sha256").join(digest.hex()).exists());
}

fn sha256_hex(bytes: &[u8]) -> String {
    Digest::of_bytes(strata_core::digest::Algorithm::Sha256, bytes)
        .hex()
        .to_owned()
}

/// Prefetch reads two files in one range request when only headers of
/// entries without data (directories here) lie between them: a file's
/// fetch ends 64 KiB past its data, and prefetch takes in up to 64 KiB
/// more to reach the next file; past that it reads twice.
#[test]
fn prefetch_reads_across_a_short_run_of_members_without_data() {
    for (between, reads) in [(2000, 1), (4000, 2)] {
        let (t, src, _mnt) = dirs();
        let mut rng = Rng::new(between);
        let file = |rng: &mut Rng, name: &str| {
            let data: Vec<u8> = (0..3000).map(|_| rng.below(256) as u8).collect();
            fs::write(src.join(name), data).unwrap();
        };
        file(&mut rng, "a");
        // Long random names, so the directories' tar headers do not
        // compress to nothing.
        for i in 0..between {
            let name: String = (0..60)
                .map(|_| char::from(b'a' + rng.below(26) as u8))
                .collect();
            fs::create_dir(src.join(format!("m{i:04}{name}"))).unwrap();
        }
        file(&mut rng, "z");
        let (bytes, toc) = estargz(&src, 4096);
        let blob = blob_of(bytes);
        let cache = t.path().join("cache");
        // Opened once first, so the TOC comes from the cache and every
        // read counted below is prefetch's.
        drop(open(&blob, &toc, &cache).unwrap());
        let layer = open(&blob, &toc, &cache).unwrap();
        // Between the files: more than one fetch cap but at most two (1
        // read), or more than two (2 reads).
        let mut starts: Vec<u64> = (layer.tree().iter())
            .filter_map(|(_, node)| match &node.kind {
                strata_lazy::Kind::File(chunks) => Some(chunks[0].blob_offset),
                _ => None,
            })
            .collect();
        starts.sort_unstable();
        let gap = starts[1] - starts[0] - 3000;
        match reads {
            1 => assert!((80 << 10..120 << 10).contains(&gap), "{gap}"),
            _ => assert!(gap > 150 << 10, "{gap}"),
        }
        let prefetch = Prefetch::start(layer.clone()).unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !prefetch.is_finished() {
            assert!(std::time::Instant::now() < until, "prefetch did not finish");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let stats = layer.stats();
        assert_eq!(
            stats.chunks.load(Ordering::SeqCst),
            2,
            "{between}: {stats:?}"
        );
        assert_eq!(
            stats.requests.load(Ordering::SeqCst),
            reads,
            "{between} directories between the files: {stats:?}"
        );
    }
}

/// A writable mount (`upper`) of a lazy layer: what is written, changed
/// and deleted lands in UPPER/fs only (a deletion as a whiteout), the
/// layer itself stays as it was, and the changes are there again when
/// the same upper is mounted anew.
#[test]
fn a_writable_mount_writes_only_to_its_upper() {
    /// A mount made by hand, detached when dropped, so a failed assertion
    /// leaves no mount.
    struct Detach<'a>(&'a Path);
    impl Drop for Detach<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0)
                .status();
        }
    }
    /// `mount -t FS_TYPE -o OPTIONS FS_TYPE AT`.
    fn by_hand<'a>(fs_type: &str, options: &str, at: &'a Path) -> Detach<'a> {
        let status = std::process::Command::new("mount")
            .args(["-t", fs_type, "-o", options, fs_type])
            .arg(at)
            .status()
            .unwrap();
        assert!(status.success(), "mount -t {fs_type} on {}", at.display());
        Detach(at)
    }
    let (t, src, dir) = dirs();
    fs::create_dir(src.join("d")).unwrap();
    fs::write(src.join("a"), "alpha").unwrap();
    fs::write(src.join("d/y"), "yankee").unwrap();
    let mut rng = Rng::new(31);
    let c: Vec<u8> = (0..100_000).map(|_| rng.below(256) as u8).collect();
    fs::write(src.join("c"), &c).unwrap();
    // A root mode of its own (GNU tar archives the root entry), which a
    // writable mount must show too.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&src, fs::Permissions::from_mode(0o751)).unwrap();
    let (bytes, toc) = pax_estargz(&src, 16 << 10);
    let digest = Digest::of_bytes(strata_core::Algorithm::Sha256, &bytes);
    let blob = blob_of(bytes);
    let image = || {
        vec![ImageLayer {
            digest: digest.clone(),
            media_type: None,
            toc_digest: Some(toc.clone()),
            diff_id: None,
            source: blob.clone(),
        }]
    };
    let (cache, upper) = (t.path().join("cache"), t.path().join("upper"));
    let writable = ImageOptions {
        threads: 2,
        prefetch: false,
        upper: Some(upper.clone()),
        ..ImageOptions::default()
    };

    let refused = |upper: &Path, kind: io::ErrorKind| {
        let opts = ImageOptions {
            upper: Some(upper.to_path_buf()),
            ..writable.clone()
        };
        let err = ImageMount::mount(&cache, image(), &dir, &opts).unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
        assert!(!is_mounted(&dir), "{err}");
    };
    // An upper inside the directory the image covers or the cache, or
    // holding either, is refused before anything is made.
    for overlapping in [dir.join("up"), cache.join("up"), t.path().to_path_buf()] {
        refused(&overlapping, io::ErrorKind::InvalidInput);
        assert!(!overlapping.join("fs").exists(), "a refused upper was made");
    }
    // One that others could change under the mount: writable by others,
    // its fs a symlink (here into the cache), or itself a symlink; and one
    // with a `..` past what exists.
    let open = t.path().join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    refused(&open, io::ErrorKind::PermissionDenied);
    refused(&open.join("below"), io::ErrorKind::PermissionDenied);
    let linked = t.path().join("linked");
    fs::create_dir(&linked).unwrap();
    fs::create_dir_all(cache.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(cache.join("elsewhere"), linked.join("fs")).unwrap();
    refused(&linked, io::ErrorKind::PermissionDenied);
    assert_eq!(fs::read_dir(cache.join("elsewhere")).unwrap().count(), 0);
    let real = t.path().join("real");
    fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, t.path().join("alias")).unwrap();
    refused(&t.path().join("alias"), io::ErrorKind::PermissionDenied);
    assert_eq!(fs::read_dir(&real).unwrap().count(), 0);
    refused(&t.path().join("new/../up"), io::ErrorKind::InvalidInput);

    // An upper and work made readable by others before are made private.
    fs::create_dir_all(upper.join("work")).unwrap();
    for d in [upper.clone(), upper.join("work")] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    // A mount that fails once the upper is checked (here on a wrong TOC
    // digest) leaves no fs behind, so the next one still gives it the
    // image root's mode.
    let wrong_toc = vec![ImageLayer {
        toc_digest: Some(digest.clone()),
        ..image().remove(0)
    }];
    let err = ImageMount::mount(&cache, wrong_toc, &dir, &writable).unwrap_err();
    assert!(err.to_string().contains("TOC hashes to"), "{err}");
    assert!(!is_mounted(&dir));
    assert!(!upper.join("fs").exists(), "a failed mount left its fs");
    // Nor does one whose overlay the kernel refuses, here because work is
    // on another file system than fs: the fs made for it goes again.
    let work = upper.join("work");
    let on_work = by_hand("tmpfs", "mode=0700", &work);
    let err = ImageMount::mount(&cache, image(), &dir, &writable).unwrap_err();
    drop(on_work);
    assert!(err.to_string().contains("mount overlay"), "{err}");
    assert!(!is_mounted(&dir), "{err}");
    assert!(
        !upper.join("fs").exists(),
        "a refused overlay left its fs: {err}"
    );

    let m = ImageMount::mount(&cache, image(), &dir, &writable).unwrap();
    let mode = |d: &Path| fs::metadata(d).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&upper), 0o700);
    assert_eq!(mode(&upper.join("work")), 0o700);
    // The mount's root is the image's, not the upper's own.
    assert_eq!(mode(&dir), 0o751);
    let root_line = render(&dir).lines().next().unwrap().to_owned();
    // One mount at a time: a second on the same upper is refused.
    let other = t.path().join("other");
    fs::create_dir(&other).unwrap();
    let err = ImageMount::mount(&cache, image(), &other, &writable).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ResourceBusy, "{err}");
    assert!(err.to_string().contains("in use by another mount"), "{err}");
    fs::write(dir.join("new"), "november").unwrap();
    fs::write(dir.join("a"), "alpha, changed").unwrap();
    fs::remove_file(dir.join("d/y")).unwrap();
    assert_eq!(fs::read(dir.join("c")).unwrap(), c);
    let (_, ended) = m.unmount(std::time::Duration::from_secs(5)).unwrap();
    assert!(ended && !is_mounted(&dir));

    let up = upper.join("fs");
    assert_eq!(fs::read_to_string(up.join("new")).unwrap(), "november");
    assert_eq!(fs::read_to_string(up.join("a")).unwrap(), "alpha, changed");
    let whiteout = fs::symlink_metadata(up.join("d/y")).unwrap();
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    assert!(!up.join("c").exists(), "a file only read was copied up");

    // Read-only again: the layer as it was.
    let read_only = ImageOptions {
        upper: None,
        ..writable.clone()
    };
    let m = ImageMount::mount(&cache, image(), &dir, &read_only).unwrap();
    assert_eq!(below_root(&dir), below_root(&src));
    assert_eq!(render(&dir).lines().next().unwrap(), root_line);
    assert!(
        fs::write(dir.join("other"), "x").is_err(),
        "a read-only mount took a write"
    );
    drop(m);

    // An overlay some other mount left on the upper (a killed mount's):
    // refused until it is gone.
    let lower = t.path().join("lower");
    fs::create_dir(&lower).unwrap();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.join("fs").display(),
        upper.join("work").display()
    );
    let left = by_hand("overlay", &options, &other);
    let err = ImageMount::mount(&cache, image(), &dir, &writable).unwrap_err();
    drop(left);
    assert_eq!(err.kind(), io::ErrorKind::ResourceBusy, "{err}");
    let other = other.canonicalize().unwrap();
    assert!(err.to_string().contains(other.to_str().unwrap()), "{err}");

    // The same upper again: the changes are back.
    let m = ImageMount::mount(&cache, image(), &dir, &writable).unwrap();
    assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "alpha, changed");
    assert!(!dir.join("d/y").exists());
    assert_eq!(fs::read_to_string(dir.join("new")).unwrap(), "november");
    drop(m);
    assert!(!is_mounted(&dir));
}
