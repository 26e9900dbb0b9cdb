//! A faithful tree copy by file descriptor: regular files by reflink or
//! `copy_file_range` with holes kept, hard links within the tree kept as
//! hard links, symlinks, devices, fifos and sockets recreated, and
//! ownership, modes (setuid, setgid, sticky), xattrs and times preserved.
//! Directory times are set after their children, so filling a directory
//! does not disturb its mtime.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use strata_snapshot::SnapshotError;
use strata_sys::copy::{CopyMethod, copy_contents};
use strata_sys::{FileKind, Metadata, Root};

/// What a copy did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Entries created.
    pub entries: u64,
    /// Regular files whose extents were shared by reflink.
    pub reflinked: u64,
    /// Regular files copied in the kernel or through user space.
    pub copied: u64,
    /// Hard links recreated.
    pub hardlinks: u64,
}

/// Copies the tree at `src` to the new directory `dst` (which must not
/// exist). Both are opened as roots, so nothing in the tree can lead the
/// copy outside either.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<CopyStats, SnapshotError> {
    let from = Root::open(src)?;
    let top = from.stat(Path::new(""))?;
    std::fs::create_dir(dst).map_err(|e| SnapshotError::Io {
        op: "create",
        path: dst.to_path_buf(),
        source: e,
    })?;
    let to = Root::open(dst)?;
    let mut c = Copier {
        from,
        to,
        links: HashMap::new(),
        stats: CopyStats::default(),
        euid: strata_sys::effective_uid(),
    };
    // Post-order for directory metadata: (path, metadata, children done).
    let mut stack: Vec<(PathBuf, Metadata, bool)> = vec![(PathBuf::new(), top, false)];
    while let Some((rel, md, done)) = stack.pop() {
        if done {
            c.finish(&rel, &md)?;
            continue;
        }
        if !rel.as_os_str().is_empty() {
            c.to.mkdir(&rel, 0o700)?;
            c.stats.entries += 1;
        }
        stack.push((rel.clone(), md, true));
        let mut entries = c.from.read_dir(&rel)?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, _) in entries {
            let child = rel.join(&name);
            let cmd = c.from.stat(&child)?;
            if cmd.kind == FileKind::Dir {
                stack.push((child, cmd, false));
            } else {
                c.entry(&child, &cmd)?;
            }
        }
    }
    Ok(c.stats)
}

struct Copier {
    from: Root,
    to: Root,
    links: HashMap<(u64, u64), PathBuf>,
    stats: CopyStats,
    euid: u32,
}

impl Copier {
    fn entry(&mut self, rel: &Path, md: &Metadata) -> Result<(), SnapshotError> {
        if md.nlink > 1 {
            if let Some(first) = self.links.get(&(md.dev, md.ino)) {
                self.to.hardlink(first, rel)?;
                self.stats.hardlinks += 1;
                self.stats.entries += 1;
                return Ok(());
            }
            self.links.insert((md.dev, md.ino), rel.to_path_buf());
        }
        match md.kind {
            FileKind::File => {
                let src = self.from.open_file(rel)?;
                let dst = self.to.create_file(rel, 0o600)?;
                let method = copy_contents(&src, &dst).map_err(|e| SnapshotError::Io {
                    op: "copy",
                    path: self.to.path().join(rel),
                    source: e,
                })?;
                match method {
                    CopyMethod::Reflink => self.stats.reflinked += 1,
                    _ => self.stats.copied += 1,
                }
            }
            FileKind::Symlink => {
                let target = self.from.read_link(rel)?;
                self.to.symlink(&target, rel)?;
            }
            FileKind::Dir => unreachable!("directories are handled by the walk"),
            kind => self.to.mknod(rel, kind, md.mode, md.rdev)?,
        }
        self.stats.entries += 1;
        self.finish(rel, md)
    }

    /// Ownership, then mode (chown clears setuid/setgid), then xattrs (after
    /// chown, which clears `security.capability`), then times.
    fn finish(&self, rel: &Path, md: &Metadata) -> Result<(), SnapshotError> {
        let current = self.to.stat(rel)?;
        if (current.uid, current.gid) != (md.uid, md.gid) || self.euid == 0 {
            self.to.chown(rel, md.uid, md.gid)?;
        }
        if md.kind != FileKind::Symlink {
            self.to.chmod(rel, md.mode)?;
        }
        for name in self.from.list_xattrs(rel)? {
            if let Some(value) = self.from.get_xattr(rel, &name)? {
                self.to.set_xattr(rel, &name, &value)?;
            }
        }
        self.to.set_times(rel, md.atime, md.mtime)?;
        Ok(())
    }
}
