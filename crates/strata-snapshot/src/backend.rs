//! The seam between the shared store and a backend: only directory work.

use std::path::{Path, PathBuf};

use strata_core::Mount;

use crate::error::SnapshotError;
use crate::info::Kind;

/// What a backend's snapshots allow beyond containerd's contract; the
/// data plane asks these instead of comparing backend names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
    /// `kind` on top of `parents` (snapshot directories, nearest first). The
    /// store syncs and renames it into place afterwards.
    fn create(&self, dir: &Path, kind: Kind, parents: &[PathBuf]) -> Result<(), SnapshotError>;

    /// The mounts of snapshot `dir` of `kind` on top of `parents` (nearest
    /// first).
    fn mounts(&self, dir: &Path, kind: Kind, parents: &[PathBuf]) -> Vec<Mount>;
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
