//! Random trees for property tests of walking, writing, applying and
//! merging: files (empty, small, a few larger, sparse), directories,
//! symlinks, hard links, fifos, sockets, devices (as root), special modes,
//! owners (as root) and user xattrs, some under names longer than 100
//! bytes or not UTF-8; and random mutations of such a tree (edits,
//! deletions, type changes, renames of modes and owners, new entries).
//!
//! [`seeds`] picks the seeds a property test runs: fresh ones each run
//! (printed, so a failure can be replayed), or the one `STRATA_SEED` names.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use strata_sys::Root;

use crate::crash::Rng;

fn all_entries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = fs::read_dir(dir.join(&rel)) else {
            continue;
        };
        for e in rd.flatten() {
            let p = rel.join(e.file_name());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

fn dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::new()];
    out.extend(
        all_entries(dir)
            .into_iter()
            .filter(|p| fs::symlink_metadata(dir.join(p)).is_ok_and(|m| m.is_dir())),
    );
    out
}

fn files(dir: &Path) -> Vec<PathBuf> {
    all_entries(dir)
        .into_iter()
        .filter(|p| fs::symlink_metadata(dir.join(p)).is_ok_and(|m| m.is_file()))
        .collect()
}

fn pick<'a>(rng: &mut Rng, items: &'a [PathBuf]) -> Option<&'a PathBuf> {
    if items.is_empty() {
        None
    } else {
        Some(&items[rng.below(items.len() as u64) as usize])
    }
}

fn content(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(10) {
        0 => 0,
        1 => 70_000 + rng.below(50_000),
        _ => rng.below(3000),
    };
    (0..len)
        .map(|i| (rng.next_u64() as u8) ^ (i as u8))
        .collect()
}

fn name(rng: &mut Rng) -> OsString {
    const NAMES: [&str; 8] = ["a", "b", "a.b", "ab", "c-d", "e_f", "ü", "z"];
    let short = format!(
        "{}{}",
        NAMES[rng.below(NAMES.len() as u64) as usize],
        rng.below(20)
    );
    match rng.below(16) {
        // Longer than a ustar name field (100 bytes), within NAME_MAX.
        0 => format!("{short}-{}", "long".repeat(25 + rng.below(30) as usize)).into(),
        // Not UTF-8.
        1 => {
            let mut bytes = short.into_bytes();
            bytes.extend_from_slice(&[b'-', 0xff, 0xfe, b'0' + rng.below(10) as u8]);
            OsString::from_vec(bytes)
        }
        _ => short.into(),
    }
}

/// The seeds a property test runs: `STRATA_SEED` alone when set, else
/// `count` (or `PROPTEST_CASES`) fresh ones, printed with the way to
/// replay one, so a failing run (whose output the harness shows) can be
/// repeated exactly.
pub fn seeds(test: &str, count: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("STRATA_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        eprintln!("{test}: seed {seed} (from STRATA_SEED)");
        return vec![seed];
    }
    let count = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(count);
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_007);
    eprintln!(
        "{test}: seeds {base}..{} (replay one with STRATA_SEED=N)",
        base + count
    );
    (base..base + count).collect()
}

