//! A whole image mounted lazily: the library call behind `strata lazy
//! mount`, for an embedder that has its layers' blobs as range sources
//! (from a registry or anywhere else).
//!
//! Each eStargz layer is served through FUSE under `CACHE/mnt/ID`, each
//! other layer is fetched whole and unpacked once into `CACHE/layers`, and
//! the layers are stacked on the target directory by an overlay, read-only
//! or over a writable upper directory ([`ImageOptions::upper`]).
//! What the layers fetch is kept in `CACHE/blobs` (unless told not to), so
//! a later pull fetches only the rest; the cache can be pruned to a size
//! while the mount serves.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use strata_core::{Algorithm, Digest, Mount, OverlayLayers};
use strata_sys::lock::FileLock;

use crate::unpack::LayerDir;
use crate::upper::Upper;
use crate::{
    BlobCache, ChunkCache, Layer, LayerOptions, Link, Mounted, Prefetch, Pruned, RangeSource,
    Readers, UnpackOptions, Unpacked, prune,
};

/// The attribute overlay reads for an opaque directory (a root's mounts).
const OPAQUE: &str = "trusted.overlay.opaque";

/// How long no read may have waited for a fetch before prefetch takes the
/// link: a program's start reads in bursts with short gaps between them,
/// and prefetch fetching in those gaps delayed the next burst.
const PREFETCH_QUIET: Duration = Duration::from_secs(1);

/// One layer of an image, bottom first, as its manifest names it.
pub struct ImageLayer {
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's media type, checked against the compression found when
    /// the layer is unpacked.
    pub media_type: Option<String>,
    /// The digest of its eStargz TOC (its descriptor's annotation): the
    /// layer is served lazily. Without one it is fetched whole.
    pub toc_digest: Option<Digest>,
    /// The digest of its uncompressed stream (the config's diffID),
    /// checked when the layer is fetched whole.
    pub diff_id: Option<Digest>,
    /// Where its bytes are read from, by range.
    pub source: Arc<dyn RangeSource>,
}

impl std::fmt::Debug for ImageLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageLayer")
            .field("digest", &self.digest)
            .field("toc_digest", &self.toc_digest)
            .finish_non_exhaustive()
    }
}

/// How an image is mounted.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// Threads answering file reads, shared by every layer.
    pub threads: usize,
    /// Fetch the rest in the background once reads have been quiet.
    pub prefetch: bool,
    /// Keep the compressed bytes fetched in `CACHE/blobs`.
    pub keep_blobs: bool,
    /// Prune the cache to this many bytes while serving: a second after
    /// the layers are open, then whenever the mount has added an eighth of
    /// it (at least 1 MiB).
    pub keep_storage: Option<u64>,
    /// Mount the image writable: what is written goes to `UPPER/fs`, an
    /// overlay upper directory (deletions are whiteouts), with `UPPER/work`
    /// as its work directory; both are made if missing, must be on one
    /// file system, and stay after unmount. `None`: read-only.
    pub upper: Option<PathBuf>,
    /// The image's bottom layers, already on disk: stacked as they are,
    /// below the layers given, nothing fetched for them.
    pub below: Below,
}

/// Bottom layers of an image that are already on disk (a state root's
/// snapshots of them, say).
#[derive(Debug, Clone, Default)]
pub struct Below {
    /// Their blobs' digests, bottom first: the layers unpacked in the
    /// cache above them are named by every digest below them, these
    /// included, so a mount of the same image from a registry finds them.
    pub digests: Vec<Digest>,
    /// The directories holding them, bottom first, as overlay lower
    /// directories: one per layer, or fewer (a single whole tree).
    pub dirs: Vec<PathBuf>,
}

impl Default for ImageOptions {
    fn default() -> ImageOptions {
        ImageOptions {
            threads: 8,
            prefetch: true,
            keep_blobs: true,
            keep_storage: None,
            upper: None,
            below: Below::default(),
        }
    }
}

