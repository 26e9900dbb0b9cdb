//! Applying an OCI layer to a directory, the way SECURITY.md says:
//!
//! * one thread reads the compressed bytes (hashing them for the digest),
//!   decompresses with bounded output and hands chunks to the applying
//!   thread, which hashes the tar stream (the diffID) while it extracts;
//! * every path is cleaned (`..` may not climb out) and resolved inside the
//!   destination through [`strata_sys::Root`]; the final component is never
//!   followed; hard links resolve inside and never name a directory;
//! * whiteouts (`.wh.NAME`, `.wh..wh..opq`) delete by fd, never following
//!   symlinks or crossing mounts; an opaque marker hides only what was there
//!   before this layer;
//! * `trusted.*` xattrs (overlay forgery) are dropped, `security.capability`
//!   is set after chown, setuid/setgid/sticky are kept, directory times are
//!   set last;
//! * the digest and diffID are verified at the end; a mismatch names both.
//!
//! With [`ApplyOptions::overlay`] the destination is an overlay upper
//! directory over the given lower directories, written directly (no mount):
//! a whiteout becomes a 0/0 character device only where the lowers have the
//! path, an opaque marker the opaque xattr only where they have the
//! directory; directories created above an entry copy their metadata from
//! the lowers so the merged view keeps it; a hard link to a lower file
//! copies the file up first. An entry whose parent is a symlink in the
//! lowers cannot be placed without a mount and is refused with
//! [`ApplyError::NeedsMount`].

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use strata_core::{Algorithm, Digest, Digester};
use strata_leases::OpCtx;
use strata_sys::copy::{MetadataCopy, RootEntry, copy_metadata};
use strata_sys::errno::Errno;
use strata_sys::{At, FileKind, Metadata, Root, SysError, Times, clean};
use tar::EntryType;

use crate::channel::ChannelReader;
use crate::compression::Compression;
use crate::error::ApplyError;
use crate::estargz::{self, ChunkAt, MemberDecoder, MemberStarts};
use crate::guard::{HeaderGuard, SparseMaps};
use crate::overlay_xattr;
use crate::sparse;

/// Bounds on what a layer may make us do.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most uncompressed bytes.
    pub max_uncompressed: u64,
    /// Most uncompressed bytes per compressed byte (decompression bombs)...
    pub max_ratio: u64,
    /// ...plus this allowance.
    pub ratio_allowance: u64,
    /// Most tar entries.
    pub max_entries: u64,
    /// Longest path, in bytes.
    pub max_path: usize,
    /// Deepest path, in components.
    pub max_depth: usize,
    /// Largest GNU long name or PAX record, in bytes (they are read into
    /// memory whole).
    pub max_record: u64,
    /// Largest apparent size of a sparse file (its holes cost nothing,
    /// but a file that large is refused by name, not made).
    pub max_apparent_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_uncompressed: 256 << 30,
            max_ratio: 1100,
            ratio_allowance: 64 << 20,
            max_entries: 10_000_000,
            max_path: 4096,
            // Bounded by the path length: every path that fits PATH_MAX
            // applies, and no walker recurses.
            max_depth: 4096,
            max_record: 1 << 20,
            max_apparent_size: 1 << 40,
        }
    }
}

/// How to apply a layer.
#[derive(Clone, Debug, Default)]
pub struct ApplyOptions {
    /// What to call the layer in errors (a digest or a file name).
    pub name: String,
    /// The layer's media type, cross-checked with the detected compression.
    pub media_type: Option<String>,
    /// The expected digest of the layer as given (compressed).
    pub digest: Option<Digest>,
    /// The expected size of the layer as given (compressed).
    pub size: Option<u64>,
    /// The expected digest of the uncompressed tar stream.
    pub diff_id: Option<Digest>,
    /// Skip device nodes that cannot be created (no privilege) instead of
    /// failing.
    pub skip_devices: bool,
    /// An owner the user namespace cannot map (chown fails with EINVAL, as
    /// in a rootless run with a single id mapping) is squashed instead of
    /// failing the layer: the entry is left owned by the process's own ids
    /// (0:0 inside such a namespace) with setuid and setgid dropped, so a
    /// setuid or setgid file never gains the process's ids, and
    /// [`Applied::squashed`] counts it. Off by default: a squashed tree is
    /// not the image, and [`ApplyError::Unmapped`] says what to do instead.
    /// Other chown failures fail as before.
    pub ignore_chown_errors: bool,
    /// Resource bounds.
    pub limits: Limits,
    /// Write into an overlay upper directory instead of a plain tree.
    pub overlay: Option<OverlayTarget>,
    /// The layer is eStargz with this TOC ([`estargz::Index::read`]): the
    /// stream is checked against it (entries, metadata, chunk digests and
    /// offsets; a difference is [`ApplyError::Invalid`]) and the format's
    /// own entries (landmarks, TOC) are not written.
    pub estargz: Option<Arc<estargz::Index>>,
}

/// The lower side of an overlay upper directory being written directly.
#[derive(Clone, Debug, Default)]
pub struct OverlayTarget {
    /// The lower directories, topmost first (overlay's `lowerdir=` order).
    pub lowers: Vec<PathBuf>,
    /// The lowers are not known yet (the layer is unpacked in parallel with
    /// those below it and given its parent at commit): whiteouts and opaque
    /// markers are written whatever the lowers hold (overlay ignores those
    /// that hide nothing), and an entry whose result depends on the lowers
    /// fails with [`ApplyError::NeedsLowers`], to be applied again on its
    /// parent.
    pub detached: bool,
    /// Overlay runs with `userxattr`: the opaque marker is
    /// `user.overlay.opaque` instead of `trusted.overlay.opaque`.
    pub userxattr: bool,
}

