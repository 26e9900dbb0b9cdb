//! [`Root`]: a directory handle that confines every operation to the tree
//! below it (SECURITY.md rules 1 and 2).
//!
//! Every call resolves the parent of its path afresh from the root fd with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: symlinks met on the way
//! are followed as if the root were `/`, `..` stops at the root, and nothing
//! is cached between calls (a directory may have become a symlink since). The
//! final component is never followed: files are created with `O_EXCL |
//! O_NOFOLLOW`, links without `AT_SYMLINK_FOLLOW`, metadata is changed with
//! `AT_SYMLINK_NOFOLLOW`, and a symlink is never chmod-ed.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags, StatxFlags};
use rustix::io::Errno;

use crate::error::{SysError, SysResult};
use crate::path::{RelPath, clean};

/// The type of a directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A character device (overlay whiteouts are 0/0 character devices).
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A named pipe.
    Fifo,
    /// A unix socket.
    Socket,
}

impl FileKind {
    fn from_mode(mode: u32) -> Self {
        match rfs::FileType::from_raw_mode(mode) {
            rfs::FileType::Directory => FileKind::Dir,
            rfs::FileType::Symlink => FileKind::Symlink,
            rfs::FileType::CharacterDevice => FileKind::CharDevice,
            rfs::FileType::BlockDevice => FileKind::BlockDevice,
            rfs::FileType::Fifo => FileKind::Fifo,
            rfs::FileType::Socket => FileKind::Socket,
            _ => FileKind::File,
        }
    }

    fn file_type(self) -> rfs::FileType {
        match self {
            FileKind::File => rfs::FileType::RegularFile,
            FileKind::Dir => rfs::FileType::Directory,
            FileKind::Symlink => rfs::FileType::Symlink,
            FileKind::CharDevice => rfs::FileType::CharacterDevice,
            FileKind::BlockDevice => rfs::FileType::BlockDevice,
            FileKind::Fifo => rfs::FileType::Fifo,
            FileKind::Socket => rfs::FileType::Socket,
        }
    }
}

/// A point in time as the kernel stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Times {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds within the second.
    pub nsec: u32,
}

impl Times {
    /// As a `SystemTime`.
    pub fn to_system_time(self) -> std::time::SystemTime {
        let nanos = std::time::Duration::from_nanos(u64::from(self.nsec));
        if self.sec >= 0 {
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.sec.unsigned_abs()) + nanos
        } else {
            std::time::UNIX_EPOCH - std::time::Duration::from_secs(self.sec.unsigned_abs()) + nanos
        }
    }
}

/// What `statx` reports about an entry, without following a final symlink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// The entry's type.
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Hard link count.
    pub nlink: u32,
    /// Inode number.
    pub ino: u64,
    /// Device of the file system holding the entry.
    pub dev: u64,
    /// Device number for character and block devices.
    pub rdev: u64,
    /// Last modification.
    pub mtime: Times,
    /// Last access.
    pub atime: Times,
    /// True when the entry is the root of a mount.
    pub mount_root: bool,
}

impl Metadata {
    fn from_statx(st: &rfs::Statx) -> Self {
        let mount_root = st
            .stx_attributes_mask
            .contains(rfs::StatxAttributes::MOUNT_ROOT)
            && st.stx_attributes.contains(rfs::StatxAttributes::MOUNT_ROOT);
        Metadata {
            kind: FileKind::from_mode(u32::from(st.stx_mode)),
            mode: u32::from(st.stx_mode) & 0o7777,
            uid: st.stx_uid,
            gid: st.stx_gid,
            size: st.stx_size,
            blocks: st.stx_blocks,
            nlink: st.stx_nlink,
            ino: st.stx_ino,
            dev: rfs::makedev(st.stx_dev_major, st.stx_dev_minor),
            rdev: rfs::makedev(st.stx_rdev_major, st.stx_rdev_minor),
            mtime: Times {
                sec: st.stx_mtime.tv_sec,
                nsec: st.stx_mtime.tv_nsec,
            },
            atime: Times {
                sec: st.stx_atime.tv_sec,
                nsec: st.stx_atime.tv_nsec,
            },
            mount_root,
        }
    }
}

const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);
const STRICT: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// A directory that confines every path handed to it.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// A resolved parent directory and the final name below it.
#[derive(Debug)]
struct Parent {
    fd: OwnedFd,
    name: OsString,
    rel: RelPath,
}

