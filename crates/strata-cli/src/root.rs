//! Opening a state root: the directory (mode 0700), its `LOCK` (one process
//! per root), the metadata file and the content store, with `tmp/` emptied.
//! This moves into the cache facade once it exists.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use strata_content::ContentStore;
use strata_metadata::MetaDb;
use strata_sys::lock::FileLock;

/// An open root, owned by this process until dropped.
#[derive(Debug)]
pub struct Root {
    pub db: Arc<MetaDb>,
    pub content: ContentStore,
    _lock: FileLock,
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
    pub fn open(root: Option<&Path>) -> anyhow::Result<Root> {
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
        Ok(Root {
            db,
            content,
            _lock: lock,
        })
    }
}
