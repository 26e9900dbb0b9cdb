//! The layer writer: changes in walk order become an OCI layer tar.
//!
//! * deletes become whiteouts (`dir/.wh.name`, empty regular files at the
//!   epoch), adds and modifies become entries read from the source tree;
//!   directories above an entry that were not written yet are written
//!   first, so every tar entry follows its parent;
//! * headers are deterministic: ustar with PAX records (sorted) for long
//!   names and link targets, large owners and xattrs (`SCHILY.xattr.*`,
//!   overlay's private ones never), mtimes in whole seconds (clamped to
//!   `SOURCE_DATE_EPOCH` when given), no atime, ctime or owner names;
//! * the first path of a hard-linked inode carries its content, later ones
//!   are link entries (unmodified paths register an inode); sockets are
//!   skipped;
//! * the tar is built on the calling thread (hashing the diffID) while a
//!   second thread compresses it (hashing the digest) into the sink: gzip
//!   as one member deflated in parallel pieces (`pgzip.rs`), zstd with its
//!   own workers; either way the bytes do not depend on the core count.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use strata_content::{ContentError, ContentStore};
use strata_core::{Algorithm, Digest, Digester, Labels};
use strata_leases::OpCtx;
use strata_sys::errno::Errno;
use strata_sys::{FileKind, Metadata, Root};
use tar::{EntryType, Header};

use crate::changes::{Change, ChangeKind};
use crate::channel::ChannelReader;
use crate::compression::Compression;
use crate::error::DiffError;
use crate::estargz::{self, EStargzOptions, EStargzWritten};
use crate::overlay_xattr;
use crate::pgzip::ParallelGzip;

pub use strata_core::media::UNCOMPRESSED_LABEL;

/// How to write a layer.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    /// The compression of the blob.
    pub compression: Compression,
    /// The compression level (the codec's default when `None`).
    pub level: Option<i32>,
    /// Clamp every mtime to this (seconds since the epoch), for
    /// reproducible layers.
    pub source_date_epoch: Option<i64>,
    /// How to lay out an eStargz layer ([`Compression::EStargz`] only).
    pub estargz: EStargzOptions,
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// Digest of the blob (compressed).
    pub digest: Digest,
    /// Size of the blob.
    pub size: u64,
    /// Digest of the tar stream.
    pub diff_id: Digest,
    /// Size of the tar stream.
    pub uncompressed_size: u64,
    /// Tar entries written (whiteouts and parents included).
    pub entries: u64,
    /// The compression used.
    pub compression: Compression,
    /// The digest of the table of contents of an eStargz layer.
    pub toc_digest: Option<Digest>,
}

impl Written {
    /// The labels its blob carries in the content store: the diffID and,
    /// for eStargz, the TOC digest.
    pub fn blob_labels(&self) -> Labels {
        let mut labels = Labels::from([(UNCOMPRESSED_LABEL.to_owned(), self.diff_id.to_string())]);
        if let Some(toc) = &self.toc_digest {
            labels.extend(estargz::annotations(toc, self.uncompressed_size));
        }
        labels
    }
}

/// A writer that hashes what passes through.
struct HashWriter<W> {
    inner: W,
    digester: Digester,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digester.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hands the tar stream to the compressing thread in large chunks.
struct ChunkSender {
    tx: Option<mpsc::SyncSender<Vec<u8>>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 1 << 20;

impl ChunkSender {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(chunk).ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "the compressor stopped"))
    }
}

impl Write for ChunkSender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

enum Encoder<W: Write> {
    None(W),
    Gzip(ParallelGzip<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    fn new(sink: W, compression: Compression, level: Option<i32>) -> io::Result<Self> {
        Ok(match compression {
            Compression::None => Encoder::None(sink),
            Compression::Gzip => {
                let level = level.map_or(flate2::Compression::default(), |l| {
                    flate2::Compression::new(l.clamp(0, 9).unsigned_abs())
                });
                Encoder::Gzip(ParallelGzip::new(sink, level, workers() as usize)?)
            }
            Compression::EStargz => {
                return Err(io::Error::other(
                    "eStargz is written by the eStargz writer, not a stream encoder",
                ));
            }
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(
                    sink,
                    level.unwrap_or(zstd::DEFAULT_COMPRESSION_LEVEL),
                )?;
                // zstd's output is the same for any number of workers from
                // one up, so layers stay reproducible across machines.
                e.multithread(workers())?;
                Encoder::Zstd(e)
            }
        })
    }