impl Root {
    /// Opens `path` (trusted: it is ours, not a layer's) as a confinement root.
    pub fn open(path: &Path) -> SysResult<Root> {
        let fd = rfs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| SysError::io("open root", path, e))?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The path the root was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root directory's fd.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn display(&self, rel: &RelPath) -> PathBuf {
        self.path.join(rel.as_path())
    }

    fn io(&self, op: &'static str, rel: &RelPath, e: Errno) -> SysError {
        SysError::io(op, self.display(rel), e)
    }

    /// Resolves the parent of `path` inside the root.
    fn parent(&self, op: &'static str, path: &Path) -> SysResult<Parent> {
        let rel = clean(path)?;
        let Some((dir, name)) = rel.split_last() else {
            return Err(SysError::Refused {
                op,
                path: self.path.clone(),
                reason: "the path names the root itself",
            });
        };
        let dir = if dir.is_empty() { OsStr::new(".") } else { dir };
        let fd = rfs::openat2(
            &self.fd,
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            IN_ROOT,
        )
        .map_err(|e| self.io(op, &rel, e))?;
        let name = name.to_os_string();
        Ok(Parent { fd, name, rel })
    }

    /// Resolves the parent of `path` once, for several operations on the
    /// entry (see [`At`]).
    pub fn at(&self, path: &Path) -> SysResult<At<'_>> {
        self.at_op("resolve", path)
    }

    fn at_op(&self, op: &'static str, path: &Path) -> SysResult<At<'_>> {
        Ok(At {
            root: self,
            p: self.parent(op, path)?,
        })
    }

    /// Opens a directory inside the root for reading, following symlinks as
    /// if the root were `/`.
    pub fn open_dir(&self, path: &Path) -> SysResult<OwnedFd> {
        let rel = clean(path)?;
        let target = if rel.is_root() {
            Path::new(".")
        } else {
            rel.as_path()
        };
        rfs::openat2(
            &self.fd,
            target,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            IN_ROOT,
        )
        .map_err(|e| self.io("open directory", &rel, e))
    }

    /// Opens a regular file for reading; a final symlink is not followed.
    pub fn open_file(&self, path: &Path) -> SysResult<File> {
        let p = self.parent("open", path)?;
        let fd = rfs::openat(
            &p.fd,
            &p.name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(|e| self.io("open", &p.rel, e))?;
        Ok(File::from(fd))
    }

    /// Opens a file for reading, following symlinks (the final one too) as
    /// if the root were `/`: what a process chrooted there would read.
    pub fn open_resolved(&self, path: &Path) -> SysResult<File> {
        let rel = clean(path)?;
        let target = if rel.is_root() {
            Path::new(".")
        } else {
            rel.as_path()
        };
        let fd = rfs::openat2(
            &self.fd,
            target,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
            IN_ROOT,
        )
        .map_err(|e| self.io("open", &rel, e))?;
        Ok(File::from(fd))
    }

    /// Creates a new regular file (`O_EXCL | O_NOFOLLOW`), open for writing.
    pub fn create_file(&self, path: &Path, mode: u32) -> SysResult<File> {
        self.at_op("create", path)?.create_file(mode)
    }

    /// Creates a directory.
    pub fn mkdir(&self, path: &Path, mode: u32) -> SysResult<()> {
        self.at_op("mkdir", path)?.mkdir(mode)
    }

    /// Creates a directory and any missing parents; existing directories
    /// (or in-root symlinks to directories) are kept.
    pub fn mkdir_all(&self, path: &Path, mode: u32) -> SysResult<()> {
        let rel = clean(path)?;
        // Usually it exists already: one resolution instead of one per
        // component (a deep tree would cost the square of its depth).
        if self.open_dir(rel.as_path()).is_ok() {
            return Ok(());
        }
        // Component by component, following symlinks the way a process
        // chrooted here would (absolute targets from the root, `..`
        // stopping at it), and creating what is missing where they lead:
        // a parent that is a symlink to a missing directory gets that
        // directory, inside the root.
        let mut todo: std::collections::VecDeque<OsString> = rel
            .as_path()
            .components()
            .map(|c| c.as_os_str().to_os_string())
            .collect();
        let mut at: Vec<OsString> = Vec::new();
        let mut hops = 0;
        while let Some(name) = todo.pop_front() {
            if name == ".." {
                at.pop();
                continue;
            }
            let mut here = at.clone();
            here.push(name.clone());
            let here_path: PathBuf = here.iter().collect();
            match self.try_stat(&here_path)? {
                None => {
                    match self.mkdir(&here_path, mode) {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(e),
                    }
                    at = here;
                }
                Some(m) if m.kind == FileKind::Dir => at = here,
                Some(m) if m.kind == FileKind::Symlink => {
                    hops += 1;
                    if hops > 40 {
                        return Err(SysError::io(
                            "mkdir",
                            self.path.join(rel.as_path()),
                            Errno::LOOP,
                        ));
                    }
                    let target = self.read_link(&here_path)?;
                    let target = Path::new(&target);
                    if target.is_absolute() {
                        at.clear();
                    }
                    for c in target.components().rev() {
                        match c {
                            std::path::Component::Normal(n) => todo.push_front(n.to_os_string()),
                            std::path::Component::ParentDir => todo.push_front("..".into()),
                            _ => {}
                        }
                    }
                }
                Some(_) => {
                    return Err(SysError::io(
                        "mkdir",
                        self.path.join(&here_path),
                        Errno::NOTDIR,
                    ));
                }
            }
        }
        Ok(())
    }

    /// Creates a symlink at `path` pointing at `target` (stored verbatim; it
    /// is only ever resolved inside a root).
    pub fn symlink(&self, target: &OsStr, path: &Path) -> SysResult<()> {
        self.at_op("symlink", path)?.symlink(target)
    }

    /// Creates a hard link at `path` to the existing entry `existing`, which
    /// must be inside the root and must not be a directory. A symlink is
    /// linked as the symlink itself.
    pub fn hardlink(&self, existing: &Path, path: &Path) -> SysResult<()> {
        self.hardlink_from(self, existing, path)
    }

    /// Creates a hard link at `path` in this root to `existing` in the root
    /// `from` (another tree on the same file system; `EXDEV` otherwise).
    /// Directories are refused, a symlink is linked as itself.
    pub fn hardlink_from(&self, from: &Root, existing: &Path, path: &Path) -> SysResult<()> {
        self.at_op("link", path)?.link_from(from, existing)
    }

    /// Creates a device node, fifo or socket node.
    pub fn mknod(&self, path: &Path, kind: FileKind, mode: u32, rdev: u64) -> SysResult<()> {
        self.at_op("mknod", path)?.mknod(kind, mode, rdev)
    }

    /// Removes a non-directory entry.
    pub fn unlink(&self, path: &Path) -> SysResult<()> {
        let p = self.parent("unlink", path)?;
        rfs::unlinkat(&p.fd, &p.name, AtFlags::empty()).map_err(|e| self.io("unlink", &p.rel, e))
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, path: &Path) -> SysResult<()> {
        let p = self.parent("rmdir", path)?;
        rfs::unlinkat(&p.fd, &p.name, AtFlags::REMOVEDIR).map_err(|e| self.io("rmdir", &p.rel, e))
    }

    /// Removes an entry and, for a directory, everything below it. Returns
    /// false when nothing was there. The walk works by fd below the resolved
    /// parent, never follows a symlink and refuses to enter another mount
    /// (`RESOLVE_NO_XDEV`), so it cannot delete through a mount point.
    pub fn remove_all(&self, path: &Path) -> SysResult<bool> {
        self.at_op("remove", path)?.remove_all()
    }

    fn remove_dir_tree(&self, top: &Parent) -> SysResult<()> {
        // Post-order walk with one open directory at a time: each directory
        // is reopened from the parent fd with strict resolution, so a symlink
        // or a mount anywhere on the way fails the walk instead of being
        // followed.
        let mut stack: Vec<(PathBuf, bool)> = vec![(PathBuf::from(&top.name), false)];
        let shown = |rel: &Path| self.display(&top.rel).with_file_name("").join(rel);
        while let Some((rel, emptied)) = stack.pop() {
            if emptied {
                rfs::unlinkat(&top.fd, &rel, AtFlags::REMOVEDIR)
                    .map_err(|e| SysError::io("rmdir", shown(&rel), e))?;
                continue;
            }
            let dir = rfs::openat2(
                &top.fd,
                &rel,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                STRICT,
            )
            .map_err(|e| match e {
                Errno::XDEV => SysError::Refused {
                    op: "remove",
                    path: shown(&rel),
                    reason: "it is or contains a mount point",
                },
                e => SysError::io("open directory", shown(&rel), e),
            })?;
            stack.push((rel.clone(), true));
            for (name, kind) in
                read_entries(&dir).map_err(|e| SysError::io("read directory", shown(&rel), e))?
            {
                if kind == Some(FileKind::Dir) {
                    stack.push((rel.join(&name), false));
                } else {
                    match rfs::unlinkat(&dir, &name, AtFlags::empty()) {
                        Ok(()) => {}
                        // The entry type was unknown and it is a directory.
                        Err(Errno::ISDIR) => stack.push((rel.join(&name), false)),
                        Err(e) => return Err(SysError::io("unlink", shown(&rel.join(&name)), e)),
                    }
                }
            }
        }
        Ok(())
    }

    /// Renames `from` to `to`, both inside the root, replacing `to` if the
    /// kernel allows.
    pub fn rename(&self, from: &Path, to: &Path) -> SysResult<()> {
        let a = self.parent("rename", from)?;
        let b = self.parent("rename", to)?;
        rfs::renameat(&a.fd, &a.name, &b.fd, &b.name).map_err(|e| self.io("rename", &a.rel, e))
    }

    /// Changes ownership without following a final symlink.
    pub fn chown(&self, path: &Path, uid: u32, gid: u32) -> SysResult<()> {
        if clean(path)?.is_root() {
            return rfs::fchown(
                &self.fd,
                Some(rfs::Uid::from_raw(uid)),
                Some(rfs::Gid::from_raw(gid)),
            )
            .map_err(|e| SysError::io("chown", &self.path, e));
        }
        self.at_op("chown", path)?.chown(uid, gid)
    }

    /// Changes permission bits (setuid, setgid and sticky included). A
    /// symlink is refused rather than followed.
    pub fn chmod(&self, path: &Path, mode: u32) -> SysResult<()> {
        if clean(path)?.is_root() {
            return rfs::fchmod(&self.fd, Mode::from_raw_mode(mode & 0o7777))
                .map_err(|e| SysError::io("chmod", &self.path, e));
        }
        self.at_op("chmod", path)?.chmod(mode)
    }

    /// Sets access and modification times without following a final symlink.
    pub fn set_times(&self, path: &Path, atime: Times, mtime: Times) -> SysResult<()> {
        if clean(path)?.is_root() {
            return rfs::futimens(&self.fd, &timestamps(atime, mtime))
                .map_err(|e| SysError::io("utimens", &self.path, e));
        }
        self.at_op("utimens", path)?.set_times(atime, mtime)
    }

    /// `lstat` of an entry (the root itself for an empty path).
    pub fn stat(&self, path: &Path) -> SysResult<Metadata> {
        let rel = clean(path)?;
        if rel.is_root() {
            let st = rfs::statx(&self.fd, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS)
                .map_err(|e| self.io("stat", &rel, e))?;
            return Ok(Metadata::from_statx(&st));
        }
        let at = self.at_op("stat", path)?;
        at.stat()?
            .ok_or_else(|| at.root.io("stat", &at.p.rel, Errno::NOENT))
    }

    /// `lstat` that reports a missing entry as `None`.
    pub fn try_stat(&self, path: &Path) -> SysResult<Option<Metadata>> {
        match self.stat(path) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The target of a symlink.
    pub fn read_link(&self, path: &Path) -> SysResult<OsString> {
        let p = self.parent("readlink", path)?;
        let target = rfs::readlinkat(&p.fd, &p.name, Vec::new())
            .map_err(|e| self.io("readlink", &p.rel, e))?;
        Ok(OsString::from_vec(target.into_bytes()))
    }

    /// Names and (when the file system says) types of a directory's entries,
    /// without `.` and `..`.
    pub fn read_dir(&self, path: &Path) -> SysResult<Vec<(OsString, Option<FileKind>)>> {
        let rel = clean(path)?;
        let dir = self.open_dir(path)?;
        read_entries(&dir).map_err(|e| self.io("read directory", &rel, e))
    }

    /// A directory's entries with their `lstat`, names sorted by bytes:
    /// the directory is resolved once and each entry is looked at relative
    /// to it (the walk of a whole tree costs one resolution per directory).
    pub fn read_dir_stat(&self, path: &Path) -> SysResult<Vec<(OsString, Metadata)>> {
        let rel = clean(path)?;
        let dir = self.open_dir(path)?;
        let mut names = read_entries(&dir).map_err(|e| self.io("read directory", &rel, e))?;
        names.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        names
            .into_iter()
            .map(|(name, _)| {
                let st = rfs::statx(
                    &dir,
                    &name,
                    AtFlags::SYMLINK_NOFOLLOW,
                    StatxFlags::BASIC_STATS,
                )
                .map_err(|e| SysError::io("stat", self.display(&rel).join(&name), e))?;
                Ok((name, Metadata::from_statx(&st)))
            })
            .collect()
    }

    /// What the xattr calls act on: the root through its own fd, or an
    /// entry through the l* calls on `/proc/self/fd/<parent>/<name>` (the
    /// parent reached through our own fd, the final name not followed).
    fn xattr_target(&self, op: &'static str, path: &Path) -> SysResult<(XattrTarget<'_>, RelPath)> {
        let rel = clean(path)?;
        if rel.is_root() {
            return Ok((XattrTarget::Root(self.fd.as_fd()), rel));
        }
        let p = self.parent(op, path)?;
        let mut proc_path = PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&p.fd)
        ));
        proc_path.push(&p.name);
        Ok((
            XattrTarget::Entry {
                path: proc_path,
                _parent: p.fd,
            },
            p.rel,
        ))
    }

    /// Sets an extended attribute on the entry itself (never a symlink's
    /// target).
    pub fn set_xattr(&self, path: &Path, name: &OsStr, value: &[u8]) -> SysResult<()> {
        if clean(path)?.is_root() {
            return rfs::fsetxattr(&self.fd, name, value, rfs::XattrFlags::empty())
                .map_err(|e| SysError::io("setxattr", &self.path, e));
        }
        self.at_op("setxattr", path)?.set_xattr(name, value)
    }

    /// Reads an extended attribute; `None` when absent.
    pub fn get_xattr(&self, path: &Path, name: &OsStr) -> SysResult<Option<Vec<u8>>> {
        let (target, rel) = self.xattr_target("getxattr", path)?;
        let mut buf = vec![0u8; 256];
        loop {
            match target.get(name, &mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(Some(buf));
                }
                Err(Errno::NODATA) => return Ok(None),
                Err(Errno::RANGE) => {
                    let need = target
                        .get(name, &mut [])
                        .map_err(|e| self.io("getxattr", &rel, e))?;
                    buf.resize(need.max(buf.len() * 2), 0);
                }
                Err(e) => return Err(self.io("getxattr", &rel, e)),
            }
        }
    }

    /// Names of the entry's extended attributes.
    pub fn list_xattrs(&self, path: &Path) -> SysResult<Vec<OsString>> {
        let (target, rel) = self.xattr_target("listxattr", path)?;
        let mut buf = vec![0u8; 1024];
        let n = loop {
            match target.list(&mut buf) {
                Ok(n) => break n,
                Err(Errno::RANGE) => {
                    let need = target
                        .list(&mut [])
                        .map_err(|e| self.io("listxattr", &rel, e))?;
                    buf.resize(need.max(buf.len() * 2), 0);
                }
                Err(e) => return Err(self.io("listxattr", &rel, e)),
            }
        };
        Ok(buf[..n]
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| OsStr::from_bytes(s).to_os_string())
            .collect())
    }

    /// Removes an extended attribute.
    pub fn remove_xattr(&self, path: &Path, name: &OsStr) -> SysResult<()> {
        let (target, rel) = self.xattr_target("removexattr", path)?;
        target
            .remove(name)
            .map_err(|e| self.io("removexattr", &rel, e))
    }

    /// `fsync` of a file or directory inside the root.
    pub fn fsync(&self, path: &Path) -> SysResult<()> {
        let rel = clean(path)?;
        let fd = if rel.is_root() {
            rfs::openat(
                &self.fd,
                ".",
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
        } else {
            let p = self.parent("fsync", path)?;
            rfs::openat(
                &p.fd,
                &p.name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
        }
        .map_err(|e| self.io("fsync", &rel, e))?;
        rfs::fsync(&fd).map_err(|e| self.io("fsync", &rel, e))
    }

    /// `syncfs` of the file system holding the root.
    pub fn syncfs(&self) -> SysResult<()> {
        rfs::syncfs(&self.fd).map_err(|e| SysError::io("syncfs", &self.path, e))
    }
}

fn timestamps(atime: Times, mtime: Times) -> rfs::Timestamps {
    let ts = |t: Times| rfs::Timespec {
        tv_sec: t.sec,
        tv_nsec: i64::from(t.nsec),
    };
    rfs::Timestamps {
        last_access: ts(atime),
        last_modification: ts(mtime),
    }
}

/// An entry of a [`Root`] whose parent directory was resolved once, from the
/// root fd like every path: each operation acts on the final name relative
/// to that parent, never following it. Several operations on one entry
/// resolve its path once instead of each time.
#[derive(Debug)]
pub struct At<'r> {
    root: &'r Root,
    p: Parent,
}

