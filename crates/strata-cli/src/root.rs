//! Opening the state root for a command: `--root` and `--backend` handed to
//! `strata_cache::Root::open`, which does all the work, and the CLI's own
//! error type for failures that have no library error.

use std::path::Path;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use strata_cache::{BackendChoice, CacheManager, OpenError, RootOptions};
use strata_core::{Classify, ErrorKind};
use strata_sys::lock::LockError;

pub use strata_cache::Root;

/// The snapshot backends a root can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// Kernel overlayfs.
    Overlay,
    /// Full copies (reflink where the file system can).
    Native,
    /// btrfs subvolumes (the root must be on btrfs).
    Btrfs,
    /// btrfs when the root is on btrfs, else overlay where the kernel and
    /// privileges allow it, else native.
    Auto,
}

impl From<BackendArg> for BackendChoice {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Overlay => BackendChoice::overlay(),
            BackendArg::Native => BackendChoice::Native,
            BackendArg::Btrfs => BackendChoice::Btrfs,
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

/// Opens the root and its cache manager. While another process owns the
/// root, waits up to `lock_wait` for it (saying so once on stderr), then
/// fails with the lock error (exit 4).
pub fn open(
    path: Option<&Path>,
    backend: BackendArg,
    lock_wait: Duration,
) -> anyhow::Result<CacheManager> {
    let opts = RootOptions {
        path: path.map(Path::to_path_buf),
        backend: backend.into(),
    };
    let deadline = Instant::now() + lock_wait;
    let mut said = false;
    let root = loop {
        match Root::open(&opts) {
            Err(OpenError::Lock(LockError::Held { path })) if Instant::now() < deadline => {
                if !said {
                    eprintln!(
                        "strata: waiting up to {} for {}: another strata process owns the root",
                        humantime::format_duration(lock_wait),
                        path.display()
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(OpenError::Lock(LockError::Held { path })) if !lock_wait.is_zero() => {
                return Err(CliError {
                    kind: ErrorKind::Locked,
                    message: format!(
                        "{} is locked by another process (waited {})",
                        path.display(),
                        humantime::format_duration(lock_wait)
                    ),
                }
                .into());
            }
            other => break other?,
        }
    };
    Ok(CacheManager::new(root)?)
}