/// How one layer of a mounted image is served.
#[derive(Debug, Clone)]
pub struct LayerReport {
    /// The blob's digest.
    pub digest: Digest,
    /// Its TOC's digest when it is served lazily.
    pub toc_digest: Option<Digest>,
    /// Entries in its TOC, when served lazily.
    pub inodes: Option<usize>,
    /// The directory stacked: the layer's FUSE mount, or where it was
    /// unpacked.
    pub dir: PathBuf,
    /// For a layer fetched whole: the bytes fetched to unpack it (0 when
    /// it was unpacked before).
    pub unpacked_fetched: Option<u64>,
}

/// What a mounted image has fetched so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Range reads sent.
    pub requests: u64,
    /// Bytes those reads returned.
    pub bytes: u64,
    /// Chunks of lazy layers fetched.
    pub chunks: u64,
}

/// A layer of the stack.
enum Lower {
    /// Served through FUSE from its TOC.
    Lazy(Arc<Layer>, Mounted),
    /// Fetched whole and unpacked in the cache.
    Unpacked(Unpacked),
    /// On disk already ([`ImageOptions::below`]).
    Here(LayerDir),
}

impl Lower {
    fn dir(&self) -> &Path {
        match self {
            Lower::Lazy(_, m) => m.target(),
            Lower::Unpacked(u) => u.dir(),
            Lower::Here(d) => d.dir(),
        }
    }

    fn has(&self, path: &[&str]) -> bool {
        match self {
            Lower::Lazy(l, _) => l.tree().has(path),
            Lower::Unpacked(u) => u.has(path),
            Lower::Here(d) => d.has(path),
        }
    }

    fn root_is_opaque(&self) -> bool {
        match self {
            Lower::Lazy(l, _) => l.tree().root_is_opaque(),
            Lower::Unpacked(u) => u.root_is_opaque(OPAQUE),
            Lower::Here(d) => d.root_is_opaque(OPAQUE),
        }
    }
}

/// An image mounted on a directory (read-only, or writable over an upper
/// directory); unmounted by
/// [`ImageMount::unmount`] or when dropped (which may block a few seconds:
/// call it off an async runtime's threads).
#[must_use = "the image is unmounted when this is dropped"]
pub struct ImageMount {
    dir: PathBuf,
    /// Bottom first; emptied once unmounted.
    lowers: Vec<Lower>,
    layers: Vec<Arc<Layer>>,
    reports: Vec<LayerReport>,
    prefetch: Vec<Prefetch>,
    pruner: Option<Pruner>,
    /// Each layer's source, alive as long as the mount: a blob kept whole
    /// is checked on a thread its source waits for when dropped, which must
    /// not hold up the mount; `blobs_whole` asks them what they lack.
    sources: Vec<Arc<dyn RangeSource>>,
    /// Where the blobs are kept, unless keeping is off.
    blobs: Option<BlobCache>,
    /// Says the mount directory under `CACHE/mnt` is in use.
    _lock: FileLock,
    /// Whether the stack is mounted on `dir` (a mount that failed before
    /// leaves what was there alone).
    stacked: bool,
    unpacked: (u64, u64),
    /// A writable mount's upper directory, locked while it lives.
    upper: Option<Upper>,
}

impl std::fmt::Debug for ImageMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageMount")
            .field("dir", &self.dir)
            .field("layers", &self.reports)
            .finish_non_exhaustive()
    }
}

impl ImageMount {
    /// Mounts the image of `layers` (bottom first, over `opts.below`) on
    /// `dir`, an existing directory (read-only, or writable over
    /// `opts.upper`), with `cache` (created if missing; shared by every
    /// image mounted with it) for the chunks, the unpacked layers, the
    /// kept blobs and the layers' own mounts.
    ///
    /// Every eStargz layer's footer and TOC are fetched at once, and the
    /// TOC must have the digest the layer names; the other layers are
    /// fetched whole (or found unpacked) before the stack is mounted.
    pub fn mount(
        cache: &Path,
        layers: Vec<ImageLayer>,
        dir: &Path,
        opts: &ImageOptions,
    ) -> io::Result<ImageMount> {
        ImageMount::serve(cache, layers, Place::Stack(dir), opts)
    }

