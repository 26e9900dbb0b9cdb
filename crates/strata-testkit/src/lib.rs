//! Helpers shared by Strata's tests.
//!
//! Privileged tests call [`require_root`] first. Where the process is not
//! root the test is reported as skipped by name: a line goes to stderr and to
//! the skip log that `cargo xtask test` counts and prints. With
//! `STRATA_REQUIRE_PRIVILEGED=1` (set by `.ci/run`) a skip is a failure, so a
//! privileged test can never pass by not running. The skips, like the tree
//! listing of [`tree::render`], are the conformance suite's own
//! (`strata_snapshot::testsuite`), which needs no test-only crate; this
//! crate re-exports them, so both kinds of test skip the same way.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cli;
pub mod containerd;
pub mod crash;
pub mod go;
pub mod json_shape;
pub mod layer_tar;
pub mod loopfs;
pub mod oci_layout;
mod provenance;
pub mod random_tree;
pub mod registry;
pub mod reliability;
pub mod throttle;
pub mod token_gate;
pub mod tree;

use std::path::Path;

pub use strata_snapshot::testsuite::{REQUIRE_PRIVILEGED, SKIP_LOG, require_root, skip};

/// True when every tool the test runs is installed: a program on the
/// `PATH`, or a file or directory when it is an absolute path (sources a
/// build needs). Otherwise records the skip of `test`, naming what is
/// missing and the Debian package that brings it (`cargo xtask deps`
/// installs them all), and returns false.
pub fn require_tools(test: &str, tools: &[(&str, &str)]) -> bool {
    let missing: Vec<String> = tools
        .iter()
        .filter(|(tool, _)| !installed(tool))
        .map(|(tool, package)| format!("{tool} (Debian package {package})"))
        .collect();
    missing.is_empty() || skip(test, &format!("needs {}", missing.join(", ")))
}

/// Whether `tool` is on the `PATH` (or exists, for an absolute path).
pub fn installed(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    if tool.starts_with('/') {
        return Path::new(tool).exists();
    }
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// What a test that starts a registry runs.
pub const REGISTRY_TOOLS: &[(&str, &str)] = &[
    ("docker-registry", "docker-registry"),
    ("htpasswd", "apache2-utils"),
];

/// What a test that drives containerd runs.
pub const CONTAINERD_TOOLS: &[(&str, &str)] =
    &[("containerd", "containerd"), ("ctr", "containerd")];
