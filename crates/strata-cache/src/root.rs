//! Opening a state root with one call: the directory (mode 0700), its
//! `LOCK` (one process per root), leftover mounts of a dead process
//! detached, `tmp/` and `mounts/` emptied, the metadata file, the content
//! store and the snapshot store with the root's backend (given by value,
//! remembered by name in the metadata; `auto` probes a real overlay mount),
//! temporary leases of a
//! previous process dropped, and the collector wired to both stores.
//!
//! A root is marked open while in use and closed when its `Root` is
//! dropped: after a clean close the stores skip reconciling disk with rows,
//! so a command starts in the same time whatever the root holds; after a
//! kill everything is reconciled.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_content::{ContentError, ContentStore};
use strata_core::{Classify, ErrorKind};
use strata_leases::{Collect, Collector, LeaseError, LeaseManager};
use strata_metadata::records::SettingRecord;
use strata_metadata::{LastClose, MetaDb, MetaError, Reader};
use strata_snapshot::{Backend, OverlayConfig, SnapshotError, SnapshotStore, Snapshotter};
use strata_sys::SysError;
use strata_sys::lock::{FileLock, LockError};

/// The snapshot backend a root uses, given by value: a built-in one with
/// its configuration, `Auto`, or any [`Backend`] (an embedder's own). A
/// root records the name of the backend it was made with and opens only
/// with a backend of that name.
///
/// Each built-in backend is a feature of this crate named after it
/// (`overlay`, `native`, `btrfs`, all default). Every variant exists in
/// every build, so code naming one compiles whatever is built in; opening
/// a root with a backend left out fails with [`OpenError::BackendNotBuilt`].
///
/// ```
/// use std::sync::Arc;
/// use strata_cache::BackendChoice;
///
/// // The built-in native backend, chosen by value ...
/// assert_eq!(BackendChoice::Custom(Arc::new(strata_native::Native)).name(), "native");
/// // ... or by its variant; overlay takes its configuration.
/// assert_eq!(BackendChoice::overlay().name(), "overlay");
/// assert_eq!(BackendChoice::default().name(), "auto");
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum BackendChoice {
    /// Kernel overlayfs, with its configuration.
    Overlay(OverlayConfig),
    /// Full copies (reflink where the file system can).
    Native,
    /// btrfs subvolumes: every snapshot made in O(1), no layer limit; the
    /// root must be on btrfs.
    Btrfs,
    /// btrfs when the root is on btrfs, else overlay where the kernel and
    /// privileges allow it, else native; a root that has a backend keeps
    /// it. Only the built-in backends are tried; without native, a root
    /// where neither of the others works fails with
    /// [`OpenError::NoBackend`].
    #[default]
    Auto,
    /// Any backend, by value: an embedder's own (tested with
    /// `strata_snapshot::testsuite`), or a built-in one set up by hand.
    Custom(Arc<dyn Backend>),
}

/// The setting that records a root's backend, by name.
const BACKEND_ROW: &str = "snapshot_backend";

impl BackendChoice {
    /// Overlay with the default configuration.
    pub fn overlay() -> BackendChoice {
        BackendChoice::Overlay(OverlayConfig::default())
    }

    /// The built-in backend a user names (`overlay`, `native`, `btrfs`,
    /// `auto`).
    pub fn named(name: &str) -> Option<BackendChoice> {
        match name {
            "overlay" => Some(BackendChoice::overlay()),
            "native" => Some(BackendChoice::Native),
            "btrfs" => Some(BackendChoice::Btrfs),
            "auto" => Some(BackendChoice::Auto),
            _ => None,
        }
    }

    /// The backend's name (`overlay`, `native`, `auto`, or a custom
    /// backend's own).
    pub fn name(&self) -> &str {
        match self {
            BackendChoice::Overlay(_) => "overlay",
            BackendChoice::Native => "native",
            BackendChoice::Btrfs => "btrfs",
            BackendChoice::Auto => "auto",
            BackendChoice::Custom(b) => b.name(),
        }
    }

