//! The compressed bytes a lazy mount fetched, kept as (partial) blobs, so
//! a later eager pull of the same image fetches only what no mount did.
//!
//! Every range a mount reads from a blob's source is also written at its
//! offset into `DIR/ALG/HEX.part` (a sparse file of the blob's size) and
//! recorded in `DIR/ALG/HEX.ranges` (24-byte records: offset, end and a
//! check word, little-endian, appended once the bytes are written,
//! neither synced: after a power cut a record may name bytes that never
//! reached the disk, and a torn record is skipped by its check word). A blob whose ranges cover it is checked against its digest (on
//! a thread of its own) and renamed to `DIR/ALG/HEX`. Mounts never read
//! these files: their reads come from the registry or the checked chunks.
//! [`BlobCache::fill`] fetches what a partial blob lacks and checks the
//! whole; a blob that does not hash to its digest is removed. A whole
//! blob can still change on disk, or be written by a mount that opened it
//! as a part before another process completed it, so whoever uses one
//! checks it again (the content store does, as it stores it): a torn,
//! stale or changed file costs a download, never a wrong byte. Keeping
//! is best effort: a failure to keep stops keeping that blob and never
//! fails a read.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use strata_core::{Digest, Digester};

use crate::RangeSource;
use crate::prune::{Prunable, unless_gone};

/// One range record: offset, end and a check word, little-endian.
const RECORD: usize = 24;

/// Mixed into a record's check word.
const RECORD_MAGIC: u64 = 0x5354_5241_5441_4b42;

/// The check word of a record of `offset..end`.
fn check_word(offset: u64, end: u64) -> u64 {
    offset ^ end.rotate_left(32) ^ RECORD_MAGIC
}

/// The ranges a ranges file records. A record is taken only when its
/// check word matches; where one does not (torn by a crash or a full disk,
/// with records of other processes appended after it), the reading
/// slides on a byte at a time until records match again, so nothing
/// recorded after a tear is lost and no torn bytes are read as a range.
fn read_records(bytes: &[u8], size: u64) -> Ranges {
    let word = |b: &[u8], i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i * 8..i * 8 + 8]);
        u64::from_le_bytes(w)
    };
    let mut ranges = Ranges::default();
    let mut at = 0;
    while at + RECORD <= bytes.len() {
        let r = &bytes[at..at + RECORD];
        let (start, end) = (word(r, 0), word(r, 1));
        if word(r, 2) == check_word(start, end) && start < end && end <= size {
            ranges.insert(start, end);
            at += RECORD;
        } else {
            at += 1;
        }
    }
    ranges
}

/// The largest range [`BlobCache::fill`] fetches in one request.
const FILL_PIECE: u64 = 8 << 20;

/// The kept blobs of a lazy-mount cache (`CACHE/blobs`).
#[derive(Debug, Clone)]
pub struct BlobCache {
    dir: PathBuf,
}

/// What [`BlobCache::fill`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filled {
    /// The whole blob, checked.
    pub path: PathBuf,
    /// Bytes a mount had fetched before.
    pub kept: u64,
    /// Bytes fetched now.
    pub fetched: u64,
}

impl BlobCache {
    /// The cache in `dir` (made when missing).
    pub fn open(dir: &Path) -> io::Result<BlobCache> {
        std::fs::create_dir_all(dir)?;
        Ok(BlobCache {
            dir: dir.to_path_buf(),
        })
    }

    /// Whether blob `d` is kept whole (checked when it was).
    pub fn has_whole(&self, d: &Digest) -> bool {
        self.whole(d).is_file()
    }

