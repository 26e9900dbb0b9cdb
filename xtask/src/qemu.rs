//! `cargo xtask qemu`: the overlay backend on a real old kernel. Debian 12's
//! own kernel (`linux-image-6.1.*-cloud-amd64-unsigned`, unpacked with
//! `dpkg -x`, never installed) boots under qemu in software emulation
//! (`-accel tcg -cpu max`) with an initramfs of busybox, the `strata`
//! binary and its shared libraries, and a script that builds a chain of 60
//! overlay snapshots through the CLI, mounts and reads it, merges, diffs and
//! applies a layer into a snapshot. 6.1 has no `lowerdir+`, so every mount
//! there takes the legacy path. Every step's exit status is tested (no
//! `set -e`, which a shell ignores in many places) and reported; the run
//! passes only when each step reported success in order, among them the
//! kernel being 6.1, a mount made with `mount(2)` and reads through it.
//! Part of `cargo xtask ci`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// Shell the guest defines before the steps: the CLI on a root in tmpfs,
/// and the 60-layer chain as a function whose every command must pass.
const PRELUDE: &str = r#"
S="strata --root /tmp/root --backend overlay"
mkdir -p /mnt/w /mnt/r /tmp/a /tmp/b
echo "kernel $(uname -r)"
chain() {
  prev=""
  i=1
  while [ $i -le $1 ]; do
    $S snapshot prepare w$i $prev > /dev/null || return 1
    $S mount w$i /mnt/w --rw > /dev/null || return 1
    echo $i > /mnt/w/f$i && echo $i > /mnt/w/top || return 1
    $S umount /mnt/w > /dev/null || return 1
    $S snapshot commit s$i w$i > /dev/null || return 1
    prev=s$i
    i=$((i + 1))
  done
}
"#;

