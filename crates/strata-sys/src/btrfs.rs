//! btrfs subvolumes, through the file system's own ioctls: whether a path
//! is on btrfs or is a subvolume, creating a subvolume, snapshotting one
//! (optionally read-only), flipping a subvolume read-only, deleting one
//! together with any subvolume nested in it, and reading a subvolume's
//! qgroup when quotas are on.
//!
//! The argument structures repeat the kernel's `linux/btrfs.h` layouts
//! (their sizes are checked at compile time); the six `unsafe` ioctl calls
//! sit together in one private module, each for exactly one opcode and its
//! argument type. Paths handed to the public functions are Strata's own
//! (a snapshot's directory), opened as they are; nested subvolumes found
//! inside a snapshot's tree are reached by descriptor with strict
//! resolution, so a symlink in that tree cannot lead outside it.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FsWord, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::ioctl::{Opcode, opcode};

use crate::error::{SysError, SysResult};

/// `statfs` magic of btrfs (`BTRFS_SUPER_MAGIC`, `linux/magic.h`).
const BTRFS_SUPER_MAGIC: FsWord = 0x9123_683E as FsWord;

/// The inode number of every subvolume's root directory
/// (`BTRFS_FIRST_FREE_OBJECTID`).
const SUBVOLUME_ROOT_INO: u64 = 256;

/// `BTRFS_SUBVOL_RDONLY`: the subvolume flag, and the snapshot flag that
/// makes a read-only snapshot.
const SUBVOL_RDONLY: u64 = 1 << 1;

/// The quota tree (`BTRFS_QUOTA_TREE_OBJECTID`) and the keys read in it.
const QUOTA_TREE: u64 = 8;
const QGROUP_STATUS_KEY: u32 = 240;
const QGROUP_INFO_KEY: u32 = 242;
const QGROUP_STATUS_FLAG_ON: u64 = 1;
const QGROUP_STATUS_FLAG_RESCAN: u64 = 1 << 1;
const QGROUP_STATUS_FLAG_INCONSISTENT: u64 = 1 << 2;