    fn write_chunk(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.write_all(&chunk),
            Encoder::Gzip(w) => w.piece(chunk),
            Encoder::Zstd(w) => w.write_all(&chunk),
        }
    }

    fn finish(self) -> io::Result<W> {
        let mut w = match self {
            Encoder::None(w) => w,
            Encoder::Gzip(w) => w.finish()?,
            Encoder::Zstd(w) => w.finish()?,
        };
        w.flush()?;
        Ok(w)
    }
}

/// Compression threads: the machine's cores, at least one.
fn workers() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
}

/// Builds the tar of a change stream; handed to the producer of
/// [`write_layer`].
pub struct LayerWriter<'a> {
    tar: tar::Builder<HashWriter<ChunkSender>>,
    source: &'a Root,
    /// The first path of each hard-linked inode seen (written or unchanged).
    links: HashMap<(u64, u64), PathBuf>,
    /// Inodes whose content this layer wrote under their first path.
    written: HashSet<(u64, u64)>,
    dirs: HashSet<PathBuf>,
    epoch: Option<i64>,
    entries: u64,
    ctx: OpCtx,
}

impl std::fmt::Debug for LayerWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerWriter")
            .field("source", &self.source.path())
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

/// Reads exactly `remaining` bytes, failing when the file is shorter (it
/// changed while being written).
struct Exact<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being written",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Splits glibc's device number encoding.
fn major_minor(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (
        u32::try_from(major).unwrap_or(u32::MAX),
        u32::try_from(minor).unwrap_or(u32::MAX),
    )
}

const USTAR_NAME: usize = 100;
const USTAR_MAX_ID: u64 = 0o7_777_777;