    /// The backend itself, for the root at `path` (never called on
    /// `Auto`, which is resolved first); a built-in one this build leaves
    /// out is refused by name.
    fn build(&self, path: &Path) -> Result<Arc<dyn Backend>, OpenError> {
        Ok(match self {
            #[cfg(feature = "overlay")]
            BackendChoice::Overlay(config) => Arc::new(strata_overlay::Overlay::new(
                &path.join("snapshots"),
                config.clone(),
            )?),
            #[cfg(feature = "btrfs")]
            BackendChoice::Btrfs => Arc::new(strata_btrfs::BtrfsBackend::new(path)?),
            #[cfg(feature = "native")]
            BackendChoice::Native => Arc::new(strata_native::Native),
            BackendChoice::Custom(b) => Arc::clone(b),
            missing => {
                return Err(OpenError::BackendNotBuilt {
                    path: path.to_path_buf(),
                    name: missing.name().to_owned(),
                });
            }
        })
    }
}

/// A root that could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// No path was given and none could be derived.
    #[error("no root given and no STRATA_ROOT, XDG_DATA_HOME or HOME to place one")]
    NoDefault,
    /// Creating or preparing the root's directories failed.
    #[error("state root {}: {what}: {source}", path.display())]
    Io {
        /// The root.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// Another process owns the root.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The root was made with another backend.
    #[error("root {} uses the {stored} backend, not {wanted}", path.display())]
    BackendMismatch {
        /// The root.
        path: PathBuf,
        /// The backend it was made with.
        stored: String,
        /// The backend asked for.
        wanted: String,
    },
    /// The root was made with a backend this program does not build in,
    /// and none of that name was given.
    #[error("root {} uses the {name} backend, which is not built in: open it with that backend (BackendChoice::Custom)", path.display())]
    UnknownBackend {
        /// The root.
        path: PathBuf,
        /// The backend it was made with.
        name: String,
    },
    /// The backend asked for (or the one the root was made with) is a
    /// built-in one this build of strata-cache leaves out: its feature,
    /// named after it, is off.
    #[error("root {}: the {name} backend is not built in (strata-cache's `{name}` feature is off)", path.display())]
    BackendNotBuilt {
        /// The root.
        path: PathBuf,
        /// The backend, which is also the feature's name.
        name: String,
    },
    /// `Auto` found no built-in backend that works at the root: native,
    /// which works anywhere, is not built in, and the others that are
    /// cannot work there.
    #[error("root {}: no built-in snapshot backend works here, and the native backend, which works anywhere, is not built in (strata-cache's `native` feature is off): name one that is, or a BackendChoice::Custom", path.display())]
    NoBackend {
        /// The root.
        path: PathBuf,
    },
    /// Cleaning up what a dead process left failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// The metadata file could not be opened.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The content store could not be opened.
    #[error(transparent)]
    Content(#[from] ContentError),
    /// The snapshot store could not be opened.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// Leftover leases could not be dropped.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// One of the above, naming the root it happened in.
    #[error("open root {}: {source}", path.display())]
    Store {
        /// The root.
        path: PathBuf,
        /// What failed.
        #[source]
        source: Box<OpenError>,
    },
}

impl OpenError {
    /// Names the root in a store's failure, which does not name it.
    fn in_root(self, path: &Path) -> OpenError {
        match self {
            e @ (OpenError::Sys(_)
            | OpenError::Meta(_)
            | OpenError::Content(_)
            | OpenError::Snapshot(_)
            | OpenError::Lease(_)) => OpenError::Store {
                path: path.to_path_buf(),
                source: Box::new(e),
            },
            e => e,
        }
    }
}

impl Classify for OpenError {
    fn kind(&self) -> ErrorKind {
        match self {
            OpenError::NoDefault => ErrorKind::Invalid,
            OpenError::Io { source, .. } => Classify::kind(source),
            OpenError::Lock(e) => e.kind(),
            OpenError::BackendMismatch { .. }
            | OpenError::UnknownBackend { .. }
            | OpenError::BackendNotBuilt { .. }
            | OpenError::NoBackend { .. } => ErrorKind::FailedPrecondition,
            OpenError::Sys(e) => e.kind(),
            OpenError::Meta(e) => e.kind(),
            OpenError::Store { source, .. } => source.kind(),
            OpenError::Content(e) => e.kind(),
            OpenError::Snapshot(e) => e.kind(),
            OpenError::Lease(e) => e.kind(),
        }
    }
}

/// How to open a root.
#[derive(Clone, Debug, Default)]
pub struct RootOptions {
    /// The root's directory; [`default_root`] when `None`.
    pub path: Option<PathBuf>,
    /// The backend wanted; a root remembers the one it was made with.
    pub backend: BackendChoice,
}

/// An open root, owned by this process until dropped.
#[derive(Debug)]
pub struct Root {
    /// The root's directory.
    pub path: PathBuf,
    /// The metadata file.
    pub db: Arc<MetaDb>,
    /// The content store.
    pub content: ContentStore,
    /// The snapshot store.
    pub snapshots: SnapshotStore,
    /// The lease manager (default namespace).
    pub leases: LeaseManager,
    /// The garbage collector over both stores.
    pub collector: Arc<Collector>,
    /// The backend in use (never `Auto`).
    pub backend: BackendChoice,
    /// Scratch space (mount points, staging), emptied at every open.
    pub tmp: PathBuf,
    /// Long-lived mount points (the shared mount pool), emptied at open.
    pub mounts: PathBuf,
    /// How the root was closed before this open: after a clean close the
    /// stores trust their rows and skip reconciliation.
    pub last_close: LastClose,
}

impl Root {
    /// Makes every directory whose entries change after a transaction
    /// durable: removed ingest directories, swept blobs, snapshot
    /// directories moved to `tmp/` and removed there.
    fn settle(&self) -> Result<(), SysError> {
        let content = self.path.join("content");
        let mut dirs = vec![content.join("ingest")];
        dirs.extend(
            strata_core::Algorithm::ALL
                .iter()
                .map(|a| content.join("blobs").join(a.as_str())),
        );
        dirs.extend([
            self.path.join("snapshots"),
            self.tmp.clone(),
            self.mounts.clone(),
        ]);
        for d in dirs.iter().filter(|d| d.is_dir()) {
            strata_sys::sync::fsync_dir(d)?;
        }
        Ok(())
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        // A panic may have stopped work half-way: leave the root marked
        // open, so the next open reconciles.
        if std::thread::panicking() {
            return;
        }
        // "Closed cleanly" tells the next open to trust disk and rows
        // without reconciling, so everything done on disk must be durable
        // first: file removals made after a transaction (an ingest
        // directory, a swept blob or snapshot) are not, by themselves, and
        // an fdatasync of the metadata file commits no file-system journal.
        // A power cut found this (`cargo xtask powerloss`).
        if let Err(e) = self.settle() {
            tracing::warn!(root = %self.path.display(), error = %e, "could not make the root's directories durable; the next open reconciles");
            return;
        }
        match self.db.mark_closed() {
            Ok(()) => {}
            // A commit failed earlier (a full disk, an I/O error) and its
            // error went to the caller: the database refuses writes until
            // it is opened again, which is the reconciliation a root left
            // open gets anyway. A second message about it is noise.
            Err(e @ MetaError::Refused { .. }) => {
                tracing::debug!(root = %self.path.display(), error = %e, "the root stays marked open after a failed commit; the next open reconciles");
            }
            Err(e) => {
                tracing::warn!(root = %self.path.display(), error = %e, "could not mark the root closed; the next open reconciles");
            }
        }
    }
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> OpenError {
    let path = path.to_path_buf();
    move |source| OpenError::Io { path, what, source }
}

/// True when an overlay can be mounted here: a trial mount in `tmp`.
#[cfg(feature = "overlay")]
fn overlay_works(tmp: &Path) -> bool {
    if strata_sys::effective_uid() != 0 {
        return false;
    }
    let probe = tmp.join("overlay-probe");
    let dirs = ["lower", "upper", "work", "merged"].map(|d| probe.join(d));
    if dirs.iter().any(|d| fs::create_dir_all(d).is_err()) {
        return false;
    }
    let m = strata_core::Mount::overlay(
        strata_core::OverlayLayers {
            lowers: vec![dirs[0].clone()],
            upper: Some(dirs[1].clone()),
            work: Some(dirs[2].clone()),
            ..Default::default()
        },
        Vec::new(),
    );
    let ok = strata_sys::mount::mount(&m, &dirs[3]).is_ok();
    if ok && let Err(e) = strata_sys::mount::unmount(&dirs[3]) {
        tracing::warn!(error = %e, "could not unmount the overlay probe");
        return false;
    }
    ok
}

/// The backend for this root: the one it remembers (by name), which an
/// explicit choice must match; otherwise the choice (auto resolved), true
/// when its name is still to be recorded (once the backend is built and
/// its store open: a backend that cannot work here is never remembered).
fn resolve_backend(
    path: &Path,
    db: &MetaDb,
    choice: &BackendChoice,
) -> Result<(BackendChoice, bool), OpenError> {
    let stored = db.read()?.get::<SettingRecord>(BACKEND_ROW)?;
    if let Some(SettingRecord { value: stored }) = stored {
        let known = match choice {
            BackendChoice::Auto => {
                BackendChoice::named(&stored).ok_or_else(|| OpenError::UnknownBackend {
                    path: path.to_path_buf(),
                    name: stored,
                })
            }
            explicit if explicit.name() == stored => Ok(explicit.clone()),
            explicit => Err(OpenError::BackendMismatch {
                path: path.to_path_buf(),
                stored,
                wanted: explicit.name().to_owned(),
            }),
        };
        return known.map(|b| (b, false));
    }
    let resolved = match choice {
        BackendChoice::Auto => auto_backend(path)?,
        explicit => explicit.clone(),
    };
    Ok((resolved, true))
}

/// What `Auto` picks for a new root at `path`, among the built-in
/// backends: btrfs where it works, else overlay where it works, else
/// native.
fn auto_backend(path: &Path) -> Result<BackendChoice, OpenError> {
    #[cfg(feature = "btrfs")]
    if btrfs_works(&path.join("tmp")) {
        return Ok(BackendChoice::Btrfs);
    }
    #[cfg(feature = "overlay")]
    if overlay_works(&path.join("tmp")) {
        return Ok(BackendChoice::overlay());
    }
    if cfg!(feature = "native") {
        tracing::info!("overlay mounts do not work here; using the native backend");
        Ok(BackendChoice::Native)
    } else {
        Err(OpenError::NoBackend {
            path: path.to_path_buf(),
        })
    }
}

/// Records `backend` as the root's.
fn remember_backend(db: &MetaDb, backend: &BackendChoice) -> Result<(), OpenError> {
    let tx = db.write()?;
    tx.put(
        BACKEND_ROW,
        &SettingRecord {
            value: backend.name().to_owned(),
        },
    )?;
    Ok(tx.commit()?)
}

/// `$STRATA_ROOT`, else `/var/lib/strata` for root, else
/// `$XDG_DATA_HOME/strata` (or `~/.local/share/strata`).
pub fn default_root() -> Result<PathBuf, OpenError> {
    if let Some(p) = std::env::var_os("STRATA_ROOT").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if strata_sys::effective_uid() == 0 {
        return Ok(PathBuf::from("/var/lib/strata"));
    }
    if let Some(p) = std::env::var_os("XDG_DATA_HOME").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p).join("strata"));
    }
    let home = std::env::var_os("HOME")
        .filter(|p| !p.is_empty())
        .ok_or(OpenError::NoDefault)?;
    Ok(PathBuf::from(home).join(".local/share/strata"))
}

