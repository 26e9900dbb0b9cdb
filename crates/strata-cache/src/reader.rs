//! Reading a ref's files without the caller mounting anything (the seed's
//! `util` package): a [`RefReader`] holds a read-only mount of the ref and
//! reads through `strata_sys::Root`, so every path resolves inside the
//! ref's tree; symlinks are followed as if the tree were `/`, never out of
//! it.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

use strata_leases::OpCtx;
use strata_snapshot::mounts::{LocalMount, MountOptions};
use strata_sys::{FileKind, Root};

use crate::error::{CacheError, Result};
use crate::refs::{ImmutableRef, MutableRef, RefMount};

/// What [`RefReader::stat`] and [`RefReader::read_dir`] report of an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStat {
    /// The entry's name (the last component).
    pub name: OsString,
    /// Its type.
    pub kind: FileKind,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Last modification.
    pub modified: SystemTime,
    /// A symlink's target.
    pub link_target: Option<OsString>,
}

/// A read-only view of a ref's tree, unmounted when dropped.
#[derive(Debug)]
pub struct RefReader {
    root: Root,
    _local: LocalMount,
    _mount: RefMount,
}

/// True when `name` matches the shell-style `pattern` (`*`, `?`).
pub fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

impl RefReader {
    fn new(mount: RefMount, tmp: &Path) -> Result<RefReader> {
        let local = LocalMount::mount(
            &mount.mounts,
            tmp,
            MountOptions {
                force_remount: false,
                temporary: true,
            },
        )?;
        let root = Root::open(local.path())?;
        Ok(RefReader {
            root,
            _local: local,
            _mount: mount,
        })
    }

    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CacheError {
        let path = path.display().to_string();
        move |source| CacheError::Io { what, path, source }
    }

    /// The bytes of `path`, or of `range` (offset, length) of it.
    pub fn read_file(&self, path: &Path, range: Option<(u64, u64)>) -> Result<Vec<u8>> {
        let mut f = self.root.open_resolved(path)?;
        let mut out = Vec::new();
        match range {
            None => {
                f.read_to_end(&mut out).map_err(Self::io("read", path))?;
            }
            Some((offset, len)) => {
                f.seek(SeekFrom::Start(offset))
                    .map_err(Self::io("seek", path))?;
                f.take(len)
                    .read_to_end(&mut out)
                    .map_err(Self::io("read", path))?;
            }
        }
        Ok(out)
    }

    fn describe(&self, path: &Path, name: OsString, md: strata_sys::Metadata) -> Result<FileStat> {
        let link_target = if md.kind == FileKind::Symlink {
            Some(self.root.read_link(path)?)
        } else {
            None
        };
        Ok(FileStat {
            name,
            kind: md.kind,
            mode: md.mode,
            uid: md.uid,
            gid: md.gid,
            size: md.size,
            modified: md.mtime.to_system_time(),
            link_target,
        })
    }

    /// The entry `path` itself (a final symlink is reported, not followed).
    pub fn stat(&self, path: &Path) -> Result<FileStat> {
        let md = self.root.stat(path)?;
        let name = path.file_name().map(OsString::from).unwrap_or_default();
        self.describe(path, name, md)
    }

    /// The entries of directory `path` whose names match one of `include`
    /// (all when empty), sorted by name.
    pub fn read_dir(&self, path: &Path, include: &[String]) -> Result<Vec<FileStat>> {
        let mut out = Vec::new();
        for (name, md) in self.root.read_dir_stat(path)? {
            let keep = include.is_empty()
                || include
                    .iter()
                    .any(|p| glob_match(p.as_bytes(), name.as_bytes()));
            if keep {
                let child = path.join(&name);
                out.push(self.describe(&child, name, md)?);
            }
        }
        Ok(out)
    }
}

impl ImmutableRef {
    /// A reader of the ref's tree (a read-only view held until dropped).
    pub async fn reader(&self, ctx: &OpCtx) -> Result<RefReader> {
        let mount = self.mount(ctx).await?;
        RefReader::new(mount, &self.mgr.root().tmp)
    }
}

impl MutableRef {
    /// A reader of the ref's tree as it is now (mounted read-only).
    pub async fn reader(&self, ctx: &OpCtx) -> Result<RefReader> {
        let mount = self.mount(ctx, true).await?;
        RefReader::new(mount, &self.mgr.root().tmp)
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match(b"*.conf", b"a.conf"));
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(glob_match(b"a*b*c", b"aXXbYYc"));
        assert!(!glob_match(b"a*b", b"acd"));
        assert!(!glob_match(b"?", b""));
        assert!(glob_match(b"exact", b"exact"));
        assert!(!glob_match(b"exact", b"exactly"));
    }
}
