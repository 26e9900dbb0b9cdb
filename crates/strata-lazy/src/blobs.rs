//! The compressed bytes a lazy mount fetched, kept as (partial) blobs, so
//! a later eager pull of the same image fetches only what no mount did.
//!
//! Every range a mount reads from a blob's source is also written at its
//! offset into `DIR/ALG/HEX.part` (a sparse file of the blob's size) and
//! recorded in `DIR/ALG/HEX.ranges` (16-byte records: offset and end,
//! little-endian, appended after the bytes are written). A blob whose
//! ranges cover it is checked against its digest and renamed to
//! `DIR/ALG/HEX`. Mounts never read these files: their reads come from
//! the registry or the checked chunks, so a torn or stale partial file can
//! cost a download, never a wrong byte. [`BlobCache::fill`] fetches what a
//! partial blob lacks and checks the whole; a blob that does not hash to
//! its digest is removed.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use strata_core::{Digest, Digester};

use crate::RangeSource;
use crate::prune::{Prunable, unless_gone};

/// One range record: offset and end.
const RECORD: usize = 16;

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

    /// Where the whole blob `d` is kept.
    fn whole(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.algorithm().as_str()).join(d.hex())
    }

    /// `src` (blob `d`), every range read through it also kept here.
    /// Nothing is kept when the whole blob already is.
    pub fn recording(
        &self,
        d: &Digest,
        src: Arc<dyn RangeSource>,
    ) -> io::Result<Arc<dyn RangeSource>> {
        if self.whole(d).is_file() {
            return Ok(src);
        }
        let partial = Partial::open(self.whole(d), src.size(), d.clone())?;
        Ok(Arc::new(Recording {
            src,
            partial: Mutex::new(Some(partial)),
        }))
    }

    /// Blob `d` whole and checked, what it lacked fetched from `src`;
    /// `None` when no mount fetched any of it. A blob that does not hash
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
        if !Partial::path(&whole, "ranges").is_file() {
            return Ok(None);
        }
        let mut partial = Partial::open(whole.clone(), src.size(), d.clone())?;
        let kept = partial.ranges.covered();
        let mut fetched = 0;
        for (start, end) in partial.ranges.missing(partial.size) {
            let mut at = start;
            while at < end {
                let len = (end - at).min(FILL_PIECE);
                let bytes = src.read_range(at, len)?;
                partial.write(at, &bytes)?;
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
    data: File,
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
        let mut ranges = Ranges::default();
        // A torn last record (a crash while appending) is ignored, and so
        // is a record that does not fit the blob.
        for r in recorded.chunks_exact(RECORD) {
            let (start, end) = r.split_at(RECORD / 2);
            let start = u64::from_le_bytes(start.try_into().unwrap_or_default());
            let end = u64::from_le_bytes(end.try_into().unwrap_or_default());
            if start < end && end <= size {
                ranges.insert(start, end);
            }
        }
        Ok(Partial {
            whole,
            size,
            digest,
            data,
            log,
            ranges,
        })
    }

    /// Keeps `bytes`, read at `offset`.
    fn write(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let end = offset + bytes.len() as u64;
        if bytes.is_empty() || end > self.size {
            return Ok(());
        }
        self.data.write_all_at(bytes, offset)?;
        let mut record = [0u8; RECORD];
        record[..RECORD / 2].copy_from_slice(&offset.to_le_bytes());
        record[RECORD / 2..].copy_from_slice(&end.to_le_bytes());
        self.log.write_all(&record)?;
        self.ranges.insert(offset, end);
        Ok(())
    }

    fn complete(&self) -> bool {
        self.ranges.covered() == self.size
    }

    /// Checks the whole blob and renames it into place, or removes it when
    /// it does not hash to its digest.
    fn finish(self) -> io::Result<()> {
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
}

impl RangeSource for Recording {
    fn size(&self) -> u64 {
        self.src.size()
    }

    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let bytes = self.src.read_range(offset, len)?;
        let mut guard = self.partial.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(partial) = guard.as_mut() else {
            return Ok(bytes);
        };
        // Keeping is a convenience: a failure to keep (a full disk, a
        // prune) stops keeping this blob, not the read.
        let whole = match partial.write(offset, &bytes) {
            Ok(()) => partial.complete(),
            Err(e) => {
                tracing::warn!(blob = %partial.digest, error = %e, "stopped keeping the blob's bytes");
                *guard = None;
                false
            }
        };
        // Checked once whole, without holding up other reads' keeping.
        let whole = if whole { guard.take() } else { None };
        drop(guard);
        if let Some(partial) = whole {
            let digest = partial.digest.clone();
            if let Err(e) = partial.finish() {
                tracing::warn!(blob = %digest, error = %e, "a kept blob was not whole");
            }
        }
        Ok(bytes)
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
