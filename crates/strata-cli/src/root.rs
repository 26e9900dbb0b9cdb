//! Opening the state root for a command: `--root` and `--backend` handed to
//! `strata_cache::Root::open`, which does all the work, and the CLI's own
//! error type for failures that have no library error.

use std::path::Path;

use clap::ValueEnum;
use strata_cache::{BackendChoice, CacheManager, RootOptions};
use strata_core::{Classify, ErrorKind};

pub use strata_cache::Root;

/// The snapshot backends a root can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// Kernel overlayfs.
    Overlay,
    /// Full copies (reflink where the file system can).
    Native,
    /// Overlay where the kernel and privileges allow it, else native.
    Auto,
}

impl From<BackendArg> for BackendChoice {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Overlay => BackendChoice::Overlay,
            BackendArg::Native => BackendChoice::Native,
            BackendArg::Auto => BackendChoice::Auto,
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

/// Opens the root and its cache manager.
pub fn open(path: Option<&Path>, backend: BackendArg) -> anyhow::Result<CacheManager> {
    let root = Root::open(&RootOptions {
        path: path.map(Path::to_path_buf),
        backend: backend.into(),
    })?;
    Ok(CacheManager::new(root)?)
}
