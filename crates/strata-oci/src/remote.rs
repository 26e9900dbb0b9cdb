//! Registry work as every build names it: how registries are reached and
//! what a push did. These stay in a build without the `registry` feature
//! (no `oci-client`, reqwest or rustls) so that the functions taking any
//! [`Location`](crate::Location) keep one signature, and a registry
//! reference is refused by name at run time instead.

use std::path::{Path, PathBuf};
use std::time::Duration;

use strata_core::Digest;

/// How to reach registries.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Hosts (`HOST[:PORT]`) reached over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
    /// Docker's config directory for credentials (none: anonymous).
    pub docker_config: Option<PathBuf>,
    /// Attempts of a request that failed for a reason that may pass.
    pub attempts: u32,
    /// The first wait between attempts (doubled each time).
    pub backoff: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure: Vec::new(),
            docker_config: docker_config_dir(),
            attempts: 4,
            backoff: Duration::from_millis(200),
        }
    }
}

/// What a push did with each blob.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Blobs sent.
    pub uploaded: usize,
    /// Blobs the repository already had.
    pub present: usize,
    /// Blobs mounted from another repository of the registry.
    pub mounted: usize,
    /// The manifest's digest.
    pub manifest: Option<Digest>,
}

/// The directory of docker's config: `$DOCKER_CONFIG`, else `~/.docker`.
pub fn docker_config_dir() -> Option<PathBuf> {
    std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")))
}
