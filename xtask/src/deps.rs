//! What the tests and CI run besides cargo, in one list: each tool with
//! the Debian package that brings it. `cargo xtask deps [--ci]` installs
//! what is missing with `apt-get` (as root on Debian or Ubuntu); `.ci/run`
//! calls it with `--ci`, `cargo xtask test` without. Elsewhere it names what
//! is missing and the one command that installs it, and the tests that
//! need a missing tool report themselves skipped by name
//! (`strata_testkit::require_tools`).

use std::process::Command;

use anyhow::{Context, bail};

/// Who needs a tool: the test suite, or only `cargo xtask ci`
/// (the qemu runs, the fuzz smoke run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Tests,
    Ci,
}

/// (tool on the PATH, or an absolute path; Debian package; who needs it).
const TOOLS: &[(&str, &str, Need)] = &[
    ("sha256sum", "coreutils", Need::Tests),
    ("cmp", "diffutils", Need::Tests),
    ("mount", "mount", Need::Tests),
    ("losetup", "mount", Need::Tests),
    ("setpriv", "util-linux", Need::Tests),
    // Rootless with subordinate ids: a user namespace mapping 65,536 ids
    // (`tests/cli/userns.rs`; `.ci/run` grants root the range).
    ("unshare", "util-linux", Need::Tests),
    ("newuidmap", "uidmap", Need::Tests),
    // systemd's socket activation, without systemd running the test.
    ("systemd-socket-activate", "systemd", Need::Tests),
    ("modprobe", "kmod", Need::Tests),
    ("tar", "tar", Need::Tests),
    ("zstd", "zstd", Need::Tests),
    // A loop XFS, where the native backend's reflink copies are tested.
    ("mkfs.xfs", "xfsprogs", Need::Tests),
    ("mkfs.ext4", "e2fsprogs", Need::Tests),
    // A loop btrfs for the btrfs backend: mkfs.btrfs makes it, btrfs lists
    // subvolumes, switches quotas on and measures shared extents.
    ("mkfs.btrfs", "btrfs-progs", Need::Tests),
    ("btrfs", "btrfs-progs", Need::Tests),
    // Images: a registry on 127.0.0.1 with basic auth; skopeo and umoci
    // read what Strata writes.
    ("docker-registry", "docker-registry", Need::Tests),
    ("htpasswd", "apache2-utils", Need::Tests),
    ("skopeo", "skopeo", Need::Tests),
    ("curl", "curl", Need::Tests),
    ("umoci", "umoci", Need::Tests),
    // containerd with `strata serve` as its proxy snapshotter, and its own
    // snapshotter test suite built from Debian's Go sources.
    ("containerd", "containerd", Need::Tests),
    ("ctr", "containerd", Need::Tests),
    // containerd runs real containers on Strata's snapshots: runc (which
    // containerd's package brings too) with a static busybox as the image's
    // shell, also the qemu runs' initramfs.
    ("runc", "runc", Need::Tests),
    ("busybox", "busybox-static", Need::Tests),
    ("go", "golang-go", Need::Tests),
    (
        "/usr/share/gocode/src/github.com/containerd/containerd/snapshots/testsuite",
        "golang-github-containerd-containerd-dev",
        Need::Tests,
    ),
    // The eStargz oracle (tests/go/estargz-oracle) is built from the stargz
    // snapshotter's own reader and writer.
    (
        "/usr/share/gocode/src/github.com/containerd/stargz-snapshotter/estargz",
        "golang-github-containerd-stargz-snapshotter-dev",
        Need::Tests,
    ),
    // The stargz snapshotter beside `strata lazy mount` in `bench lazy`:
    // ctr-remote pulls lazily; the snapshotter itself (tests/go/stargz-peer)
    // is built from the sources above and containerd's.
    ("ctr-remote", "stargz-snapshotter", Need::Tests),
    ("setfattr", "attr", Need::Tests),
    // Debian 12's kernel under qemu (old-kernel overlay, power cuts).
    ("qemu-system-x86_64", "qemu-system-x86", Need::Ci),
    ("cpio", "cpio", Need::Ci),
    ("pkill", "procps", Need::Ci),
    ("dpkg", "dpkg", Need::Ci),
    // `cargo xtask bench --quick` runs its peers beside Strata and reads
    // peak memory from GNU time.
    ("pigz", "pigz", Need::Ci),
    ("openssl", "openssl", Need::Ci),
    ("/usr/bin/time", "time", Need::Ci),
];

/// Whether `tool` is on the PATH (or exists, for an absolute path).
fn installed(tool: &str) -> bool {
    if tool.starts_with('/') {
        return std::path::Path::new(tool).exists();
    }
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The packages bringing the tools `for_ci` needs that are missing, each
/// once, with the tools.
fn missing(for_ci: bool) -> (Vec<&'static str>, Vec<&'static str>) {
    let mut tools = Vec::new();
    let mut packages: Vec<&str> = Vec::new();
    for (tool, package, need) in TOOLS {
        if (*need != Need::Ci || for_ci) && !installed(tool) {
            tools.push(*tool);
            if !packages.contains(package) {
                packages.push(package);
            }
        }
    }
    (tools, packages)
}

/// Installs what is missing where it can (root, apt-get); otherwise says
/// what is missing and how to install it. Fails only when the build itself
/// cannot go on, or when an install was tried and failed.
pub fn ensure(for_ci: bool) -> anyhow::Result<()> {
    let (tools, packages) = missing(for_ci);
    if packages.is_empty() {
        return Ok(());
    }
    let apt = installed("apt-get");
    if crate::is_root() && apt {
        eprintln!(
            "deps: installing {} for {}",
            packages.join(" "),
            tools.join(", ")
        );
        let apt_get = |args: &[&str]| {
            crate::run(
                Command::new("apt-get")
                    .args(args)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
        };
        apt_get(&["update", "-qq"])?;
        let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
        install.extend(&packages);
        apt_get(&install).context("install the test dependencies")?;
        let (still, _) = missing(for_ci);
        if !still.is_empty() {
            bail!("still missing after apt-get install: {}", still.join(", "));
        }
        return Ok(());
    }
    let how = format!(
        "{}apt-get install -y {}",
        if crate::is_root() { "" } else { "sudo " },
        packages.join(" ")
    );
    eprintln!(
        "deps: missing {}; install them with:\n  {how}\n(the tests that need them report themselves skipped by name)",
        tools.join(", ")
    );
    if for_ci {
        bail!("cannot go on without {}: {how}", tools.join(", "));
    }
    Ok(())
}

pub fn run(args: &[&str]) -> anyhow::Result<()> {
    match args {
        [] => ensure(false),
        ["--ci"] => ensure(true),
        _ => bail!("usage: cargo xtask deps [--ci]"),
    }
}
