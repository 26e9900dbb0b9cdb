//! Durability helpers for paths Strata itself owns (not layer-controlled):
//! fsync of a directory after a rename or create in it, and `syncfs`.

use std::fs::File;
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