/// What the merged lowers hold at a path.
enum LowerHit {
    Absent,
    Found(usize, Metadata),
    /// A parent of the path is a symlink in the lowers.
    ThroughSymlink(PathBuf),
}

/// What applying a layer found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Digest of the layer as read.
    pub digest: Digest,
    /// Digest of the uncompressed tar stream.
    pub diff_id: Digest,
    /// Bytes read.
    pub compressed_size: u64,
    /// Uncompressed bytes.
    pub size: u64,
    /// Tar entries seen.
    pub entries: u64,
    /// The compression detected.
    pub compression: Compression,
    /// Entries whose owner was squashed to the process's ids
    /// ([`ApplyOptions::ignore_chown_errors`]).
    pub squashed: u64,
}

/// Hashes what passes through.
struct Hashing<R> {
    inner: R,
    digester: Digester,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.digester.update(&buf[..n]);
        Ok(n)
    }
}

/// Counts what passes through, readable while a decoder owns the reader.
struct Counting<R> {
    inner: R,
    count: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// A piece of the tar stream, shared by the extracting and the hashing
/// thread.
type Chunk = Arc<Vec<u8>>;

/// The applying side of the pipeline: chunks from the decompressing thread.
struct Chunks {
    rx: mpsc::Receiver<io::Result<Chunk>>,
    current: Chunk,
    pos: usize,
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn invalid(opts: &ApplyOptions, reason: impl Into<String>) -> ApplyError {
    ApplyError::Invalid {
        layer: opts.name.clone(),
        reason: reason.into(),
    }
}

/// What the decompressing side found: the blob's digest and size, its
/// compression and, for eStargz, where its gzip members start.
type Decompressed = (Digest, u64, Compression, Option<MemberStarts>);

/// Reads, hashes and decompresses `layer`, sending bounded chunks; returns
/// the compressed digest, size and the compression found, or `None` when
/// the extracting side stopped first (its error says why).
fn decompress(
    ctx: &OpCtx,
    layer: impl Read,
    opts: &ApplyOptions,
    tx: mpsc::SyncSender<io::Result<Chunk>>,
    hash_tx: mpsc::SyncSender<Chunk>,
) -> Result<Option<Decompressed>, ApplyError> {
    let alg = opts
        .digest
        .as_ref()
        .map_or(Algorithm::Sha256, Digest::algorithm);
    let read = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let mut input = BufReader::with_capacity(
        1 << 20,
        Counting {
            inner: Hashing {
                inner: layer,
                digester: Digester::new(alg),
            },
            count: std::rc::Rc::clone(&read),
        },
    );
    let io_err = |e: io::Error| ApplyError::Io {
        layer: opts.name.clone(),
        source: e,
    };
    let compression = Compression::detect(input.fill_buf().map_err(io_err)?);
    if let Some(declared) = opts
        .media_type
        .as_deref()
        .and_then(Compression::of_media_type)
        && declared != compression
    {
        return Err(invalid(
            opts,
            format!(
                "media type {:?} says {declared:?} but the bytes are {compression:?}",
                opts.media_type.as_deref().unwrap_or("")
            ),
        ));
    }
    // An eStargz layer is decoded member by member, noting where each
    // starts, for the TOC's offsets.
    let members = (opts.estargz.is_some() && compression == Compression::Gzip)
        .then(|| std::rc::Rc::new(std::cell::RefCell::new(MemberStarts::new())));
    let mut decoder: Box<dyn Read> = if let (Some(starts), Some(index)) = (&members, &opts.estargz)
    {
        let taken = std::rc::Rc::clone(&read);
        Box::new(MemberDecoder::new(
            &mut input,
            move |r: &BufReader<_>| taken.get() - r.buffer().len() as u64,
            index,
            std::rc::Rc::clone(starts),
        ))
    } else {
        crate::compression::decoder(compression, &mut input).map_err(io_err)?
    };
    let mut total = 0u64;
    loop {
        let mut chunk = vec![0u8; 1 << 20];
        let n = match decoder.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let reason = format!("corrupt {compression:?} stream: {e}");
                // The applier reports the failure it sees; this one is ours.
                let _receiver_gone = tx.send(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    reason.clone(),
                )));
                return Err(invalid(opts, reason));
            }
        };
        total += n as u64;
        // Compressed bytes taken so far (some may still sit buffered, which
        // only makes the bound more generous by one buffer).
        let read_so_far = read.get();
        ctx.progress(read_so_far);
        if ctx.is_cancelled() {
            let _receiver_gone =
                tx.send(Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled")));
            return Err(ApplyError::Cancelled {
                layer: opts.name.clone(),
            });
        }
        let bound = opts.limits.max_uncompressed.min(
            read_so_far
                .saturating_mul(opts.limits.max_ratio)
                .saturating_add(opts.limits.ratio_allowance),
        );
        if total > bound {
            let reason = format!(
                "decompresses past its bound ({total} bytes from {read_so_far} compressed)"
            );
            let _receiver_gone = tx.send(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                reason.clone(),
            )));
            return Err(invalid(opts, reason));
        }
        chunk.truncate(n);
        let chunk = Arc::new(chunk);
        if hash_tx.send(Arc::clone(&chunk)).is_err() || tx.send(Ok(chunk)).is_err() {
            // The applier stopped and reports why.
            return Ok(None);
        }
    }
    drop(decoder);
    drop(tx);
    // Whatever follows the compressed stream is part of the blob's digest.
    io::copy(&mut input, &mut io::sink()).map_err(io_err)?;
    let hashing = input.into_inner().inner;
    let size = hashing.digester.written();
    ctx.progress(size);
    let members = members.map(|m| m.take());
    Ok(Some((
        hashing.digester.finish(),
        size,
        compression,
        members,
    )))
}

