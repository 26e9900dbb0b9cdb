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
/// root, waits up to `lock_wait` for it (saying so on stderr, naming the
/// holder's pid, again whenever the holder changes), then fails with the
/// lock error (exit 4).
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
    let mut said: Option<Option<u32>> = None;
    let root = loop {
        match Root::open(&opts) {
            Err(OpenError::Lock(LockError::Held { path, holder })) if Instant::now() < deadline => {
                if said != Some(holder) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    eprintln!(
                        "strata: waiting up to {} for {}: {} owns the root (--lock-timeout)",
                        humantime::format_duration(Duration::from_secs(
                            (left.as_secs_f64().round() as u64).max(1)
                        )),
                        path.display(),
                        holder.map_or_else(
                            || "another strata process".to_owned(),
                            |pid| format!("strata process {pid}")
                        )
                    );
                    said = Some(holder);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(OpenError::Lock(LockError::Held { path, holder })) if !lock_wait.is_zero() => {
                return Err(CliError {
                    kind: ErrorKind::Locked,
                    message: format!(
                        "{} is locked by {} (waited {}; --lock-timeout sets how long)",
                        path.display(),
                        holder.map_or_else(
                            || "another process".to_owned(),
                            |pid| format!("process {pid}")
                        ),
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
