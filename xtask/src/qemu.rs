//! `cargo xtask qemu`: the overlay backend on a real old kernel. Debian 12's
//! own kernel (`linux-image-6.1.*-cloud-amd64-unsigned`, unpacked with
//! `dpkg -x`, never installed) boots under qemu in software emulation
//! (`-accel tcg -cpu max`) with an initramfs of busybox, the `strata`
//! binary and its shared libraries, and a script that builds a chain of 60
//! overlay snapshots through the CLI, mounts and reads it, merges, diffs and
//! applies a layer into a snapshot. 6.1 has no `lowerdir+`, so every mount
//! there takes the legacy path; the run fails unless the script reports
//! success and the kernel says it is 6.1. Part of `cargo xtask ci`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// What the guest runs: a chain, reads, a merge, a diff, a layer.
const SCENARIO: &str = r#"
set -e
S="strata --root /tmp/root --backend overlay"
echo "kernel $(uname -r)"
$S -v check 2>&1 | tail -n 5
mkdir -p /mnt/w /mnt/r /tmp/a /tmp/b
prev=""
i=1
while [ $i -le 60 ]; do
  $S snapshot prepare w$i $prev > /dev/null
  $S mount w$i /mnt/w --rw > /dev/null
  echo $i > /mnt/w/f$i
  echo $i > /mnt/w/top
  $S umount /mnt/w > /dev/null
  $S snapshot commit s$i w$i > /dev/null
  prev=s$i
  i=$((i + 1))
done
$S -v mount s60 /mnt/r 2>&1 | grep -q "lowerdir+" && echo "legacy overlay mounts detected"
test "$(cat /mnt/r/top)" = 60
test "$(cat /mnt/r/f1)" = 1
test "$(ls /mnt/r | wc -l)" = 61
$S umount /mnt/r > /dev/null
$S snapshot merge m s20 s60 > /dev/null
$S mount m /mnt/r > /dev/null
test "$(cat /mnt/r/f60)" = 60
$S umount /mnt/r > /dev/null
$S snapshot diff d s30 s60 > /dev/null
$S mount d /mnt/r > /dev/null
test -e /mnt/r/f31 && ! test -e /mnt/r/f1
$S umount /mnt/r > /dev/null
echo old > /tmp/a/x; echo new > /tmp/b/x; echo added > /tmp/b/y
$S layer diff /tmp/a /tmp/b -o /tmp/l.tar --compression gzip > /dev/null
$S snapshot prepare wl s60 > /dev/null
$S mount wl /mnt/w --rw > /dev/null
$S layer apply /tmp/l.tar /mnt/w > /dev/null
$S umount /mnt/w > /dev/null
$S snapshot commit sl wl > /dev/null
$S mount sl /mnt/r > /dev/null
test "$(cat /mnt/r/y)" = added && test "$(cat /mnt/r/top)" = 60
$S umount /mnt/r > /dev/null
$S check
echo STRATA-QEMU-OK
"#;

/// Where `tool` is on the PATH.
pub(crate) fn which(tool: &str) -> Option<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !path.trim().is_empty()).then(|| PathBuf::from(path.trim()))
}

/// Debian 12's cloud kernel, unpacked under `dir`: (vmlinuz, overlay.ko).
pub(crate) fn kernel(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let unpacked = dir.join("kernel");
    if !unpacked.join("boot").exists() {
        let out = Command::new("sh")
            .arg("-c")
            .arg("apt-cache search --names-only '^linux-image-6[.]1[.].*-cloud-amd64-unsigned$'")
            .output()?;
        let mut names: Vec<String> = String::from_utf8(out.stdout)?
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        names.sort();
        let name = names
            .pop()
            .context("no linux-image-6.1.*-cloud-amd64-unsigned package (apt-get update?)")?;
        // In `dir` (crate::run would work in the workspace).
        let got = Command::new("apt-get")
            .args(["download", &name])
            .current_dir(dir)
            .status()
            .context("run apt-get download")?;
        if !got.success() {
            bail!("apt-get download {name} failed: {got}");
        }
        let deb = std::fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .context("the kernel package did not download")?;
        crate::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked))?;
    }
    let find = |root: &Path, prefix: &str| -> anyhow::Result<PathBuf> {
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)?.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
                {
                    return Ok(p);
                }
            }
        }
        bail!("no {prefix}* in {}", root.display())
    };
    Ok((
        find(&unpacked.join("boot"), "vmlinuz-")?,
        find(&unpacked.join("lib/modules"), "overlay.ko")?,
    ))
}

