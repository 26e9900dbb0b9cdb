//! Cutting a lazy-mount cache down to a size: its chunks, its TOCs and
//! its unpacked layers, those used longest ago first. Chunks and TOCs go
//! even under running mounts (a mount that needs one again fetches it);
//! an unpacked layer a mount uses stays.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What [`prune`] removed and kept: chunks, TOCs and unpacked layers, and
/// their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Items removed.
    pub removed: u64,
    /// Bytes they held.
    pub removed_bytes: u64,
    /// Items kept.
    pub kept: u64,
    /// Bytes they hold.
    pub kept_bytes: u64,
    /// Of those kept, unpacked layers kept only because a mount uses them.
    pub in_use: u64,
}

/// Something in the cache [`prune`] may remove.
#[derive(Debug)]
pub struct Prunable {
    pub(crate) path: PathBuf,
    pub(crate) size: u64,
    /// When it was last used: read (a file's access time, as the file
    /// system keeps it), written, or mounted.
    pub(crate) used: SystemTime,
    pub(crate) unpacked: bool,
    /// A file that goes with it, removed first (a partial blob's ranges).
    pub(crate) also: Option<PathBuf>,
}

/// Removes `items`, those used longest ago first, until what is left
/// holds at most `keep` bytes. An unpacked layer a mount uses is kept.
pub fn prune(mut items: Vec<Prunable>, keep: u64) -> io::Result<Pruned> {
    items.sort_by_key(|i| i.used);
    let mut total: u64 = items.iter().map(|i| i.size).sum();
    let mut pruned = Pruned::default();
    for item in items {
        let removed = total > keep
            && if item.unpacked {
                crate::unpack::remove_unused(&item.path)?
            } else {
                if let Some(also) = &item.also {
                    remove_if_there(also)?;
                }
                remove_if_there(&item.path)?;
                true
            };
        if removed {
            total -= item.size;
            pruned.removed += 1;
            pruned.removed_bytes += item.size;
        } else {
            pruned.in_use += u64::from(total > keep);
            pruned.kept += 1;
            pruned.kept_bytes += item.size;
        }
    }
    tracing::info!(?pruned, "pruned a lazy-mount cache");
    Ok(pruned)
}

/// `found`, or `None` when what it looked at is gone: running mounts
/// rename chunks into place and remove bad ones while a prune lists them.
pub(crate) fn unless_gone<T>(found: io::Result<T>) -> io::Result<Option<T>> {
    match found {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The files under `dir`, recursively, with their sizes and last use.
pub(crate) fn files(dir: &Path, out: &mut Vec<Prunable>) -> io::Result<()> {
    let Some(listing) = unless_gone(std::fs::read_dir(dir))? else {
        return Ok(());
    };
    for item in listing {
        let item = item?;
        let Some(meta) = unless_gone(item.metadata())? else {
            continue;
        };
        if meta.is_dir() {
            files(&item.path(), out)?;
        } else {
            out.push(Prunable {
                path: item.path(),
                size: meta.len(),
                used: meta.accessed()?.max(meta.modified()?),
                unpacked: false,
                also: None,
            });
        }
    }
    Ok(())
}

pub(crate) fn remove_if_there(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
