//! The upper directory of a writable image mount (`ImageOptions::upper`):
//! `UPPER/fs` takes the writes, `UPPER/work` is overlay's work directory.
//!
//! The mount runs as root and its changes may hold set-user-ID copies of
//! the image's files, so the upper is held to what `ssh` asks of a key
//! file: UPPER and every directory above it belong to root or this user
//! and are writable by no one else (or, like `/tmp`, are sticky), UPPER,
//! `fs` and `work` are real directories, UPPER is not a symlink and no
//! symlink on the way to it belongs to another user; UPPER and `work` are
//! made (or made again) mode 0700, and `fs`, when missing, is made just
//! before the overlay is mounted, with the image root's mode. Then nobody
//! else can swap a path the kernel will follow. One mount at a time uses
//! an upper: a lock in `UPPER/lock`, and no mount in the mount table (a
//! killed mount's overlay) may still use it.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use strata_sys::lock::FileLock;

/// A writable mount's upper directory, checked, made and locked.
#[derive(Debug)]
pub(crate) struct Upper {
    /// `UPPER/fs`, absolute.
    pub(crate) fs: PathBuf,
    /// `UPPER/work`, absolute.
    pub(crate) work: PathBuf,
    /// Says a mount uses it, as long as this lives.
    _lock: FileLock,
}

impl Upper {
    /// Checks `upper` (as the module says), makes what is missing and
    /// locks it. An upper that overlaps `cache` or `dir` (either inside the
    /// other) is refused before anything is made.
    pub(crate) fn prepare(upper: &Path, cache: &Path, dir: &Path) -> io::Result<Upper> {
        let refuse = |kind, why: String| {
            Err(io::Error::new(
                kind,
                format!("upper directory {}: {why}", upper.display()),
            ))
        };
        let uid = strata_sys::effective_uid();
        // The path as given: no symlink for UPPER itself, and none on the
        // way that another user could have placed.
        let given = std::path::absolute(upper)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", upper.display())))?;
        if given
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            return refuse(io::ErrorKind::InvalidInput, "has a `..` in it".into());
        }
        for a in given.ancestors() {
            let Ok(md) = std::fs::symlink_metadata(a) else {
                continue;
            };
            if md.file_type().is_symlink() && (a == given || (md.uid() != uid && md.uid() != 0)) {
                return refuse(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{} is a symlink{}",
                        a.display(),
                        if a == given { "" } else { " of another user" }
                    ),
                );
            }
        }
        let at = absolute(upper)?;
        for (taken, what) in [
            (cache, "the cache"),
            (dir, "the directory the image covers"),
        ] {
            if at.starts_with(taken) || taken.starts_with(&at) {
                return refuse(
                    io::ErrorKind::InvalidInput,
                    format!("overlaps {what}, {}", taken.display()),
                );
            }
        }
        // Above UPPER, from the root down: what exists must be safe from
        // other users; the rest is made by this process, and checked again
        // once made (another user may have made a part meanwhile).
        let ancestors_safe = || -> io::Result<Option<String>> {
            for a in at.ancestors().skip(1).collect::<Vec<_>>().into_iter().rev() {
                if let Some(why) = unsafe_dir(a, Some(uid), true)? {
                    return Ok(Some(why));
                }
            }
            Ok(None)
        };
        if let Some(why) = ancestors_safe()? {
            return refuse(io::ErrorKind::PermissionDenied, why);
        }
        if let Some(parent) = at.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("create {}: {e}", parent.display()))
                })?;
        }
        if let Some(why) = ancestors_safe()? {
            return refuse(io::ErrorKind::PermissionDenied, why);
        }
        // UPPER and work are this user's alone, made private again if
        // they were not (the changes hold set-user-ID copies and whatever
        // was written). fs becomes the image's root directory: an existing
        // one keeps its owner and mode, a new one is made just before the
        // overlay is mounted (`make_fs`), so a mount that fails before
        // leaves none behind with the wrong mode.
        let (fs, work) = (at.join("fs"), at.join("work"));
        for d in [&at, &work] {
            match std::fs::DirBuilder::new().mode(0o700).create(d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("create {}: {e}", d.display()),
                    ));
                }
            }
            if let Some(why) = unsafe_dir(d, Some(uid), false)? {
                return refuse(io::ErrorKind::PermissionDenied, why);
            }
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
                io::Error::new(e.kind(), format!("make {} private: {e}", d.display()))
            })?;
        }
        if let Some(why) = unsafe_dir(&fs, None, false)? {
            return refuse(io::ErrorKind::PermissionDenied, why);
        }
        let lock = FileLock::try_exclusive(&at.join("lock")).map_err(|e| {
            let kind = match &e {
                strata_sys::lock::LockError::Held { .. } => io::ErrorKind::ResourceBusy,
                strata_sys::lock::LockError::Io { source, .. } => source.kind(),
                _ => io::ErrorKind::Other,
            };
            io::Error::new(
                kind,
                format!(
                    "upper directory {}: in use by another mount? {e}",
                    upper.display()
                ),
            )
        })?;
        let mounts = strata_sys::mount::info::mounts().map_err(io::Error::other)?;
        if let Some(m) = mounts.iter().find(|m| {
            m.fs_type == "overlay" && m.directories().iter().any(|d| *d == fs || *d == work)
        }) {
            return refuse(
                io::ErrorKind::ResourceBusy,
                format!(
                    "still used by the overlay on {} (a mount that was killed?): unmount it first",
                    m.mount_point.display()
                ),
            );
        }
        Ok(Upper {
            fs,
            work,
            _lock: lock,
        })
    }

    /// Makes `fs` if it is missing, with the mode and owner of `root`,
    /// the image's root directory (the topmost layer's): overlay shows the
    /// upper's root as the mount's root, and a 0700 root would shut out
    /// every user but root. An `fs` used before keeps what it has. Whether
    /// it was made; one that cannot be given the root's mode is removed
    /// again.
    pub(crate) fn make_fs(&self, root: &Path) -> io::Result<bool> {
        let md = std::fs::metadata(root)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", root.display())))?;
        match std::fs::DirBuilder::new().mode(0o700).create(&self.fs) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return match unsafe_dir(&self.fs, None, false)? {
                    Some(why) => Err(io::Error::new(io::ErrorKind::PermissionDenied, why)),
                    None => Ok(false),
                };
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("create {}: {e}", self.fs.display()),
                ));
            }
        }
        let given =
            std::os::unix::fs::chown(&self.fs, Some(md.uid()), Some(md.gid())).and_then(|()| {
                std::fs::set_permissions(
                    &self.fs,
                    std::fs::Permissions::from_mode(md.mode() & 0o7777),
                )
            });
        match given {
            Ok(()) => Ok(true),
            Err(e) => {
                let left = match std::fs::remove_dir(&self.fs) {
                    Ok(()) => String::new(),
                    Err(gone) => format!(" (and it could not be removed again: {gone})"),
                };
                Err(io::Error::new(
                    e.kind(),
                    format!(
                        "give {} the image root's mode: {e}{left}",
                        self.fs.display()
                    ),
                ))
            }
        }
    }

    /// Removes the `fs` that [`Upper::make_fs`] made when the overlay then
    /// could not be mounted, so the next mount makes it again; a failure
    /// is logged.
    pub(crate) fn unmake_fs(&self) {
        if let Err(e) = std::fs::remove_dir(&self.fs) {
            tracing::warn!(dir = %self.fs.display(), error = %e, "could not remove an unused upper fs");
        }
    }
}

