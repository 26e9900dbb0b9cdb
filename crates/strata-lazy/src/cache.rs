//! The chunk cache: decompressed chunks by digest, in files on disk. A
//! chunk is checked against its digest before it is written, and a chunk
//! file is checked again the first time a process uses it (so a file torn
//! by a crash or changed on disk is fetched anew, never served). Files are
//! written beside the cache and renamed into place, so a reader sees a
//! whole chunk or none. Chunks are shared by every layer that holds them.
//! The chunks used last stay open, so reading a chunk in the kernel's
//! 128 KiB pieces opens its file once. The TOCs of the layers opened stay
//! too (`tocs/`, by TOC digest and blob size, checked when read), so a
//! layer mounted again fetches no TOC. [`crate::prune`] bounds it,
//! removing what was used longest ago first.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use strata_core::Digest;

use crate::prune::Prunable;

fn wrong_length(d: &Digest, size: u64, len: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("chunk {d} has {size} bytes, not the {len} the TOC gives it"),
    )
}

/// A directory of verified chunks.
#[derive(Debug)]
pub struct ChunkCache {
    dir: PathBuf,
    /// Chunks this process has checked (or written).
    checked: Mutex<HashSet<Digest>>,
    /// One lock per chunk being fetched, so two readers of one chunk
    /// fetch it once.
    fetching: Mutex<HashMap<Digest, Arc<Mutex<()>>>>,
    /// The files of the chunks used last (checked) and their lengths,
    /// the latest last.
    open: Mutex<Vec<(Digest, u64, Arc<File>)>>,
}

/// How many chunk files stay open.
const OPEN_FILES: usize = 64;

/// A temporary file older than this was left by a killed process (a chunk
/// is written in milliseconds).
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(3600);

