//! Copying file contents the cheapest way the file system allows: a reflink
//! (`FICLONE`) shares extents; otherwise `copy_file_range` lets the kernel
//! copy (server-side, or at least without a trip through user space); a plain
//! read/write loop is the last resort.

use std::fs::File;
use std::io;

use rustix::io::Errno;

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

/// Copies all of `src` (from offset 0) into the empty file `dst`.
pub fn copy_contents(src: &File, dst: &File) -> io::Result<CopyMethod> {
    match rustix::fs::ioctl_ficlone(dst, src) {
        Ok(()) => return Ok(CopyMethod::Reflink),
        Err(Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY | Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let len = src.metadata()?.len();
    let mut src_off = 0u64;
    let mut dst_off = 0u64;
    while src_off < len {
        let chunk = usize::try_from(len - src_off)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rustix::fs::copy_file_range(src, Some(&mut src_off), dst, Some(&mut dst_off), chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) if src_off == 0 => {
                return read_write(src, dst);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(CopyMethod::CopyFileRange)
}

fn read_write(src: &File, dst: &File) -> io::Result<CopyMethod> {
    let mut r = src;
    let mut w = dst;
    io::copy(&mut r, &mut w)?;
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
}