    /// Serves each of `layers` (every one eStargz) through FUSE on its own
    /// directory of `at` (one per layer, each an existing empty directory
    /// on which nothing is mounted; a mount left there by a server that
    /// has gone is detached first), with `cache` as [`ImageMount::mount`]
    /// uses it, and stacks nothing: whoever stacks the directories over
    /// `opts.below` (a state root's lazy snapshots, whose placeholders
    /// they are) reads the layers as it would read unpacked ones: the
    /// whiteouts that hide nothing below are left out. A layer whose root
    /// is opaque is refused (a lower directory cannot say that).
    /// `opts.upper` does not apply. Unmounted as [`ImageMount::unmount`]
    /// says; a layer that a mount stacked on it still uses is detached,
    /// and serves it until this process ends.
    pub fn attach(
        cache: &Path,
        layers: Vec<ImageLayer>,
        at: &[PathBuf],
        opts: &ImageOptions,
    ) -> io::Result<ImageMount> {
        if at.len() != layers.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} directories given to attach {} layers on",
                    at.len(),
                    layers.len()
                ),
            ));
        }
        if opts.upper.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "attached layers are read-only: an upper directory does not apply",
            ));
        }
        if let Some((i, l)) = layers
            .iter()
            .enumerate()
            .find(|(_, l)| l.toc_digest.is_none())
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "layer {} is not eStargz: only eStargz layers are served where they are attached",
                    layer_name(i, &l.digest)
                ),
            ));
        }
        ImageMount::serve(cache, layers, Place::Attach(at), opts)
    }

    fn serve(
        cache: &Path,
        layers: Vec<ImageLayer>,
        place: Place,
        opts: &ImageOptions,
    ) -> io::Result<ImageMount> {
        if layers.is_empty() && opts.below.dirs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the image has no layers",
            ));
        }
        // Before anything is fetched.
        let (dir, upper) = match place {
            Place::Stack(dir) => {
                let md = std::fs::metadata(dir).map_err(context(&format!("{}", dir.display())))?;
                if !md.is_dir() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("{}: not a directory to mount the image on", dir.display()),
                    ));
                }
                // Absolute and without symlinks, as the mount table names
                // them: mounts found there by path (stale ones; the stack,
                // to detach it) are found by these.
                let dir = std::fs::canonicalize(dir)
                    .map_err(context(&format!("resolve {}", dir.display())))?;
                let upper = match &opts.upper {
                    Some(u) => Some(Upper::prepare(u, &crate::upper::absolute(cache)?, &dir)?),
                    None => None,
                };
                (Some(dir), upper)
            }
            Place::Attach(at) => {
                at.iter().try_for_each(|d| free(d))?;
                (None, None)
            }
        };
        std::fs::create_dir_all(cache).map_err(context(&format!("create {}", cache.display())))?;
        let cache = &std::fs::canonicalize(cache)
            .map_err(context(&format!("resolve {}", cache.display())))?;
        let chunks = Arc::new(
            ChunkCache::open(&cache.join("chunks"))
                .map_err(context(&format!("chunk cache {}", cache.display())))?,
        );
        let (mnt, lock) = mount_dir(cache)?;
        let readers = Readers::new(opts.threads).map_err(context("start the reader threads"))?;
        let link = Arc::new(Link::new(PREFETCH_QUIET));
        let blobs = match opts.keep_blobs {
            true => Some(
                BlobCache::open(&cache.join("blobs"))
                    .map_err(context(&format!("blob cache {}", cache.display())))?,
            ),
            false => None,
        };
        let sources: Vec<Arc<dyn RangeSource>> = layers
            .iter()
            .map(|l| match &blobs {
                Some(blobs) => blobs.recording(&l.digest, l.source.clone()),
                None => l.source.clone(),
            })
            .collect();
        let mut opened = open_all(&layers, &sources, &chunks, &link)?;
        let mut image = ImageMount {
            dir: dir.clone().unwrap_or_else(|| mnt.clone()),
            lowers: Vec::new(),
            layers: Vec::new(),
            reports: Vec::new(),
            prefetch: Vec::new(),
            pruner: None,
            sources: Vec::new(),
            blobs: blobs.clone(),
            _lock: lock,
            stacked: false,
            unpacked: (0, 0),
            upper,
        };
        for below in &opts.below.dirs {
            image.lowers.push(Lower::Here(LayerDir::open(below)?));
        }
        // Bottom up: a layer's whiteouts, and an unpacked layer's whole
        // tree, depend on the layers below it.
        for (i, (l, src)) in layers.iter().zip(&sources).enumerate() {
            let lowers = &image.lowers;
            let below = |path: &[&str]| lowers.iter().any(|l| l.has(path));
            let lower = match opened[i].take() {
                Some(mut layer) => {
                    // Whiteouts of nothing below are left out, as an
                    // eager import leaves them out (an attached layer is
                    // stacked on the same layers below).
                    layer.prune_whiteouts(below);
                    let at = match place {
                        Place::Stack(_) => {
                            let at = mnt.join(i.to_string());
                            std::fs::create_dir_all(&at)
                                .map_err(context(&format!("create {}", at.display())))?;
                            at
                        }
                        // Overlay ignores an opaque marker on a lower's
                        // root, which a stack leaves out instead.
                        Place::Attach(_) if layer.tree().root_is_opaque() => {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidInput,
                                format!(
                                    "layer {}: its root is opaque, which a lower directory cannot say; it cannot be attached",
                                    layer.name()
                                ),
                            ));
                        }
                        Place::Attach(dirs) => dirs[i].clone(),
                    };
                    let layer = Arc::new(layer);
                    let m = crate::mount(layer.clone(), &at, readers.clone()).map_err(context(
                        &format!("mount layer {} on {}", layer.name(), at.display()),
                    ))?;
                    Lower::Lazy(layer, m)
                }
                None => {
                    let at = cache.join("layers").join(
                        stack_key(
                            opts.below
                                .digests
                                .iter()
                                .chain(layers[..=i].iter().map(|l| &l.digest)),
                        )
                        .hex(),
                    );
                    let unpack = UnpackOptions {
                        name: layer_name(i, &l.digest),
                        digest: l.digest.clone(),
                        media_type: l.media_type.clone(),
                        diff_id: l.diff_id.clone(),
                        lowers: visible(lowers),
                    };
                    let u = Unpacked::get(src.clone(), &at, &unpack)?;
                    image.unpacked.0 += u.requests();
                    image.unpacked.1 += u.fetched();
                    Lower::Unpacked(u)
                }
            };
            image.reports.push(LayerReport {
                digest: l.digest.clone(),
                toc_digest: l.toc_digest.clone(),
                inodes: match &lower {
                    Lower::Lazy(l, _) => Some(l.tree().len()),
                    Lower::Unpacked(_) | Lower::Here(_) => None,
                },
                dir: lower.dir().to_path_buf(),
                unpacked_fetched: match &lower {
                    Lower::Lazy(..) | Lower::Here(_) => None,
                    Lower::Unpacked(u) => Some(u.fetched()),
                },
            });
            if let Lower::Lazy(layer, _) = &lower {
                image.layers.push(layer.clone());
            }
            image.lowers.push(lower);
        }
        if let Some(dir) = &dir {
            let empty = mnt.join("empty");
            std::fs::create_dir_all(&empty)
                .map_err(context(&format!("create {}", empty.display())))?;
            let lowers = visible(&image.lowers);
            // A writable mount's fs takes the mode of the image's root, the
            // topmost visible layer's (there is one: an image has layers).
            let made_fs = match (&image.upper, lowers.first()) {
                (Some(upper), Some(top)) => upper.make_fs(top)?,
                _ => false,
            };
            let stacked = stack(
                lowers,
                image.upper.as_ref().map(|u| (u.fs.clone(), u.work.clone())),
                &empty,
                dir,
            );
            if let (Err(_), Some(upper), true) = (&stacked, &image.upper, made_fs) {
                upper.unmake_fs();
            }
            stacked?;
            image.stacked = true;
        }
        image.pruner = opts
            .keep_storage
            .map(|keep| Pruner::start(cache.to_path_buf(), keep, image.layers.clone()))
            .transpose()
            .map_err(context("start the cache's pruner"))?;
        if opts.prefetch {
            link.quiet_from_now();
            image.prefetch = image
                .layers
                .iter()
                .map(|l| Prefetch::start(l.clone()))
                .collect::<io::Result<Vec<_>>>()?;
        }
        image.sources = sources;
        Ok(image)
    }

    /// How each layer is served, bottom first.
    pub fn layers(&self) -> &[LayerReport] {
        &self.reports
    }

    /// What the layers have fetched so far, the unpacked layers' fetches
    /// included.
    pub fn totals(&self) -> Totals {
        let sum = |f: fn(&crate::Stats) -> u64| self.layers.iter().map(|l| f(l.stats())).sum();
        Totals {
            requests: self.unpacked.0 + sum(|s| s.requests.load(Ordering::Relaxed)),
            bytes: self.unpacked.1 + sum(|s| s.bytes.load(Ordering::Relaxed)),
            chunks: sum(|s| s.chunks.load(Ordering::Relaxed)),
        }
    }

    /// Whether every lazy layer's prefetch has finished (or none was
    /// started).
    pub fn prefetched(&self) -> bool {
        self.prefetch.iter().all(Prefetch::is_finished)
    }

    /// How many of the image's layer blobs the cache keeps whole now (or
    /// has whole and is checking): those `image pull --lazy-cache` takes
    /// without downloading.
    pub fn blobs_whole(&self) -> usize {
        self.reports
            .iter()
            .zip(&self.sources)
            .filter(|(r, src)| {
                src.unkept().is_some_and(|gaps| gaps.is_empty())
                    || self.blobs.as_ref().is_some_and(|b| b.has_whole(&r.digest))
            })
            .count()
    }

    /// Stops prefetch and pruning and unmounts: the stack on the
    /// directory is detached at once, so a process still inside it cannot
    /// keep this call waiting, and the layers' own mounts, prefetch and
    /// pruning get `wait` to end (false when they have not: they end when
    /// this process does, and readers then get ENOTCONN). Then the kept
    /// blobs' checks are waited for. What was fetched is returned.
    pub fn unmount(mut self, wait: Duration) -> io::Result<(Totals, bool)> {
        let ended = self.stop(wait)?;
        Ok((self.totals(), ended))
    }

    fn stop(&mut self, wait: Duration) -> io::Result<bool> {
        // Told now, joined below within `wait` (a fetch may be stuck on
        // the network).
        for p in &self.prefetch {
            p.stop();
        }
        let background = (std::mem::take(&mut self.prefetch), self.pruner.take());
        if self.lowers.is_empty() {
            drop(background);
            return Ok(true);
        }
        if self.stacked {
            strata_sys::mount::detach_below(&self.dir)
                .map_err(sys(&format!("detach {}", self.dir.display())))?;
            self.stacked = false;
        }
        let mounted: Vec<Mounted> = std::mem::take(&mut self.lowers)
            .into_iter()
            .filter_map(|l| match l {
                Lower::Lazy(_, m) => Some(m),
                Lower::Unpacked(_) | Lower::Here(_) => None,
            })
            .collect();
        let (done, ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Each one, whatever the others did.
            let each: Vec<io::Result<bool>> = mounted
                .into_iter()
                .map(Mounted::unmount_or_detach)
                .collect();
            let result = each.into_iter().try_fold(true, |all, one| Ok(all & one?));
            drop(background);
            let _ = done.send(result);
        });
        match ended.recv_timeout(wait) {
            Ok(result) => result.map_err(context("unmount the layers")),
            Err(_) => Ok(false),
        }
    }
}

