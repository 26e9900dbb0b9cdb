//! A faithful tree copy by file descriptor: regular files by reflink or
//! `copy_file_range` with holes kept, hard links within the tree kept as
//! hard links, symlinks, devices, fifos and sockets recreated, and
//! ownership, modes (setuid, setgid, sticky), xattrs and times preserved.
//!
//! One thread walks the source and creates directories; regular files are
//! copied by a small pool of workers at the same time. Directory metadata
//! (times above all) is applied last, deepest first, once every entry inside
//! exists, so filling a directory never disturbs its recorded mtime.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc;

use strata_snapshot::SnapshotError;
use strata_sys::copy::{CopyMethod, MetadataCopy, RootEntry, copy_contents, copy_metadata};
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

impl CopyStats {
    fn count(&mut self, method: CopyMethod) {
        self.entries += 1;
        match method {
            CopyMethod::Reflink => self.reflinked += 1,
            _ => self.copied += 1,
        }
    }

    fn add(&mut self, other: CopyStats) {
        self.entries += other.entries;
        self.reflinked += other.reflinked;
        self.copied += other.copied;
        self.hardlinks += other.hardlinks;
    }
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
    let c = Copier { from, to };
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    let (tx, rx) = mpsc::sync_channel::<(PathBuf, Metadata)>(1024);
    let rx = Mutex::new(rx);
    let (walked, copied) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| scope.spawn(|| c.copy_files(&rx)))
            .collect();
        let walked = c.walk(top, tx);
        let mut copied = CopyStats::default();
        let mut failure = None;
        for h in handles {
            match h.join().expect("copy worker panicked") {
                Ok(s) => copied.add(s),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        (walked, failure.map_or(Ok(copied), Err))
    });
    let (mut stats, dirs) = walked?;
    stats.add(copied?);
    for (rel, md) in dirs.iter().rev() {
        c.finish(rel, md)?;
    }
    Ok(stats)
}

struct Copier {
    from: Root,
    to: Root,
}

impl Copier {
    /// Walks the source: creates directories, copies everything that is not
    /// a lone regular file itself, and hands lone regular files to the
    /// workers. Returns its stats and the directories in pre-order.
    fn walk(
        &self,
        top: Metadata,
        files: mpsc::SyncSender<(PathBuf, Metadata)>,
    ) -> Result<(CopyStats, Vec<(PathBuf, Metadata)>), SnapshotError> {
        let mut stats = CopyStats::default();
        let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
        let mut dirs = Vec::new();
        let mut stack = vec![(PathBuf::new(), top)];
        while let Some((rel, md)) = stack.pop() {
            if !rel.as_os_str().is_empty() {
                self.to.mkdir(&rel, 0o700)?;
                stats.entries += 1;
            }
            let mut entries = self.from.read_dir(&rel)?;
            entries.sort_by(|a, b| b.0.cmp(&a.0));
            for (name, _) in entries {
                let child = rel.join(&name);
                let cmd = self.from.stat(&child)?;
                if cmd.kind == FileKind::Dir {
                    stack.push((child, cmd));
                } else if cmd.nlink > 1 {
                    if let Some(first) = links.get(&(cmd.dev, cmd.ino)) {
                        self.to.hardlink(first, &child)?;
                        stats.hardlinks += 1;
                        stats.entries += 1;
                        continue;
                    }
                    // The first path of a linked inode is copied here, so
                    // later links can refer to it at once.
                    links.insert((cmd.dev, cmd.ino), child.clone());
                    self.entry(&child, &cmd, &mut stats)?;
                } else if cmd.kind == FileKind::File {
                    if files.send((child, cmd)).is_err() {
                        // Every worker stopped on an error, which join reports.
                        break;
                    }
                } else {
                    self.entry(&child, &cmd, &mut stats)?;
                }
            }
            dirs.push((rel, md));
        }
        Ok((stats, dirs))
    }

    fn copy_files(
        &self,
        rx: &Mutex<mpsc::Receiver<(PathBuf, Metadata)>>,
    ) -> Result<CopyStats, SnapshotError> {
        let mut stats = CopyStats::default();
        loop {
            let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
            let Ok((rel, md)) = next else {
                return Ok(stats);
            };
            self.entry(&rel, &md, &mut stats)?;
        }
    }

    fn entry(&self, rel: &Path, md: &Metadata, stats: &mut CopyStats) -> Result<(), SnapshotError> {
        match md.kind {
            FileKind::File => {
                let src = self.from.open_file(rel)?;
                let dst = self.to.create_file(rel, 0o600)?;
                let method = copy_contents(&src, &dst).map_err(|e| SnapshotError::Io {
                    op: "copy",
                    path: self.to.path().join(rel),
                    source: e,
                })?;
                stats.count(method);
            }
            FileKind::Symlink => {
                let target = self.from.read_link(rel)?;
                self.to.symlink(&target, rel)?;
                stats.entries += 1;
            }
            FileKind::Dir => unreachable!("directories are created by the walk"),
            kind => {
                self.to.mknod(rel, kind, md.mode, md.rdev)?;
                stats.entries += 1;
            }
        }
        self.finish(rel, md)
    }

    /// Owner, mode, every xattr and times, as `strata_sys` copies them.
    fn finish(&self, rel: &Path, md: &Metadata) -> Result<(), SnapshotError> {
        let what = MetadataCopy {
            skip_xattr: |_| false,
            times: true,
        };
        copy_metadata(&self.from, rel, md, &RootEntry(&self.to, rel), what)?;
        Ok(())
    }
}