/// Applies the layer read from `layer` onto the directory `dest`. `ctx`
/// cancels (checked for every megabyte decompressed and every entry; it
/// stops the whole pipeline) and is told the layer bytes read so far.
pub fn apply(
    ctx: &OpCtx,
    layer: impl Read + Send,
    dest: &Path,
    opts: &ApplyOptions,
) -> Result<Applied, ApplyError> {
    let root = Root::open(dest).map_err(|e| ApplyError::Sys {
        layer: opts.name.clone(),
        source: e,
    })?;
    let (tx, rx) = mpsc::sync_channel(4);
    let (hash_tx, hash_rx) = mpsc::sync_channel::<Chunk>(8);
    let alg = opts
        .diff_id
        .as_ref()
        .map_or(Algorithm::Sha256, Digest::algorithm);
    // Three stages: read and decompress, extract, and hash the tar stream
    // (the diffID) beside the extraction.
    let (decompressed, extracted, hashed) = std::thread::scope(|scope| {
        let reader = scope.spawn(move || decompress(ctx, layer, opts, tx, hash_tx));
        let hasher = scope.spawn(move || {
            let mut d = Digester::new(alg);
            let mut stream = ChannelReader::new(hash_rx, |chunk: &[u8]| d.update(chunk));
            let verified = opts
                .estargz
                .as_deref()
                .map(|index| estargz::verify_stream(&mut stream, index));
            // The rest (all of it without a TOC) still counts for the diffID,
            // and the decompressing side must not wait on a full channel.
            let drained = io::copy(&mut stream, &mut io::sink());
            drop(stream);
            let size = d.written();
            (d.finish(), size, verified, drained)
        });
        let extracted = extract(ctx, &root, rx, opts);
        (
            reader.join().expect("the decompression thread panicked"),
            extracted,
            hasher.join().expect("the hashing thread panicked"),
        )
    });
    // The extractor's error explains more when both failed, unless the
    // stream itself was bad.
    let (digest, compressed_size, compression, members) = match (decompressed, extracted.as_ref()) {
        (Ok(Some(d)), _) => d,
        (Err(e @ ApplyError::Invalid { .. }), _) => return Err(e),
        (Err(e), Ok(_)) => return Err(e),
        (_, Err(_)) => return Err(extracted.expect_err("matched as an error")),
        (Ok(None), Ok(_)) => return Err(invalid(opts, "the stream ended early")),
    };
    let (entries, squashed) = extracted?;
    let (diff_id, size, verified, drained) = hashed;
    drained.map_err(|e| ApplyError::Io {
        layer: opts.name.clone(),
        source: e,
    })?;
    if let Some(verified) = verified {
        verified
            .and_then(|chunks: Vec<ChunkAt>| {
                estargz::check_offsets(&chunks, &members.unwrap_or_default())
            })
            .map_err(|reason| invalid(opts, format!("does not match its eStargz TOC: {reason}")))?;
    }
    if let Some(expected) = opts.size
        && expected != compressed_size
    {
        return Err(invalid(
            opts,
            format!("size mismatch: expected {expected} bytes, read {compressed_size}"),
        ));
    }
    if let Some(expected) = &opts.digest
        && *expected != digest
    {
        return Err(ApplyError::Mismatch {
            layer: opts.name.clone(),
            what: "digest",
            expected: expected.clone(),
            actual: digest,
        });
    }
    if let Some(expected) = &opts.diff_id
        && *expected != diff_id
    {
        return Err(ApplyError::Mismatch {
            layer: opts.name.clone(),
            what: "diffID",
            expected: expected.clone(),
            actual: diff_id,
        });
    }
    Ok(Applied {
        digest,
        diff_id,
        compressed_size,
        size,
        entries,
        compression,
        squashed,
    })
}

/// Whether `path` lands on one of eStargz's own entries once cleaned the
/// way extraction cleans it (`x/../stargz.index.json` included).
fn is_format_path(path: &[u8]) -> bool {
    clean(Path::new(OsStr::from_bytes(path))).is_ok_and(|p| estargz::is_format_entry(p.as_bytes()))
}

fn extract(
    ctx: &OpCtx,
    root: &Root,
    rx: mpsc::Receiver<io::Result<Chunk>>,
    opts: &ApplyOptions,
) -> Result<(u64, u64), ApplyError> {
    let gnu_sparse = SparseMaps::default();
    let stream = HeaderGuard::new(
        Chunks {
            rx,
            current: Arc::default(),
            pos: 0,
        },
        opts.limits.max_record,
        opts.limits.max_uncompressed,
        SparseMaps::clone(&gnu_sparse),
    );
    let mut archive = tar::Archive::new(stream);
    let lowers = match &opts.overlay {
        Some(o) => o
            .lowers
            .iter()
            .map(|l| Root::open(l))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApplyError::Sys {
                layer: opts.name.clone(),
                source: e,
            })?,
        None => Vec::new(),
    };
    let mut a = Applier {
        root,
        lowers,
        opts,
        written: HashSet::new(),
        dirs: Vec::new(),
        privileged: strata_sys::effective_uid() == 0,
        squashed: 0,
        last_parent: None,
        buf: vec![0; 256 << 10],
        gnu_sparse,
    };
    let mut entries = 0u64;
    let io_err = |e: io::Error| invalid(opts, format!("not a valid tar stream: {e}"));
    for entry in archive.entries().map_err(io_err)? {
        if ctx.is_cancelled() {
            return Err(ApplyError::Cancelled {
                layer: opts.name.clone(),
            });
        }
        let entry = entry.map_err(io_err)?;
        entries += 1;
        if entries > opts.limits.max_entries {
            return Err(invalid(
                opts,
                format!("more than {} entries", opts.limits.max_entries),
            ));
        }
        // eStargz's landmarks and TOC are the format's, not the image's.
        if opts.estargz.is_some() && is_format_path(&entry.path_bytes()) {
            continue;
        }
        a.entry(entry)?;
    }
    a.finish_dirs()?;
    // Trailing blocks after the end-of-archive marker count for the diffID:
    // drain them so the hashing thread sees the whole stream.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(io_err)?;
    if a.squashed > 0 {
        tracing::info!(
            layer = opts.name,
            entries = a.squashed,
            "squashed owners this user namespace cannot map"
        );
    }
    Ok((entries, a.squashed))
}