impl Drop for ImageMount {
    fn drop(&mut self) {
        match self.stop(Duration::from_secs(5)) {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(dir = %self.dir.display(), "the image's directory is still in use: its layers end with this process")
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not unmount the image")
            }
        }
    }
}

/// Prunes `cache` (an [`ImageMount`]'s) to at most `keep` bytes, what was
/// used longest ago first: chunks and TOCs, unpacked layers no mount
/// stacks on, kept blobs.
pub fn prune_cache(cache: &Path, keep: u64) -> io::Result<Pruned> {
    // As the mount table names it: unpacked layers an overlay stacks on
    // are found by path.
    let cache = &std::fs::canonicalize(cache)?;
    let mut items = ChunkCache::open(&cache.join("chunks"))?.prunable()?;
    items.extend(Unpacked::prunable(&cache.join("layers"))?);
    items.extend(BlobCache::open(&cache.join("blobs"))?.prunable()?);
    prune(items, keep)
}

/// Where [`ImageMount`] serves an image's layers.
#[derive(Clone, Copy)]
enum Place<'a> {
    /// Each under `CACHE/mnt`, stacked by an overlay on this directory.
    Stack(&'a Path),
    /// Each on its own directory, stacked by nothing here.
    Attach(&'a [PathBuf]),
}

/// Readies `dir` to have a layer attached on it: a directory on which
/// nothing is mounted (one mounted by a server that has gone is detached).
fn free(dir: &Path) -> io::Result<()> {
    use strata_sys::mount::MountPoint;
    match strata_sys::mount::mount_point(dir).map_err(sys("attach a layer"))? {
        MountPoint::No => Ok(()),
        MountPoint::Dead => strata_sys::mount::detach(dir).map_err(sys(&format!(
            "detach what a gone server left on {}",
            dir.display()
        ))),
        MountPoint::Live => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{}: a layer is attached there already", dir.display()),
        )),
    }
}

