//! Rootless with subordinate ids, as BuildKit and podman run: the strata
//! binary inside a user namespace whose root is the unprivileged outer uid
//! 100000, with 65,536 ids mapped (`unshare --map-users`, through
//! newuidmap and the `root:100000:65536` entries of /etc/subuid and
//! /etc/subgid that `.ci/run` adds), and a mount namespace of its own. In
//! there, on the backend `--backend auto` picks (overlay, with `user.`
//! xattrs): an image with files of several owners and a setuid file is
//! imported, a ref is built through a writable mount and committed,
//! snapshots are merged and diffed, the image is exported, a daemon serves
//! a client, and the root checks clean. Seen from outside, every file
//! belongs to the mapped range, owners shifted by 100000.

use std::path::Path;
use std::process::Command;

use strata_testkit::cli::{Run, finish};
use strata_testkit::oci_layout::Layout;

/// The outer uid (and gid) of the namespace's root, and how many ids map.
const OUTER: u32 = 100_000;
const COUNT: u32 = 65_536;

/// One tar entry owned by `uid:gid` with `mode`.
fn owned(path: &str, kind: tar::EntryType, data: &[u8], uid: u64, gid: u64, mode: u32) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mode(mode);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// Whether /etc/subuid and /etc/subgid give root the range the test maps.
fn range_granted() -> bool {
    let line = format!("root:{OUTER}:{COUNT}");
    ["/etc/subuid", "/etc/subgid"]
        .iter()
        .all(|f| std::fs::read_to_string(f).is_ok_and(|s| s.lines().any(|l| l.trim() == line)))
}

/// `program ARGS` in a fresh namespace, in `dir` (temporary files there
/// too), with `$S` the strata binary.
fn in_userns(dir: &Path, program: &Path, args: &[&str]) -> Run {
    let out = Command::new("unshare")
        .args([
            &format!("--map-users={OUTER},0,{COUNT}"),
            &format!("--map-groups={OUTER},0,{COUNT}"),
            "--setuid",
            "0",
            "--setgid",
            "0",
            "--mount",
            "--propagation",
            "private",
        ])
        .arg(program)
        .args(args)
        .current_dir(dir)
        .env("S", strata_testkit::cli::strata())
        .env("TMPDIR", dir)
        .env_remove("STRATA_ROOT")
        .output()
        .expect("run unshare");
    finish(out)
}

/// Whether the test can run here; if not, it is recorded as skipped.
fn usable(name: &str) -> bool {
    if !strata_testkit::require_root(name)
        || !strata_testkit::require_tools(
            name,
            &[("unshare", "util-linux"), ("newuidmap", "uidmap")],
        )
    {
        return false;
    }
    range_granted()
        || strata_testkit::skip(
            name,
            &format!("needs root:{OUTER}:{COUNT} in /etc/subuid and /etc/subgid (.ci/run adds it)"),
        )
}

/// A temporary directory the namespace's root owns.
fn owned_tmp() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let chown = Command::new("chown")
        .arg(format!("{OUTER}:{OUTER}"))
        .arg(tmp.path())
        .status()
        .unwrap();
    assert!(chown.success());
    tmp
}

/// The snapshotter conformance suite, run inside the namespace against
/// the overlay and native backends (their test binaries, built by Cargo).
#[test]
fn the_conformance_suite_passes_rootless() {
    let name = "userns::the_conformance_suite_passes_rootless";
    if !usable(name) {
        return;
    }
    for package in ["strata-overlay", "strata-native"] {
        let binary = strata_testkit::cli::test_binary(package, "conformance");
        let tmp = owned_tmp();
        let run = in_userns(tmp.path(), &binary, &["--test-threads", "2"]);
        assert_eq!(run.code, 0, "{package}: {}\n{}", run.text(), run.stderr);
        let summary = run.text();
        assert!(
            summary.contains("test result: ok.") && !summary.contains(" 0 passed"),
            "{package}: {summary}"
        );
    }
}