/// `path` absolute, without symlinks in the part that exists (the rest is
/// joined on as written; a `..` in it fails to resolve).
pub(crate) fn absolute(path: &Path) -> io::Result<PathBuf> {
    let mut existing = path;
    let mut rest = Vec::new();
    while std::fs::symlink_metadata(existing).is_err() {
        let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
            break;
        };
        rest.push(name);
        existing = match parent.as_os_str().is_empty() {
            true => Path::new("."),
            false => parent,
        };
    }
    let mut at = std::fs::canonicalize(existing)
        .map_err(|e| io::Error::new(e.kind(), format!("resolve {}: {e}", existing.display())))?;
    at.extend(rest.iter().rev());
    Ok(at)
}

/// Why directory `d` is not safe to hold (or lead to) an upper, if it
/// exists and is not: a symlink or not a directory; and, given `uid`,
/// owned by another user than `uid` or root, or writable by group or
/// others (unless `sticky_ok` and it is sticky).
fn unsafe_dir(d: &Path, uid: Option<u32>, sticky_ok: bool) -> io::Result<Option<String>> {
    let md = match std::fs::symlink_metadata(d) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", d.display()))),
    };
    let mode = md.mode();
    let why = if md.file_type().is_symlink() {
        "is a symlink"
    } else if !md.is_dir() {
        "is not a directory"
    } else if uid.is_none() {
        return Ok(None);
    } else if Some(md.uid()) != uid && md.uid() != 0 {
        "belongs to another user"
    } else if mode & 0o022 != 0 && !(sticky_ok && mode & 0o1000 != 0) {
        "is writable by other users"
    } else {
        return Ok(None);
    };
    Ok(Some(format!("{} {why}", d.display())))
}