/// Every eStargz layer opened at once (its footer and TOC fetched): two
/// round trips for the image rather than two per layer. `None` for the
/// others. Every thread is joined before the first error (in layer order)
/// is returned.
fn open_all(
    layers: &[ImageLayer],
    sources: &[Arc<dyn RangeSource>],
    chunks: &Arc<ChunkCache>,
    link: &Arc<Link>,
) -> io::Result<Vec<Option<Layer>>> {
    std::thread::scope(|s| {
        let opening: Vec<_> = layers
            .iter()
            .zip(sources)
            .enumerate()
            .map(|(i, (l, src))| {
                let opts = LayerOptions {
                    name: layer_name(i, &l.digest),
                    toc_digest: l.toc_digest.clone()?,
                    opaque_xattr: OPAQUE.into(),
                    link: link.clone(),
                };
                let (chunks, src) = (chunks.clone(), src.clone());
                Some(s.spawn(move || Layer::open(src, chunks, &opts)))
            })
            .collect();
        let joined: Vec<Option<io::Result<Layer>>> = opening
            .into_iter()
            .map(|t| t.map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))))
            .collect();
        joined.into_iter().map(Option::transpose).collect()
    })
}

/// How messages name layer `i` (bottom first) of digest `d`.
fn layer_name(i: usize, d: &Digest) -> String {
    format!("{i} ({d})")
}