    /// Where the whole blob `d` is kept.
    fn whole(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.algorithm().as_str()).join(d.hex())
    }

    /// `src` (blob `d`), every range read through it also kept here.
    /// Nothing is kept when the whole blob already is, nor when the part
    /// file cannot be opened (that is logged).
    pub fn recording(&self, d: &Digest, src: Arc<dyn RangeSource>) -> Arc<dyn RangeSource> {
        if self.whole(d).is_file() {
            return src;
        }
        match Partial::open(self.whole(d), src.size(), d.clone()) {
            Ok(partial) => Arc::new(Recording {
                src,
                partial: Mutex::new(Some(partial)),
                checking: Mutex::new(None),
            }),
            Err(e) => {
                tracing::warn!(blob = %d, error = %e, "cannot keep the blob's bytes");
                src
            }
        }
    }

    /// Blob `d` whole and checked, what it lacked fetched from `src`;
    /// `None` when no mount fetched any of it (nor when a mount found all
    /// it read in the chunk cache). A blob that does not hash
    /// to `d` is removed and the error says so.
    pub fn fill(&self, d: &Digest, src: &dyn RangeSource) -> io::Result<Option<Filled>> {
        let whole = self.whole(d);
        if whole.is_file() {
            return Ok(Some(Filled {
                kept: std::fs::metadata(&whole)?.len(),
                path: whole,
                fetched: 0,
            }));
        }
        let ranges = Partial::path(&whole, "ranges");
        if !Partial::path(&whole, "part").is_file() {
            // Ranges of nothing (the part was pruned): nothing is kept.
            unless_gone(std::fs::remove_file(&ranges))?;
            return Ok(None);
        }
        if !ranges.is_file() {
            return Ok(None);
        }
        let mut partial = Partial::open(whole.clone(), src.size(), d.clone())?;
        let kept = partial.ranges.covered();
        if kept == 0 {
            // Opened by mounts that fetched none of it (what they read was
            // in the chunk cache): fetching it whole by range is no gain.
            return Ok(None);
        }
        let mut fetched = 0;
        for (start, end) in partial.ranges.missing(partial.size) {
            let mut at = start;
            while at < end {
                let len = (end - at).min(FILL_PIECE);
                let bytes = src.read_range(at, len)?;
                if bytes.len() as u64 != len {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "blob {d}: {} bytes at {at} where {len} were asked for",
                            bytes.len()
                        ),
                    ));
                }
                partial.data.write_all_at(&bytes, at)?;
                partial.record(at, at + len)?;
                fetched += len;
                at += len;
            }
        }
        partial.finish()?;
        Ok(Some(Filled {
            path: whole,
            kept,
            fetched,
        }))
    }

    /// Forgets blob `d` (whole or partial): what was kept of it proved
    /// wrong where it was used.
    pub fn remove(&self, d: &Digest) -> io::Result<()> {
        let whole = self.whole(d);
        for path in [
            Partial::path(&whole, "ranges"),
            Partial::path(&whole, "part"),
            whole,
        ] {
            crate::prune::remove_if_there(&path)?;
        }
        Ok(())
    }

    /// The kept blobs and partial blobs, for [`crate::prune`]: a partial
    /// blob and its ranges are one item.
    pub fn prunable(&self) -> io::Result<Vec<Prunable>> {
        let mut files = Vec::new();
        crate::prune::files(&self.dir, &mut files)?;
        let (ranges, mut items): (Vec<_>, Vec<_>) = files
            .into_iter()
            .partition(|f| f.path.extension().is_some_and(|e| e == "ranges"));
        // A ranges file goes first (with its part): removed alone, the part
        // would be left with nothing saying what it holds, which is safe;
        // a part removed alone would leave ranges claiming bytes of an
        // empty file, which `Partial::open` also refuses to trust.
        // A part file is sparse: it holds what was fetched, not its length.
        for part in items
            .iter_mut()
            .filter(|i| i.path.extension().is_some_and(|e| e == "part"))
        {
            use std::os::unix::fs::MetadataExt;
            if let Some(meta) = unless_gone(std::fs::metadata(&part.path))? {
                part.size = part.size.min(meta.blocks() * 512);
            }
        }
        for r in ranges {
            match items
                .iter_mut()
                .find(|i| i.path == r.path.with_extension("part"))
            {
                Some(part) => {
                    part.size += r.size;
                    part.used = part.used.max(r.used);
                    part.also = Some(r.path);
                }
                None => items.push(r),
            }
        }
        Ok(items)
    }
}