struct Applier<'a> {
    root: &'a Root,
    /// Overlay mode: the lower directories, topmost first.
    lowers: Vec<Root>,
    opts: &'a ApplyOptions,
    written: HashSet<PathBuf>,
    dirs: Vec<(PathBuf, Times)>,
    privileged: bool,
    /// Entries whose owner was squashed
    /// ([`ApplyOptions::ignore_chown_errors`]).
    squashed: u64,
    /// The directory the previous entry went into (known to exist).
    last_parent: Option<PathBuf>,
    /// The copy buffer for file data.
    buf: Vec<u8>,
    /// Old GNU sparse maps the guard took out of the stream, by header
    /// position.
    gnu_sparse: SparseMaps,
}

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

impl Applier<'_> {
    fn entry_error(&self, entry: &Path, reason: impl std::fmt::Display) -> ApplyError {
        ApplyError::Entry {
            layer: self.opts.name.clone(),
            entry: strata_sys::short_path(entry),
            reason: reason.to_string(),
        }
    }

    fn sys(&self, entry: &Path, e: SysError) -> ApplyError {
        match e {
            SysError::Io { source, .. } if strata_sys::machine_fault(&source) => {
                self.entry_failed(entry, source)
            }
            e => self.entry_error(entry, e),
        }
    }

    /// An entry's data could not be written: the machine's fault when the
    /// error says so, else the layer's (a truncated or corrupt stream).
    fn data_error(&self, entry: &Path, e: io::Error) -> ApplyError {
        if strata_sys::machine_fault(&e) {
            self.entry_failed(entry, e)
        } else {
            self.entry_error(entry, e)
        }
    }

    fn entry_failed(&self, entry: &Path, source: io::Error) -> ApplyError {
        ApplyError::EntryFailed {
            layer: self.opts.name.clone(),
            entry: strata_sys::short_path(entry),
            source,
        }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ApplyError> {
        let mut raw = entry.path_bytes().into_owned();
        let mut shown = PathBuf::from(OsStr::from_bytes(&raw));
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            return Ok(());
        }
        let pax: Vec<(String, Vec<u8>)> = match entry.pax_extensions() {
            Ok(Some(exts)) => exts
                .filter_map(Result::ok)
                .map(|e| {
                    (
                        String::from_utf8_lossy(e.key_bytes()).into_owned(),
                        e.value_bytes().to_vec(),
                    )
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(self.entry_error(&shown, format!("bad PAX header: {e}"))),
        };
        // A PAX sparse file (GNU formats 0.0, 0.1, 1.0): its real name and
        // map, never the stand-in name or the raw map as data.
        let max_apparent = self.opts.limits.max_apparent_size;
        let gnu = self
            .gnu_sparse
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&entry.raw_header_position());
        let sparse = match gnu {
            Some(map) => Some(sparse::Sparse::gnu(map.chunks, map.real_size, max_apparent)),
            None => sparse::Sparse::parse(&pax, max_apparent).transpose(),
        }
        .transpose()
        .map_err(|r| self.entry_error(&shown, r))?;
        if let Some(name) = sparse.as_ref().and_then(|s| s.name.clone()) {
            raw = name;
            shown = PathBuf::from(OsStr::from_bytes(&raw));
        }
        if raw.len() > self.opts.limits.max_path {
            return Err(self.entry_error(
                &shown,
                format!("path longer than {} bytes", self.opts.limits.max_path),
            ));
        }
        let rel = clean(&shown).map_err(|e| self.sys(&shown, e))?;
        if rel.as_path().components().count() > self.opts.limits.max_depth {
            return Err(self.entry_error(
                &shown,
                format!("deeper than {} components", self.opts.limits.max_depth),
            ));
        }
        let Some((parent, name)) = rel.split_last() else {
            if kind != EntryType::Directory {
                return Err(self.entry_error(&shown, "a non-directory entry names the root"));
            }
            return self.metadata(Place::Root(self.root), &entry, &pax, true);
        };
        let (parent, name) = (PathBuf::from(parent), name.to_os_string());
        if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT.as_bytes()) {
            return self.whiteout(&shown, &parent, &name, hidden);
        }
        let path = rel.as_path().to_path_buf();
        // Entries come grouped by directory: the parent of the previous
        // entry is known to exist (whiteouts and removals forget it). The
        // entry itself is still resolved from the root.
        if self.last_parent.as_deref() != Some(parent.as_path()) {
            self.make_parents(&shown, &parent)?;
            self.last_parent = Some(parent);
        }
        let at = self.root.at(&path).map_err(|e| self.sys(&shown, e))?;
        match kind {
            EntryType::Directory => {
                match at.mkdir(0o700) {
                    Ok(()) => {}
                    Err(e) if e.errno() == Some(Errno::EXIST) => {
                        let existing = at.stat().map_err(|e| self.sys(&shown, e))?;
                        if !existing.as_ref().is_some_and(|m| m.kind == FileKind::Dir) {
                            at.remove_all().map_err(|e| self.sys(&shown, e))?;
                            at.mkdir(0o700).map_err(|e| self.sys(&shown, e))?;
                            // A directory replacing this layer's whiteout must
                            // not merge with what the lowers have there.
                            if existing.is_some_and(|m| is_whiteout(&m)) {
                                self.set_opaque(&shown, &path)?;
                            }
                        }
                    }
                    Err(e) => return Err(self.sys(&shown, e)),
                }
                self.written.insert(path);
                return self.metadata(Place::At(&at), &entry, &pax, true);
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.entry_error(&shown, "hard link without a target"))?
                    .into_owned();
                let target = clean(Path::new(OsStr::from_bytes(&target)))
                    .map_err(|e| self.sys(&shown, e))?;
                if target == rel {
                    return Ok(());
                }
                self.copy_up(&shown, target.as_path())?;
                let root = self.root;
                replacing(&at, |at| at.link_from(root, target.as_path()))
                    .map_err(|e| self.sys(&shown, e))?;
                self.written.insert(path);
                return Ok(());
            }
            _ => {}
        }
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let mut file =
                    replacing(&at, |at| at.create_file(0o600)).map_err(|e| self.sys(&shown, e))?;
                match &sparse {
                    Some(map) => map.write(&mut entry, &mut file, &mut self.buf),
                    None => copy_sparse(&mut entry, &mut file, &mut self.buf),
                }
                .map_err(|e| self.data_error(&shown, e))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.entry_error(&shown, "symlink without a target"))?
                    .into_owned();
                replacing(&at, |at| at.symlink(OsStr::from_bytes(&target)))
                    .map_err(|e| self.sys(&shown, e))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let h = entry.header();
                let number = |n: io::Result<Option<u32>>, what: &str| match n {
                    Ok(v) => Ok(v.unwrap_or(0)),
                    Err(e) => Err(self.entry_error(&shown, format!("bad device {what}: {e}"))),
                };
                let (major, minor) = if kind == EntryType::Fifo {
                    (0, 0)
                } else {
                    (
                        number(h.device_major(), "major")?,
                        number(h.device_minor(), "minor")?,
                    )
                };
                // The kernel keeps 12 bits of major and 20 of minor; more
                // would silently become another device.
                if major > MAX_MAJOR || minor > MAX_MINOR {
                    return Err(self.entry_error(
                        &shown,
                        format!(
                            "device number {major}:{minor} out of range (major at most {MAX_MAJOR}, minor at most {MAX_MINOR})"
                        ),
                    ));
                }
                let file_kind = match kind {
                    EntryType::Char => FileKind::CharDevice,
                    EntryType::Block => FileKind::BlockDevice,
                    _ => FileKind::Fifo,
                };
                let mode = h.mode().unwrap_or(0o600);
                if let Err(e) =
                    replacing(&at, |at| at.mknod(file_kind, mode, makedev(major, minor)))
                {
                    if self.opts.skip_devices && e.errno() == Some(Errno::PERM) {
                        tracing::debug!(entry = %shown.display(), "skipping a device node without privilege");
                        return Ok(());
                    }
                    return Err(self.sys(&shown, e));
                }
            }
            other => {
                return Err(self.entry_error(&shown, format!("unsupported entry type {other:?}")));
            }
        }
        self.written.insert(path);
        self.metadata(Place::At(&at), &entry, &pax, false)
    }

    fn whiteout(
        &mut self,
        shown: &Path,
        parent: &Path,
        name: &OsStr,
        hidden: &[u8],
    ) -> Result<(), ApplyError> {
        self.last_parent = None;
        if name.as_bytes() == OPAQUE.as_bytes() {
            // Hide what lower layers put in `parent`, keep this layer's.
            let entries = match self.root.read_dir(parent) {
                Ok(entries) => entries,
                Err(e) if e.errno() == Some(Errno::NOENT) => return Ok(()),
                Err(e) => return Err(self.sys(shown, e)),
            };
            for (child, _) in entries {
                let path = parent.join(&child);
                if !self.written.contains(&path) {
                    self.root
                        .remove_all(&path)
                        .map_err(|e| self.sys(shown, e))?;
                }
            }
            return self.opaque_over_lowers(shown, parent);
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(self.entry_error(shown, "whiteout of an empty, '.' or '..' name"));
        }
        let target = parent.join(OsStr::from_bytes(hidden));
        match self.root.remove_all(&target) {
            Ok(_) => {}
            // A whiteout under a directory that does not exist hides nothing.
            Err(e) if matches!(e.errno(), Some(Errno::NOENT | Errno::NOTDIR)) => {}
            Err(e) => return Err(self.sys(shown, e)),
        }
        if self.detached() {
            self.make_parents(shown, parent)?;
            return self
                .root
                .mknod(&target, FileKind::CharDevice, 0, 0)
                .map_err(|e| self.sys(shown, e));
        }
        match self.lower_lookup(shown, &target)? {
            LowerHit::Absent => Ok(()),
            LowerHit::ThroughSymlink(link) => Err(self.needs_mount(shown, &link)),
            LowerHit::Found(..) => {
                self.make_parents(shown, parent)?;
                self.root
                    .mknod(&target, FileKind::CharDevice, 0, 0)
                    .map_err(|e| self.sys(shown, e))
            }
        }
    }

    /// Overlay mode: hides what the lowers have in `dir` (this layer's
    /// entries stay): the opaque xattr, or at the top, where overlay does
    /// not look for it, a whiteout per lower entry.
    fn opaque_over_lowers(&mut self, shown: &Path, dir: &Path) -> Result<(), ApplyError> {
        if self.detached() {
            if dir.as_os_str().is_empty() {
                return Err(self.needs_lowers(shown, "an opaque marker at the top"));
            }
            self.make_parents(shown, dir)?;
            return self.set_opaque(shown, dir);
        }
        if self.lowers.is_empty() {
            return Ok(());
        }
        if !dir.as_os_str().is_empty() {
            match self.lower_lookup(shown, dir)? {
                LowerHit::Found(_, m) if m.kind == FileKind::Dir => {}
                LowerHit::ThroughSymlink(link) => return Err(self.needs_mount(shown, &link)),
                _ => return Ok(()),
            }
            self.make_parents(shown, dir)?;
            return self.set_opaque(shown, dir);
        }
        let mut names = HashSet::new();
        for lower in &self.lowers {
            for (name, _) in lower.read_dir(dir).map_err(|e| self.sys(shown, e))? {
                names.insert(name);
            }
        }
        for name in names {
            let path = dir.join(&name);
            if self.written.contains(&path) || self.root.try_stat(&path).ok().flatten().is_some() {
                continue;
            }
            if matches!(self.lower_lookup(shown, &path)?, LowerHit::Found(..)) {
                self.root
                    .mknod(&path, FileKind::CharDevice, 0, 0)
                    .map_err(|e| self.sys(shown, e))?;
            }
        }
        Ok(())
    }

    fn set_opaque(&self, shown: &Path, dir: &Path) -> Result<(), ApplyError> {
        let Some(overlay) = &self.opts.overlay else {
            return Ok(());
        };
        overlay_xattr::set_opaque(self.root, dir, overlay.userxattr).map_err(|e| self.sys(shown, e))
    }

    fn detached(&self) -> bool {
        self.opts.overlay.as_ref().is_some_and(|o| o.detached)
    }

    fn needs_lowers(&self, shown: &Path, reason: &'static str) -> ApplyError {
        ApplyError::NeedsLowers {
            layer: self.opts.name.clone(),
            entry: String::from_utf8_lossy(shown.as_os_str().as_bytes()).into_owned(),
            reason,
        }
    }

    fn needs_mount(&self, shown: &Path, link: &Path) -> ApplyError {
        ApplyError::NeedsMount {
            layer: self.opts.name.clone(),
            entry: String::from_utf8_lossy(shown.as_os_str().as_bytes()).into_owned(),
            symlink: link.to_path_buf(),
        }
    }

    /// What the merged lowers hold at `path`, resolved the way overlay
    /// does: whiteouts end the search, a non-directory hides everything
    /// below it, an opaque directory hides the layers below it.
    fn lower_lookup(&self, shown: &Path, path: &Path) -> Result<LowerHit, ApplyError> {
        let mut live: Vec<usize> = (0..self.lowers.len()).collect();
        let mut prefix = PathBuf::new();
        let components: Vec<_> = path.components().collect();
        let mut hit = None;
        for (i, c) in components.iter().enumerate() {
            prefix.push(c);
            let last = i + 1 == components.len();
            let mut next = Vec::new();
            hit = None;
            for &idx in &live {
                let lower = &self.lowers[idx];
                let m = match lower.try_stat(&prefix) {
                    Ok(Some(m)) => m,
                    Ok(None) => continue,
                    Err(e) if e.errno() == Some(Errno::NOTDIR) => continue,
                    Err(e) => return Err(self.sys(shown, e)),
                };
                if is_whiteout(&m) {
                    break;
                }
                if hit.is_none() {
                    hit = Some((idx, m.clone()));
                }
                if m.kind != FileKind::Dir {
                    if next.is_empty() {
                        next.push(idx);
                    }
                    break;
                }
                next.push(idx);
                if overlay_xattr::opaque(lower, &prefix).map_err(|e| self.sys(shown, e))? {
                    break;
                }
            }
            let Some((_, m)) = &hit else {
                return Ok(LowerHit::Absent);
            };
            if !last && m.kind != FileKind::Dir {
                if m.kind == FileKind::Symlink {
                    return Ok(LowerHit::ThroughSymlink(prefix));
                }
                return Ok(LowerHit::Absent);
            }
            live = next;
        }
        Ok(match hit {
            Some((idx, m)) => LowerHit::Found(idx, m),
            None => LowerHit::Absent,
        })
    }

    /// Creates the missing directories of `dir`. In overlay mode a
    /// directory the lowers have is created with their mode, owner, xattrs
    /// and time, as overlay's copy-up would.
    fn make_parents(&mut self, shown: &Path, dir: &Path) -> Result<(), ApplyError> {
        if self.detached() {
            // A parent the layer does not carry takes its metadata from the
            // lowers.
            return match self.root.try_stat(dir).map_err(|e| self.sys(shown, e))? {
                Some(m) if m.kind == FileKind::Dir => Ok(()),
                _ => Err(self.needs_lowers(shown, "a parent directory the layer does not carry")),
            };
        }
        if self.lowers.is_empty() {
            return self
                .root
                .mkdir_all(dir, 0o755)
                .map_err(|e| self.sys(shown, e));
        }
        let mut prefix = PathBuf::new();
        for c in dir.components() {
            prefix.push(c);
            if self
                .root
                .try_stat(&prefix)
                .map_err(|e| self.sys(shown, e))?
                .is_some()
            {
                // Must resolve to a directory (a file here is refused).
                self.root
                    .open_dir(&prefix)
                    .map_err(|e| self.sys(shown, e))?;
                continue;
            }
            match self.lower_lookup(shown, &prefix)? {
                LowerHit::ThroughSymlink(link) => return Err(self.needs_mount(shown, &link)),
                LowerHit::Found(idx, m) if m.kind == FileKind::Dir => {
                    self.root
                        .mkdir(&prefix, 0o700)
                        .map_err(|e| self.sys(shown, e))?;
                    self.copy_metadata(shown, idx, &prefix, &m)?;
                    self.dirs.push((prefix.clone(), m.mtime));
                }
                LowerHit::Found(_, m) if m.kind == FileKind::Symlink => {
                    return Err(self.needs_mount(shown, &prefix));
                }
                _ => self
                    .root
                    .mkdir(&prefix, 0o755)
                    .map_err(|e| self.sys(shown, e))?,
            }
        }
        Ok(())
    }

    /// Owner, mode and xattrs of lower `idx`'s `path` onto the same path in
    /// the upper directory.
    fn copy_metadata(
        &self,
        shown: &Path,
        idx: usize,
        path: &Path,
        m: &Metadata,
    ) -> Result<(), ApplyError> {
        let what = MetadataCopy {
            skip_xattr: overlay_xattr::is_private,
            times: false,
        };
        copy_metadata(
            &self.lowers[idx],
            path,
            m,
            &RootEntry(self.root, path),
            what,
        )
        .map_err(|e| self.sys(shown, e))
    }

    /// Overlay mode: a hard link's target that only the lowers have is
    /// copied into the upper directory first, as overlay would on link.
    fn copy_up(&mut self, shown: &Path, target: &Path) -> Result<(), ApplyError> {
        if self.detached()
            && self
                .root
                .try_stat(target)
                .map_err(|e| self.sys(shown, e))?
                .is_none()
        {
            return Err(self.needs_lowers(shown, "a hard link to a file of a lower layer"));
        }
        if self.lowers.is_empty()
            || self
                .root
                .try_stat(target)
                .map_err(|e| self.sys(shown, e))?
                .is_some()
        {
            return Ok(());
        }
        let (idx, m) = match self.lower_lookup(shown, target)? {
            LowerHit::Found(idx, m) if m.kind != FileKind::Dir => (idx, m),
            LowerHit::ThroughSymlink(link) => return Err(self.needs_mount(shown, &link)),
            // Nothing to copy: linking reports the missing target.
            _ => return Ok(()),
        };
        if let Some(parent) = target.parent() {
            self.make_parents(shown, parent)?;
        }
        let sys = |e| self.sys(shown, e);
        match m.kind {
            FileKind::File => {
                let src = self.lowers[idx].open_file(target).map_err(sys)?;
                let dst = self.root.create_file(target, 0o600).map_err(sys)?;
                strata_sys::copy::copy_contents(&src, &dst).map_err(|e| {
                    self.entry_error(shown, format!("copy up {}: {e}", target.display()))
                })?;
            }
            FileKind::Symlink => {
                let link = self.lowers[idx].read_link(target).map_err(sys)?;
                self.root.symlink(&link, target).map_err(sys)?;
                return Ok(());
            }
            kind => {
                self.root.mknod(target, kind, m.mode, m.rdev).map_err(sys)?;
            }
        }
        self.copy_metadata(shown, idx, target, &m)?;
        self.root.set_times(target, m.atime, m.mtime).map_err(sys)
    }

    fn metadata<R: Read>(
        &mut self,
        place: Place<'_, '_>,
        entry: &tar::Entry<'_, R>,
        pax: &[(String, Vec<u8>)],
        dir: bool,
    ) -> Result<(), ApplyError> {
        let shown = place.path().to_path_buf();
        let shown = shown.as_path();
        let h = entry.header();
        let kind = h.entry_type();
        let mut squashed = false;
        let pax_num = |key: &str| {
            pax.iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
        };
        if self.privileged {
            let uid = pax_num("uid").or_else(|| h.uid().ok()).unwrap_or(0);
            let gid = pax_num("gid").or_else(|| h.gid().ok()).unwrap_or(0);
            let (uid, gid) = match (u32::try_from(uid), u32::try_from(gid)) {
                (Ok(u), Ok(g)) if u != u32::MAX && g != u32::MAX => (u, g),
                _ => {
                    return Err(
                        self.entry_error(shown, format!("owner {uid}:{gid} is out of range"))
                    );
                }
            };
            squashed = self.chown(&place, shown, uid, gid)?;
        }
        if kind != EntryType::Symlink {
            let mut mode = h.mode().map_err(|e| self.entry_error(shown, e))? & 0o7777;
            if squashed {
                // The file's owner is no longer the image's: its setuid or
                // setgid would run as the process's ids (root in the
                // namespace) instead.
                mode &= !0o6000;
            }
            place.chmod(mode).map_err(|e| self.sys(shown, e))?;
        }
        for (key, value) in pax {
            let Some(name) = key.strip_prefix("SCHILY.xattr.") else {
                continue;
            };
            // Overlay's private attributes (opaque, redirect, metacopy) and
            // anything else trusted never come from a layer.
            if name.starts_with("trusted.") || name.starts_with("user.overlay.") {
                tracing::debug!(entry = %shown.display(), xattr = name, "dropping a privileged xattr");
                continue;
            }
            if let Err(e) = place.set_xattr(OsStr::new(name), value) {
                // Unprivileged users cannot set security.* and the like.
                if self.privileged || e.errno() != Some(Errno::PERM) {
                    return Err(self.sys(shown, e));
                }
            }
        }
        let mtime = pax
            .iter()
            .find(|(k, _)| k == "mtime")
            .and_then(|(_, v)| parse_pax_time(v))
            .or_else(|| {
                h.mtime().ok().map(|s| Times {
                    sec: i64::try_from(s).unwrap_or(i64::MAX),
                    nsec: 0,
                })
            })
            .unwrap_or_default();
        if dir {
            self.dirs.push((shown.to_path_buf(), mtime));
        } else {
            place
                .set_times(mtime, mtime)
                .map_err(|e| self.sys(shown, e))?;
        }
        Ok(())
    }

    /// Gives the entry at `place` the owner `uid:gid`. EINVAL means the
    /// user namespace maps no such id (a rootless run with a single
    /// mapping): the layer is fine, so that is [`ApplyError::Unmapped`],
    /// or with [`ApplyOptions::ignore_chown_errors`] the process's own ids
    /// and true (the owner was squashed).
    fn chown(
        &mut self,
        place: &Place<'_, '_>,
        shown: &Path,
        uid: u32,
        gid: u32,
    ) -> Result<bool, ApplyError> {
        match place.chown(uid, gid) {
            Ok(()) => Ok(false),
            Err(e) if e.errno() == Some(Errno::INVAL) => {
                if !self.opts.ignore_chown_errors {
                    return Err(ApplyError::Unmapped {
                        layer: self.opts.name.clone(),
                        entry: strata_sys::short_path(shown),
                        uid,
                        gid,
                    });
                }
                // Explicitly, not as created: a directory of a lower layer
                // keeps the owner it had otherwise.
                place
                    .chown(strata_sys::effective_uid(), strata_sys::effective_gid())
                    .map_err(|e| self.sys(shown, e))?;
                tracing::debug!(entry = %shown.display(), uid, gid, "squashed an owner this user namespace cannot map");
                self.squashed += 1;
                Ok(true)
            }
            Err(e) => Err(self.sys(shown, e)),
        }
    }

    fn finish_dirs(&mut self) -> Result<(), ApplyError> {
        for (path, mtime) in self.dirs.iter().rev() {
            match self.root.set_times(path, *mtime, *mtime) {
                Ok(()) => {}
                // Removed by a later whiteout.
                Err(e) if e.errno() == Some(Errno::NOENT) => {}
                Err(e) => return Err(self.sys(path, e)),
            }
        }
        Ok(())
    }
}

