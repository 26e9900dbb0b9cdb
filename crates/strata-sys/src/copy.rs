//! Copying file contents the cheapest way the file system allows: a reflink
//! (`FICLONE`) shares extents; otherwise `copy_file_range` lets the kernel
//! copy (server-side, or at least without a trip through user space); a plain
//! read/write loop is the last resort. [`copy_metadata`] copies an entry's
//! owner, mode, xattrs and times for every copier (native snapshots,
//! merges, overlay copy-up during apply).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::SeekFrom;
use rustix::io::Errno;

use crate::{At, FileKind, Metadata, Root, SysResult, Times};

/// How the bytes were copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMethod {
    /// Extents shared with `FICLONE`.
    Reflink,
    /// Copied in the kernel with `copy_file_range`.
    CopyFileRange,
    /// Copied through user space.
    ReadWrite,
}

/// Copies all of `src` (from offset 0) into the empty file `dst`, keeping
/// holes: only the data segments `SEEK_DATA`/`SEEK_HOLE` report are copied,
/// and the length is set at the end.
pub fn copy_contents(src: &File, dst: &File) -> io::Result<CopyMethod> {
    match rustix::fs::ioctl_ficlone(dst, src) {
        Ok(()) => return Ok(CopyMethod::Reflink),
        Err(
            Errno::OPNOTSUPP
            | Errno::XDEV
            | Errno::INVAL
            | Errno::NOTTY
            | Errno::PERM
            | Errno::BADF,
        ) => {}
        Err(e) => return Err(e.into()),
    }
    let len = src.metadata()?.len();
    let mut pos = 0u64;
    while pos < len {
        let start = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(s) => s,
            // No data after `pos`: the rest is a hole.
            Err(Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let end = match rustix::fs::seek(src, SeekFrom::Hole(start)) {
            Ok(e) => e.min(len),
            Err(e) => return Err(e.into()),
        };
        let mut src_off = start;
        let mut dst_off = start;
        while src_off < end {
            let chunk = usize::try_from(end - src_off)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            match rustix::fs::copy_file_range(
                src,
                Some(&mut src_off),
                dst,
                Some(&mut dst_off),
                chunk,
            ) {
                Ok(0) => break,
                Ok(_) => {}
                Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                    return read_write(src, dst, len);
                }
                Err(e) => return Err(e.into()),
            }
        }
        pos = end;
    }
    dst.set_len(len)?;
    Ok(CopyMethod::CopyFileRange)
}

fn read_write(src: &File, dst: &File, len: u64) -> io::Result<CopyMethod> {
    use std::io::Seek;
    let (mut r, mut w) = (src, dst);
    r.rewind()?;
    w.rewind()?;
    io::copy(&mut r, &mut w)?;
    dst.set_len(len)?;
    Ok(CopyMethod::ReadWrite)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn copies_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = File::create(dir.path().join("a")).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        src.write_all(&data).unwrap();
        let src = File::open(dir.path().join("a")).unwrap();
        let mut dst = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("b"))
            .unwrap();
        copy_contents(&src, &dst).unwrap();
        dst.rewind().unwrap();
        let mut back = Vec::new();
        dst.read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn keeps_holes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("sparse");
        let src = File::create(&src_path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&src, b"tail", 64 << 20).unwrap();
        let src = File::open(&src_path).unwrap();
        let dst_path = dir.path().join("copy");
        let dst = File::create(&dst_path).unwrap();
        copy_contents(&src, &dst).unwrap();
        let md = std::fs::metadata(&dst_path).unwrap();
        assert_eq!(md.len(), (64 << 20) + 4);
        assert!(
            md.blocks() * 512 < 1 << 20,
            "the hole was filled: {} blocks",
            md.blocks()
        );
        let mut back = Vec::new();
        File::open(&dst_path)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(&back[64 << 20..], b"tail");
        assert!(back[..64 << 20].iter().all(|&b| b == 0));
    }
}

/// An entry whose owner, mode, xattrs and times can be set: an [`At`]
/// (parent resolved once) or a [`RootEntry`] (any path, the root
/// included).
pub trait MetadataTarget {
    /// Sets the owner.
    fn chown(&self, uid: u32, gid: u32) -> SysResult<()>;
    /// Sets the permission bits.
    fn chmod(&self, mode: u32) -> SysResult<()>;
    /// Sets one extended attribute.
    fn set_xattr(&self, name: &OsStr, value: &[u8]) -> SysResult<()>;
    /// Sets access and modification times.
    fn set_times(&self, atime: Times, mtime: Times) -> SysResult<()>;
}

impl MetadataTarget for At<'_> {
    fn chown(&self, uid: u32, gid: u32) -> SysResult<()> {
        At::chown(self, uid, gid)
    }
    fn chmod(&self, mode: u32) -> SysResult<()> {
        At::chmod(self, mode)
    }
    fn set_xattr(&self, name: &OsStr, value: &[u8]) -> SysResult<()> {
        At::set_xattr(self, name, value)
    }
    fn set_times(&self, atime: Times, mtime: Times) -> SysResult<()> {
        At::set_times(self, atime, mtime)
    }
}

/// `path` inside `root` (the root itself for an empty path).
#[derive(Debug, Clone, Copy)]
pub struct RootEntry<'a>(pub &'a Root, pub &'a Path);

impl MetadataTarget for RootEntry<'_> {
    fn chown(&self, uid: u32, gid: u32) -> SysResult<()> {
        self.0.chown(self.1, uid, gid)
    }
    fn chmod(&self, mode: u32) -> SysResult<()> {
        self.0.chmod(self.1, mode)
    }
    fn set_xattr(&self, name: &OsStr, value: &[u8]) -> SysResult<()> {
        self.0.set_xattr(self.1, name, value)
    }
    fn set_times(&self, atime: Times, mtime: Times) -> SysResult<()> {
        self.0.set_times(self.1, atime, mtime)
    }
}

/// What [`copy_metadata`] copies besides owner and mode.
#[derive(Clone, Copy, Debug)]
pub struct MetadataCopy {
    /// Xattrs whose names this returns true for are not copied (overlay's
    /// private ones, for instance).
    pub skip_xattr: fn(&[u8]) -> bool,
    /// Set access and modification times too (callers that create children
    /// afterwards set directory times at the end instead).
    pub times: bool,
}

/// Copies the metadata of `path` in `from` (whose `lstat` is `md`) onto
/// `to`, in the order that keeps it: owner first (chown clears setuid and
/// setgid), then the mode (not for symlinks, which have none), then the
/// xattrs (after chown, which clears `security.capability`), then times.
///
/// One error policy for every copier: reading the source fails loudly; an
/// xattr the destination's file system does not support (`EOPNOTSUPP`) is
/// skipped with a debug log, any other failure to set one is an error.
pub fn copy_metadata(
    from: &Root,
    path: &Path,
    md: &Metadata,
    to: &impl MetadataTarget,
    what: MetadataCopy,
) -> SysResult<()> {
    to.chown(md.uid, md.gid)?;
    if md.kind != FileKind::Symlink {
        to.chmod(md.mode)?;
    }
    for name in from.list_xattrs(path)? {
        if (what.skip_xattr)(name.as_bytes()) {
            continue;
        }
        if let Some(value) = from.get_xattr(path, &name)? {
            match to.set_xattr(&name, &value) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    tracing::debug!(path = %path.display(), xattr = %name.to_string_lossy(), "the destination does not support this xattr");
                }
                Err(e) => return Err(e),
            }
        }
    }
    if what.times {
        to.set_times(md.atime, md.mtime)?;
    }
    Ok(())
}