/// A blob being kept as it is read.
struct Partial {
    whole: PathBuf,
    size: u64,
    digest: Digest,
    /// Written outside the lock that guards the rest.
    data: Arc<File>,
    log: File,
    ranges: Ranges,
}

impl Partial {
    fn path(whole: &Path, ext: &str) -> PathBuf {
        whole.with_extension(ext)
    }

    /// Opens (or starts) the partial blob beside `whole`. Ranges recorded
    /// for a part file that is gone are dropped.
    fn open(whole: PathBuf, size: u64, digest: Digest) -> io::Result<Partial> {
        if let Some(dir) = whole.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let part = Partial::path(&whole, "part");
        let log = Partial::path(&whole, "ranges");
        if !part.is_file() {
            unless_gone(std::fs::remove_file(&log))?;
        }
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part)?;
        if data.metadata()?.len() != size {
            data.set_len(size)?;
        }
        let mut log = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&log)?;
        let mut recorded = Vec::new();
        log.read_to_end(&mut recorded)?;
        let ranges = read_records(&recorded, size);
        Ok(Partial {
            whole,
            size,
            digest,
            data: Arc::new(data),
            log,
            ranges,
        })
    }

    /// Records that `offset..end` of the part file holds the blob's bytes.
    fn record(&mut self, offset: u64, end: u64) -> io::Result<()> {
        if offset >= end || end > self.size {
            return Ok(());
        }
        let mut record = [0u8; RECORD];
        record[..8].copy_from_slice(&offset.to_le_bytes());
        record[8..16].copy_from_slice(&end.to_le_bytes());
        record[16..].copy_from_slice(&check_word(offset, end).to_le_bytes());
        self.log.write_all(&record)?;
        self.ranges.insert(offset, end);
        Ok(())
    }

    fn complete(&self) -> bool {
        self.ranges.covered() == self.size
    }

    /// Checks the whole blob and renames it into place, or removes it when
    /// it does not hash to its digest. A part file that is no longer the
    /// one this value wrote (pruned, then started anew) is left alone.
    fn finish(self) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let mut hash = Digester::new(self.digest.algorithm());
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < self.size {
            let len = (self.size - at).min(buf.len() as u64) as usize;
            self.data.read_exact_at(&mut buf[..len], at)?;
            hash.update(&buf[..len]);
            at += len as u64;
        }
        let got = hash.finish();
        let part = Partial::path(&self.whole, "part");
        let log = Partial::path(&self.whole, "ranges");
        let same = |meta: std::fs::Metadata| {
            self.data
                .metadata()
                .is_ok_and(|m| (m.dev(), m.ino()) == (meta.dev(), meta.ino()))
        };
        if !unless_gone(std::fs::metadata(&part))?.is_some_and(same) {
            return Ok(());
        }
        if got != self.digest {
            unless_gone(std::fs::remove_file(&log))?;
            unless_gone(std::fs::remove_file(&part))?;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the kept bytes of blob {} hash to {got}; removed them",
                    self.digest
                ),
            ));
        }
        self.data.sync_all()?;
        std::fs::rename(&part, &self.whole)?;
        unless_gone(std::fs::remove_file(&log))?;
        if let Some(dir) = self.whole.parent() {
            strata_sys::sync::fsync_dir(dir).map_err(io::Error::other)?;
        }
        Ok(())
    }
}

