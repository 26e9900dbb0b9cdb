//! Layers that cannot be read lazily (plain gzip or zstd: no TOC says
//! where a file's bytes are) in an image that is otherwise mounted
//! lazily: fetched whole by range reads, unpacked once into a directory in
//! the cache as an overlay lower directory over the layers below it, and
//! stacked with the lazy ones. The blob's digest and, when given, its
//! diffID are checked while it unpacks; the directory is written beside
//! its name, synced, and renamed into place, so it is there whole or not
//! at all, and a later mount of the same layers finds it.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use strata_core::{Digest, Mount, OverlayLayers};
use strata_diff::{ApplyOptions, LayerSource, apply_to_mounts};
use strata_sys::Root;
use strata_sys::lock::{FileLock, LockError};

use crate::layer::Stats;
use crate::prune::{Prunable, unless_gone};
use crate::remote::RangeSource;

/// How much one range read of a blob being unpacked asks for.
const READ_SPAN: u64 = 8 << 20;

/// What a layer is checked against and unpacked over.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// What errors call the layer (its place in the image and digest).
    pub name: String,
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's media type, checked against the compression found.
    pub media_type: Option<String>,
    /// The digest of its uncompressed stream (the config's diffID).
    pub diff_id: Option<Digest>,
    /// The directories of the layers below, topmost first: whiteouts are
    /// written only where they hide something, and parents are resolved
    /// through them as overlay will (through an overlay mount of them
    /// when the layer reaches below one of their symlinks).
    pub lowers: Vec<PathBuf>,
}

/// A layer unpacked in the cache, in use: [`crate::prune`] leaves it be
/// while this lives.
#[derive(Debug)]
pub struct Unpacked {
    layer: LayerDir,
    fetched: u64,
    requests: u64,
    /// The shared lock on `.NAME.lock` that says the layer is in use.
    _in_use: FileLock,
}

impl Unpacked {
    /// The layer unpacked at `dir`: the one there, or, when there is none,
    /// `src`'s blob read in 8 MiB range reads and applied as an overlay
    /// upper directory over `opts.lowers` (through a real overlay mount
    /// when the layer reaches below a lower layer's symlink, which reads
    /// the blob a second time), checked, synced and renamed to `dir`.
    ///
    /// The work happens in `.unpack-NAME` beside `dir`, under the
    /// exclusive lock `.NAME.lock`: a second mount of the same layer waits
    /// and then finds `dir`, and what a killed unpack left is removed by
    /// the next one. A blob that does not match its digest or diffID
    /// leaves nothing. The layer is used under a shared lock on the same
    /// file, held as long as the value lives.
    ///
    /// Every error names the layer by `opts.name`.
    pub fn get(
        src: Arc<dyn RangeSource>,
        dir: &Path,
        opts: &UnpackOptions,
    ) -> io::Result<Unpacked> {
        Unpacked::get_unnamed(src, dir, opts)
            .map_err(|e| io::Error::new(e.kind(), format!("layer {}: {e}", opts.name)))
    }

