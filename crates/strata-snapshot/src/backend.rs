//! The seam between the shared store and a backend: only directory work.

use std::path::{Path, PathBuf};

use strata_core::Mount;

use crate::error::SnapshotError;
use crate::info::{Kind, Usage};

/// Configuration of the overlay backend (`strata_overlay`, which
/// re-exports it). It sits here, below the backend, so that a choice among
/// backends (strata-cache's `BackendChoice::Overlay`) keeps its shape in a
/// build that leaves the overlay backend out.
#[derive(Clone, Debug, Default)]
pub struct OverlayConfig {
    /// Extra overlay options for every overlay mount (`metacopy=on`,
    /// `redirect_dir=on`, `volatile`, `index=on`, ...).
    pub mount_options: Vec<String>,
}

/// What a backend's snapshots allow beyond containerd's contract; the
/// data plane asks these instead of comparing backend names.
///
/// More may be added: a backend builds its value from [`Capabilities::none`]
/// with the `with_*` methods, so a new capability (false until a backend
/// claims it) breaks no backend.
///
/// ```
/// use strata_snapshot::Capabilities;
/// let caps = Capabilities::none().with_cross_snapshot_links(true);
/// assert!(caps.cross_snapshot_links && !caps.overlay_layers);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// A snapshot's directory holds only its own layer and a chain mounts
    /// as an overlay: merges reuse a base chain as lower directories,
    /// diffs read upper directories, layers are written straight into
    /// them.
    pub overlay_layers: bool,
    /// Committed snapshots are never written in place (overlay copies up,
    /// native copies on prepare), so their files may be hard-linked into
    /// other snapshots.
    pub cross_snapshot_links: bool,
    /// Overlay runs with `userxattr` (in a user namespace): its private
    /// attributes are `user.overlay.*`.
    pub userxattr: bool,
    /// Preparing on a committed parent costs the same whatever the
    /// parent's size (a copy-on-write snapshot of its whole tree, as
    /// btrfs takes): a merge starts from its first input instead of
    /// copying it in.
    pub cheap_snapshots: bool,
}

impl Capabilities {
    /// Nothing beyond containerd's contract: the data plane takes the
    /// portable path everywhere (mounts the snapshot, walks trees, copies).
    pub const fn none() -> Capabilities {
        Capabilities {
            overlay_layers: false,
            cross_snapshot_links: false,
            userxattr: false,
            cheap_snapshots: false,
        }
    }

    /// With [`Capabilities::overlay_layers`] set to `yes`.
    #[must_use]
    pub const fn with_overlay_layers(mut self, yes: bool) -> Capabilities {
        self.overlay_layers = yes;
        self
    }

    /// With [`Capabilities::cross_snapshot_links`] set to `yes`.
    #[must_use]
    pub const fn with_cross_snapshot_links(mut self, yes: bool) -> Capabilities {
        self.cross_snapshot_links = yes;
        self
    }

    /// With [`Capabilities::userxattr`] set to `yes`.
    #[must_use]
    pub const fn with_userxattr(mut self, yes: bool) -> Capabilities {
        self.userxattr = yes;
        self
    }

    /// With [`Capabilities::cheap_snapshots`] set to `yes`.
    #[must_use]
    pub const fn with_cheap_snapshots(mut self, yes: bool) -> Capabilities {
        self.cheap_snapshots = yes;
        self
    }
}

/// Directory work a snapshot backend does for the shared store. Each
/// snapshot owns a directory (`<root>/snapshots/<id>`) whose `fs`
/// subdirectory holds its tree (the upper layer for overlay, the full tree
/// for native).
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// The backend's name.
    fn name(&self) -> &'static str;

    /// What its snapshots allow.
    fn capabilities(&self) -> Capabilities;

    /// Fills the new, empty snapshot directory `dir` for a snapshot of
    /// `kind` on top of `parents` (snapshot directories, nearest first); it
    /// must create `dir/fs`. The store then fsyncs `dir` itself (its own
    /// entries, not what lies below them) and renames it into place, so
    /// files written here are the backend's to make durable first
    /// (`strata_sys::sync::syncfs`, as the native backend does).
    fn create(&self, dir: &Path, kind: Kind, parents: &[PathBuf]) -> Result<(), SnapshotError>;

    /// The mounts of snapshot `dir` of `kind` on top of `parents` (nearest
    /// first).
    fn mounts(&self, dir: &Path, kind: Kind, parents: &[PathBuf]) -> Vec<Mount>;

    /// Called when the active snapshot `dir` is committed, after its last
    /// write and before the store syncs it and records it as committed (a
    /// btrfs backend makes its subvolume read-only here). The default does
    /// nothing: the store never writes a committed snapshot.
    fn commit(&self, dir: &Path) -> Result<(), SnapshotError> {
        let _ = dir;
        Ok(())
    }

    /// Undoes [`Backend::commit`] of `dir` when the store could not record
    /// the commit afterwards (the name taken meanwhile, a failed sync or
    /// transaction): the snapshot stays active and must stay writable. The
    /// default does nothing.
    fn abort_commit(&self, dir: &Path) -> Result<(), SnapshotError> {
        let _ = dir;
        Ok(())
    }

    /// Removes the snapshot directory `dir` and everything in it; the store
    /// has already moved it out of `snapshots/`. Called after a failed
    /// create too, and for what a crash left. The default removes the tree
    /// without following symlinks or crossing a mount (what overlay and
    /// native need); a backend whose snapshots are file-system objects of
    /// their own (subvolumes) deletes those first.
    fn remove(&self, dir: &Path) -> Result<(), SnapshotError> {
        remove_tree(dir)
    }

    /// The disk usage of snapshot `dir` (its own layer, or its whole tree
    /// for a backend of full copies). The default walks `dir/fs` the way
    /// `du` counts; a backend whose file system accounts per snapshot may
    /// answer from that instead.
    fn usage(&self, dir: &Path) -> Result<Usage, SnapshotError> {
        crate::usage::disk_usage(&dir.join("fs"))
    }
}

/// The mounts of a snapshot of a backend whose snapshots each hold a whole
/// tree in `fs` (native copies, btrfs subvolumes): an active snapshot's own
/// tree bound writable; a view of a parent binds the parent's tree
/// read-only (the view has nothing of its own to show); anything else its
/// own tree read-only.
pub fn whole_tree_mounts(dir: &Path, kind: Kind, parents: &[PathBuf]) -> Vec<Mount> {
    match (kind, parents.first()) {
        (Kind::Active, _) => vec![Mount::bind(dir.join("fs"), false)],
        (_, Some(parent)) => vec![Mount::bind(parent.join("fs"), true)],
        (_, None) => vec![Mount::bind(dir.join("fs"), true)],
    }
}

/// Removes `dir` and everything below it, never following a symlink or
/// entering a mount: [`Backend::remove`]'s default, for backends that add
/// to it.
pub fn remove_tree(dir: &Path) -> Result<(), SnapshotError> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(SnapshotError::Invalid(format!(
            "{} is not a snapshot directory",
            dir.display()
        )));
    };
    strata_sys::Root::open(parent)?.remove_all(Path::new(name))?;
    Ok(())
}

/// Creates the directory `path` with exactly `mode` (the process umask does
/// not decide a snapshot's root mode): for backends' `create`.
pub fn create_dir(path: &Path, mode: u32) -> Result<(), SnapshotError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |op, e| SnapshotError::Io {
        op,
        path: path.to_path_buf(),
        source: e,
    };
    std::fs::create_dir(path).map_err(|e| io("create", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io("chmod", e))
}