/// Builds `dir/<name>.cpio.gz`: busybox, `strata` and its shared
/// libraries, the kernel `modules` (loaded in that order at boot), and an
/// init that mounts proc, sys, dev and a tmpfs on /tmp, then runs `body`.
pub(crate) fn initramfs(
    dir: &Path,
    name: &str,
    strata: &Path,
    modules: &[PathBuf],
    body: &str,
) -> anyhow::Result<PathBuf> {
    let initrd = dir.join(name);
    if initrd.exists() {
        crate::run(Command::new("rm").arg("-rf").arg(&initrd))?;
    }
    for d in ["bin", "proc", "sys", "dev", "tmp", "mnt", "modules"] {
        std::fs::create_dir_all(initrd.join(d))?;
    }
    let busybox = which("busybox").context("busybox is missing")?;
    std::fs::copy(&busybox, initrd.join("bin/busybox"))?;
    std::fs::copy(strata, initrd.join("bin/strata"))?;
    for lib in libraries(strata)? {
        let to = initrd.join(lib.strip_prefix("/")?);
        std::fs::create_dir_all(to.parent().expect("a library path has a parent"))?;
        std::fs::copy(&lib, &to)?;
    }
    let mut init = String::from("#!/bin/busybox sh\n/bin/busybox --install -s /bin\n");
    init.push_str(
        "mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n",
    );
    init.push_str("mount -t tmpfs tmp /tmp\n");
    for (i, m) in modules.iter().enumerate() {
        let to = format!("modules/{i}.ko");
        std::fs::copy(m, initrd.join(&to))?;
        writeln!(init, "insmod /{to}")?;
    }
    init.push_str(body);
    let init_path = initrd.join("init");
    std::fs::write(&init_path, init)?;
    crate::run(Command::new("chmod").arg("755").arg(&init_path))?;
    let image = dir.join(format!("{name}.cpio.gz"));
    crate::run(Command::new("sh").arg("-c").arg(format!(
        "cd {} && find . | cpio -o -H newc --quiet | gzip -1 > {}",
        initrd.display(),
        image.display()
    )))?;
    Ok(image)
}

/// qemu booting `vmlinuz` with `image` under software emulation, console
/// on stdout, stopped by `timeout` after `seconds`.
pub(crate) fn guest(vmlinuz: &Path, image: &Path, seconds: &str) -> Command {
    let mut c = Command::new("timeout");
    c.args([
        seconds,
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        "1024",
        "-smp",
        "2",
    ])
    .args(["-nographic", "-no-reboot", "-kernel"])
    .arg(vmlinuz)
    .arg("-initrd")
    .arg(image)
    .args(["-append", "console=ttyS0 panic=-1 quiet"]);
    c
}

/// The kernel module `name` (`virtio_blk`, ...) of the kernel `kernel`
/// unpacked under `dir`.
pub(crate) fn module(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let file = format!("{name}.ko");
    let mut stack = vec![dir.join("kernel/lib/modules")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n.to_string_lossy() == file) {
                return Ok(p);
            }
        }
    }
    bail!("no {file} in {}", dir.display())
}

/// The shared libraries `bin` needs, by `ldd`.
fn libraries(bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(bin).output()?;
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect())
}

pub fn run(args: &[&str]) -> anyhow::Result<()> {
    if !args.is_empty() {
        bail!("cargo xtask qemu takes no arguments, not {args:?}");
    }
    for tool in ["qemu-system-x86_64", "busybox", "cpio", "dpkg", "apt-get"] {
        if which(tool).is_none() {
            bail!("{tool} is missing (apt-get install qemu-system-x86 busybox-static cpio)");
        }
    }
    let ws = crate::workspace();
    crate::run(crate::cargo().args(["build", "-p", "strata-cli"]))?;
    let strata = ws.join("target/debug/strata");
    let dir = ws.join("target/qemu");
    std::fs::create_dir_all(&dir)?;
    let (vmlinuz, overlay) = kernel(&dir)?;
    let mut init = String::new();
    writeln!(init, "( {SCENARIO} ) 2>&1 || echo STRATA-QEMU-FAILED")?;
    init.push_str("poweroff -f\n");
    let image = initramfs(&dir, "initrd", &strata, &[overlay], &init)?;
    eprintln!(
        "booting {} under qemu (software emulation)",
        vmlinuz.display()
    );
    // Fifteen minutes; the scenario takes about three under TCG.
    let out = guest(&vmlinuz, &image, "900")
        .output()
        .context("run qemu")?;
    let console = String::from_utf8_lossy(&out.stdout);
    let log = dir.join("console.log");
    std::fs::write(&log, console.as_bytes())?;
    let lines: Vec<&str> = console.lines().filter(|l| !l.trim().is_empty()).collect();
    for l in lines.iter().rev().take(30).rev() {
        eprintln!("  guest: {l}");
    }
    if !console.contains("STRATA-QEMU-OK") || console.contains("STRATA-QEMU-FAILED") {
        bail!(
            "the overlay scenario failed on the 6.1 kernel (console in {})",
            log.display()
        );
    }
    if !console.contains("legacy overlay mounts detected") {
        bail!(
            "the guest did not take the legacy overlay path (console in {})",
            log.display()
        );
    }
    if !console.contains("kernel 6.1.") {
        bail!(
            "the guest did not run a 6.1 kernel (console in {})",
            log.display()
        );
    }
    eprintln!("qemu: the overlay scenario passed on Debian 12's kernel");
    Ok(())
}