/// Empties a scratch directory of the root: detaches what a dead process
/// left mounted there, then removes everything (never across a mount) but
/// the snapshot store's staging and trash, which the store removes through
/// its backend once it is open.
fn empty_scratch(root_dir: &strata_sys::Root, path: &Path, name: &str) -> Result<(), OpenError> {
    let dir = path.join(name);
    if dir.exists() {
        let detached = strata_sys::mount::detach_below(&dir)?;
        if detached > 0 {
            tracing::info!(dir = %dir.display(), detached, "detached mounts a previous process left");
        }
        for (entry, _) in root_dir.read_dir(Path::new(name))? {
            if !strata_snapshot::is_store_scratch(&entry.to_string_lossy()) {
                root_dir.remove_all(&Path::new(name).join(entry))?;
            }
        }
    } else {
        fs::create_dir(&dir).map_err(io(&dir, "create"))?;
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io(&dir, "chmod"))
}

/// True when btrfs subvolumes can be made and deleted in `tmp` by this
/// process (deleting needs privilege or `user_subvol_rm_allowed`).
#[cfg(feature = "btrfs")]
fn btrfs_works(tmp: &Path) -> bool {
    if !strata_sys::btrfs::is_btrfs(tmp).unwrap_or(false) {
        return false;
    }
    let probe = tmp.join("btrfs-probe");
    if strata_sys::btrfs::create_subvolume(&probe).is_err() {
        return false;
    }
    match strata_sys::btrfs::delete_subvolume(&probe) {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(error = %e, "btrfs subvolumes cannot be deleted here; not using the btrfs backend");
            // An empty subvolume goes by rmdir where the ioctl is refused.
            if let Err(e) = fs::remove_dir(&probe) {
                tracing::warn!(probe = %probe.display(), error = %e, "could not remove the btrfs probe");
            }
            false
        }
    }
}

