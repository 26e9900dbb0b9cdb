//! The blobs a lazy mount keeps: what it read through a recording source
//! is kept, `fill` fetches only the rest, a blob read whole is kept whole,
//! and kept bytes that do not hash to the blob's digest never count; a
//! chunk pruned while the cache has it open is a miss.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use strata_core::{Algorithm, Digest};
use strata_lazy::{BlobCache, RangeSource};

/// A blob in memory counting the bytes it serves.
struct Counted {
    bytes: Vec<u8>,
    served: AtomicU64,
}

impl RangeSource for Counted {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        self.served.fetch_add(len, Ordering::SeqCst);
        Ok(self.bytes[offset as usize..(offset + len) as usize].to_vec())
    }
}

/// A blob of `size` bytes, different for each `seed` (tests run side by
/// side, and one looks for its blob's files among the process's).
fn blob(size: usize, seed: usize) -> (Arc<Counted>, Digest) {
    let bytes: Vec<u8> = (0..size).map(|i| (i * 7 + i / 251 + seed) as u8).collect();
    let d = Digest::of_bytes(Algorithm::Sha256, &bytes);
    let src = Arc::new(Counted {
        bytes,
        served: AtomicU64::new(0),
    });
    (src, d)
}

#[test]
fn what_a_mount_read_is_not_fetched_again() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(&tmp.path().join("blobs")).unwrap();
    let (src, d) = blob(3 << 20, 1);
    let size = src.size();
    assert_eq!(
        cache.fill(&d, src.as_ref()).unwrap(),
        None,
        "nothing read yet"
    );

    let rec = cache.recording(&d, src.clone());
    rec.read_range(1000, 5000).unwrap();
    rec.read_range(4000, 10_000).unwrap();
    drop(rec);
    // A record torn by a crash is cut off, and what is recorded after it
    // counts.
    let ranges = tmp
        .path()
        .join("blobs/sha256")
        .join(format!("{}.ranges", d.hex()));
    let mut torn = std::fs::read(&ranges).unwrap();
    torn.extend_from_slice(&[0; 7]);
    std::fs::write(&ranges, torn).unwrap();
    cache
        .recording(&d, src.clone())
        .read_range(size - 200_000, 100)
        .unwrap();
    let kept = 13_000 + 100;

    src.served.store(0, Ordering::SeqCst);
    let filled = cache.fill(&d, src.as_ref()).unwrap().unwrap();
    assert_eq!((filled.kept, filled.fetched), (kept, size - kept));
    assert_eq!(src.served.load(Ordering::SeqCst), size - kept);
    assert_eq!(std::fs::read(&filled.path).unwrap(), src.bytes);
    assert!(!ranges.exists(), "the ranges go once the blob is whole");

    // Whole now: nothing fetched, nothing recorded.
    src.served.store(0, Ordering::SeqCst);
    let again = cache.fill(&d, src.as_ref()).unwrap().unwrap();
    assert_eq!((again.kept, again.fetched), (size, 0));
    assert_eq!(src.served.load(Ordering::SeqCst), 0);
}

#[test]
fn a_blob_read_whole_is_kept_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(&tmp.path().join("blobs")).unwrap();
    let (src, d) = blob(1 << 20, 2);
    let rec = cache.recording(&d, src.clone());
    let starts: Vec<u64> = (0..src.size()).step_by(100_000).collect();
    for &at in starts.iter().rev() {
        rec.read_range(at, (src.size() - at).min(100_000)).unwrap();
    }
    // Checked on a thread of its own, which the source waits for.
    drop(rec);
    let whole = tmp.path().join("blobs/sha256").join(d.hex());
    assert_eq!(std::fs::read(&whole).unwrap(), src.bytes);
    let items = cache.prunable().unwrap();
    assert_eq!(items.len(), 1, "{items:?}");
}

#[test]
fn kept_bytes_that_do_not_hash_to_the_blob_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(&tmp.path().join("blobs")).unwrap();
    let (src, d) = blob(1 << 20, 3);
    let rec = cache.recording(&d, src.clone());
    rec.read_range(0, 4096).unwrap();
    drop(rec);
    // The part and its ranges are one item for prune.
    assert_eq!(cache.prunable().unwrap().len(), 1);
    let part = tmp
        .path()
        .join("blobs/sha256")
        .join(format!("{}.part", d.hex()));
    let f = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"not the blob", 100).unwrap();

    let err = cache.fill(&d, src.as_ref()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert!(err.to_string().contains(d.as_str()), "{err}");
    assert!(!part.exists());
    assert_eq!(cache.fill(&d, src.as_ref()).unwrap(), None);
}

/// A source that serves one byte wrong at offset 10.
struct Wrong(Arc<Counted>);

impl RangeSource for Wrong {
    fn size(&self) -> u64 {
        self.0.size()
    }

    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut bytes = self.0.read_range(offset, len)?;
        if let Some(b) = 10u64
            .checked_sub(offset)
            .and_then(|i| bytes.get_mut(i as usize))
        {
            *b ^= 0xff;
        }
        Ok(bytes)
    }
}

#[test]
fn a_blob_read_wrong_is_not_kept_and_a_failure_to_keep_fails_no_read() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(&tmp.path().join("blobs")).unwrap();
    let (src, d) = blob(1 << 20, 4);
    let rec = cache.recording(&d, Arc::new(Wrong(src.clone())));
    rec.read_range(0, src.size()).unwrap();
    drop(rec);
    let dir = tmp.path().join("blobs/sha256");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "kept: {left:?}");

    // Pruned from under a recording source, the part is let go at the
    // next read (its space comes back), and reads go on.
    let (other, d2) = blob(1 << 20, 5);
    let rec = cache.recording(&d2, other.clone());
    rec.read_range(0, 4096).unwrap();
    let part = dir.join(format!("{}.part", d2.hex()));
    std::fs::remove_file(dir.join(format!("{}.ranges", d2.hex()))).unwrap();
    std::fs::remove_file(&part).unwrap();
    rec.read_range(4096, 4096).unwrap();
    let held: Vec<_> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|f| std::fs::read_link(f.unwrap().path()).ok())
        .filter(|l| l.to_string_lossy().contains(d2.hex()))
        .collect();
    assert!(held.is_empty(), "still open: {held:?}");
    drop(rec);

    // The part file cannot be made (a directory is in its place): the
    // reads are served all the same, and nothing is kept.
    std::fs::create_dir_all(dir.join(format!("{}.part", d.hex()))).unwrap();
    let rec = cache.recording(&d, src.clone());
    assert_eq!(rec.read_range(0, src.size()).unwrap(), src.bytes);
    drop(rec);
    assert!(!dir.join(d.hex()).exists());
}

#[test]
fn a_chunk_pruned_while_open_is_let_go_and_not_served() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = strata_lazy::ChunkCache::open(&tmp.path().join("chunks")).unwrap();
    let bytes = b"a chunk of a layer".to_vec();
    let d = Digest::of_bytes(Algorithm::Sha256, &bytes);
    drop(cache.put(&d, &bytes).unwrap());
    assert!(cache.get(&d, bytes.len() as u64).unwrap().is_some());
    // A prune removes it while the cache keeps it open: it is a miss, as
    // it is for a cache opened anew.
    std::fs::remove_file(tmp.path().join("chunks/sha256").join(d.hex())).unwrap();
    assert!(cache.get(&d, bytes.len() as u64).unwrap().is_none());
}
