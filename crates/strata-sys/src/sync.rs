//! Durability helpers for paths Strata itself owns (not layer-controlled):
//! fsync of a directory after a rename or create in it, `syncfs`, and
//! writeback started early so a later fsync finds little left to write.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{SysError, SysResult};

/// `fsync` of a directory, making renames and creations in it durable.
pub fn fsync_dir(path: &Path) -> SysResult<()> {
    let dir = File::open(path).map_err(|e| SysError::io("open directory", path, e))?;
    dir.sync_all()
        .map_err(|e| SysError::io("fsync directory", path, e))
}

/// `syncfs` of the file system that holds `path`.
pub fn syncfs(path: &Path) -> SysResult<()> {
    let f = File::open(path).map_err(|e| SysError::io("open", path, e))?;
    rustix::fs::syncfs(&f).map_err(|e| SysError::io("syncfs", path, e))
}

/// Starts writing `len` bytes of `file` from `offset` to disk without
/// waiting for them (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so the disk
/// works while the caller goes on producing the rest. It makes nothing
/// durable (no wait, no metadata, no cache flush): only a later fsync does,
/// and reports any failure of this writeback. `path` names the file in
/// errors.
pub fn start_writeback(file: &File, path: &Path, offset: u64, len: u64) -> SysResult<()> {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(SysError::io(
            "start writeback of",
            path,
            std::io::Error::from_raw_os_error(libc::EINVAL),
        ));
    };
    // SAFETY: the call takes integers only; the descriptor is borrowed from
    // `file` and so stays open for the call. rustix has no wrapper for it.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if rc != 0 {
        return Err(SysError::io(
            "start writeback of",
            path,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn writeback_starts_on_written_ranges_and_refuses_impossible_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = File::create(&path).unwrap();
        f.write_all(&[7u8; 1 << 16]).unwrap();
        start_writeback(&f, &path, 0, 1 << 16).unwrap();
        // Past the end is a no-op, as the kernel defines it.
        start_writeback(&f, &path, 1 << 20, 4096).unwrap();
        let err = start_writeback(&f, &path, u64::MAX, 1).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        f.sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 1 << 16]);
    }
}