/// An error with what was being done in front, its kind kept.
fn context(what: &str) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// A strata-sys error as an I/O error of its errno's kind (a missing
/// directory is `NotFound`, a busy one `ResourceBusy`), with what was
/// being done in front.
fn sys(what: &str) -> impl FnOnce(strata_sys::SysError) -> io::Error + '_ {
    move |e| {
        let kind = e.raw_os_error().map_or(io::ErrorKind::Other, |n| {
            io::Error::from_raw_os_error(n).kind()
        });
        io::Error::new(kind, format!("{what}: {e}"))
    }
}

/// The directories overlay reads for `lowers` (bottom first): topmost
/// first, down to the first whose root is opaque (it hides the rest;
/// overlay ignores the marker on a layer's root).
fn visible(lowers: &[Lower]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for l in lowers.iter().rev() {
        dirs.push(l.dir().to_path_buf());
        if l.root_is_opaque() {
            break;
        }
    }
    dirs
}

/// The name of the directory the last of `layers` unpacks into: what it
/// holds depends on the layers below too (its whiteouts, parents resolved
/// through them), so the key is the digest of every blob digest up to it.
fn stack_key<'a>(layers: impl Iterator<Item = &'a Digest>) -> Digest {
    let mut text = String::new();
    for d in layers {
        text.push_str(d.as_str());
        text.push('\n');
    }
    Digest::of_bytes(Algorithm::Sha256, text.as_bytes())
}