#[test]
fn rootless_with_subordinate_ids_does_everything() {
    let name = "userns::rootless_with_subordinate_ids_does_everything";
    if !usable(name) {
        return;
    }
    let tmp = owned_tmp();
    let dir = tmp.path();
    // The image: owners inside the mapped range, a setuid file.
    let layout = Layout::new(&dir.join("app"));
    let none: &[u8] = b"";
    let base = strata_testkit::layer_tar::archive(&[
        owned("etc/", tar::EntryType::Directory, none, 0, 0, 0o755),
        owned(
            "etc/shadow",
            tar::EntryType::Regular,
            b"root:*:1\n",
            0,
            42,
            0o640,
        ),
        owned("home/", tar::EntryType::Directory, none, 0, 0, 0o755),
        owned(
            "home/user/",
            tar::EntryType::Directory,
            none,
            1000,
            1000,
            0o750,
        ),
        owned(
            "home/user/notes",
            tar::EntryType::Regular,
            b"mine\n",
            1000,
            1000,
            0o600,
        ),
        owned("bin/", tar::EntryType::Directory, none, 0, 0, 0o755),
        owned(
            "bin/su",
            tar::EntryType::Regular,
            b"#!/bin/sh\n",
            0,
            0,
            0o4755,
        ),
    ]);
    let top = strata_testkit::layer_tar::archive(&[owned(
        "home/user/more",
        tar::EntryType::Regular,
        b"more\n",
        1000,
        1000,
        0o644,
    )]);
    let manifest = layout.image(&[base, top]);
    layout.tag(&manifest, "1");
    let chown = Command::new("chown")
        .args(["-R", &format!("{OUTER}:{OUTER}")])
        .arg(dir.join("app"))
        .status()
        .unwrap();
    assert!(chown.success());

    let run = in_userns(
        dir,
        Path::new("bash"),
        &[
            "-euo",
            "pipefail",
            "-c",
            r#"
        trap 'echo "failed at line $LINENO: $BASH_COMMAND" >&2' ERR
        R="$S --root r"
        [ "$(id -u)" = 0 ]
        $R check >/dev/null
        # auto picked overlay: asking for it by name opens the root.
        $R --backend overlay check >/dev/null
        top=$($R image import oci:app:1 --name app)
        m=$($R ref new "$top")
        mkdir mnt
        $R mount "$m" mnt --rw
        [ "$(cat mnt/home/user/notes)" = mine ]
        [ "$(stat -c %u:%g mnt/home/user/notes)" = 1000:1000 ]
        [ "$(stat -c %a mnt/bin/su)" = 4755 ]
        # Overlay keeps its own attributes in user. xattrs here.
        grep " $PWD/mnt " /proc/self/mountinfo | grep -q userxattr
        echo built > mnt/built
        rm mnt/home/user/more
        $R umount mnt
        built=$($R ref commit "$m")
        $R snapshot prepare a >/dev/null
        $R mount a mnt --rw && echo a > mnt/a && $R umount mnt
        $R snapshot commit la a
        $R snapshot prepare b >/dev/null
        $R mount b mnt --rw && echo b > mnt/b && $R umount mnt
        $R snapshot commit lb b
        $R snapshot merge merged la lb
        $R snapshot diff delta la merged
        $R snapshot view v delta >/dev/null
        $R mount v mnt
        [ "$(ls mnt)" = b ]
        $R umount mnt
        $R image export "$built" oci:out:1 >/dev/null
        # A daemon serving a client, in the namespace too.
        $R serve & daemon=$!
        until $R serve --check >/dev/null 2>&1; do sleep 0.05; done
        $R du --json >/dev/null
        [ "$($R check)" = clean ]
        kill -TERM $daemon
        wait $daemon
        # A fresh root imports what was exported, with what was built.
        fresh=$($S --root r2 image import oci:out:1)
        $S --root r2 mount "$fresh" mnt
        [ "$(cat mnt/built)" = built ]
        [ ! -e mnt/home/user/more ]
        [ "$(stat -c %u mnt/home/user/notes)" = 1000 ]
        $S --root r2 umount mnt
        echo done
        "#,
        ],
    );
    assert_eq!(
        run.code,
        0,
        "in the namespace: {}\n{}",
        run.stderr,
        run.text()
    );
    assert!(run.text().ends_with("done\n"), "{}", run.text());
    // From outside: the snapshot files belong to the mapped range.
    let find = |pattern: &str| -> String {
        let out = Command::new("find")
            .arg(dir.join("r/snapshots"))
            .args(["-path", pattern, "-printf", "%U:%G %m\n"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let notes = find("*/home/user/notes");
    assert!(
        notes.lines().all(|l| l == "101000:101000 600") && !notes.is_empty(),
        "{notes}"
    );
    let built = find("*/built");
    assert!(
        built.lines().all(|l| l.starts_with("100000:100000")) && !built.is_empty(),
        "{built}"
    );
    let su = find("*/bin/su");
    assert!(
        su.lines().all(|l| l == "100000:100000 4755") && !su.is_empty(),
        "{su}"
    );
}
