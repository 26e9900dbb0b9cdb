//! Reading a ref's files without the caller mounting anything (the seed's
//! `util` package): a [`RefReader`] holds a read-only mount of the ref and
//! reads through `strata_sys::Root`, so every path resolves inside the
//! ref's tree; symlinks are followed as if the tree were `/`, never out of
//! it.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
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

/// The names `patterns` select (shell-style: `*`, `?`, `[...]`, matched
/// against one name, so `*` never crosses a `/`); an invalid pattern is
/// refused by name.
fn name_filter(patterns: &[String]) -> Result<Option<globset::GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut set = globset::GlobSetBuilder::new();
    for p in patterns {
        let glob = globset::GlobBuilder::new(p)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| CacheError::invalid(&format!("pattern {p:?}"), e.kind().to_string()))?;
        set.add(glob);
    }
    set.build()
        .map(Some)
        .map_err(|e| CacheError::invalid("patterns", e.to_string()))
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
        let filter = name_filter(include)?;
        let mut out = Vec::new();
        for (name, md) in self.root.read_dir_stat(path)? {
            let keep = filter.as_ref().is_none_or(|f| f.is_match(Path::new(&name)));
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
    use std::path::Path;

    use super::name_filter;

    fn keeps(patterns: &[&str], name: &str) -> bool {
        let patterns: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
        name_filter(&patterns)
            .unwrap()
            .is_none_or(|f| f.is_match(Path::new(name)))
    }

    #[test]
    fn shell_patterns_select_names() {
        assert!(keeps(&[], "anything"));
        assert!(keeps(&["*.conf"], "a.conf"));
        assert!(keeps(&["a?c"], "abc"));
        assert!(keeps(&["a*b*c"], "aXXbYYc"));
        assert!(!keeps(&["a*b"], "acd"));
        assert!(keeps(&["exact", "[xy]z"], "yz"));
        assert!(!keeps(&["exact"], "exactly"));
        assert!(keeps(&["\\*"], "*"));
        assert!(!keeps(&["\\*"], "a"));
        let err = name_filter(&["[z".to_owned()]).unwrap_err();
        assert!(err.to_string().contains("pattern \"[z\""), "{err}");
    }
}