    /// [`Unpacked::get`], its errors without the layer's name.
    fn get_unnamed(
        src: Arc<dyn RangeSource>,
        dir: &Path,
        opts: &UnpackOptions,
    ) -> io::Result<Unpacked> {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io::Error::other(format!("{} has no name", dir.display())))?;
        std::fs::create_dir_all(parent)?;
        let lock = parent.join(format!(".{name}.lock"));
        // What this call fetched, once it has unpacked the layer.
        let mut made = (0, 0);
        loop {
            // In use as soon as it is there; an unpack or a prune holding
            // the exclusive lock is waited for.
            if let Some(in_use) = held_or_wait(FileLock::try_shared(&lock))? {
                if dir.is_dir() {
                    return Ok(Unpacked {
                        layer: LayerDir::open(dir)?,
                        fetched: made.0,
                        requests: made.1,
                        _in_use: in_use,
                    });
                }
                drop(in_use);
            }
            // Not there: unpacked under the exclusive lock, unless another
            // mount is unpacking it or already uses it (then it is there
            // on the next turn).
            if let Some(unpacking) = held_or_wait(FileLock::try_exclusive(&lock))?
                && !dir.is_dir()
            {
                match unpack_into(src.clone(), parent, name, dir, opts) {
                    Ok(fetched) => made = fetched,
                    Err(e) => {
                        // Nothing of the layer stays, its lock file neither.
                        if let Err(gone) = unpacking.remove() {
                            tracing::warn!(lock = %lock.display(), error = %gone, "could not remove a lock file");
                        }
                        return Err(e);
                    }
                }
            }
        }
    }

    /// The layers unpacked in `layers` (the directory the `dir`s given to
    /// [`Unpacked::get`] are in), for [`crate::prune`]: each sized by its
    /// files and last used when its lock was last taken. What a killed
    /// prune left is removed.
    pub fn prunable(layers: &Path) -> io::Result<Vec<Prunable>> {
        let Some(listing) = unless_gone(std::fs::read_dir(layers))? else {
            return Ok(Vec::new());
        };
        let root = Root::open(layers).map_err(io::Error::other)?;
        let mut out = Vec::new();
        for item in listing {
            let item = item?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            // Left by a killed prune or unpack: removed unless that layer
            // is being worked on now.
            if let Some(layer) = [PRUNED, STAGING]
                .into_iter()
                .find_map(|prefix| name.strip_prefix(prefix))
            {
                let lock = layers.join(format!(".{layer}.lock"));
                if let Ok(held) = FileLock::try_exclusive(&lock) {
                    root.remove_all(Path::new(name)).map_err(io::Error::other)?;
                    remove_lock_of_gone(held, &layers.join(layer))?;
                }
                continue;
            }
            // The lock of a layer no longer there (an earlier version kept
            // them): removed unless someone is unpacking that layer now.
            // That of a layer still there is left alone.
            if let Some(layer) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".lock")) {
                let dir = layers.join(layer);
                if unless_gone(std::fs::symlink_metadata(&dir))?.is_none()
                    && let Ok(held) = FileLock::try_exclusive(&item.path())
                {
                    remove_lock_of_gone(held, &dir)?;
                }
                continue;
            }
            if name.starts_with('.') || !item.file_type()?.is_dir() {
                continue;
            }
            let used = match unless_gone(std::fs::metadata(layers.join(format!(".{name}.lock"))))? {
                Some(lock) => lock.modified()?,
                None => item.metadata()?.modified()?,
            };
            out.push(Prunable {
                path: item.path(),
                size: tree_size(&item.path())?,
                used,
                unpacked: true,
                also: None,
            });
        }
        Ok(out)
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        self.layer.dir()
    }

    /// Bytes of the blob fetched to make it (0 when it was there).
    pub fn fetched(&self) -> u64 {
        self.fetched
    }

    /// Range reads sent to make it (0 when it was there).
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Whether `parts` (a path's components) names an entry, each parent
    /// a directory (a parent that is a symlink here does not lead on in
    /// an overlay stack either).
    pub fn has(&self, parts: &[&str]) -> bool {
        self.layer.has(parts)
    }

    /// Whether its root carries the opaque attribute `xattr`: it hides
    /// every layer below it.
    pub fn root_is_opaque(&self, xattr: &str) -> bool {
        self.layer.root_is_opaque(xattr)
    }
}

/// A layer's directory on disk, opened once for the questions the layers
/// stacked above it ask (an unpacked layer's, or one given to
/// [`crate::ImageMount`] already on disk).
#[derive(Debug)]
pub(crate) struct LayerDir {
    dir: PathBuf,
    root: Root,
}