/// This process's directory for the layers' mounts, `CACHE/mnt/ID`
/// (CACHE and CACHE/mnt mode 0700: the layers keep their set-user-ID files
/// and devices, so only root may reach them), locked while it serves.
/// Directories of mounts that ended without cleaning up (their lock is
/// free) are detached and removed first; those of live mounts are left.
fn mount_dir(cache: &Path) -> io::Result<(PathBuf, FileLock)> {
    use std::os::unix::fs::PermissionsExt;
    let mnt = cache.join("mnt");
    std::fs::create_dir_all(&mnt).map_err(context(&format!("create {}", mnt.display())))?;
    for dir in [cache, &mnt] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(context(&format!("make {} private", dir.display())))?;
    }
    for entry in std::fs::read_dir(&mnt).map_err(context(&format!("read {}", mnt.display())))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "lock")
            && let Ok(stale) = FileLock::try_exclusive(&path)
        {
            let dir = path.with_extension("");
            strata_sys::mount::detach_below(&dir)
                .map_err(sys(&format!("detach {}", dir.display())))?;
            if dir.exists() {
                strata_sys::Root::open(&mnt)
                    .and_then(|r| r.remove_all(Path::new(dir.file_name().unwrap_or_default())))
                    .map_err(sys(&format!("remove {}", dir.display())))?;
            }
            stale.remove()?;
        }
    }
    let id = strata_core::id::new_id();
    let lock =
        FileLock::try_exclusive(&mnt.join(format!("{id}.lock"))).map_err(io::Error::other)?;
    let dir = mnt.join(id);
    std::fs::create_dir(&dir).map_err(context(&format!("create {}", dir.display())))?;
    Ok((dir, lock))
}

/// Mounts `lowers` (topmost first) on `dir` as an overlay, read-only or,
/// given `upper` (its upper and work directories), writable. `empty` is a
/// second lower for a lone layer of a read-only overlay (which needs two):
/// overlay, not a bind, so whiteouts hide as they do in a stack.
fn stack(
    mut lowers: Vec<PathBuf>,
    upper: Option<(PathBuf, PathBuf)>,
    empty: &Path,
    dir: &Path,
) -> io::Result<()> {
    // Lower directories only: the kernel makes it read-only, and wants
    // two of them.
    if lowers.len() == 1 && upper.is_none() {
        lowers.push(empty.to_path_buf());
    }
    let (upper, work) = upper.unzip();
    let m = Mount::overlay(
        OverlayLayers {
            lowers,
            upper,
            work,
            ..OverlayLayers::default()
        },
        Vec::new(),
    );
    strata_sys::mount::mount(&m, dir).map_err(sys(&format!(
        "mount the image's layers on {}",
        dir.display()
    )))
}

/// Prunes a mount's cache while it serves: a second after it starts, then,
/// checking every second how much the mount's layers have added to the
/// cache (bytes fetched, kept as blobs, and chunks put in the cache),
/// whenever that has grown by an eighth of `keep` (at least 1 MiB) since
/// the last prune. Stops when dropped.
struct Pruner {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pruner {
    fn start(cache: PathBuf, keep: u64, layers: Vec<Arc<Layer>>) -> io::Result<Pruner> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let step = (keep / 8).max(1 << 20);
        let added = move || {
            layers
                .iter()
                .map(|l| {
                    let s = l.stats();
                    s.bytes.load(Ordering::Relaxed) + s.cached.load(Ordering::Relaxed)
                })
                .sum::<u64>()
        };
        let thread = std::thread::Builder::new()
            .name("strata-lazy-prune".into())
            .spawn(move || {
                let mut last: Option<u64> = None;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(Duration::from_secs(1))
                {
                    let now = added();
                    if last.is_some_and(|last| now.saturating_sub(last) < step) {
                        continue;
                    }
                    last = Some(now);
                    if let Err(e) = prune_cache(&cache, keep) {
                        tracing::warn!(cache = %cache.display(), error = %e, "could not prune the cache");
                    }
                }
            })?;
        Ok(Pruner {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Pruner {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
