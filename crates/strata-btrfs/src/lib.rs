//! The btrfs backend: every snapshot's `fs` is a btrfs subvolume holding
//! its complete tree. A snapshot without a parent starts as an empty
//! subvolume; preparing on a parent takes a writable btrfs snapshot of the
//! parent's subvolume, and a view a read-only one; committing flips the
//! subvolume read-only; removing deletes it.
//!
//! Trade-offs against the other backends:
//!
//! * Snapshots are O(1): a btrfs snapshot shares every extent and metadata
//!   block with its source and copies only what is later written (copy on
//!   write), however large the tree. Native copies the whole tree (or
//!   reflinks each file) on every prepare.
//! * No layer limit: each snapshot is a whole tree, so a chain of any depth
//!   mounts as one bind, where overlay stacks lower directories (and the
//!   kernel caps how many).
//! * No hard links across snapshots: each subvolume is its own inode space
//!   and `link(2)` between two fails with `Errno::XDEV`, so the capabilities
//!   claim neither cross-snapshot links nor overlay layers. A merge copies
//!   what it takes from other snapshots, or reflinks it (`FICLONE` does work
//!   across subvolumes of one file system).
//! * Creating, snapshotting and flipping a subvolume read-only each commit
//!   a btrfs transaction: cheap in data, but a flush each.
//! * Deleting a subvolume needs `CAP_SYS_ADMIN` (or the
//!   `user_subvol_rm_allowed` mount option); the space comes back when the
//!   kernel's cleaner gets to it, after the call returns.
//!
//! Views: a view's mounts are a read-only bind of its parent's `fs`, the
//! same tree its own read-only snapshot holds, since a committed parent is
//! read-only and cannot go while the view exists. The store's
//! `view_mounts` (a view of a committed snapshot without a view snapshot)
//! relies on exactly that: it asks for a view's mounts with a directory
//! that does not exist.
//!
//! Usage: with quotas on (`btrfs quota enable`), a snapshot's size is its
//! qgroup's exclusive bytes (what only it holds, what deleting it frees),
//! read after a sync so recent writes count; its inode count still comes
//! from walking the tree, btrfs keeping no per-subvolume count. With quotas
//! off, or a qgroup being rescanned or inconsistent, both come from the
//! walk, which counts the whole tree as native's does.
//!
//! Crash safety: a crash can leave a staging or trash directory in
//! `<root>/tmp` holding a subvolume, writable or read-only, or a subvolume
//! with subvolumes nested in it (made inside an active snapshot);
//! [`Backend::remove`] deletes all of those (the store calls it for each
//! at open), then the directory.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::path::{Path, PathBuf};

use strata_core::Mount;
use strata_snapshot::{Backend, Capabilities, Kind, SnapshotError, Usage, disk_usage, remove_tree};
use strata_sys::btrfs;
use strata_sys::errno::Errno;

/// The btrfs backend.
#[derive(Debug)]
pub struct BtrfsBackend {
    root: PathBuf,
}

impl BtrfsBackend {
    /// The backend for snapshots under `root` (the state root, or its
    /// `snapshots/` directory: the store's `snapshots/` and `tmp/` must be
    /// on the btrfs checked here). Creates `root` if needed; refuses it,
    /// naming it, when it is not on btrfs.
    pub fn new(root: &Path) -> Result<BtrfsBackend, SnapshotError> {
        std::fs::create_dir_all(root).map_err(|e| SnapshotError::Io {
            op: "create",
            path: root.to_path_buf(),
            source: e,
        })?;
        if !btrfs::is_btrfs(root)? {
            return Err(SnapshotError::Invalid(format!(
                "{} is not on btrfs (its file system's magic number is {:#x}): the btrfs \
                 snapshotter keeps every snapshot as a subvolume, so its state root must be \
                 on a btrfs file system",
                root.display(),
                btrfs::fs_magic(root)?
            )));
        }
        Ok(BtrfsBackend {
            root: root.to_path_buf(),
        })
    }

    /// The directory this backend was checked for.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Backend for BtrfsBackend {
    fn name(&self) -> &'static str {
        "btrfs"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::none().with_cheap_snapshots(true)
    }

    fn create(&self, dir: &Path, kind: Kind, parents: &[PathBuf]) -> Result<(), SnapshotError> {
        let fs = dir.join("fs");
        let read_only = match kind {
            Kind::Active => false,
            Kind::View => true,
            Kind::Committed => {
                return Err(SnapshotError::Invalid(
                    "a committed snapshot is made by committing an active one".into(),
                ));
            }
        };
        match parents.first() {
            // A snapshot of a committed (read-only) subvolume: every extent
            // shared, nothing copied. The kernel commits a transaction to
            // make it, so it is durable when the call returns.
            Some(parent) => btrfs::snapshot(&parent.join("fs"), &fs, read_only)?,
            None => {
                btrfs::create_subvolume(&fs)?;
                // The kernel applies the umask; a snapshot's root is 0755.
                std::fs::set_permissions(&fs, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                    .map_err(|e| SnapshotError::Io {
                        op: "chmod",
                        path: fs.clone(),
                        source: e,
                    })?;
                if read_only {
                    btrfs::set_read_only(&fs, true)?;
                }
            }
        }
        Ok(())
    }

    fn mounts(&self, dir: &Path, kind: Kind, parents: &[PathBuf]) -> Vec<Mount> {
        // A view binds the parent's read-only subvolume: the view's own
        // snapshot of it holds the same tree, and `view_mounts` passes a
        // directory that has no snapshot in it.
        strata_snapshot::whole_tree_mounts(dir, kind, parents)
    }

    fn commit(&self, dir: &Path) -> Result<(), SnapshotError> {
        // The store syncs the file system next, which makes the flag durable
        // with the last writes.
        btrfs::set_read_only(&dir.join("fs"), true)?;
        Ok(())
    }

    fn abort_commit(&self, dir: &Path) -> Result<(), SnapshotError> {
        let fs = dir.join("fs");
        if btrfs::is_subvolume(&fs)? {
            btrfs::set_read_only(&fs, false)?;
        }
        Ok(())
    }

    fn remove(&self, dir: &Path) -> Result<(), SnapshotError> {
        let fs = dir.join("fs");
        // A removal (or a crash) may have deleted the subvolume already,
        // or stopped before making it: then `fs` is absent or a plain
        // directory, which the tree removal takes.
        if btrfs::is_subvolume(&fs)? {
            btrfs::delete_subvolume(&fs)?;
        }
        remove_tree(dir)
    }

    fn usage(&self, dir: &Path) -> Result<Usage, SnapshotError> {
        let fs = dir.join("fs");
        let walked = disk_usage(&fs)?;
        match exclusive_bytes(&fs) {
            Ok(Some(size)) => Ok(Usage {
                size,
                inodes: walked.inodes,
            }),
            Ok(None) => Ok(walked),
            // Reading the quota tree needs CAP_SYS_ADMIN.
            Err(e) if e.errno() == Some(Errno::PERM) => {
                tracing::debug!(path = %fs.display(), "cannot read qgroups; usage from the walk");
                Ok(walked)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The exclusive bytes of the subvolume `fs` when quotas are on and
/// consistent, counted after a sync (qgroups are updated at transaction
/// commit, so the writes since the last one would be missing).
fn exclusive_bytes(fs: &Path) -> Result<Option<u64>, strata_sys::SysError> {
    if btrfs::qgroup(fs)?.is_none() {
        return Ok(None);
    }
    strata_sys::sync::syncfs(fs)?;
    Ok(btrfs::qgroup(fs)?.map(|q| q.exclusive))
}

// The README's examples compile and run as doc tests, so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