impl At<'_> {
    fn io(&self, op: &'static str, e: Errno) -> SysError {
        self.root.io(op, &self.p.rel, e)
    }

    /// The entry's path relative to the root.
    pub fn path(&self) -> &Path {
        self.p.rel.as_path()
    }

    /// `lstat`; `None` when there is nothing.
    pub fn stat(&self) -> SysResult<Option<Metadata>> {
        match rfs::statx(
            &self.p.fd,
            &self.p.name,
            AtFlags::SYMLINK_NOFOLLOW,
            StatxFlags::BASIC_STATS,
        ) {
            Ok(st) => Ok(Some(Metadata::from_statx(&st))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.io("stat", e)),
        }
    }

    /// Creates a new regular file (`O_EXCL | O_NOFOLLOW`), open for writing.
    pub fn create_file(&self, mode: u32) -> SysResult<File> {
        let fd = rfs::openat(
            &self.p.fd,
            &self.p.name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode & 0o7777),
        )
        .map_err(|e| self.io("create", e))?;
        Ok(File::from(fd))
    }

    /// Creates a directory.
    pub fn mkdir(&self, mode: u32) -> SysResult<()> {
        rfs::mkdirat(&self.p.fd, &self.p.name, Mode::from_raw_mode(mode & 0o7777))
            .map_err(|e| self.io("mkdir", e))
    }

    /// Creates a symlink to `target` (stored verbatim).
    pub fn symlink(&self, target: &OsStr) -> SysResult<()> {
        rfs::symlinkat(target, &self.p.fd, &self.p.name).map_err(|e| self.io("symlink", e))
    }

    /// Creates a hard link here to `existing` in the root `from` (this root
    /// or another tree on the same file system). Directories are refused, a
    /// symlink is linked as itself.
    pub fn link_from(&self, from: &Root, existing: &Path) -> SysResult<()> {
        let src = from.parent("link", existing)?;
        match rfs::linkat(
            &src.fd,
            &src.name,
            &self.p.fd,
            &self.p.name,
            AtFlags::empty(),
        ) {
            Ok(()) => Ok(()),
            // The kernel refuses directories; say so plainly.
            Err(Errno::PERM) if is_dir_at(&src) => Err(SysError::Refused {
                op: "hard-link",
                path: from.display(&src.rel),
                reason: "the link target is a directory",
            }),
            Err(e) => Err(self.io("link", e)),
        }
    }

    /// Creates a device node, fifo or socket node.
    pub fn mknod(&self, kind: FileKind, mode: u32, rdev: u64) -> SysResult<()> {
        if matches!(kind, FileKind::File | FileKind::Dir | FileKind::Symlink) {
            return Err(SysError::Refused {
                op: "mknod",
                path: self.root.display(&self.p.rel),
                reason: "only devices, fifos and sockets are made with mknod",
            });
        }
        rfs::mknodat(
            &self.p.fd,
            &self.p.name,
            kind.file_type(),
            Mode::from_raw_mode(mode & 0o7777),
            rdev,
        )
        .map_err(|e| self.io("mknod", e))
    }

    /// Changes ownership without following the entry.
    pub fn chown(&self, uid: u32, gid: u32) -> SysResult<()> {
        rfs::chownat(
            &self.p.fd,
            &self.p.name,
            Some(rfs::Uid::from_raw(uid)),
            Some(rfs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.io("chown", e))
    }

    /// Changes permission bits; a symlink is refused rather than followed.
    pub fn chmod(&self, mode: u32) -> SysResult<()> {
        let st = rfs::statx(
            &self.p.fd,
            &self.p.name,
            AtFlags::SYMLINK_NOFOLLOW,
            StatxFlags::TYPE,
        )
        .map_err(|e| self.io("chmod", e))?;
        if FileKind::from_mode(u32::from(st.stx_mode)) == FileKind::Symlink {
            return Err(SysError::Refused {
                op: "chmod",
                path: self.root.display(&self.p.rel),
                reason: "it is a symlink",
            });
        }
        // The parent fd is fixed and the final name was just seen to be no
        // symlink; only we write inside a snapshot, so it cannot be swapped
        // between the two calls.
        rfs::chmodat(
            &self.p.fd,
            &self.p.name,
            Mode::from_raw_mode(mode & 0o7777),
            AtFlags::empty(),
        )
        .map_err(|e| self.io("chmod", e))
    }

    /// Sets access and modification times without following the entry.
    pub fn set_times(&self, atime: Times, mtime: Times) -> SysResult<()> {
        rfs::utimensat(
            &self.p.fd,
            &self.p.name,
            &timestamps(atime, mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.io("utimens", e))
    }

    /// Sets an extended attribute on the entry itself.
    pub fn set_xattr(&self, name: &OsStr, value: &[u8]) -> SysResult<()> {
        let mut path = PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&self.p.fd)
        ));
        path.push(&self.p.name);
        rfs::lsetxattr(&path, name, value, rfs::XattrFlags::empty())
            .map_err(|e| self.io("setxattr", e))
    }

    /// Removes the entry and, for a directory, everything below it (see
    /// [`Root::remove_all`]). Returns false when nothing was there.
    pub fn remove_all(&self) -> SysResult<bool> {
        let st = match rfs::statx(
            &self.p.fd,
            &self.p.name,
            AtFlags::SYMLINK_NOFOLLOW,
            StatxFlags::TYPE,
        ) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(self.io("remove", e)),
        };
        if FileKind::from_mode(u32::from(st.stx_mode)) != FileKind::Dir {
            rfs::unlinkat(&self.p.fd, &self.p.name, AtFlags::empty())
                .map_err(|e| self.io("remove", e))?;
            return Ok(true);
        }
        self.root.remove_dir_tree(&self.p)?;
        Ok(true)
    }
}

