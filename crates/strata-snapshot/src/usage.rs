//! Disk usage of a directory tree, the way `du` counts it: allocated blocks,
//! and each inode once however many hard links reach it. The walk never
//! follows symlinks and stays on the tree's file system.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use strata_sys::{FileKind, Root};

use crate::error::SnapshotError;
use crate::info::Usage;

/// Usage of everything below (and including) `dir`.
pub fn disk_usage(dir: &Path) -> Result<Usage, SnapshotError> {
    let root = Root::open(dir)?;
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let md = root.stat(&rel)?;
        if seen.insert((md.dev, md.ino)) {
            usage.inodes += 1;
            usage.size += md.blocks * 512;
        }
        if md.kind == FileKind::Dir && (rel.as_os_str().is_empty() || !md.mount_root) {
            for (name, _) in root.read_dir(&rel)? {
                stack.push(rel.join(name));
            }
        }
    }
    Ok(usage)
}
