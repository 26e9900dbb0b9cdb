//! What the btrfs backend's tests share: a loop-mounted btrfs made for one
//! test (a sparse image under the system temporary directory, `mkfs.btrfs`,
//! `mount -o loop`; unmounted and removed when dropped), the check that
//! skips a test by name when it cannot have one, and `btrfs` tool calls.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The tools the tests run.
pub const TOOLS: &[(&str, &str)] = &[
    ("mkfs.btrfs", "btrfs-progs"),
    ("btrfs", "btrfs-progs"),
    ("mount", "mount"),
    ("umount", "mount"),
];

/// True when `test` can make a loop btrfs: root, the tools, and a kernel
/// with btrfs. Otherwise records the skip by name and returns false.
pub fn usable(test: &str) -> bool {
    if !strata_testkit::require_root(test) || !strata_testkit::require_tools(test, TOOLS) {
        return false;
    }
    let has_btrfs = || {
        std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| {
            f.lines()
                .any(|l| l.split_whitespace().last() == Some("btrfs"))
        })
    };
    if !has_btrfs() {
        // A module not loaded yet; mount would load it too, but the check
        // must come first.
        let _ = Command::new("modprobe").arg("btrfs").status();
    }
    has_btrfs() || strata_testkit::skip(test, "the kernel has no btrfs")
}

/// Runs `cmd`, panicking with its stderr when it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// A loop-mounted btrfs for the duration of a test.
#[derive(Debug)]
pub struct LoopBtrfs {
    dir: Option<tempfile::TempDir>,
}

impl LoopBtrfs {
    /// A fresh 1 GiB btrfs (sparse: only what is written takes disk).
    pub fn new() -> LoopBtrfs {
        let dir = tempfile::Builder::new()
            .prefix("strata-btrfs-")
            .tempdir()
            .expect("temp dir");
        let image = dir.path().join("btrfs.img");
        std::fs::File::create(&image)
            .expect("create image")
            .set_len(1 << 30)
            .expect("size image");
        run(Command::new("mkfs.btrfs").arg("-q").arg(&image));
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("create mount point");
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mnt));
        LoopBtrfs { dir: Some(dir) }
    }

    /// Where it is mounted.
    pub fn mnt(&self) -> PathBuf {
        self.dir.as_ref().expect("mounted").path().join("mnt")
    }

    /// `btrfs quota enable`, waiting for the first scan.
    pub fn enable_quotas(&self) {
        run(Command::new("btrfs")
            .args(["quota", "enable"])
            .arg(self.mnt()));
        run(Command::new("btrfs")
            .args(["quota", "rescan", "-w"])
            .arg(self.mnt()));
    }

    /// The paths (relative to the top level) of every subvolume, nested
    /// ones included, as `btrfs subvolume list` shows them.
    pub fn subvolumes(&self) -> Vec<String> {
        run(Command::new("btrfs")
            .args(["subvolume", "list"])
            .arg(self.mnt()))
        .lines()
        .filter_map(|l| l.split(" path ").nth(1).map(str::to_owned))
        .collect()
    }

    /// Every subvolume as (path, uuid, parent uuid): a snapshot's parent
    /// uuid is its source's uuid, `-` for a subvolume made empty.
    pub fn lineage(&self) -> Vec<(String, String, String)> {
        run(Command::new("btrfs")
            .args(["subvolume", "list", "-q", "-u"])
            .arg(self.mnt()))
        .lines()
        .filter_map(|l| {
            let (fields, path) = l.split_once(" path ")?;
            let words: Vec<&str> = fields.split_whitespace().collect();
            let after = |key: &str| {
                let at = words.iter().position(|w| *w == key)?;
                words.get(at + 1).map(|w| (*w).to_owned())
            };
            Some((path.to_owned(), after("uuid")?, after("parent_uuid")?))
        })
        .collect()
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        let mnt = self.mnt();
        let unmounted = [vec!["umount"], vec!["umount", "-l"]].iter().any(|cmd| {
            Command::new(cmd[0])
                .args(&cmd[1..])
                .arg(&mnt)
                .status()
                .is_ok_and(|s| s.success())
        });
        if unmounted {
            // The image and the empty mount point go with the directory.
            drop(self.dir.take());
        } else {
            // Never delete through a mount: leave it all for a human.
            let dir = self.dir.take().expect("mounted").keep();
            eprintln!(
                "could not unmount {}; left {}",
                mnt.display(),
                dir.display()
            );
        }
    }
}

/// `btrfs filesystem du -s --raw` of `path`: (total, exclusive, set
/// shared) bytes of its data extents, after a sync (data not yet written
/// back has no extents to count).
pub fn fs_du(path: &Path) -> (u64, u64, u64) {
    strata_sys::sync::syncfs(path).expect("syncfs");
    let out = run(Command::new("btrfs")
        .args(["filesystem", "du", "-s", "--raw"])
        .arg(path));
    let line = out.lines().nth(1).expect("a line of figures");
    let n: Vec<u64> = line
        .split_whitespace()
        .take(3)
        .map(|f| f.parse().expect("a number"))
        .collect();
    (n[0], n[1], n[2])
}

/// Whether the subvolume at `path` has its read-only property set.
pub fn read_only_property(path: &Path) -> bool {
    let out = run(Command::new("btrfs")
        .args(["property", "get", "-ts"])
        .arg(path)
        .arg("ro"));
    match out.trim() {
        "ro=true" => true,
        "ro=false" => false,
        other => panic!("btrfs property get: {other}"),
    }
}
