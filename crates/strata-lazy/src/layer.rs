//! One lazy layer: its tree (from the TOC), where its bytes come from, and
//! the reads that turn a file range into checked chunks: from the cache,
//! else fetched (the member that starts with the chunk, in one range
//! read), decompressed and checked against the chunk's digest before it
//! is cached or served. Prefetch walks the chunks in blob order (the
//! prioritised files come first in an eStargz blob) and fetches runs of
//! missing ones in one read each.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use strata_core::Digest;
use strata_diff::estargz::Index;

use crate::cache::ChunkCache;
use crate::link::Link;
use crate::remote::{RangeSource, index_of_tail, read_tail};
use crate::tree::{Chunk, Kind, Tree};

/// The most one prefetch read asks for (beyond its first chunk, which is
/// whole): a read that comes meanwhile shares the link with about this
/// much (2 MiB is 170 ms at 100 Mbit/s).
const PREFETCH_SPAN: u64 = 2 << 20;

/// What prefetch fetches to keep a blob whole even when that is more than
/// an eighth of it (a small layer is mostly members without data).
const KEEP_WHOLE_ANYWAY: u64 = 1 << 20;

/// The most bytes a prefetch read takes in between where one chunk's fetch
/// ends and the next chunk's member starts (tar headers of entries without
/// data: directories, links, empty files, past a chunk's 64 KiB cap), so
/// the run goes on in one read rather than breaking there.
const BRIDGE: u64 = 64 << 10;

/// What a layer has fetched.
#[derive(Debug, Default)]
pub struct Stats {
    /// Range reads sent (the footer and TOC included).
    pub requests: AtomicU64,
    /// Bytes they returned.
    pub bytes: AtomicU64,
    /// Chunks fetched and checked.
    pub chunks: AtomicU64,
    /// Their bytes, decompressed, counted once put in the chunk cache.
    pub cached: AtomicU64,
}

impl Stats {
    /// Counts chunk `c` as put in the cache.
    fn put(&self, c: &Chunk) {
        self.cached.fetch_add(c.len, Ordering::Relaxed);
    }
}

/// A layer read lazily.
pub struct Layer {
    name: String,
    tree: Tree,
    src: Arc<dyn RangeSource>,
    cache: Arc<ChunkCache>,
    /// Every member start the TOC names, and the TOC's, sorted: a chunk's
    /// member ends where the next starts.
    members: Vec<u64>,
    link: Arc<Link>,
    stats: Stats,
}

impl std::fmt::Debug for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layer")
            .field("name", &self.name)
            .field("inodes", &self.tree.len())
            .finish_non_exhaustive()
    }
}

/// How a layer is opened.
#[derive(Debug, Clone)]
pub struct LayerOptions {
    /// What messages and logs call the layer (an image mount gives its
    /// place in the image and its digest).
    pub name: String,
    /// The TOC digest the layer's descriptor names: the TOC must have it,
    /// since every chunk is checked against the TOC.
    pub toc_digest: Digest,
    /// The attribute overlay reads for an opaque directory.
    pub opaque_xattr: String,
    /// The link its fetches take, shared with the other layers of the
    /// mount: prefetch yields it to reads.
    pub link: Arc<Link>,
}

fn invalid(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason)
}

impl Layer {
    /// Opens the eStargz layer `src` serves: reads its footer and TOC (or
    /// the TOC the cache kept from an earlier open), checks the TOC
    /// against `opts.toc_digest`, and builds its tree.
    /// Every error names the layer by `opts.name`.
    pub fn open(
        src: Arc<dyn RangeSource>,
        cache: Arc<ChunkCache>,
        opts: &LayerOptions,
    ) -> io::Result<Layer> {
        Layer::open_unnamed(src, cache, opts)
            .map_err(|e| io::Error::new(e.kind(), format!("layer {}: {e}", opts.name)))
    }

