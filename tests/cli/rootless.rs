//! Rootless imports with a single id mapping (`unshare -Urm`: the user is
//! root in the namespace and no other id exists there), as BuildKit and
//! podman run without subordinate ids. An owner the namespace cannot map
//! fails the import with exit 1 and a message that names the entry, the
//! owner and the way out, keeping nothing; `--ignore-chown-errors` squashes
//! it to the namespace's root, drops setuid and setgid, and says so once.
//! The binary runs under `unshare`; the checks run outside the namespace.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use strata_testkit::cli::{Env, Run, finish};
use strata_testkit::oci_layout::Layout;
use tar::{EntryType, Header};

/// Root for `unshare -Urm` and for the checks outside it; `unshare`.
fn ready(test: &str) -> bool {
    strata_testkit::require_root(test)
        && strata_testkit::require_tools(test, &[("unshare", "util-linux")])
}

/// One tar entry owned `uid:gid` with `mode`.
fn owned(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: EntryType, ids: (u64, u64), mode: u32) {
    let data: &[u8] = if kind == EntryType::Directory {
        b""
    } else {
        b"#!/bin/sh\n"
    };
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_uid(ids.0);
    h.set_gid(ids.1);
    h.set_mode(mode);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, path, data).unwrap();
}

/// A layer: `etc/tool` owned 1000:42 with setuid and setgid (what no
/// single mapping holds), `bin/su` root's and setuid.
fn layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    owned(&mut b, "etc/", EntryType::Directory, (0, 0), 0o755);
    owned(&mut b, "etc/tool", EntryType::Regular, (1000, 42), 0o6755);
    owned(&mut b, "bin/", EntryType::Directory, (0, 0), 0o755);
    owned(&mut b, "bin/su", EntryType::Regular, (0, 0), 0o4755);
    b.into_inner().unwrap()
}

/// A layout at `dir` of an image of [`layer`], tagged `1`.
fn layout(dir: &Path) {
    let layout = Layout::new(dir);
    let manifest = layout.image(&[layer()]);
    layout.tag(&manifest, "1");
}

/// `strata --root ROOT --backend native` in a new user and mount namespace
/// that maps only the caller's id, to root.
fn unshared(env: &Env) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--map-root-user", "--mount", "--"])
        .arg(env.bin())
        .arg("--root")
        .arg(&env.root)
        .args(["--backend", "native"])
        .env_remove("STRATA_IGNORE_CHOWN_ERRORS");
    c
}

/// [`unshared`] `ARGS...`, to completion.
fn rootless(env: &Env, args: &[&str]) -> Run {
    finish(unshared(env).args(args).output().expect("run unshare"))
}

fn source(env: &Env) -> String {
    let dir = env.path("layout");
    layout(&dir);
    format!("oci:{}:1", dir.display())
}

#[test]
fn unmapped_owner_fails_clearly_and_keeps_nothing() {
    if !ready("unmapped_owner_fails_clearly_and_keeps_nothing") {
        return;
    }
    let env = Env::strata();
    let src = source(&env);
    let run = rootless(&env, &["image", "import", &src, "--name", "app:1"]).expect(1);
    for said in [
        "\"etc/tool\"",
        "1000:42",
        "this user namespace maps no such id",
        "subordinate ids (newuidmap)",
        "--ignore-chown-errors",
    ] {
        assert!(run.stderr.contains(said), "{said:?} in: {}", run.stderr);
    }
    assert!(!run.stderr.contains("squashed"), "{}", run.stderr);
    // Nothing half-stored: no name, no snapshot, a clean root.
    assert_eq!(
        env.run(&["--json", "image", "ls"]).expect(0).json(),
        serde_json::json!([])
    );
    assert_eq!(
        env.run(&["--json", "snapshot", "ls"]).expect(0).json(),
        serde_json::json!([])
    );
    assert_eq!(env.run(&["check"]).expect(0).text().trim(), "clean");
}