const MAGIC: u8 = 0x94;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_ioctl_vol_args_v2` (the qgroup-inherit union left zero,
/// the name union used as a name).
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

/// `struct btrfs_ioctl_search_key`.
#[repr(C)]
#[derive(Default)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: u64,
    unused2: u64,
    unused3: u64,
    unused4: u64,
}

/// `struct btrfs_ioctl_search_args`: the key, then the items found, each
/// a 32-byte `struct btrfs_ioctl_search_header` and its data.
#[repr(C)]
struct SearchArgs {
    key: SearchKey,
    buf: [u8; 4096 - size_of::<SearchKey>()],
}

const _: () = assert!(size_of::<VolArgs>() == 4096);
const _: () = assert!(size_of::<VolArgsV2>() == 4096);
const _: () = assert!(size_of::<InoLookupArgs>() == 4096);
const _: () = assert!(size_of::<SearchKey>() == 104);
const _: () = assert!(size_of::<SearchArgs>() == 4096);

const SNAP_DESTROY: Opcode = opcode::write::<VolArgs>(MAGIC, 15);
const TREE_SEARCH: Opcode = opcode::read_write::<SearchArgs>(MAGIC, 17);
const INO_LOOKUP: Opcode = opcode::read_write::<InoLookupArgs>(MAGIC, 18);
const SNAP_CREATE_V2: Opcode = opcode::write::<VolArgsV2>(MAGIC, 23);
const SUBVOL_CREATE_V2: Opcode = opcode::write::<VolArgsV2>(MAGIC, 24);
const SUBVOL_SETFLAGS: Opcode = opcode::write::<u64>(MAGIC, 26);

/// The ioctl calls, each a safe function for one opcode and the one
/// argument type the kernel defines for it.
#[allow(unsafe_code)]
mod raw {
    use rustix::ioctl::{Updater, ioctl};

    use super::*;

    /// `BTRFS_IOC_SUBVOL_CREATE_V2` on the directory to create in.
    pub(super) fn subvol_create(
        dir: BorrowedFd<'_>,
        args: &mut VolArgsV2,
    ) -> rustix::io::Result<()> {
        // SAFETY: the opcode is _IOW(0x94, 24, struct btrfs_ioctl_vol_args_v2)
        // and VolArgsV2 is that structure (repr(C), size checked above); the
        // kernel reads `args`, borrowed exclusively, only during the call.
        unsafe { ioctl(dir, Updater::<SUBVOL_CREATE_V2, VolArgsV2>::new(args)) }
    }

    /// `BTRFS_IOC_SNAP_CREATE_V2` on the directory to create in.
    pub(super) fn snap_create(dir: BorrowedFd<'_>, args: &mut VolArgsV2) -> rustix::io::Result<()> {
        // SAFETY: the opcode is _IOW(0x94, 23, struct btrfs_ioctl_vol_args_v2)
        // and VolArgsV2 is that structure; `args.fd` is a descriptor the
        // caller keeps open across the call; the kernel only reads `args`.
        unsafe { ioctl(dir, Updater::<SNAP_CREATE_V2, VolArgsV2>::new(args)) }
    }

    /// `BTRFS_IOC_SNAP_DESTROY` on the directory holding the subvolume.
    pub(super) fn snap_destroy(dir: BorrowedFd<'_>, args: &mut VolArgs) -> rustix::io::Result<()> {
        // SAFETY: the opcode is _IOW(0x94, 15, struct btrfs_ioctl_vol_args)
        // and VolArgs is that structure; the kernel only reads `args`.
        unsafe { ioctl(dir, Updater::<SNAP_DESTROY, VolArgs>::new(args)) }
    }

    /// `BTRFS_IOC_SUBVOL_SETFLAGS` on a subvolume's root directory.
    pub(super) fn subvol_setflags(
        subvol: BorrowedFd<'_>,
        flags: &mut u64,
    ) -> rustix::io::Result<()> {
        // SAFETY: the opcode is _IOW(0x94, 26, __u64): the kernel reads one
        // u64 through the pointer to `flags` during the call.
        unsafe { ioctl(subvol, Updater::<SUBVOL_SETFLAGS, u64>::new(flags)) }
    }

    /// `BTRFS_IOC_INO_LOOKUP` on any file of the subvolume.
    pub(super) fn ino_lookup(
        fd: BorrowedFd<'_>,
        args: &mut InoLookupArgs,
    ) -> rustix::io::Result<()> {
        // SAFETY: the opcode is _IOWR(0x94, 18, struct
        // btrfs_ioctl_ino_lookup_args) and InoLookupArgs is that structure;
        // the kernel reads and writes it, within its size, during the call.
        unsafe { ioctl(fd, Updater::<INO_LOOKUP, InoLookupArgs>::new(args)) }
    }

    /// `BTRFS_IOC_TREE_SEARCH` on any file of the file system.
    pub(super) fn tree_search(fd: BorrowedFd<'_>, args: &mut SearchArgs) -> rustix::io::Result<()> {
        // SAFETY: the opcode is _IOWR(0x94, 17, struct btrfs_ioctl_search_args)
        // and SearchArgs is that structure; the kernel writes items only
        // within its 4096 bytes, during the call.
        unsafe { ioctl(fd, Updater::<TREE_SEARCH, SearchArgs>::new(args)) }
    }
}

fn open_dir(op: &'static str, path: &Path) -> SysResult<OwnedFd> {
    rfs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SysError::io(op, path, e))
}

/// The directory holding `path`, opened, and `path`'s last component,
/// checked to be a name the ioctls take (`max` bytes at most, no NUL).
fn parent_and_name<'p>(
    op: &'static str,
    path: &'p Path,
    max: usize,
) -> SysResult<(OwnedFd, &'p OsStr)> {
    let name = match path.file_name() {
        Some(n) if n.len() <= max && !n.as_bytes().contains(&0) => n,
        _ => {
            return Err(SysError::InvalidPath {
                path: path.to_path_buf(),
                reason: "a subvolume path must end in a name short enough for the btrfs ioctls, without NUL",
            });
        }
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((open_dir(op, parent)?, name))
}

/// `name` NUL-terminated in a zeroed array (the caller checked its length).
fn name_array<const N: usize>(name: &OsStr) -> [u8; N] {
    let mut out = [0u8; N];
    out[..name.len()].copy_from_slice(name.as_bytes());
    out
}

fn vol_args_v2(fd: i64, flags: u64, name: &OsStr) -> Box<VolArgsV2> {
    Box::new(VolArgsV2 {
        fd,
        transid: 0,
        flags,
        unused: [0; 4],
        name: name_array(name),
    })
}

/// Whether `path` is on a btrfs file system.
pub fn is_btrfs(path: &Path) -> SysResult<bool> {
    let st = rfs::statfs(path).map_err(|e| SysError::io("statfs", path, e))?;
    Ok(st.f_type == BTRFS_SUPER_MAGIC)
}

/// The `statfs` magic number of the file system holding `path`, for
/// messages naming what a path is on instead of btrfs.
pub fn fs_magic(path: &Path) -> SysResult<u64> {
    let st = rfs::statfs(path).map_err(|e| SysError::io("statfs", path, e))?;
    // The kernel's magic numbers are 32-bit; the field is a signed word.
    Ok(st.f_type as u64 & 0xffff_ffff)
}

/// Whether `path` (not followed if a symlink) is the root directory of a
/// btrfs subvolume. False when nothing is there.
pub fn is_subvolume(path: &Path) -> SysResult<bool> {
    let st = match rfs::lstat(path) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(SysError::io("stat", path, e)),
    };
    let dir = rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::Directory;
    Ok(dir && st.st_ino == SUBVOLUME_ROOT_INO && is_btrfs(path)?)
}

/// Creates the empty subvolume `path` (its parent must exist, on btrfs).
/// Its root directory's mode is `0777 & !umask`, as `mkdir` would make it.
pub fn create_subvolume(path: &Path) -> SysResult<()> {
    const OP: &str = "create subvolume";
    let (dir, name) = parent_and_name(OP, path, 4039)?;
    let mut args = vol_args_v2(0, 0, name);
    raw::subvol_create(dir.as_fd(), &mut args).map_err(|e| SysError::io(OP, path, e))
}

/// Creates `dest` as a snapshot of the subvolume `source` (same file
/// system): it starts as `source`'s tree and shares all of its extents.
/// A `read_only` snapshot refuses every change (`EROFS`).
pub fn snapshot(source: &Path, dest: &Path, read_only: bool) -> SysResult<()> {
    const OP: &str = "snapshot subvolume";
    let src = open_dir(OP, source)?;
    let (dir, name) = parent_and_name(OP, dest, 4039)?;
    let flags = if read_only { SUBVOL_RDONLY } else { 0 };
    let mut args = vol_args_v2(i64::from(src.as_raw_fd()), flags, name);
    raw::snap_create(dir.as_fd(), &mut args).map_err(|e| match e {
        Errno::INVAL => SysError::Refused {
            op: OP,
            path: source.to_path_buf(),
            reason: "it is not the root of a subvolume",
        },
        e => SysError::io(OP, dest, e),
    })
}

/// Makes the subvolume `path` read-only, or writable again. Doing what is
/// already done is no error.
pub fn set_read_only(path: &Path, read_only: bool) -> SysResult<()> {
    const OP: &str = "set read-only flag of subvolume";
    let fd = open_dir(OP, path)?;
    let mut flags = if read_only { SUBVOL_RDONLY } else { 0 };
    raw::subvol_setflags(fd.as_fd(), &mut flags).map_err(|e| SysError::io(OP, path, e))
}

/// Deletes the subvolume `path` (read-only or not) and every subvolume
/// nested anywhere in it, deepest first; a nested one inside a read-only
/// subvolume is reached by making that subvolume writable first. Refuses
/// to go through a mount inside the tree.
pub fn delete_subvolume(path: &Path) -> SysResult<()> {
    const OP: &str = "delete subvolume";
    let (dir, name) = parent_and_name(OP, path, 4087)?;
    destroy(dir.as_fd(), name, path)
}

/// Deletes subvolume `name` of directory `dir` (shown as `shown`); when
/// subvolumes are nested in it, makes it writable and deletes those first.
fn destroy(dir: BorrowedFd<'_>, name: &OsStr, shown: &Path) -> SysResult<()> {
    const OP: &str = "delete subvolume";
    let args = || {
        Box::new(VolArgs {
            fd: 0,
            name: name_array(name),
        })
    };
    match raw::snap_destroy(dir, &mut args()) {
        Ok(()) => return Ok(()),
        Err(Errno::NOTEMPTY) => {}
        Err(e) => return Err(SysError::io(OP, shown, e)),
    }
    let subvol = rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SysError::io(OP, shown, e))?;
    raw::subvol_setflags(subvol.as_fd(), &mut 0)
        .map_err(|e| SysError::io("make writable subvolume", shown, e))?;
    delete_nested(&subvol, shown)?;
    raw::snap_destroy(dir, &mut args()).map_err(|e| SysError::io(OP, shown, e))
}

/// Deletes the subvolumes nested in the subvolume open as `top` (shown as
/// `shown`). Like [`Root::remove_all`](crate::Root::remove_all) it holds
/// one directory open at a time, reopened from `top` with strict
/// resolution, so a symlink in the tree is never followed and a mount in it
/// fails the walk instead of being entered.
fn delete_nested(top: &OwnedFd, shown: &Path) -> SysResult<()> {
    const OP: &str = "delete subvolume";
    let top_dev = rfs::fstat(top)
        .map_err(|e| SysError::io("stat", shown, e))?
        .st_dev;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let at = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel.as_path()
        };
        let dir = rfs::openat2(
            top,
            at,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH
                | ResolveFlags::NO_SYMLINKS
                | ResolveFlags::NO_MAGICLINKS
                | ResolveFlags::NO_XDEV,
        )
        .map_err(|e| match e {
            Errno::XDEV => SysError::Refused {
                op: OP,
                path: shown.join(&rel),
                reason: "it is or contains a mount point",
            },
            e => SysError::io("open directory", shown.join(&rel), e),
        })?;
        let mut names = Vec::new();
        let mut entries = rfs::Dir::read_from(&dir)
            .map_err(|e| SysError::io("read directory", shown.join(&rel), e))?;
        while let Some(entry) = entries.read() {
            let entry = entry.map_err(|e| SysError::io("read directory", shown.join(&rel), e))?;
            let name = entry.file_name().to_bytes();
            let maybe_dir = matches!(
                entry.file_type(),
                rfs::FileType::Directory | rfs::FileType::Unknown
            );
            if maybe_dir && name != b"." && name != b".." {
                names.push(OsStr::from_bytes(name).to_os_string());
            }
        }
        for name in names {
            let child = rel.join(&name);
            let st = rfs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| SysError::io("stat", shown.join(&child), e))?;
            if rfs::FileType::from_raw_mode(st.st_mode) != rfs::FileType::Directory {
                continue;
            }
            if st.st_ino == SUBVOLUME_ROOT_INO && st.st_dev != top_dev {
                destroy(dir.as_fd(), &name, &shown.join(&child))?;
            } else {
                stack.push(child);
            }
        }
    }
    Ok(())
}

/// The id of the subvolume holding `path` (5 for the top level).
pub fn subvolume_id(path: &Path) -> SysResult<u64> {
    const OP: &str = "look up subvolume id of";
    let fd = open_dir(OP, path)?;
    let mut args = Box::new(InoLookupArgs {
        treeid: 0,
        objectid: SUBVOLUME_ROOT_INO,
        name: [0; 4080],
    });
    raw::ino_lookup(fd.as_fd(), &mut args).map_err(|e| SysError::io(OP, path, e))?;
    Ok(args.treeid)
}

/// A subvolume's level-0 qgroup: bytes it references, and bytes only it
/// references (what deleting it would free).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Qgroup {
    /// Bytes of every extent the subvolume references.
    pub referenced: u64,
    /// Bytes of the extents no other subvolume shares.
    pub exclusive: u64,
}

/// The qgroup of the subvolume holding `path` as of the last committed
/// transaction (sync the file system first for recent writes to count).
/// `None` when quotas are off, being rescanned or marked inconsistent, or
/// the subvolume has no qgroup. Searching the quota tree needs
/// `CAP_SYS_ADMIN`: without it the error is `EPERM`.
pub fn qgroup(path: &Path) -> SysResult<Option<Qgroup>> {
    const OP: &str = "read qgroup of";
    let fd = open_dir(OP, path)?;
    let Some(status) = quota_item(fd.as_fd(), QGROUP_STATUS_KEY, 0, path)? else {
        return Ok(None);
    };
    let flags = le64(&status, 16).unwrap_or(0);
    if flags & QGROUP_STATUS_FLAG_ON == 0
        || flags & (QGROUP_STATUS_FLAG_RESCAN | QGROUP_STATUS_FLAG_INCONSISTENT) != 0
    {
        return Ok(None);
    }
    // A level-0 qgroup's id is the subvolume id.
    let id = subvolume_id(path)?;
    let Some(info) = quota_item(fd.as_fd(), QGROUP_INFO_KEY, id, path)? else {
        return Ok(None);
    };
    // struct btrfs_qgroup_info_item: generation, rfer, rfer_cmpr, excl, excl_cmpr.
    match (le64(&info, 8), le64(&info, 24)) {
        (Some(referenced), Some(exclusive)) => Ok(Some(Qgroup {
            referenced,
            exclusive,
        })),
        _ => Ok(None),
    }
}

/// The data of item (0, `key_type`, `offset`) of the quota tree; `None`
/// when there is no such item or no quota tree (quotas never enabled).
fn quota_item(
    fd: BorrowedFd<'_>,
    key_type: u32,
    offset: u64,
    shown: &Path,
) -> SysResult<Option<Vec<u8>>> {
    let mut args = Box::new(SearchArgs {
        key: SearchKey {
            tree_id: QUOTA_TREE,
            min_offset: offset,
            max_offset: offset,
            max_transid: u64::MAX,
            min_type: key_type,
            max_type: key_type,
            nr_items: 1,
            ..SearchKey::default()
        },
        buf: [0; 4096 - size_of::<SearchKey>()],
    });
    match raw::tree_search(fd, &mut args) {
        Ok(()) => {}
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(SysError::io("search quota tree of", shown, e)),
    }
    if args.key.nr_items == 0 {
        return Ok(None);
    }
    // struct btrfs_ioctl_search_header: transid, objectid, offset (u64),
    // type, len (u32), in native byte order; the item follows.
    let header = &args.buf[..32];
    let u32_at = |at: usize| u32::from_ne_bytes(header[at..at + 4].try_into().unwrap_or([0; 4]));
    let (found_type, len) = (u32_at(24), u32_at(28) as usize);
    if found_type != key_type || 32 + len > args.buf.len() {
        return Ok(None);
    }
    Ok(Some(args.buf[32..32 + len].to_vec()))
}

/// The little-endian u64 at `at` in an on-disk item, if it is that long.
fn le64(item: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(item.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_btrfs_the_calls_fail_naming_the_path_and_operation() {
        let tmp = tempfile::tempdir().unwrap();
        if is_btrfs(tmp.path()).unwrap() {
            strata_testkit::skip(
                "strata-sys::btrfs::off_btrfs_the_calls_fail_naming_the_path_and_operation",
                "the temporary directory is on btrfs",
            );
            return;
        }
        let sub = tmp.path().join("sub");
        let err = create_subvolume(&sub).unwrap_err().to_string();
        assert!(
            err.starts_with("create subvolume ") && err.contains("/sub"),
            "{err}"
        );
        std::fs::create_dir(&sub).unwrap();
        assert!(!is_subvolume(&sub).unwrap());
        assert!(!is_subvolume(&tmp.path().join("missing")).unwrap());
        let err = set_read_only(&sub, true).unwrap_err().to_string();
        assert!(
            err.contains("read-only flag") && err.contains("/sub"),
            "{err}"
        );
        assert_ne!(fs_magic(tmp.path()).unwrap(), 0x9123_683E);
    }

    #[test]
    fn names_too_long_for_the_ioctls_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let long = tmp.path().join("n".repeat(4040));
        let err = create_subvolume(&long).unwrap_err();
        assert!(matches!(err, SysError::InvalidPath { .. }), "{err}");
        assert!(matches!(
            create_subvolume(Path::new("/")).unwrap_err(),
            SysError::InvalidPath { .. }
        ));
    }

    #[test]
    fn items_shorter_than_their_fields_read_as_none() {
        assert_eq!(le64(&[1, 0, 0, 0, 0, 0, 0, 0], 0), Some(1));
        assert_eq!(le64(&[1, 0, 0], 0), None);
    }
}