enum XattrTarget<'a> {
    Root(BorrowedFd<'a>),
    Entry { path: PathBuf, _parent: OwnedFd },
}

impl XattrTarget<'_> {
    /// Reads into `buf`; an empty `buf` asks for the size.
    fn get(&self, name: &OsStr, buf: &mut [u8]) -> Result<usize, Errno> {
        match (self, buf.is_empty()) {
            (XattrTarget::Root(fd), true) => rfs::fgetxattr_query(fd, name),
            (XattrTarget::Root(fd), false) => rfs::fgetxattr(fd, name, buf),
            (XattrTarget::Entry { path, .. }, true) => rfs::lgetxattr_query(path, name),
            (XattrTarget::Entry { path, .. }, false) => rfs::lgetxattr(path, name, buf),
        }
    }

    /// Lists into `buf`; an empty `buf` asks for the size.
    fn list(&self, buf: &mut [u8]) -> Result<usize, Errno> {
        match (self, buf.is_empty()) {
            (XattrTarget::Root(fd), true) => rfs::flistxattr_query(fd),
            (XattrTarget::Root(fd), false) => rfs::flistxattr(fd, buf),
            (XattrTarget::Entry { path, .. }, true) => rfs::llistxattr_query(path),
            (XattrTarget::Entry { path, .. }, false) => rfs::llistxattr(path, buf),
        }
    }

    fn remove(&self, name: &OsStr) -> Result<(), Errno> {
        match self {
            XattrTarget::Root(fd) => rfs::fremovexattr(fd, name),
            XattrTarget::Entry { path, .. } => rfs::lremovexattr(path, name),
        }
    }
}

/// True when the entry a resolved parent names is a directory.
fn is_dir_at(p: &Parent) -> bool {
    rfs::statx(&p.fd, &p.name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::TYPE)
        .is_ok_and(|st| FileKind::from_mode(u32::from(st.stx_mode)) == FileKind::Dir)
}

fn read_entries(dir: &OwnedFd) -> Result<Vec<(OsString, Option<FileKind>)>, Errno> {
    let mut out = Vec::new();
    let mut iter = rfs::Dir::read_from(dir)?;
    while let Some(entry) = iter.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let kind = match entry.file_type() {
            rfs::FileType::Unknown => None,
            t => Some(FileKind::from_mode(t.as_raw_mode())),
        };
        out.push((OsStr::from_bytes(name).to_os_string(), kind));
    }
    Ok(out)
}