/// What the guest runs, step by step: (what it shows, one shell command
/// list whose exit status is the verdict). A chain, reads through a
/// legacy mount, a merge, a diff, a layer.
const STEPS: &[(&str, &str)] = &[
    (
        "the guest runs Debian 12's 6.1 kernel",
        r#"case "$(uname -r)" in 6.1.*) true ;; *) false ;; esac"#,
    ),
    ("a fresh root checks clean", r#"test "$($S check)" = clean"#),
    (
        "a chain of 60 snapshots is built through writable mounts",
        "chain 60",
    ),
    (
        "the chain's top mounts with mount(2), not lowerdir+",
        r#"$S -vv mount s60 /mnt/r > /tmp/mount.log 2>&1; cat /tmp/mount.log; grep -E "overlay mounted on /mnt/r/? with mount[(]2[)]" /tmp/mount.log"#,
    ),
    (
        "the kernel lists an overlay with lowerdir= on /mnt/r",
        r#"grep " /mnt/r overlay " /proc/mounts | grep "lowerdir=""#,
    ),
    (
        "the top layer's file reads 60 through it",
        r#"test "$(cat /mnt/r/top)" = 60"#,
    ),
    (
        "the bottom layer's file reads 1 through it",
        r#"test "$(cat /mnt/r/f1)" = 1"#,
    ),
    (
        "every layer's name is there",
        r#"test "$(ls /mnt/r | wc -l)" = 61"#,
    ),
    ("the chain unmounts", "$S umount /mnt/r"),
    ("s20 and s60 merge", "$S snapshot merge m s20 s60"),
    ("the merge mounts", "$S mount m /mnt/r"),
    (
        "the merge holds both inputs' files",
        r#"test "$(cat /mnt/r/f60)" = 60 && test "$(cat /mnt/r/f1)" = 1"#,
    ),
    ("the merge unmounts", "$S umount /mnt/r"),
    ("s60 diffs against s30", "$S snapshot diff d s30 s60"),
    ("the diff mounts", "$S mount d /mnt/r"),
    (
        "the diff holds what changed and nothing else",
        "test -e /mnt/r/f31 && ! test -e /mnt/r/f1",
    ),
    ("the diff unmounts", "$S umount /mnt/r"),
    (
        "a gzip layer is written from two directories",
        "echo old > /tmp/a/x && echo new > /tmp/b/x && echo added > /tmp/b/y && $S layer diff /tmp/a /tmp/b -o /tmp/l.tar --compression gzip",
    ),
    (
        "a snapshot over the chain is prepared",
        "$S snapshot prepare wl s60",
    ),
    ("it mounts writable", "$S mount wl /mnt/w --rw"),
    (
        "the layer applies into it",
        "$S layer apply /tmp/l.tar /mnt/w",
    ),
    ("it unmounts", "$S umount /mnt/w"),
    ("it commits", "$S snapshot commit sl wl"),
    ("the commit mounts", "$S mount sl /mnt/r"),
    (
        "the commit holds the layer over the chain",
        r#"test "$(cat /mnt/r/y)" = added && test "$(cat /mnt/r/x)" = new && test "$(cat /mnt/r/top)" = 60"#,
    ),
    ("the commit unmounts", "$S umount /mnt/r"),
    ("the root checks clean", r#"test "$($S check)" = clean"#),
];

/// The guest's script: the prelude, then each step with its output kept;
/// the first failure prints its number, exit status, what it shows and its
/// output's tail, and ends the run. No `set -e`: every status is tested.
fn script(prelude: &str, steps: &[(&str, &str)]) -> String {
    let mut out = String::from(prelude);
    for (i, (what, cmd)) in steps.iter().enumerate() {
        let n = i + 1;
        let what = what.replace(['"', '$', '`', '\\'], "");
        let _ = writeln!(
            out,
            "if {{ {cmd}\n}} > /tmp/step.log 2>&1; then echo 'STRATA-STEP-OK {n}'; else echo \"STRATA-STEP-FAILED {n} (exit $?): {what}\"; tail -n 20 /tmp/step.log; poweroff -f; fi"
        );
    }
    out.push_str("echo STRATA-QEMU-OK\n");
    out
}

/// Reads the console: every step must say it passed, in order, and the
/// script must reach its end; otherwise the error names the step.
fn verdict(console: &str, steps: &[(&str, &str)]) -> anyhow::Result<()> {
    // The console may carry terminal codes before a marker.
    let marks: Vec<&str> = console
        .lines()
        .filter_map(|l| l.find("STRATA-").map(|at| l[at..].trim_end()))
        .collect();
    if let Some(failed) = marks.iter().find(|m| m.starts_with("STRATA-STEP-FAILED")) {
        bail!("{failed}");
    }
    let passed: Vec<usize> = marks
        .iter()
        .filter_map(|m| m.strip_prefix("STRATA-STEP-OK ")?.parse().ok())
        .collect();
    for (i, (what, _)) in steps.iter().enumerate() {
        if passed.get(i) != Some(&(i + 1)) {
            bail!("step {} ({what}) never reported success", i + 1);
        }
    }
    if passed.len() != steps.len() || marks.last() != Some(&"STRATA-QEMU-OK") {
        bail!("the scenario did not run to its end");
    }
    Ok(())
}

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
    let strata = crate::target_dir().join("debug/strata");
    let dir = ws.join("target/qemu");
    std::fs::create_dir_all(&dir)?;
    let (vmlinuz, overlay) = kernel(&dir)?;
    let mut init = script(PRELUDE, STEPS);
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
    verdict(&console, STEPS).with_context(|| {
        format!(
            "the overlay scenario failed on the 6.1 kernel (console in {})",
            log.display()
        )
    })?;
    eprintln!(
        "qemu: all {} steps of the overlay scenario passed on Debian 12's kernel, through legacy mounts",
        STEPS.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &[(&str, &str)] = &[("one", "true"), ("two", "false")];

    #[test]
    fn every_step_must_report() {
        let ok = "kernel 6.1.0\nSTRATA-STEP-OK 1\n\x1b[0mSTRATA-STEP-OK 2\nSTRATA-QEMU-OK\n";
        verdict(ok, TWO).unwrap();
        let failed = "STRATA-STEP-OK 1\nSTRATA-STEP-FAILED 2 (exit 1): two\n";
        let err = verdict(failed, TWO).unwrap_err().to_string();
        assert!(err.contains("STEP-FAILED 2 (exit 1): two"), "{err}");
        let silent = "STRATA-STEP-OK 1\nSTRATA-QEMU-OK\n";
        let err = verdict(silent, TWO).unwrap_err().to_string();
        assert!(err.contains("step 2 (two)"), "{err}");
        let cut = "STRATA-STEP-OK 1\nSTRATA-STEP-OK 2\n";
        assert!(verdict(cut, TWO).is_err());
    }

    #[test]
    fn the_script_tests_every_status() {
        // Run the script for real (poweroff is not there: the first failure
        // ends the shell with an error instead).
        let run = |steps: &[(&str, &str)]| {
            let body = script("", steps).replace("poweroff -f", "exit 9");
            let out = Command::new("sh").arg("-c").arg(body).output().unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        let console = run(&[("one", "true"), ("two", "test 1 = 1 && test 2 = 2")]);
        verdict(&console, &[("one", ""), ("two", "")]).unwrap();
        // A failing check at the head of a list, at a pipeline's end, a
        // negation: each is caught, and nothing after it runs.
        for broken in ["test 1 = 2 && true", "true | false", "! true"] {
            let console = run(&[("one", "true"), ("two", broken), ("three", "true")]);
            let err = verdict(&console, &[("one", ""), ("two", ""), ("three", "")])
                .unwrap_err()
                .to_string();
            assert!(err.contains("STEP-FAILED 2"), "{broken}: {err}");
        }
    }
}