impl Root {
    /// Opens (creating if needed) the root `opts` names.
    ///
    /// ```
    /// use strata_cache::{BackendChoice, Root, RootOptions};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let opts = RootOptions {
    ///     path: Some(dir.path().to_path_buf()),
    ///     backend: BackendChoice::Native,
    /// };
    /// let root = Root::open(&opts)?;
    /// assert_eq!(root.backend.name(), "native");
    /// drop(root);
    /// // A root keeps the backend it was made with.
    /// let other = RootOptions { backend: BackendChoice::overlay(), ..opts };
    /// assert!(Root::open(&other).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[tracing::instrument(skip_all)]
    pub fn open(opts: &RootOptions) -> Result<Root, OpenError> {
        let path = match &opts.path {
            Some(p) => p.clone(),
            None => default_root()?,
        };
        Root::open_at(path.clone(), opts).map_err(|e| e.in_root(&path))
    }

    fn open_at(path: PathBuf, opts: &RootOptions) -> Result<Root, OpenError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .map_err(io(&path, "create"))?;
        let mode = fs::metadata(&path)
            .map_err(io(&path, "stat"))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o700))
                .map_err(io(&path, "restrict to its owner"))?;
        }
        let lock = FileLock::try_exclusive(&path.join("LOCK"))?;
        let root_dir = strata_sys::Root::open(&path)?;
        empty_scratch(&root_dir, &path, "tmp")?;
        empty_scratch(&root_dir, &path, "mounts")?;
        // The root's lock goes with the metadata file: it is released only
        // once the database has closed, whatever still holds it then (a
        // background collection, a task finishing), so the next process
        // never finds the file open.
        let db = Arc::new(MetaDb::open_holding(&path.join("meta.redb"), lock)?);
        let last_close = db.last_close()?;
        db.mark_open()?;
        let content = ContentStore::open_after(&path.join("content"), Arc::clone(&db), last_close)?;
        let (backend, new) = resolve_backend(&path, &db, &opts.backend)?;
        let snapshots =
            SnapshotStore::open_after(&path, Arc::clone(&db), backend.build(&path)?, last_close)?;
        if new {
            remember_backend(&db, &backend)?;
        }
        // Removals a previous process left in `tmp/` (after a clean close
        // too: a failed removal is only logged).
        let leftovers = snapshots.cleanup()?;
        if leftovers > 0 {
            tracing::info!(
                leftovers,
                "removed snapshot directories a previous removal left"
            );
        }
        let leases = LeaseManager::new(Arc::clone(&db));
        // One process owns the root: temporary leases left now belong to a
        // process that is gone (operation leases, views of mounted refs,
        // temporary leases a user made). Only the lease table is read.
        let dropped = leases.remove_temporary()?;
        if dropped > 0 {
            tracing::info!(dropped, "removed temporary leases of a previous process");
        }
        let stores: Vec<Arc<dyn Collect>> =
            vec![Arc::new(content.clone()), Arc::new(snapshots.clone())];
        let collector = Arc::new(Collector::new(Arc::clone(&db), snapshots.name(), stores));
        Ok(Root {
            tmp: path.join("tmp"),
            mounts: path.join("mounts"),
            path,
            db,
            content,
            snapshots,
            leases,
            collector,
            backend,
            last_close,
        })
    }
}
