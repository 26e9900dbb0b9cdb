//! Go programs built from Debian's Go sources (GOPATH mode, nothing
//! downloaded): containerd's snapshotter suite, the eStargz oracle and the
//! stargz snapshotter as a benchmark peer.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The stargz snapshotter's eStargz package, which the oracle is built on.
pub const STARGZ_SOURCES: &str =
    "/usr/share/gocode/src/github.com/containerd/stargz-snapshotter/estargz";

/// `go` in GOPATH mode over `/usr/share/gocode`, caching under `cache`.
pub fn go(cache: &Path) -> Command {
    let mut c = Command::new("go");
    c.env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOFLAGS", "")
        .env("GOCACHE", cache);
    c
}

/// Builds `tests/go/estargz-oracle` into `dir` and returns the binary;
/// panics with Go's error when the build fails.
pub fn estargz_oracle(dir: &Path) -> PathBuf {
    build(dir, "estargz-oracle")
}

/// Builds `tests/go/stargz-peer` (the stargz snapshotter served over
/// containerd's snapshots API) into `dir` and returns the binary.
pub fn stargz_peer(dir: &Path) -> PathBuf {
    build(dir, "stargz-peer")
}

/// Builds the program `tests/go/NAME` into `dir/NAME`.
fn build(dir: &Path, name: &str) -> PathBuf {
    let binary = dir.join(name);
    let build = go(&dir.join("gocache"))
        .args(["build", "-o"])
        .arg(&binary)
        .arg(format!("./tests/go/{name}"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("run go (golang-go; .ci/run installs it)");
    assert!(
        build.status.success(),
        "go build {name}: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    binary
}

/// Which stargz snapshotter sources the oracle is built from (the Debian
/// package's version) and with which Go.
pub fn estargz_oracle_version() -> String {
    format!("stargz-snapshotter estargz {}", sources_version())
}

/// The stargz snapshotter sources' Debian version and the Go that builds
/// them.
pub fn sources_version() -> String {
    let out = Command::new("dpkg-query")
        .args([
            "-W",
            "-f",
            "${Version}",
            "golang-github-containerd-stargz-snapshotter-dev",
        ])
        .output()
        .expect("run dpkg-query");
    let go = Command::new("go").arg("version").output().expect("run go");
    format!(
        "{} ({})",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&go.stdout).trim()
    )
}
