//! An example snapshot backend, written the way a crate outside Strata's
//! workspace would write one: it uses only public items of strata-snapshot
//! (the [`Backend`] seam), strata-core (the [`Mount`] it returns) and
//! strata-sys (confined file-system calls), and nothing the workspace keeps
//! to itself. It is a starting point for a backend of your own; see
//! `docs/backends.md`.
//!
//! Every snapshot's `fs` directory holds its whole tree. Preparing an
//! active snapshot on a parent copies the parent's tree entry by entry
//! ([`copy_tree`]: plain reads and writes, no reflinks, no copy-on-write);
//! every other snapshot starts empty. Mounts are binds: an active snapshot
//! binds its own tree read-write, a view binds its parent's tree read-only
//! (a committed snapshot is never written again, so nothing needs copying
//! for a view). It claims no [`Capabilities`], so the data plane takes the
//! portable path with it everywhere.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use strata_core::Mount;
use strata_snapshot::{Backend, Capabilities, Kind, SnapshotError, create_dir};
use strata_sys::copy::{MetadataCopy, RootEntry, copy_metadata};
use strata_sys::{FileKind, Metadata, Root};

/// The example backend: full copies on prepare, bind mounts.
#[derive(Clone, Copy, Debug, Default)]
pub struct CopyBackend;

impl Backend for CopyBackend {
    /// Recorded in every root made with it; such a root opens only with a
    /// backend of this name again.
    fn name(&self) -> &'static str {
        "copy"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
    }

    fn create(&self, dir: &Path, kind: Kind, parents: &[PathBuf]) -> Result<(), SnapshotError> {
        let fs = dir.join("fs");
        match (kind, parents.first()) {
            (Kind::Active, Some(parent)) => {
                copy_tree(&parent.join("fs"), &fs)?;
                // The store fsyncs the staging directory and renames it,
                // but the copied files are this backend's to make durable
                // before the snapshot is recorded.
                strata_sys::sync::syncfs(dir)?;
            }
            // A new snapshot's root is 0755 whatever the umask says.
            _ => create_dir(&fs, 0o755)?,
        }
        Ok(())
    }

    fn mounts(&self, dir: &Path, kind: Kind, parents: &[PathBuf]) -> Vec<Mount> {
        // The shape every whole-tree backend shares: the snapshot's own
        // tree bound, a view of a parent binding the parent's read-only.
        strata_snapshot::whole_tree_mounts(dir, kind, parents)
    }

    // `commit`, `remove` and `usage` keep their defaults: nothing to do at
    // commit (the store never writes a committed snapshot), removal of the
    // plain tree, and usage measured by walking `fs` (the whole tree here).
}

/// Copies the tree at `src` to the new directory `dst` (which must not
/// exist): every entry type, hard links within the tree as hard links, and
/// owner, mode (setuid, setgid, sticky included), xattrs and times. Both
/// trees are opened as [`Root`]s, so no symlink in the tree can lead the
/// copy outside either.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<(), SnapshotError> {
    let from = Root::open(src)?;
    create_dir(dst, 0o700)?;
    let to = Root::open(dst)?;
    // The first path copied of every inode with several links.
    let mut linked: HashMap<(u64, u64), PathBuf> = HashMap::new();
    // Directories in the order they were made: their metadata goes on last,
    // deepest first, so filling them changes neither mode nor times.
    let mut dirs: Vec<(PathBuf, Metadata)> = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let md = from.stat(&rel)?;
        match md.kind {
            FileKind::Dir => {
                if !rel.as_os_str().is_empty() {
                    to.mkdir(&rel, 0o700)?;
                }
                for (name, _) in from.read_dir(&rel)? {
                    todo.push(rel.join(name));
                }
                dirs.push((rel, md));
                continue;
            }
            _ if md.nlink > 1 => {
                if let Some(first) = linked.get(&(md.dev, md.ino)) {
                    to.hardlink(first, &rel)?;
                    continue;
                }
                linked.insert((md.dev, md.ino), rel.clone());
                copy_entry(&from, &to, &rel, &md)?;
            }
            _ => copy_entry(&from, &to, &rel, &md)?,
        }
        copy_metadata(&from, &rel, &md, &RootEntry(&to, &rel), everything())?;
    }
    for (rel, md) in dirs.iter().rev() {
        copy_metadata(&from, rel, md, &RootEntry(&to, rel), everything())?;
    }
    Ok(())
}

/// Every xattr, and times.
fn everything() -> MetadataCopy {
    MetadataCopy {
        skip_xattr: |_| false,
        times: true,
    }
}

/// Creates the non-directory `rel` in `to` as it is in `from`.
fn copy_entry(from: &Root, to: &Root, rel: &Path, md: &Metadata) -> Result<(), SnapshotError> {
    match md.kind {
        FileKind::File => {
            let mut src = from.open_file(rel)?;
            let mut dst = to.create_file(rel, 0o600)?;
            std::io::copy(&mut src, &mut dst).map_err(|e| SnapshotError::Io {
                op: "copy",
                path: to.path().join(rel),
                source: e,
            })?;
        }
        FileKind::Symlink => to.symlink(&from.read_link(rel)?, rel)?,
        // Devices, fifos and sockets are recreated as nodes.
        kind => to.mknod(rel, kind, md.mode, md.rdev)?,
    }
    Ok(())
}