/// Where metadata goes: the destination's top or an entry below it.
enum Place<'a, 'r> {
    Root(&'r Root),
    At(&'a At<'r>),
}

impl Place<'_, '_> {
    fn path(&self) -> &Path {
        match self {
            Place::Root(_) => Path::new(""),
            Place::At(at) => at.path(),
        }
    }

    fn chown(&self, uid: u32, gid: u32) -> Result<(), SysError> {
        match self {
            Place::Root(r) => r.chown(Path::new(""), uid, gid),
            Place::At(at) => at.chown(uid, gid),
        }
    }

    fn chmod(&self, mode: u32) -> Result<(), SysError> {
        match self {
            Place::Root(r) => r.chmod(Path::new(""), mode),
            Place::At(at) => at.chmod(mode),
        }
    }

    fn set_xattr(&self, name: &OsStr, value: &[u8]) -> Result<(), SysError> {
        match self {
            Place::Root(r) => r.set_xattr(Path::new(""), name, value),
            Place::At(at) => at.set_xattr(name, value),
        }
    }

    fn set_times(&self, atime: Times, mtime: Times) -> Result<(), SysError> {
        match self {
            Place::Root(r) => r.set_times(Path::new(""), atime, mtime),
            Place::At(at) => at.set_times(atime, mtime),
        }
    }
}

/// Runs `create`; when something is in the way, removes it (a directory
/// with everything below) and runs `create` again.
fn replacing<T>(
    at: &At<'_>,
    create: impl Fn(&At<'_>) -> Result<T, SysError>,
) -> Result<T, SysError> {
    match create(at) {
        Err(e) if e.errno() == Some(Errno::EXIST) => {
            at.remove_all()?;
            create(at)
        }
        other => other,
    }
}

/// Copies an entry's data into a new file, leaving holes where whole
/// blocks are zero (sparse files stay sparse, GNU sparse entries too).
fn copy_sparse(from: &mut impl Read, to: &mut std::fs::File, buf: &mut [u8]) -> io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    const HOLE: usize = 4096;
    let mut len = 0u64;
    let mut pending_hole = false;
    loop {
        let n = match from.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buf[..n];
        if n >= HOLE && chunk.iter().all(|b| *b == 0) {
            to.seek(SeekFrom::Current(n as i64))?;
            pending_hole = true;
        } else {
            to.write_all(chunk)?;
            pending_hole = false;
        }
        len += n as u64;
    }
    if pending_hole {
        to.set_len(len)?;
    }
    Ok(())
}

/// An overlay whiteout: a 0/0 character device.
fn is_whiteout(m: &Metadata) -> bool {
    m.kind == FileKind::CharDevice && m.rdev == 0
}

fn parse_pax_time(v: &[u8]) -> Option<Times> {
    let s = std::str::from_utf8(v).ok()?;
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = sec.parse().ok()?;
    let mut nsec = 0u32;
    for (i, c) in frac.chars().take(9).enumerate() {
        nsec += c.to_digit(10)? * 10u32.pow(8 - i as u32);
    }
    Some(Times { sec, nsec })
}

/// glibc's device number encoding, which `mknod` expects.
/// The largest device major and minor numbers the kernel represents.
const MAX_MAJOR: u32 = (1 << 12) - 1;
const MAX_MINOR: u32 = (1 << 20) - 1;

fn makedev(major: u32, minor: u32) -> u64 {
    let (major, minor) = (u64::from(major), u64::from(minor));
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(
            parse_pax_time(b"1700000000.5"),
            Some(Times {
                sec: 1_700_000_000,
                nsec: 500_000_000
            })
        );
        assert_eq!(parse_pax_time(b"12"), Some(Times { sec: 12, nsec: 0 }));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(makedev(1, 3), 0x103);
    }
}