#[test]
fn ignore_chown_errors_squashes_and_says_so() {
    if !ready("ignore_chown_errors_squashes_and_says_so") {
        return;
    }
    let env = Env::strata();
    let src = source(&env);
    let run = rootless(
        &env,
        &[
            "--ignore-chown-errors",
            "image",
            "import",
            &src,
            "--name",
            "app:1",
        ],
    )
    .expect(0);
    let note = "strata: squashed the ownership of 1 entries this user namespace cannot map (--ignore-chown-errors)";
    assert_eq!(run.stderr.matches(note).count(), 1, "{}", run.stderr);
    let top = run.text().trim().to_owned();
    // Outside the namespace its root is this process's uid, 0.
    let dir = env.path("mnt");
    fs::create_dir_all(&dir).unwrap();
    env.run(&["mount", &top, &dir.display().to_string()])
        .expect(0);
    let tool = fs::symlink_metadata(dir.join("etc/tool")).unwrap();
    let su = fs::symlink_metadata(dir.join("bin/su")).unwrap();
    env.run(&["umount", &dir.display().to_string()]).expect(0);
    assert_eq!((tool.uid(), tool.gid()), (0, 0), "squashed to root");
    assert_eq!(tool.mode() & 0o7777, 0o755, "setuid and setgid dropped");
    // An owner the namespace maps keeps its setuid.
    assert_eq!((su.uid(), su.gid(), su.mode() & 0o7777), (0, 0, 0o4755));
    assert_eq!(env.run(&["check"]).expect(0).text().trim(), "clean");
}

#[test]
fn layer_apply_squashes_through_the_environment() {
    if !ready("layer_apply_squashes_through_the_environment") {
        return;
    }
    let env = Env::strata();
    let file = env.path("layer.tar");
    fs::write(&file, layer()).unwrap();
    let apply = |dir: &str, squash: &str| {
        let dir = env.path(dir);
        fs::create_dir_all(&dir).unwrap();
        let out = unshared(&env)
            .env("STRATA_IGNORE_CHOWN_ERRORS", squash)
            .args(["layer", "apply"])
            .arg(&file)
            .arg(&dir)
            .output()
            .expect("run unshare");
        (finish(out), dir)
    };
    let (strict, _) = apply("strict", "0");
    let strict = strict.expect(1);
    assert!(strict.stderr.contains("\"etc/tool\""), "{}", strict.stderr);
    let (squashed, dir) = apply("squashed", "1");
    let squashed = squashed.expect(0);
    assert!(
        squashed
            .stderr
            .contains("squashed the ownership of 1 entries"),
        "{}",
        squashed.stderr
    );
    let tool = fs::symlink_metadata(dir.join("etc/tool")).unwrap();
    assert_eq!(
        (tool.uid(), tool.gid(), tool.mode() & 0o7777),
        (0, 0, 0o755)
    );
}

/// Through a daemon in the namespace: a client's
/// `STRATA_IGNORE_CHOWN_ERRORS=1` reaches the daemon (which parses the
/// command line in its own environment) as the option, so the import
/// squashes and the client is told.
#[test]
fn the_environment_opt_in_reaches_a_daemon() {
    let test = "rootless::the_environment_opt_in_reaches_a_daemon";
    if !ready(test) {
        return;
    }
    let env = Env::strata();
    let source = source(&env);
    let mut daemon = unshared(&env)
        .arg("serve")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while env.run(&["serve", "--check"]).code != 0 {
        assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited");
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let strict = env.run(&["image", "import", &source, "--name", "strict"]);
    assert_eq!(strict.code, 1, "{}", strict.stderr);
    let out = finish(
        env.cmd(&["image", "import", &source, "--name", "app"])
            .env("STRATA_IGNORE_CHOWN_ERRORS", "1")
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("squashed the ownership of 1 entries"),
        "{}",
        out.stderr
    );
    let pid = daemon.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(daemon.wait().unwrap().success());
}
