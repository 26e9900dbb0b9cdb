//! Opening a state root: the directory (mode 0700), its `LOCK` (one process
//! per root), the metadata file, the content store and the snapshot store
//! with the root's backend, with `tmp/` emptied. A root remembers its
//! backend; asking for another one is refused. This moves into the cache
//! facade once it exists.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::ValueEnum;
use strata_content::ContentStore;
use strata_core::{Classify, ErrorKind};
use strata_leases::{Collect, Collector, LeaseManager};
use strata_metadata::{MetaDb, Reader};
use strata_snapshot::{Backend, SnapshotStore, Snapshotter};
use strata_sys::lock::FileLock;

/// The snapshot backends a root can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// Kernel overlayfs.
    Overlay,
    /// Full copies (reflink where the file system can).
    Native,
    /// Overlay where the kernel and privileges allow it, else native.
    Auto,
}

/// The `meta` row that records a root's backend.
const BACKEND_ROW: &str = "snapshot_backend";

impl BackendChoice {
    fn code(self) -> u64 {
        match self {
            BackendChoice::Overlay => 1,
            BackendChoice::Native => 2,
            BackendChoice::Auto => 0,
        }
    }

    fn from_code(code: u64) -> Option<Self> {
        match code {
            1 => Some(BackendChoice::Overlay),
            2 => Some(BackendChoice::Native),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            BackendChoice::Overlay => "overlay",
            BackendChoice::Native => "native",
            BackendChoice::Auto => "auto",
        }
    }
}

/// An error of the CLI's own with a shared kind (for the exit code).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub kind: ErrorKind,
    pub message: String,
}

impl Classify for CliError {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

/// An open root, owned by this process until dropped.
#[derive(Debug)]
pub struct Root {
    pub db: Arc<MetaDb>,
    pub content: ContentStore,
    pub snapshots: SnapshotStore,
    pub leases: LeaseManager,
    pub collector: Collector,
    /// Scratch space (mount points), emptied at every open.
    pub tmp: PathBuf,
    _lock: FileLock,
}

/// True when an overlay can be mounted here: a trial mount in `tmp`.
fn overlay_works(tmp: &Path) -> bool {
    if strata_sys::effective_uid() != 0 {
        return false;
    }
    let probe = tmp.join("overlay-probe");
    let dirs = ["lower", "upper", "work", "merged"].map(|d| probe.join(d));
    if dirs.iter().any(|d| fs::create_dir_all(d).is_err()) {
        return false;
    }
    let m = strata_core::Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        target: PathBuf::new(),
        options: vec![
            format!("lowerdir={}", dirs[0].display()),
            format!("upperdir={}", dirs[1].display()),
            format!("workdir={}", dirs[2].display()),
        ],
    };
    let ok = strata_sys::mount::mount(&m, &dirs[3]).is_ok();
    if ok && let Err(e) = strata_sys::mount::unmount(&dirs[3]) {
        tracing::warn!(error = %e, "could not unmount the overlay probe");
        return false;
    }
    ok
}

/// The backend for this root: the one it remembers, which must match an
/// explicit choice; otherwise the choice (auto resolved), recorded.
fn resolve_backend(
    path: &Path,
    db: &MetaDb,
    choice: BackendChoice,
) -> anyhow::Result<BackendChoice> {
    let stored = db
        .read()?
        .meta(BACKEND_ROW)?
        .and_then(BackendChoice::from_code);
    if let Some(stored) = stored {
        if choice != BackendChoice::Auto && choice != stored {
            return Err(CliError {
                kind: ErrorKind::FailedPrecondition,
                message: format!(
                    "root {} uses the {} backend, not {}",
                    path.display(),
                    stored.name(),
                    choice.name()
                ),
            }
            .into());
        }
        return Ok(stored);
    }
    let resolved = match choice {
        BackendChoice::Auto if overlay_works(&path.join("tmp")) => BackendChoice::Overlay,
        BackendChoice::Auto => BackendChoice::Native,
        explicit => explicit,
    };
    let tx = db.write()?;
    tx.set_meta(BACKEND_ROW, resolved.code())?;
    tx.commit()?;
    Ok(resolved)
}

/// `$STRATA_ROOT`, else `/var/lib/strata` for root, else
/// `$XDG_DATA_HOME/strata` (or `~/.local/share/strata`).
fn default_root() -> anyhow::Result<PathBuf> {
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
        .context("no --root, STRATA_ROOT, XDG_DATA_HOME or HOME to place the state root")?;
    Ok(PathBuf::from(home).join(".local/share/strata"))
}

impl Root {
    pub fn open(root: Option<&Path>, backend: BackendChoice) -> anyhow::Result<Root> {
        let path = match root {
            Some(p) => p.to_path_buf(),
            None => default_root()?,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("create state root {}", path.display()))?;
        let mode = fs::metadata(&path)
            .with_context(|| format!("stat state root {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restrict state root {} to its owner", path.display()))?;
        }
        let lock = FileLock::try_exclusive(&path.join("LOCK"))?;
        let tmp = path.join("tmp");
        let root_dir = strata_sys::Root::open(&path)?;
        root_dir.remove_all(Path::new("tmp"))?;
        fs::create_dir(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        let db = Arc::new(MetaDb::open(&path.join("meta.redb"))?);
        let content = ContentStore::open(&path.join("content"), Arc::clone(&db))?;
        let backend: Arc<dyn Backend> = match resolve_backend(&path, &db, backend)? {
            BackendChoice::Overlay => Arc::new(strata_overlay::Overlay::new(
                &path.join("snapshots"),
                strata_overlay::OverlayConfig::default(),
            )?),
            _ => Arc::new(strata_native::Native),
        };
        let snapshots = SnapshotStore::open(&path, Arc::clone(&db), backend)?;
        let leases = LeaseManager::new(Arc::clone(&db));
        // One process owns the root: temporary leases left now belong to a
        // process that is gone.
        let dropped = leases.remove_temporary()?;
        if dropped > 0 {
            tracing::info!(dropped, "removed temporary leases of a previous process");
        }
        let stores: Vec<Arc<dyn Collect>> =
            vec![Arc::new(content.clone()), Arc::new(snapshots.clone())];
        let collector = Collector::new(Arc::clone(&db), snapshots.name(), stores);
        Ok(Root {
            db,
            content,
            snapshots,
            leases,
            collector,
            tmp,
            _lock: lock,
        })
    }
}