/// A source whose reads are kept in a [`Partial`] until it is whole.
struct Recording {
    src: Arc<dyn RangeSource>,
    partial: Mutex<Option<Partial>>,
    /// The thread checking the blob once it is whole.
    checking: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Recording {
    /// Keeps `bytes`, read at `offset`. Keeping is best effort: a failure
    /// stops keeping this blob (a full disk, a removed directory), never
    /// the read.
    fn keep(&self, offset: u64, bytes: &[u8]) {
        let lock = || self.partial.lock().unwrap_or_else(PoisonError::into_inner);
        // The bytes are written without the lock, so reads of other
        // ranges do not queue behind the disk.
        let Some(data) = lock().as_ref().map(|p| p.data.clone()) else {
            return;
        };
        let written = data.write_all_at(bytes, offset);
        let mut guard = lock();
        let Some(partial) = guard.as_mut() else {
            return;
        };
        // A part file pruned from under this mount is let go (its space
        // comes back), not written on unseen.
        let pruned = || {
            use std::os::unix::fs::MetadataExt;
            match partial.data.metadata() {
                Ok(m) if m.nlink() == 0 => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the part file was pruned",
                )),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            }
        };
        let recorded = written
            .and_then(|()| pruned())
            .and_then(|()| partial.record(offset, offset + bytes.len() as u64));
        let whole = match recorded {
            Ok(()) => partial.complete(),
            Err(e) => {
                tracing::warn!(blob = %partial.digest, error = %e, "stopped keeping the blob's bytes");
                *guard = None;
                return;
            }
        };
        if !whole {
            return;
        }
        let Some(partial) = guard.take() else { return };
        drop(guard);
        // Hashed off the read path: this read returns at once.
        let digest = partial.digest.clone();
        let check = std::thread::Builder::new()
            .name("strata-blob-check".into())
            .spawn(move || {
                if let Err(e) = partial.finish() {
                    tracing::warn!(blob = %digest, error = %e, "a kept blob was not whole");
                }
            });
        match check {
            Ok(t) => *self.checking.lock().unwrap_or_else(PoisonError::into_inner) = Some(t),
            Err(e) => tracing::warn!(error = %e, "no thread to check a kept blob"),
        }
    }
}

impl RangeSource for Recording {
    fn size(&self) -> u64 {
        self.src.size()
    }

    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let bytes = self.src.read_range(offset, len)?;
        self.keep(offset, &bytes);
        Ok(bytes)
    }

    fn unkept(&self) -> Option<Vec<(u64, u64)>> {
        let partial = self.partial.lock().unwrap_or_else(PoisonError::into_inner);
        match (
            &*partial,
            &*self.checking.lock().unwrap_or_else(PoisonError::into_inner),
        ) {
            (Some(p), _) => Some(p.ranges.missing(p.size)),
            // Whole, and being checked or checked.
            (None, Some(_)) => Some(Vec::new()),
            // Stopped keeping.
            (None, None) => None,
        }
    }
}

impl Drop for Recording {
    /// Waits for the blob's check, so it is in place once the layer is
    /// gone.
    fn drop(&mut self) {
        let check = self
            .checking
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = check.take() {
            let _ = t.join();
        }
    }
}

/// Disjoint byte ranges, `start -> end`, merged when they touch.
#[derive(Debug, Default)]
struct Ranges(BTreeMap<u64, u64>);

impl Ranges {
    fn insert(&mut self, mut start: u64, mut end: u64) {
        // Merge with every range that overlaps or touches [start, end).
        let touching: Vec<(u64, u64)> = self
            .0
            .range(..=end)
            .rev()
            .take_while(|(_, e)| **e >= start)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in touching {
            self.0.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.0.insert(start, end);
    }

    fn covered(&self) -> u64 {
        self.0.iter().map(|(s, e)| e - s).sum()
    }

    /// The gaps in `[0, size)`.
    fn missing(&self, size: u64) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut at = 0;
        for (s, e) in &self.0 {
            if *s > at {
                gaps.push((at, *s));
            }
            at = at.max(*e);
        }
        if at < size {
            gaps.push((at, size));
        }
        gaps
    }
}

#[cfg(test)]
mod tests {
    use super::Ranges;

    #[test]
    fn ranges_merge_and_leave_gaps() {
        let mut r = Ranges::default();
        r.insert(10, 20);
        r.insert(30, 40);
        r.insert(20, 25);
        r.insert(35, 50);
        assert_eq!(r.covered(), 15 + 20);
        assert_eq!(r.missing(60), vec![(0, 10), (25, 30), (50, 60)]);
        r.insert(0, 60);
        assert_eq!(r.missing(60), Vec::<(u64, u64)>::new());
        assert_eq!(r.0.len(), 1);
    }
}