impl LayerDir {
    pub(crate) fn open(dir: &Path) -> io::Result<LayerDir> {
        Ok(LayerDir {
            dir: dir.to_path_buf(),
            root: Root::open(dir).map_err(io::Error::other)?,
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn has(&self, parts: &[&str]) -> bool {
        let root = &self.root;
        let mut path = PathBuf::new();
        for (i, part) in parts.iter().enumerate() {
            path.push(part);
            match root.try_stat(&path) {
                Ok(Some(md)) if i + 1 == parts.len() || md.kind == strata_sys::FileKind::Dir => {}
                _ => return false,
            }
        }
        !parts.is_empty()
    }

    pub(crate) fn root_is_opaque(&self, xattr: &str) -> bool {
        self.root
            .get_xattr(Path::new("."), OsStr::new(xattr))
            .is_ok_and(|v| v.is_some())
    }
}

/// What a layer being removed is renamed to first, so a mount finds it
/// whole or not at all: `.pruned-NAME`.
const PRUNED: &str = ".pruned-";

/// Where a layer is unpacked before it is renamed into place:
/// `.unpack-NAME`.
const STAGING: &str = ".unpack-";

/// The bytes of the files under `dir`, not following symlinks.
fn tree_size(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    let Some(listing) = unless_gone(std::fs::read_dir(dir))? else {
        return Ok(0);
    };
    for item in listing {
        let item = item?;
        let Some(meta) = unless_gone(item.metadata())? else {
            continue;
        };
        total += if meta.is_dir() {
            tree_size(&item.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Whether an overlay mount of this mount namespace has `dir` as a lower
/// layer: one whose process has gone (killed, or detached from a shell
/// still inside it) holds no lock, yet reads the layer. The mount table
/// is read as strata-sys reads it (fields unescaped, short-named lowers
/// of old kernels resolved through their links).
fn stacked_on(dir: &Path) -> io::Result<bool> {
    let mounts = strata_sys::mount::info::mounts().map_err(io::Error::other)?;
    Ok(mounts
        .iter()
        .filter(|m| m.fs_type == "overlay")
        .any(|m| m.directories().iter().any(|d| d == dir)))
}

/// Removes the unpacked layer `dir` unless a mount uses it (holds its
/// lock, or is an overlay stacked on it): whether it went. It is renamed
/// away first and then removed, so a mount never finds part of it, and
/// its lock file goes last (a mount that opened it before finds it gone
/// and takes a new one). The mounts are read after the lock is taken, one layer at a time: a mount
/// made before then is listed, and none can be made after.
pub(crate) fn remove_unused(dir: &Path) -> io::Result<bool> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
        return Ok(false);
    };
    let unused = match FileLock::try_exclusive(&parent.join(format!(".{name}.lock"))) {
        Ok(lock) => lock,
        Err(LockError::Held { .. }) => return Ok(false),
        Err(e) => return Err(io::Error::other(e)),
    };
    if stacked_on(dir)? {
        return Ok(false);
    }
    let root = Root::open(parent).map_err(io::Error::other)?;
    let gone = format!("{PRUNED}{name}");
    root.remove_all(Path::new(&gone))
        .map_err(io::Error::other)?;
    match std::fs::rename(dir, parent.join(&gone)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        r => {
            r?;
            strata_sys::sync::fsync_dir(parent).map_err(io::Error::other)?;
            root.remove_all(Path::new(&gone))
                .map_err(io::Error::other)?;
        }
    }
    unused.remove()?;
    Ok(true)
}

/// Removes the lock file `held` (its exclusive lock) when the layer
/// directory `dir` it guards is not there; lets it go otherwise.
fn remove_lock_of_gone(held: FileLock, dir: &Path) -> io::Result<()> {
    match unless_gone(std::fs::symlink_metadata(dir))? {
        None => held.remove(),
        Some(_) => Ok(()),
    }
}

/// The lock `taken`, or `None` after a pause when another process holds
/// it (the caller looks again).
fn held_or_wait(taken: Result<FileLock, LockError>) -> io::Result<Option<FileLock>> {
    match taken {
        Ok(lock) => Ok(Some(lock)),
        Err(LockError::Held { .. }) => {
            std::thread::sleep(std::time::Duration::from_millis(200));
            Ok(None)
        }
        Err(e) => Err(io::Error::other(e)),
    }
}

/// Unpacks `src`'s blob into `.unpack-NAME` in `parent`, checks, syncs and
/// renames it to `dir`: the bytes and range reads it fetched. The caller
/// holds the exclusive lock.
fn unpack_into(
    src: Arc<dyn RangeSource>,
    parent: &Path,
    name: &str,
    dir: &Path,
    opts: &UnpackOptions,
) -> io::Result<(u64, u64)> {
    let root = Root::open(parent).map_err(io::Error::other)?;
    let staging_name = format!("{STAGING}{name}");
    root.remove_all(Path::new(&staging_name))
        .map_err(io::Error::other)?;
    let staging = parent.join(&staging_name);
    let (upper, work) = (staging.join("fs"), staging.join("work"));
    for d in [&staging, &upper, &work] {
        std::fs::create_dir(d)?;
    }
    // The image's root, as an eager import's snapshot has it, unless the
    // layer sets it.
    std::fs::set_permissions(&upper, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let result = unpack(src, &staging, opts).and_then(|made| {
        strata_sys::sync::syncfs(&upper).map_err(io::Error::other)?;
        std::fs::rename(&upper, dir)?;
        strata_sys::sync::fsync_dir(parent).map_err(io::Error::other)?;
        Ok(made)
    });
    if let Err(e) = root.remove_all(Path::new(&staging_name)) {
        tracing::warn!(dir = %staging.display(), error = %e, "could not remove an unpack's staging directory");
    }
    result
}

/// Applies `src`'s blob into `staging/fs` over `opts.lowers`: the bytes
/// and range reads it fetched.
fn unpack(
    src: Arc<dyn RangeSource>,
    staging: &Path,
    opts: &UnpackOptions,
) -> io::Result<(u64, u64)> {
    let apply_opts = ApplyOptions {
        name: opts.name.clone(),
        media_type: opts.media_type.clone(),
        digest: Some(opts.digest.clone()),
        size: Some(src.size()),
        diff_id: opts.diff_id.clone(),
        ..ApplyOptions::default()
    };
    let mount = Mount::overlay(
        OverlayLayers {
            lowers: opts.lowers.clone(),
            upper: Some(staging.join("fs")),
            work: Some(staging.join("work")),
            ..OverlayLayers::default()
        },
        Vec::new(),
    );
    let stats = Arc::new(Stats::default());
    let counted = stats.clone();
    let open: LayerSource = Arc::new(move || {
        Ok(Box::new(Ranges {
            src: src.clone(),
            at: 0,
            held: Vec::new(),
            used: 0,
            stats: counted.clone(),
        }) as Box<dyn Read + Send>)
    });
    apply_to_mounts(
        &strata_leases::OpCtx::new(),
        &[mount],
        &open,
        &apply_opts,
        staging,
    )
    .map_err(|e| {
        // The layer is named once, by `Unpacked::get`.
        let why = e.to_string();
        let named = format!("layer {}: ", opts.name);
        let why = why.strip_prefix(&named).unwrap_or(&why);
        io::Error::new(io::ErrorKind::InvalidData, why.to_owned())
    })?;
    Ok((
        stats.bytes.load(Ordering::Relaxed),
        stats.requests.load(Ordering::Relaxed),
    ))
}

/// A blob read front to back, [`READ_SPAN`] bytes a range read.
struct Ranges {
    src: Arc<dyn RangeSource>,
    /// Where the next range read starts.
    at: u64,
    /// What the last one returned, and how much of it was read.
    held: Vec<u8>,
    used: usize,
    /// Bytes and range reads fetched, across every reading of the blob
    /// (the mount fallback reads it twice).
    stats: Arc<Stats>,
}

impl Read for Ranges {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.used == self.held.len() {
            let len = self.src.size().saturating_sub(self.at).min(READ_SPAN);
            if len == 0 {
                return Ok(0);
            }
            self.held = self.src.read_range(self.at, len)?;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            self.stats
                .bytes
                .fetch_add(self.held.len() as u64, Ordering::Relaxed);
            self.used = 0;
            self.at += self.held.len() as u64;
            if self.held.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the blob ended at {} of {} bytes", self.at, self.src.size()),
                ));
            }
        }
        let n = (self.held.len() - self.used).min(buf.len());
        buf[..n].copy_from_slice(&self.held[self.used..self.used + n]);
        self.used += n;
        Ok(n)
    }
}