impl LayerWriter<'_> {
    fn io(&self, path: &Path, e: io::Error) -> DiffError {
        DiffError::io("write layer entry", self.source.path().join(path), e)
    }

    /// Adds one change.
    pub fn change(&mut self, c: &Change) -> Result<(), DiffError> {
        if self.ctx.is_cancelled() {
            return Err(DiffError::Cancelled);
        }
        if c.kind != ChangeKind::Unmodified
            && let Some(parent) = c.path.parent()
        {
            self.parents(parent)?;
        }
        match c.kind {
            ChangeKind::Delete => self.whiteout(&c.path),
            ChangeKind::Unmodified => {
                let Some(m) = c.meta.as_ref().filter(|m| m.kind != FileKind::Dir) else {
                    return Ok(());
                };
                if self.written.contains(&(m.dev, m.ino)) {
                    // A name this layer wrote shares the inode (a new
                    // name sorted before this unchanged one): without a link
                    // entry here the applied tree would keep this name a
                    // separate file.
                    if let Some(parent) = c.path.parent() {
                        self.parents(parent)?;
                    }
                    return self.entry(&c.path, m);
                }
                self.links
                    .entry((m.dev, m.ino))
                    .or_insert_with(|| c.path.clone());
                Ok(())
            }
            ChangeKind::Add | ChangeKind::Modify => {
                let meta = match &c.meta {
                    Some(m) => m.clone(),
                    None => self.source.stat(&c.path)?,
                };
                self.entry(&c.path, &meta)
            }
        }
    }

    /// Writes the directories above `dir` (and `dir`) that are not written
    /// yet, outermost first.
    fn parents(&mut self, dir: &Path) -> Result<(), DiffError> {
        // Collected innermost first without recursion (a tree may be as deep
        // as a path is long).
        let missing: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|d| !d.as_os_str().is_empty() && !self.dirs.contains(*d))
            .map(Path::to_path_buf)
            .collect();
        for d in missing.iter().rev() {
            let meta = self.source.stat(d)?;
            self.entry(d, &meta)?;
        }
        Ok(())
    }

    fn whiteout(&mut self, path: &Path) -> Result<(), DiffError> {
        let mut name = OsStr::new(".wh.").to_os_string();
        name.push(path.file_name().unwrap_or_default());
        let wh = path.with_file_name(name);
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0);
        h.set_size(0);
        h.set_mtime(0);
        self.append(&wh, h, &[], io::empty())
    }

    fn entry(&mut self, path: &Path, m: &Metadata) -> Result<(), DiffError> {
        let entry_type = match m.kind {
            FileKind::File => EntryType::Regular,
            FileKind::Dir => EntryType::Directory,
            FileKind::Symlink => EntryType::Symlink,
            FileKind::CharDevice => EntryType::Char,
            FileKind::BlockDevice => EntryType::Block,
            FileKind::Fifo => EntryType::Fifo,
            FileKind::Socket => return Ok(()),
        };
        if m.kind == FileKind::Dir {
            self.dirs.insert(path.to_path_buf());
        }
        let mut h = Header::new_ustar();
        h.set_mode(m.mode);
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        for (key, id, set) in [
            ("uid", m.uid, Header::set_uid as fn(&mut Header, u64)),
            ("gid", m.gid, Header::set_gid),
        ] {
            let id = u64::from(id);
            if id > USTAR_MAX_ID {
                pax.push((key.into(), id.to_string().into_bytes()));
                set(&mut h, 0);
            } else {
                set(&mut h, id);
            }
        }
        let mtime = self.epoch.map_or(m.mtime.sec, |e| m.mtime.sec.min(e));
        h.set_mtime(u64::try_from(mtime).unwrap_or(0));
        for name in self.xattr_names(path)? {
            if let Some(value) = self.source.get_xattr(path, &name)? {
                pax.push((
                    format!("SCHILY.xattr.{}", String::from_utf8_lossy(name.as_bytes())),
                    value,
                ));
            }
        }
        if m.kind != FileKind::Dir && m.nlink > 1 {
            if let Some(first) = self.links.get(&(m.dev, m.ino)).cloned() {
                h.set_entry_type(EntryType::Link);
                h.set_size(0);
                self.link_name(&mut h, first.as_os_str().as_bytes(), &mut pax);
                return self.append(path, h, &pax, io::empty());
            }
            self.links.insert((m.dev, m.ino), path.to_path_buf());
            self.written.insert((m.dev, m.ino));
        }
        h.set_entry_type(entry_type);
        match m.kind {
            FileKind::File => {
                h.set_size(m.size);
                let file = self.source.open_file(path)?;
                let data = Exact {
                    inner: file,
                    remaining: m.size,
                };
                return self.append(path, h, &pax, data);
            }
            FileKind::Symlink => {
                let target = self.source.read_link(path)?;
                self.link_name(&mut h, target.as_bytes(), &mut pax);
            }
            FileKind::CharDevice | FileKind::BlockDevice => {
                let (major, minor) = major_minor(m.rdev);
                h.set_device_major(major).map_err(|e| self.io(path, e))?;
                h.set_device_minor(minor).map_err(|e| self.io(path, e))?;
            }
            _ => {}
        }
        h.set_size(0);
        self.append(path, h, &pax, io::empty())
    }

    /// Xattr names worth writing, sorted.
    fn xattr_names(&self, path: &Path) -> Result<Vec<std::ffi::OsString>, DiffError> {
        let mut names = match self.source.list_xattrs(path) {
            Ok(n) => n,
            // Not supported on this file system or file: none.
            Err(e) if matches!(e.errno(), Some(Errno::OPNOTSUPP | Errno::PERM)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        names.retain(|n| !overlay_xattr::is_private(n.as_bytes()));
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        Ok(names)
    }

    fn link_name(&self, h: &mut Header, target: &[u8], pax: &mut Vec<(String, Vec<u8>)>) {
        if target.len() > USTAR_NAME {
            pax.push(("linkpath".into(), target.to_vec()));
        }
        let n = target.len().min(USTAR_NAME);
        h.as_old_mut().linkname[..n].copy_from_slice(&target[..n]);
    }

    fn append(
        &mut self,
        path: &Path,
        mut h: Header,
        pax: &[(String, Vec<u8>)],
        data: impl Read,
    ) -> Result<(), DiffError> {
        let mut name = path.as_os_str().as_bytes().to_vec();
        if h.entry_type() == EntryType::Directory {
            name.push(b'/');
        }
        let mut pax = pax.to_vec();
        if name.len() > USTAR_NAME {
            pax.push(("path".into(), name.clone()));
        }
        let n = name.len().min(USTAR_NAME);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        h.set_cksum();
        if !pax.is_empty() {
            pax.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            self.tar
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(|e| self.io(path, e))?;
        }
        self.tar.append(&h, data).map_err(|e| self.io(path, e))?;
        self.entries += 1;
        Ok(())
    }
}

/// Writes the tar stream `input` as eStargz into `sink` (hashed).
fn estargz_into<W: Write>(
    input: impl Read,
    sink: W,
    opts: &EStargzOptions,
    level: Option<i32>,
) -> io::Result<(EStargzWritten, HashWriter<W>)> {
    estargz::write(
        input,
        HashWriter {
            inner: sink,
            digester: Digester::new(Algorithm::Sha256),
        },
        opts,
        level.map(|l| l.clamp(0, 9).unsigned_abs()),
        workers() as usize,
    )
}

/// Compresses the tar stream `input` (already decompressed) into `sink`
/// with the layer writer's encoders: a lossless change of compression (for
/// eStargz, the same entries with the landmark and TOC added). Returns what
/// was written (no entries counted) and the sink.
pub(crate) fn recompress<R: Read, W: Write>(
    mut input: R,
    sink: W,
    opts: &WriteOptions,
    ctx: &OpCtx,
) -> io::Result<(Written, W)> {
    let compression = opts.compression;
    if compression == Compression::EStargz {
        let (es, blob) = estargz_into(
            Cancellable { inner: input, ctx },
            sink,
            &opts.estargz,
            opts.level,
        )?;
        let size = blob.digester.written();
        return Ok((
            Written {
                digest: blob.digester.finish(),
                size,
                diff_id: es.diff_id,
                uncompressed_size: es.uncompressed_size,
                entries: es.entries,
                compression,
                toc_digest: Some(es.toc_digest),
            },
            blob.inner,
        ));
    }
    let mut enc = Encoder::new(
        HashWriter {
            inner: sink,
            digester: Digester::new(Algorithm::Sha256),
        },
        compression,
        opts.level,
    )?;
    let mut tar = Digester::new(Algorithm::Sha256);
    let mut input = Cancellable {
        inner: &mut input,
        ctx,
    };
    loop {
        let mut chunk = vec![0u8; CHUNK];
        let mut filled = 0;
        while filled < CHUNK {
            match input.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted && !ctx.is_cancelled() => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        chunk.truncate(filled);
        tar.update(&chunk);
        enc.write_chunk(chunk)?;
    }
    let blob = enc.finish()?;
    let uncompressed_size = tar.written();
    let size = blob.digester.written();
    Ok((
        Written {
            digest: blob.digester.finish(),
            size,
            diff_id: tar.finish(),
            uncompressed_size,
            entries: 0,
            compression,
            toc_digest: None,
        },
        blob.inner,
    ))
}

/// Fails reads once `ctx` is cancelled.
struct Cancellable<'c, R> {
    inner: R,
    ctx: &'c OpCtx,
}

impl<R: Read> Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ctx.is_cancelled() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
        }
        self.inner.read(buf)
    }
}