impl ChunkCache {
    /// Opens (making it) the cache in `dir`.
    pub fn open(dir: &Path) -> io::Result<ChunkCache> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        Ok(ChunkCache {
            dir: dir.to_path_buf(),
            checked: Mutex::new(HashSet::new()),
            fetching: Mutex::new(HashMap::new()),
            open: Mutex::new(Vec::with_capacity(OPEN_FILES)),
        })
    }

    fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.algorithm().as_str()).join(d.hex())
    }

    /// The file of chunk `d` (`len` bytes), if the cache holds it whole
    /// and right. A file whose bytes do not hash to `d` is removed (it is
    /// fetched anew); one of another length is an error, as its digest
    /// says it is right: the TOC asking for it is wrong.
    pub fn get(&self, d: &Digest, len: u64) -> io::Result<Option<Arc<File>>> {
        if let Some((size, file)) = self.open_file(d) {
            return if size == len {
                Ok(Some(file))
            } else {
                Err(wrong_length(d, size, len))
            };
        }
        let path = self.path(d);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let checked = self.lock_checked().contains(d);
        let size = file.metadata()?.len();
        if checked && size != len {
            return Err(wrong_length(d, size, len));
        }
        if !checked {
            let mut bytes = Vec::new();
            if size == len {
                file.read_to_end(&mut bytes)?;
            }
            if size != len || Digest::of_bytes(d.algorithm(), &bytes) != *d {
                tracing::warn!(chunk = %d, path = %path.display(), "a cached chunk is not what its digest says; fetching it again");
                crate::prune::remove_if_there(&path)?;
                return Ok(None);
            }
            self.lock_checked().insert(d.clone());
        }
        Ok(Some(self.keep_open(d, size, file)))
    }

    /// Stores chunk `d`, whose bytes the caller has checked, and returns
    /// its file.
    pub fn put(&self, d: &Digest, bytes: &[u8]) -> io::Result<Arc<File>> {
        let path = self.path(d);
        std::fs::create_dir_all(path.parent().unwrap_or(&self.dir))?;
        let mut tmp = tempfile::NamedTempFile::new_in(self.dir.join("tmp"))?;
        tmp.write_all(bytes)?;
        let file = tmp.persist(&path).map_err(|e| e.error)?;
        self.lock_checked().insert(d.clone());
        Ok(self.keep_open(d, bytes.len() as u64, file))
    }

    fn toc_path(&self, toc: &Digest, size: u64) -> PathBuf {
        self.dir
            .join("tocs")
            .join(toc.algorithm().as_str())
            .join(format!("{}-{size}", toc.hex()))
    }

    /// The end of a blob of `size` bytes whose TOC has digest `toc`, from
    /// its TOC's member on, and where that starts, as [`ChunkCache::put_toc`]
    /// kept it. Not checked here: the caller reads the TOC from it and
    /// checks its digest (a file that fails is fetched anew).
    pub fn toc(&self, toc: &Digest, size: u64) -> io::Result<Option<(u64, Vec<u8>)>> {
        match std::fs::read(self.toc_path(toc, size)) {
            Ok(bytes) if (bytes.len() as u64) <= size => {
                Ok(Some((size - bytes.len() as u64, bytes)))
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Keeps `tail`, the end of a blob of `size` bytes from the member of
    /// its TOC (whose digest `toc` the caller has checked), so the next
    /// mount of the layer fetches no TOC.
    pub fn put_toc(&self, toc: &Digest, size: u64, tail: &[u8]) -> io::Result<()> {
        let path = self.toc_path(toc, size);
        std::fs::create_dir_all(path.parent().unwrap_or(&self.dir))?;
        let mut tmp = tempfile::NamedTempFile::new_in(self.dir.join("tmp"))?;
        tmp.write_all(tail)?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    }

    /// Chunk `d`'s length and file if it is among those kept open, made
    /// the latest.
    fn open_file(&self, d: &Digest) -> Option<(u64, Arc<File>)> {
        use std::os::unix::fs::MetadataExt;
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let i = open.iter().position(|(k, ..)| k == d)?;
        let entry = open.remove(i);
        // A chunk pruned since it was opened is let go (its space comes
        // back) and fetched again.
        if entry.2.metadata().map_or(true, |m| m.nlink() == 0) {
            return None;
        }
        let found = (entry.1, entry.2.clone());
        open.push(entry);
        Some(found)
    }

    /// Keeps `file`, chunk `d`'s (`size` bytes), open; the one used
    /// longest ago is closed when too many are.
    fn keep_open(&self, d: &Digest, size: u64, file: File) -> Arc<File> {
        let file = Arc::new(file);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|(k, ..)| k != d);
        if open.len() >= OPEN_FILES {
            open.remove(0);
        }
        open.push((d.clone(), size, file.clone()));
        file
    }

    /// Its chunks and TOCs, for [`crate::prune`]; temporary files that
    /// killed processes left are removed. Pruning is safe while mounts use
    /// the cache: a chunk removed under one is fetched again when read (a
    /// file it has open stays readable), and a TOC is read only when a
    /// layer is opened.
    pub fn prunable(&self) -> io::Result<Vec<Prunable>> {
        let mut files = Vec::new();
        for item in std::fs::read_dir(&self.dir)? {
            let item = item?;
            if item.file_name() != "tmp" && item.file_type()?.is_dir() {
                crate::prune::files(&item.path(), &mut files)?;
            }
        }
        let mut tmp = Vec::new();
        crate::prune::files(&self.dir.join("tmp"), &mut tmp)?;
        for old in tmp {
            if old.used.elapsed().is_ok_and(|age| age > STALE_TMP) {
                crate::prune::remove_if_there(&old.path)?;
            }
        }
        Ok(files)
    }

    /// The lock held while chunk `d` is fetched.
    pub fn fetch_lock(&self, d: &Digest) -> Arc<Mutex<()>> {
        let mut map = self.fetching.lock().unwrap_or_else(PoisonError::into_inner);
        // Locks nobody holds any more are dropped as new ones are made.
        map.retain(|_, l| Arc::strong_count(l) > 1);
        map.entry(d.clone()).or_default().clone()
    }

    fn lock_checked(&self) -> std::sync::MutexGuard<'_, HashSet<Digest>> {
        self.checked.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
