//! `strata snapshot ...`, `strata mount` and `strata umount` from the shell,
//! on both backends: prepare, write through a real mount, commit, view,
//! list, tree, usage, removal rules and exit codes.

use std::path::Path;

use strata_testkit::cli::Env;

fn env() -> Env {
    Env::strata()
}

fn round_trip(backend: &str) {
    let env = env();
    let run = |args: &[&str]| {
        let mut full = vec!["--backend", backend];
        full.extend_from_slice(args);
        env.run(&full)
    };
    let mnt = env.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mnt_s = mnt.display().to_string();

    let mounts = run(&[
        "--json",
        "snapshot",
        "prepare",
        "base-key",
        "--label",
        "team=build",
    ])
    .expect(0)
    .json();
    assert_eq!(mounts[0]["type"], "bind");
    run(&["mount", "base-key", &mnt_s, "--rw"]).expect(0);
    std::fs::write(mnt.join("hello"), "world").unwrap();
    run(&["umount", &mnt_s]).expect(0);
    run(&["snapshot", "commit", "base", "base-key"]).expect(0);
    run(&["snapshot", "info", "base-key"]).expect(3);

    run(&["snapshot", "prepare", "child", "base"]).expect(0);
    run(&["mount", "child", &mnt_s, "--rw"]).expect(0);
    assert_eq!(std::fs::read_to_string(mnt.join("hello")).unwrap(), "world");
    std::fs::write(mnt.join("second"), "layer").unwrap();
    std::fs::remove_file(mnt.join("hello")).unwrap();
    run(&["umount", &mnt_s]).expect(0);
    run(&["snapshot", "commit", "top", "child"]).expect(0);

    // A committed snapshot mounts read-only, with its whole chain.
    run(&["mount", "top", &mnt_s]).expect(0);
    assert!(!mnt.join("hello").exists());
    assert_eq!(
        std::fs::read_to_string(mnt.join("second")).unwrap(),
        "layer"
    );
    assert!(std::fs::write(mnt.join("x"), "y").is_err());
    run(&["umount", &mnt_s]).expect(0);
    run(&["mount", "top", &mnt_s, "--rw"]).expect(4);
    run(&["umount", &mnt_s]).expect(3);

    let info = run(&["--json", "snapshot", "info", "top"]).expect(0).json();
    assert_eq!(
        (info["kind"].as_str(), info["parent"].as_str()),
        (Some("committed"), Some("base"))
    );
    let ls = run(&["--json", "snapshot", "ls", "--filter", "kind==committed"])
        .expect(0)
        .json();
    assert_eq!(ls.as_array().unwrap().len(), 2);
    let tree = run(&["snapshot", "tree"]).expect(0).text();
    assert_eq!(tree, "base [committed]\n  top [committed]\n");
    let usage = run(&["--json", "snapshot", "usage", "base"])
        .expect(0)
        .json();
    assert!(usage[0]["size"].as_u64().unwrap() > 0 && usage[0]["inodes"].as_u64().unwrap() >= 2);

    run(&["snapshot", "view", "v", "top"]).expect(0);
    run(&["snapshot", "commit", "nope", "v"]).expect(4);
    run(&["snapshot", "prepare", "v"]).expect(4);
    run(&["snapshot", "prepare", "x", "missing"]).expect(3);
    run(&["snapshot", "rm", "base"]).expect(4);
    run(&["snapshot", "rm", "v", "top", "base"]).expect(0);
    assert_eq!(
        run(&["--json", "snapshot", "ls"]).expect(0).json(),
        serde_json::json!([])
    );
    run(&["check"]).expect(0);
    assert!(
        Path::new(&env.root)
            .join("snapshots")
            .read_dir()
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn overlay_round_trip() {
    if strata_testkit::require_root("strata-cli::overlay_round_trip") {
        round_trip("overlay");
    }
}

#[test]
fn native_round_trip() {
    if strata_testkit::require_root("strata-cli::native_round_trip") {
        round_trip("native");
    }
}

#[test]
fn a_root_keeps_its_backend() {
    let env = env();
    env.run(&["--backend", "native", "snapshot", "ls"])
        .expect(0);
    let run = env
        .run(&["--backend", "overlay", "snapshot", "ls"])
        .expect(4);
    assert!(
        run.stderr.contains("uses the native backend, not overlay"),
        "{}",
        run.stderr
    );
    env.run(&["snapshot", "ls"]).expect(0);
}

#[test]
fn snapshot_bookkeeping_without_mounts() {
    let env = env();
    let run = |args: &[&str]| {
        let mut full = vec!["--backend", "native"];
        full.extend_from_slice(args);
        env.run(&full)
    };
    run(&["snapshot", "prepare", "a"]).expect(0);
    run(&["snapshot", "prepare", "a"]).expect(4);
    run(&["snapshot", "commit", "a1", "a"]).expect(0);
    run(&["snapshot", "mounts", "a1"]).expect(4);
    run(&["snapshot", "prepare", "b", "a1", "--label", "novalue"]).expect(5);
    run(&["snapshot", "ls", "--filter", "kind=="]).expect(0);
    run(&["snapshot", "info", "zzz"]).expect(3);
    run(&["snapshot", "rm", "a1"]).expect(0);
}

/// A reader that stops reading (`strata snapshot ls | head`) is not a
/// failure: no message, exit 0, with and without a daemon.
#[test]
fn a_closed_pipe_is_not_a_failure() {
    let env = env();
    env.run(&["--backend", "native", "snapshot", "prepare", "k"])
        .expect(0);
    let closed = |env: &Env| {
        let mut child = env
            .cmd(&["snapshot", "ls"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The read end goes before the command writes anything.
        drop(child.stdout.take());
        strata_testkit::cli::finish(child.wait_with_output().unwrap())
    };
    let out = closed(&env);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
    let daemon = env.serve(&[]);
    let out = closed(&env);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
}