/// Writes a layer of the changes `produce` feeds, reading entries from
/// `source`, into `sink`; writing stops at the next change once `ctx` is
/// cancelled. Returns what was written and the sink.
pub fn write_layer<W: Write + Send>(
    ctx: &OpCtx,
    sink: W,
    source: &Path,
    opts: &WriteOptions,
    produce: impl FnOnce(&mut LayerWriter<'_>) -> Result<(), DiffError>,
) -> Result<(Written, W), DiffError> {
    let root = Root::open(source)?;
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(8);
    let blob_io = |e| DiffError::io("compress layer of", source, e);
    let (tarred, compressed) = std::thread::scope(|scope| {
        let compressor = scope.spawn(move || -> io::Result<_> {
            if opts.compression == Compression::EStargz {
                let mut input = ChannelReader::new(rx, |_: &[u8]| {});
                return match estargz_into(&mut input, sink, &opts.estargz, opts.level) {
                    Ok((es, blob)) => Ok((blob, Some(es))),
                    Err(e) => {
                        // The tar side finishes, so the error reported is
                        // this one (an entry eStargz cannot hold), not a
                        // closed channel.
                        for _ in input.rx.iter() {}
                        Err(e)
                    }
                };
            }
            let mut enc = Encoder::new(
                HashWriter {
                    inner: sink,
                    digester: Digester::new(Algorithm::Sha256),
                },
                opts.compression,
                opts.level,
            )?;
            for chunk in rx {
                enc.write_chunk(chunk)?;
            }
            Ok((enc.finish()?, None))
        });
        let mut w = LayerWriter {
            tar: tar::Builder::new(HashWriter {
                inner: ChunkSender {
                    tx: Some(tx),
                    buf: Vec::with_capacity(CHUNK),
                },
                digester: Digester::new(Algorithm::Sha256),
            }),
            source: &root,
            links: HashMap::new(),
            written: HashSet::new(),
            dirs: HashSet::new(),
            epoch: opts.source_date_epoch,
            entries: 0,
            ctx: ctx.clone(),
        };
        let tarred = produce(&mut w).and_then(|()| {
            let entries = w.entries;
            let mut out = w.tar.into_inner().map_err(blob_io)?;
            out.flush().map_err(blob_io)?;
            out.inner.tx = None;
            let size = out.digester.written();
            Ok((out.digester.finish(), size, entries))
        });
        (
            tarred,
            compressor.join().expect("the compression thread panicked"),
        )
    });
    let (diff_id, uncompressed_size, entries) = tarred?;
    let (blob, es) = compressed.map_err(blob_io)?;
    let size = blob.digester.written();
    // An eStargz stream is the tar plus the format's entries: its diffID
    // is the writer's.
    let (diff_id, uncompressed_size, toc_digest) = match es {
        Some(es) => (es.diff_id, es.uncompressed_size, Some(es.toc_digest)),
        None => (diff_id, uncompressed_size, None),
    };
    Ok((
        Written {
            digest: blob.digester.finish(),
            size,
            diff_id,
            uncompressed_size,
            entries,
            compression: opts.compression,
            toc_digest,
        },
        blob.inner,
    ))
}

/// Writes a layer (as [`write_layer`]) straight into the content store
/// through the ingest `reference`, labelled with its diffID and held by
/// `ctx`'s lease from the transaction that records it. A blob the store
/// already has is fine (it gets the label if it lacks it); any other
/// failure aborts the ingest.
pub fn write_layer_to_store(
    ctx: &OpCtx,
    store: &ContentStore,
    reference: &str,
    source: &Path,
    opts: &WriteOptions,
    produce: impl FnOnce(&mut LayerWriter<'_>) -> Result<(), DiffError>,
) -> Result<Written, DiffError> {
    let mut ingest = store.under(ctx).writer(reference, None, None)?;
    ingest.truncate(0)?;
    let result =
        write_layer(ctx, ingest, source, opts, produce).and_then(|(written, mut ingest)| {
            let labels = written.blob_labels();
            match ingest.commit(written.size, Some(&written.digest), &labels) {
                Ok(_) => Ok(written),
                Err(ContentError::AlreadyExists(_)) => {
                    let mut info = store.info(&written.digest)?;
                    let missing: Vec<String> = labels
                        .keys()
                        .filter(|k| !info.labels.contains_key(*k))
                        .map(|k| format!("labels.{k}"))
                        .collect();
                    if !missing.is_empty() {
                        info.labels.extend(labels);
                        let fields: Vec<&str> = missing.iter().map(String::as_str).collect();
                        store.update(&info, &fields)?;
                    }
                    Ok(written)
                }
                Err(e) => Err(e.into()),
            }
        });
    if result.is_err()
        && let Err(e) = store.abort(reference)
    {
        tracing::warn!(reference, error = %e, "could not abort a failed layer ingest");
    }
    result
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    fn zstd_with(workers: u32, data: &[u8]) -> Vec<u8> {
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        e.multithread(workers).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn zstd_output_does_not_depend_on_the_worker_count() {
        let data: Vec<u8> = (0..24u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 & 0x0f)
            .collect();
        let one = zstd_with(1, &data);
        assert_eq!(one, zstd_with(2, &data));
        assert_eq!(one, zstd_with(5, &data));
    }
}