    /// [`Layer::open`], its errors without the layer's name.
    fn open_unnamed(
        src: Arc<dyn RangeSource>,
        cache: Arc<ChunkCache>,
        opts: &LayerOptions,
    ) -> io::Result<Layer> {
        let stats = Stats::default();
        let size = src.size();
        match cache.toc(&opts.toc_digest, size) {
            Ok(Some((offset, tail))) => match index_of_tail(offset, &tail) {
                Ok(Some(index)) if index.digest == opts.toc_digest => {
                    return Layer::from_index(src, cache, opts, &index, stats);
                }
                _ => {
                    tracing::warn!(layer = %opts.name, "a cached TOC is not the layer's; fetching it again")
                }
            },
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(layer = %opts.name, error = %e, "a cached TOC cannot be read; fetching it again")
            }
        }
        let counted = Counted {
            src: src.as_ref(),
            stats: &stats,
        };
        let no_footer =
            || invalid("no eStargz footer; only eStargz layers can be read lazily".to_owned());
        let (offset, tail) = read_tail(&counted)?.ok_or_else(no_footer)?;
        let index = index_of_tail(offset, &tail)?.ok_or_else(no_footer)?;
        let layer = Layer::from_index(src, cache, opts, &index, stats)?;
        // Kept only once the TOC has the digest the descriptor names.
        if let Err(e) = layer.cache.put_toc(&opts.toc_digest, size, &tail) {
            tracing::warn!(layer = %opts.name, error = %e, "could not keep the layer's TOC");
        }
        Ok(layer)
    }

    fn from_index(
        src: Arc<dyn RangeSource>,
        cache: Arc<ChunkCache>,
        opts: &LayerOptions,
        index: &Index,
        stats: Stats,
    ) -> io::Result<Layer> {
        if index.digest != opts.toc_digest {
            return Err(invalid(format!(
                "its TOC hashes to {}, not the {} its descriptor names",
                index.digest, opts.toc_digest
            )));
        }
        let tree =
            Tree::from_toc(&index.toc, &opts.opaque_xattr).map_err(|e| invalid(e.to_string()))?;
        let mut members: Vec<u64> = index.toc.entries.iter().map(|e| e.offset).collect();
        members.push(index.toc_offset);
        members.sort_unstable();
        members.dedup();
        let layer = Layer {
            name: opts.name.clone(),
            tree,
            src,
            cache,
            members,
            link: opts.link.clone(),
            stats,
        };
        for c in layer.chunks() {
            if c.blob_offset >= index.toc_offset {
                return Err(invalid(format!(
                    "a chunk at {} is not before the TOC at {}",
                    c.blob_offset, index.toc_offset
                )));
            }
        }
        Ok(layer)
    }

    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its tree.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// Leaves out the whiteouts that hide nothing in the layers below
    /// ([`Tree::prune_whiteouts`]).
    pub fn prune_whiteouts(&mut self, below: impl Fn(&[&str]) -> bool) {
        self.tree.prune_whiteouts(below);
    }

    /// What it has fetched.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn chunks(&self) -> impl Iterator<Item = &Chunk> {
        self.tree.iter().flat_map(|(_, n)| match &n.kind {
            Kind::File(chunks) => chunks.as_slice(),
            _ => &[],
        })
    }

    /// Where the bytes to fetch for chunk `c` end: at the next member the
    /// TOC names, but never further than the chunk's data can take
    /// compressed (deflate adds at most 5 bytes per 32 KiB stored block;
    /// the rest covers the gzip header and tar headers after the chunk), so
    /// a TOC cannot make one chunk's fetch large.
    fn span_end(&self, c: &Chunk) -> u64 {
        let i = self.members.partition_point(|&m| m <= c.blob_offset);
        let next = self.members.get(i).copied().unwrap_or(self.src.size());
        next.min(
            c.blob_offset
                .saturating_add(c.len + c.len / 4096)
                .saturating_add(64 << 10),
        )
    }

    /// Up to `len` bytes of file `ino` from `offset`.
    pub fn read(&self, ino: u64, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let Some(node) = self.tree.get(ino) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such inode"));
        };
        let Kind::File(chunks) = &node.kind else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        };
        let end = node.size.min(offset.saturating_add(len));
        let mut out = Vec::with_capacity(usize::try_from(end.saturating_sub(offset)).unwrap_or(0));
        let first = chunks.partition_point(|c| c.file_offset + c.len <= offset);
        for c in &chunks[first..] {
            if c.file_offset >= end {
                break;
            }
            let file = self.chunk_file(c)?;
            let from = offset.max(c.file_offset) - c.file_offset;
            let to = end.min(c.file_offset + c.len) - c.file_offset;
            let at = out.len();
            out.resize(
                at + usize::try_from(to - from).map_err(io::Error::other)?,
                0,
            );
            file.read_exact_at(&mut out[at..], from)?;
        }
        Ok(out)
    }

    /// The cached file of chunk `c`, fetched first if need be.
    fn chunk_file(&self, c: &Chunk) -> io::Result<Arc<File>> {
        if let Some(f) = self.cache.get(&c.digest, c.len)? {
            return Ok(f);
        }
        // Waiting from here, for the fetch or for prefetch's of the chunk.
        let _demand = self.link.demand();
        let lock = self.cache.fetch_lock(&c.digest);
        let _held = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(f) = self.cache.get(&c.digest, c.len)? {
            return Ok(f);
        }
        let bytes = self.fetch(c.blob_offset, self.span_end(c) - c.blob_offset)?;
        let data = self.decode(c, &bytes)?;
        let put = self.cache.put(&c.digest, &data)?;
        self.stats.put(c);
        Ok(put)
    }

    fn fetch(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let started = std::time::Instant::now();
        let fetched = Counted {
            src: self.src.as_ref(),
            stats: &self.stats,
        }
        .read_range(offset, len);
        tracing::debug!(layer = %self.name, offset, len, took = ?started.elapsed(), ok = fetched.is_ok(), "range read");
        fetched
    }

    /// Chunk `c`'s bytes from `compressed` (its member onwards), checked.
    fn decode(&self, c: &Chunk, compressed: &[u8]) -> io::Result<Vec<u8>> {
        let mut data = vec![0u8; usize::try_from(c.len).map_err(io::Error::other)?];
        flate2::read::MultiGzDecoder::new(compressed)
            .read_exact(&mut data)
            .map_err(|e| {
                invalid(format!(
                    "layer {}: the chunk at {} of the blob does not decompress: {e}",
                    self.name, c.blob_offset
                ))
            })?;
        let got = Digest::of_bytes(c.digest.algorithm(), &data);
        if got != c.digest {
            return Err(invalid(format!(
                "layer {}: the chunk at {} of the blob hashes to {got}, not {}",
                self.name, c.blob_offset, c.digest
            )));
        }
        self.stats.chunks.fetch_add(1, Ordering::Relaxed);
        Ok(data)
    }

    /// Fetches every chunk the cache lacks, in blob order, runs of them in
    /// one read each, until all are there or `stop` is set; each read waits
    /// for its turn on the link ([`Link`]). A failed read is logged and
    /// tried again after a growing pause.
    fn prefetch(&self, stop: &AtomicBool) {
        let mut chunks: Vec<&Chunk> = self.chunks().collect();
        chunks.sort_by_key(|c| c.blob_offset);
        let mut i = 0;
        let mut pause = Duration::from_millis(200);
        while i < chunks.len() {
            let Some(turn) = self.link.background(stop) else {
                break;
            };
            let run = self.prefetch_run(&chunks[i..]);
            drop(turn);
            match run {
                Ok(n) => {
                    i += n;
                    pause = Duration::from_millis(200);
                }
                // A chunk that is not what the TOC says will never be:
                // leave it to readers (who get EIO) and go on.
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    tracing::error!(layer = %self.name, error = %e, "prefetch skips a chunk that does not match the TOC");
                    i += 1;
                }
                Err(e) => {
                    tracing::error!(layer = %self.name, error = %e, "prefetch failed; trying again");
                    let until = std::time::Instant::now() + pause;
                    while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
            }
        }
        if i == chunks.len() {
            tracing::info!(layer = %self.name, chunks = chunks.len(), "every chunk is cached");
            self.keep_whole(stop);
        }
    }

    /// When the source keeps what is read through it (`unkept`), reads
    /// what it lacks of the blob once every chunk is cached: the members
    /// of entries without data that no run took in, and the TOC when it
    /// came from the cache. The kept blob is then whole, and a pull takes
    /// it without downloading anything. Only when that is at most an
    /// eighth of the blob (or [`KEEP_WHOLE_ANYWAY`]): a mount that found
    /// most chunks in the cache kept little of it, and downloading the
    /// rest is a pull's work, not the background's. Each read waits for its turn on the link, gaps
    /// closer than [`BRIDGE`] in one read; a failure ends it (a pull
    /// fetches what is missing).
    fn keep_whole(&self, stop: &AtomicBool) {
        let Some(gaps) = self.src.unkept() else {
            return;
        };
        let missing: u64 = gaps.iter().map(|(s, e)| e - s).sum();
        if missing == 0 || missing > (self.src.size() / 8).max(KEEP_WHOLE_ANYWAY) {
            return;
        }
        let mut spans: Vec<(u64, u64)> = Vec::new();
        for (start, end) in gaps {
            match spans.last_mut() {
                Some(last) if start - last.1 <= BRIDGE && end - last.0 <= PREFETCH_SPAN => {
                    last.1 = end
                }
                _ => spans.push((start, end)),
            }
        }
        for (start, end) in spans {
            let mut at = start;
            while at < end {
                let Some(turn) = self.link.background(stop) else {
                    return;
                };
                let len = (end - at).min(PREFETCH_SPAN);
                let read = self.fetch(at, len);
                drop(turn);
                if let Err(e) = read {
                    tracing::warn!(layer = %self.name, error = %e, "could not fetch the rest of the blob to keep it whole");
                    return;
                }
                at += len;
            }
        }
        tracing::info!(layer = %self.name, bytes = missing, "the rest of the blob is kept");
    }

    /// Fetches the longest run of missing chunks at the start of `chunks`
    /// (members at most [`BRIDGE`] apart, at most [`PREFETCH_SPAN`] bytes)
    /// in one read;
    /// how many chunks it dealt with.
    fn prefetch_run(&self, chunks: &[&Chunk]) -> io::Result<usize> {
        let missing = |c: &Chunk| self.cache.get(&c.digest, c.len).map(|f| f.is_none());
        if !missing(chunks[0])? {
            return Ok(1);
        }
        let start = chunks[0].blob_offset;
        let mut end = self.span_end(chunks[0]);
        let mut n = 1;
        while let Some(c) = chunks.get(n) {
            let next_end = self.span_end(c);
            if c.blob_offset > end + BRIDGE || next_end - start > PREFETCH_SPAN || !missing(c)? {
                break;
            }
            end = end.max(next_end);
            n += 1;
        }
        let bytes = self.fetch(start, end - start)?;
        for c in &chunks[..n] {
            let lock = self.cache.fetch_lock(&c.digest);
            let _held = lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if self.cache.get(&c.digest, c.len)?.is_some() {
                continue;
            }
            let at = usize::try_from(c.blob_offset - start).map_err(io::Error::other)?;
            let data = self.decode(c, &bytes[at..])?;
            drop(self.cache.put(&c.digest, &data)?);
            self.stats.put(c);
        }
        Ok(n)
    }
}

/// A layer's background prefetch; stopped and joined when dropped.
#[derive(Debug)]
pub struct Prefetch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Prefetch {
    /// Starts prefetching `layer`.
    pub fn start(layer: Arc<Layer>) -> io::Result<Prefetch> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("lazy-prefetch".into())
            .spawn(move || layer.prefetch(&flag))?;
        Ok(Prefetch {
            stop,
            thread: Some(thread),
        })
    }

    /// Asks it to stop, without waiting (dropping it waits).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether it has stopped (every chunk cached).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A range source that counts what it returns.
struct Counted<'a> {
    src: &'a dyn RangeSource,
    stats: &'a Stats,
}

impl RangeSource for Counted<'_> {
    fn size(&self) -> u64 {
        self.src.size()
    }

    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let bytes = self.src.read_range(offset, len)?;
        if bytes.len() as u64 != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("asked for {len} bytes at {offset}, got {}", bytes.len()),
            ));
        }
        self.stats.bytes.fetch_add(len, Ordering::Relaxed);
        Ok(bytes)
    }
}
