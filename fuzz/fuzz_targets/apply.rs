//! Fuzzes the layer applier with arbitrary bytes (as plain tar, and wrapped
//! in gzip by the applier's own detection when the input starts with the
//! gzip magic), onto a plain directory or, for inputs of odd length, into an
//! overlay upper directory over a lower one that holds a symlink to the
//! sibling. Whatever the input, applying must not panic and must stay
//! within its limits; everything outside the destination (the sibling and
//! the lower, rendered whole: types, modes, owners, contents, times, links)
//! must be exactly as before.
//!
//! It is differential where an answer is known: a successful apply onto a
//! plain directory must be reproduced exactly by a second apply of the same
//! bytes, and, when the input is a plain tar of only regular files,
//! directories and symlinks with clean, distinct names whose parents come
//! first (no extension headers, times below 2^32), by GNU tar extracting it
//! as root (`tar -xp --same-owner --numeric-owner`).
#![no_main]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use libfuzzer_sys::fuzz_target;
use strata_diff::{ApplyOptions, OverlayTarget, apply};
use strata_testkit::tree::render;

mod common;

fn options(overlay: Option<OverlayTarget>) -> ApplyOptions {
    ApplyOptions {
        overlay,
        ..common::options()
    }
}

/// True when GNU tar and the applier must agree on `data`: a plain tar
/// (not gzip) whose every entry is a regular file, a directory or a symlink
/// with a clean relative name, no name twice, every parent directory
/// listed before what it holds, no extension headers, sane times.
fn gnu_comparable(data: &[u8]) -> bool {
    if data.starts_with(&[0x1f, 0x8b]) || data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return false;
    }
    let mut archive = tar::Archive::new(data);
    let Ok(entries) = archive.entries() else {
        return false;
    };
    let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    let mut count = 0;
    for entry in entries {
        let Ok(mut e) = entry else { return false };
        count += 1;
        if !matches!(e.pax_extensions(), Ok(None)) {
            return false;
        }
        let h = e.header();
        let kind = h.entry_type();
        use tar::EntryType::{Directory, Regular, Symlink};
        if !matches!(kind, Regular | Directory | Symlink) {
            return false;
        }
        if h.mtime().map_or(true, |t| t >= 1 << 32)
            || h.mode().is_err()
            || h.uid().is_err()
            || h.gid().is_err()
        {
            return false;
        }
        let Ok(path) = e.path() else { return false };
        let Some(raw) = path.to_str() else {
            return false;
        };
        let mut clean = PathBuf::new();
        for c in Path::new(raw).components() {
            match c {
                Component::Normal(n) => {
                    let n = n.to_string_lossy();
                    if n.starts_with(".wh.") || n.contains('\\') {
                        return false;
                    }
                    clean.push(&*n);
                }
                Component::CurDir if clean.as_os_str().is_empty() => {}
                _ => return false,
            }
        }
        if clean.as_os_str().is_empty() {
            // The root entry: both apply it to the destination itself.
            if kind != Directory {
                return false;
            }
            continue;
        }
        if let Some(parent) = clean.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !dirs.contains(parent) {
                return false;
            }
        }
        if !seen.insert(clean.clone()) {
            return false;
        }
        if kind == Directory {
            dirs.insert(clean);
        } else if kind == Symlink {
            match e.link_name() {
                Ok(Some(t)) if !t.as_os_str().is_empty() => {}
                _ => return false,
            }
        }
        let mut sink = std::io::sink();
        if std::io::copy(&mut e, &mut sink).is_err() {
            return false;
        }
    }
    count > 0
}

/// What GNU tar makes of `data` in `dir`, when it accepts it.
fn gnu_tar(data: &[u8], dir: &Path) -> Option<String> {
    let mut child = Command::new("tar")
        .args(["-xp", "--same-owner", "--numeric-owner", "-f", "-", "-C"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run GNU tar");
    let _ = child.stdin.take().expect("stdin").write_all(data);
    child
        .wait()
        .expect("wait for GNU tar")
        .success()
        .then(|| render(dir))
}

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dest = tmp.path().join("dest");
    let sibling = tmp.path().join("sibling");
    let lower = tmp.path().join("lower");
    std::fs::create_dir(&dest).expect("dest");
    std::fs::create_dir(&sibling).expect("sibling");
    std::fs::create_dir_all(lower.join("etc")).expect("lower");
    std::fs::write(sibling.join("keep"), b"keep").expect("sentinel");
    std::fs::write(lower.join("etc/passwd"), b"root").expect("lower file");
    std::os::unix::fs::symlink("../sibling", lower.join("link")).expect("lower symlink");
    let before = (render(&sibling), render(&lower));
    // Odd lengths write an overlay upper directory; one in two of those
    // before its lowers are known (as a parallel unpack does).
    let overlay = (data.len() % 2 == 1).then(|| OverlayTarget {
        lowers: vec![lower.clone()],
        userxattr: false,
        detached: data.len() % 4 == 3,
    });
    let plain = overlay.is_none();
    let outcome = apply(&strata_leases::OpCtx::new(), data, &dest, &options(overlay));
    assert_eq!(
        (render(&sibling), render(&lower)),
        before,
        "the applier changed something outside its destination"
    );
    if !(plain && outcome.is_ok()) {
        return;
    }
    let ours = render(&dest);
    let again = tmp.path().join("again");
    std::fs::create_dir(&again).expect("again");
    apply(&strata_leases::OpCtx::new(), data, &again, &options(None))
        .expect("the same bytes applied again");
    assert_eq!(render(&again), ours, "two applies of the same bytes differ");
    if gnu_comparable(data) {
        let gnu = tmp.path().join("gnu");
        std::fs::create_dir(&gnu).expect("gnu");
        if let Some(theirs) = gnu_tar(data, &gnu) {
            assert_eq!(ours, theirs, "GNU tar extracts this layer differently");
        }
    }
});
