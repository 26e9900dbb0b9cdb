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

use strata_core::Digest;
use strata_diff::{ApplyOptions, OverlayTarget, apply};
use strata_sys::Root;

use crate::remote::RangeSource;

/// How much one range read of a blob being unpacked asks for.
const READ_SPAN: u64 = 8 << 20;

/// What a layer is checked against and unpacked over.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// A name for messages (the blob's digest).
    pub name: String,
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's media type, checked against the compression found.
    pub media_type: Option<String>,
    /// The digest of its uncompressed stream (the config's diffID).
    pub diff_id: Option<Digest>,
    /// The directories of the layers below, topmost first: whiteouts are
    /// written only where they hide something, and parents are resolved
    /// through them as overlay will.
    pub lowers: Vec<PathBuf>,
}

/// A layer unpacked in the cache.
#[derive(Debug)]
pub struct Unpacked {
    dir: PathBuf,
    fetched: u64,
    requests: u64,
}

impl Unpacked {
    /// The layer unpacked at `dir`: the one there, or, when there is none,
    /// `src`'s blob read in 8 MiB range reads, applied into a directory
    /// beside `dir` as an overlay upper directory over `opts.lowers`,
    /// checked, synced and renamed to `dir`. A blob that does not match
    /// its digest or diffID leaves nothing behind.
    pub fn get(src: &dyn RangeSource, dir: &Path, opts: &UnpackOptions) -> io::Result<Unpacked> {
        if dir.is_dir() {
            return Ok(Unpacked {
                dir: dir.to_path_buf(),
                fetched: 0,
                requests: 0,
            });
        }
        let parent = dir.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(parent)?;
        let staging = tempfile::Builder::new()
            .prefix(".unpack-")
            .tempdir_in(parent)?;
        let apply_opts = ApplyOptions {
            name: opts.name.clone(),
            media_type: opts.media_type.clone(),
            digest: Some(opts.digest.clone()),
            size: Some(src.size()),
            diff_id: opts.diff_id.clone(),
            overlay: Some(OverlayTarget {
                lowers: opts.lowers.clone(),
                ..OverlayTarget::default()
            }),
            ..ApplyOptions::default()
        };
        let mut reader = Ranges {
            src,
            at: 0,
            held: Vec::new(),
            used: 0,
            requests: 0,
        };
        apply(
            &strata_leases::OpCtx::new(),
            &mut reader,
            staging.path(),
            &apply_opts,
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        strata_sys::sync::syncfs(staging.path()).map_err(io::Error::other)?;
        let kept = staging.keep();
        if let Err(e) = std::fs::rename(&kept, dir) {
            let _ = Root::open(parent)
                .and_then(|r| r.remove_all(Path::new(kept.file_name().unwrap_or_default())));
            // Another mount unpacked it meanwhile: theirs serves.
            if !dir.is_dir() {
                return Err(e);
            }
        }
        strata_sys::sync::fsync_dir(parent).map_err(io::Error::other)?;
        Ok(Unpacked {
            dir: dir.to_path_buf(),
            fetched: reader.at,
            requests: reader.requests,
        })
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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
        let Ok(root) = Root::open(&self.dir) else {
            return false;
        };
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

    /// Whether its root carries the opaque attribute `xattr`: it hides
    /// every layer below it.
    pub fn root_is_opaque(&self, xattr: &str) -> bool {
        Root::open(&self.dir)
            .and_then(|r| r.get_xattr(Path::new("."), OsStr::new(xattr)))
            .is_ok_and(|v| v.is_some())
    }
}

/// A blob read front to back, [`READ_SPAN`] bytes a range read.
struct Ranges<'a> {
    src: &'a dyn RangeSource,
    /// Where the next range read starts.
    at: u64,
    /// What the last one returned, and how much of it was read.
    held: Vec<u8>,
    used: usize,
    /// Range reads sent.
    requests: u64,
}

impl Read for Ranges<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.used == self.held.len() {
            let len = self.src.size().saturating_sub(self.at).min(READ_SPAN);
            if len == 0 {
                return Ok(0);
            }
            self.held = self.src.read_range(self.at, len)?;
            self.requests += 1;
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
