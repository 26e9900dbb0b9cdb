//! What the btrfs backend's tests share: a loop-mounted btrfs made for one
//! test (`strata_testkit::loopfs`), the check that skips a test by name
//! when it cannot have one, and `btrfs` tool calls.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use strata_testkit::loopfs::LoopFs;

pub use strata_testkit::loopfs::run;

/// True when `test` can make a loop btrfs: root, btrfs-progs, and a kernel
/// with btrfs. Otherwise records the skip by name and returns false.
pub fn usable(test: &str) -> bool {
    strata_testkit::loopfs::usable(test, "btrfs", "btrfs-progs")
        && strata_testkit::require_tools(test, &[("btrfs", "btrfs-progs")])
}

/// A loop-mounted btrfs for the duration of a test.
#[derive(Debug)]
pub struct LoopBtrfs(LoopFs);

impl LoopBtrfs {
    /// A fresh 1 GiB btrfs (sparse: only what is written takes disk).
    pub fn new() -> LoopBtrfs {
        LoopBtrfs(LoopFs::new("btrfs", &["-q"], 1 << 30))
    }

    /// Where it is mounted.
    pub fn mnt(&self) -> PathBuf {
        self.0.mnt()
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