/// Adds one random entry somewhere in `dir`.
fn add_one(dir: &Path, rng: &mut Rng) {
    let parents = dirs(dir);
    let parent = pick(rng, &parents).cloned().unwrap_or_default();
    let path = dir.join(&parent).join(name(rng));
    if fs::symlink_metadata(&path).is_ok() {
        return;
    }
    let privileged = strata_sys::effective_uid() == 0;
    let root = Root::open(dir).expect("open root");
    let rel = path.strip_prefix(dir).expect("inside").to_path_buf();
    match rng.below(16) {
        0..=4 => fs::write(&path, content(rng)).expect("write file"),
        5 | 6 => fs::create_dir(&path).expect("mkdir"),
        7 => symlink(format!("../target{}", rng.below(5)), &path).expect("symlink"),
        8 => {
            let existing = files(dir);
            match pick(rng, &existing) {
                Some(f) => fs::hard_link(dir.join(f), &path).expect("hard link"),
                None => fs::write(&path, b"first").expect("write file"),
            }
        }
        9 => root
            .mknod(&rel, strata_sys::FileKind::Fifo, 0o644, 0)
            .expect("mkfifo"),
        10 => {
            fs::write(&path, content(rng)).expect("write file");
            let mode = [0o4755, 0o2750, 0o1777, 0o600][rng.below(4) as usize];
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        }
        11 => {
            fs::write(&path, content(rng)).expect("write file");
            root.set_xattr(
                &rel,
                std::ffi::OsStr::new("user.strata.test"),
                format!("v{}", rng.below(3)).as_bytes(),
            )
            .expect("set xattr");
        }
        12 => root
            .mknod(&rel, strata_sys::FileKind::Socket, 0o755, 0)
            .expect("make a socket"),
        13 if privileged => {
            // 1:3 (/dev/null's numbers) or 7:0 (a loop device's).
            let (kind, rdev) = if rng.below(2) == 0 {
                (strata_sys::FileKind::CharDevice, (1 << 8) | 3)
            } else {
                (strata_sys::FileKind::BlockDevice, 7 << 8)
            };
            root.mknod(&rel, kind, 0o660, rdev).expect("mknod");
        }
        14 => {
            // Sparse: data at an offset past a hole, and a hole at the end.
            let f = fs::File::create(&path).expect("create sparse file");
            let at = 65_536 * (1 + rng.below(16));
            f.write_all_at(b"data after a hole", at)
                .expect("write past a hole");
            f.set_len(at + 65_536 * (1 + rng.below(4)))
                .expect("extend with a hole");
        }
        _ => fs::write(&path, content(rng)).expect("write file"),
    }
    if privileged && rng.below(6) == 0 {
        let (uid, gid) = (rng.below(3) as u32 * 1000, rng.below(3) as u32 * 1000);
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).expect("chown");
    }
}

/// Fills `dir` with `n` random entries.
pub fn populate(dir: &Path, rng: &mut Rng, n: usize) {
    for _ in 0..n {
        add_one(dir, rng);
    }
}

/// Changes `dir` `n` times at random.
pub fn mutate(dir: &Path, rng: &mut Rng, n: usize) {
    let root = Root::open(dir).expect("open root");
    for _ in 0..n {
        let entries = all_entries(dir);
        let Some(victim) = pick(rng, &entries).cloned() else {
            add_one(dir, rng);
            continue;
        };
        let abs = dir.join(&victim);
        let Ok(md) = fs::symlink_metadata(&abs) else {
            continue;
        };
        match rng.below(7) {
            0 | 1 => add_one(dir, rng),
            2 => {
                root.remove_all(&victim).expect("remove");
            }
            3 if md.is_file() => fs::write(&abs, content(rng)).expect("rewrite"),
            4 if !md.file_type().is_symlink() => {
                let mode = [0o700, 0o755, 0o644, 0o4755][rng.below(4) as usize];
                fs::set_permissions(&abs, fs::Permissions::from_mode(mode)).expect("chmod");
            }
            5 => {
                // Replace with the other type.
                root.remove_all(&victim).expect("remove");
                if md.is_dir() {
                    fs::write(&abs, content(rng)).expect("write");
                } else {
                    fs::create_dir(&abs).expect("mkdir");
                    fs::write(abs.join("inside"), b"new").expect("write");
                }
            }
            _ => add_one(dir, rng),
        }
    }
}

/// A history of `steps` trees under `base` (`t0`, `t1`, ...): the first
/// with `first` random entries, each next one a copy (`cp -a`) of the one
/// before with `changes` random changes.
pub fn history(
    base: &Path,
    rng: &mut Rng,
    steps: usize,
    first: usize,
    changes: usize,
) -> Vec<PathBuf> {
    let mut trees: Vec<PathBuf> = Vec::new();
    for step in 0..steps {
        let tree = base.join(format!("t{step}"));
        match trees.last() {
            Some(prev) => {
                let st = std::process::Command::new("cp")
                    .arg("-a")
                    .arg(prev)
                    .arg(&tree)
                    .status()
                    .expect("run cp -a");
                assert!(st.success(), "cp -a {} {}", prev.display(), tree.display());
                mutate(&tree, rng, changes);
            }
            None => {
                fs::create_dir(&tree).expect("create the first tree");
                populate(&tree, rng, first);
            }
        }
        trees.push(tree);
    }
    trees
}

/// Removes the entries of `dir` whose names are not UTF-8, for formats
/// that cannot hold them (eStargz's table of contents is JSON).
pub fn utf8_names_only(dir: &Path) {
    let root = Root::open(dir).unwrap();
    for rel in all_entries(dir) {
        if rel.to_str().is_none() && root.stat(&rel).is_ok() {
            root.remove_all(&rel).unwrap();
        }
    }
}
