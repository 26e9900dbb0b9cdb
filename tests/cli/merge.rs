//! `strata layer diff`, `strata snapshot merge` and `strata snapshot diff`
//! from the shell: a diff layer GNU tar can read that reproduces the upper
//! tree when applied onto the lower; merges where later keys win and diffs
//! that hold only what changed, on both backends through real mounts.

use std::fs;
use std::process::Command;

use strata_testkit::cli::Env;

fn env() -> Env {
    Env::strata()
}

#[test]
fn layer_diff_round_trips_and_gnu_tar_reads_it() {
    let env = env();
    let (lower, upper, copy) = (env.path("lower"), env.path("upper"), env.path("copy"));
    for d in [&lower, &upper, &copy] {
        fs::create_dir_all(d.join("etc")).unwrap();
    }
    for d in [&lower, &copy] {
        fs::write(d.join("etc/old"), "old").unwrap();
        fs::write(d.join("etc/keep"), "keep").unwrap();
    }
    fs::copy(lower.join("etc/keep"), upper.join("etc/keep")).unwrap();
    fs::write(upper.join("etc/new"), "new").unwrap();
    let file = env.path("layer.tar.zst");
    let s = |p: &std::path::Path| p.display().to_string();
    let written = env
        .run(&[
            "--json",
            "layer",
            "diff",
            &s(&lower),
            &s(&upper),
            "-o",
            &s(&file),
            "--compression",
            "zstd",
            "--level",
            "3",
        ])
        .expect(0)
        .json();
    assert_eq!(
        written["media_type"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    let listing = Command::new("tar")
        .arg("--zstd")
        .arg("-tf")
        .arg(&file)
        .output()
        .unwrap();
    assert!(listing.status.success(), "GNU tar reads the layer");
    let names = String::from_utf8(listing.stdout).unwrap();
    assert!(
        names.contains("etc/.wh.old") && names.contains("etc/new"),
        "{names}"
    );
    let digest = written["digest"].as_str().unwrap();
    let diff_id = written["diff_id"].as_str().unwrap();
    env.run(&[
        "layer",
        "apply",
        &s(&file),
        &s(&copy),
        "--digest",
        digest,
        "--diff-id",
        diff_id,
    ])
    .expect(0);
    assert_eq!(
        strata_testkit::tree::render(&copy),
        strata_testkit::tree::render(&upper)
    );
    // A missing input directory is a clear error.
    let missing = env.run(&[
        "layer",
        "diff",
        "/nonexistent-lower",
        &s(&upper),
        "-o",
        &s(&file),
    ]);
    assert_ne!(missing.code, 0);
    assert!(
        missing.stderr.contains("nonexistent-lower"),
        "{}",
        missing.stderr
    );
}

fn merge_and_diff(backend: &str) {
    let env = env();
    let run = |args: &[&str]| {
        let mut full = vec!["--backend", backend];
        full.extend_from_slice(args);
        env.run(&full)
    };
    let mnt = env.path("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = mnt.display().to_string();
    // Two independent snapshots and a child of the first.
    run(&["snapshot", "prepare", "a-w"]).expect(0);
    run(&["mount", "a-w", &m, "--rw"]).expect(0);
    fs::write(mnt.join("shared"), "from a").unwrap();
    fs::write(mnt.join("only-a"), "a").unwrap();
    run(&["umount", &m]).expect(0);
    run(&["snapshot", "commit", "a", "a-w"]).expect(0);
    run(&["snapshot", "prepare", "b-w"]).expect(0);
    run(&["mount", "b-w", &m, "--rw"]).expect(0);
    fs::write(mnt.join("shared"), "from b").unwrap();
    run(&["umount", &m]).expect(0);
    run(&["snapshot", "commit", "b", "b-w"]).expect(0);
    run(&["snapshot", "prepare", "c-w", "a"]).expect(0);
    run(&["mount", "c-w", &m, "--rw"]).expect(0);
    fs::write(mnt.join("added"), "c").unwrap();
    fs::remove_file(mnt.join("only-a")).unwrap();
    run(&["umount", &m]).expect(0);
    run(&["snapshot", "commit", "c", "c-w"]).expect(0);

    let merged = run(&["--json", "snapshot", "merge", "ab", "a", "b"])
        .expect(0)
        .json();
    assert_eq!(merged["name"], "ab");
    run(&["mount", "ab", &m]).expect(0);
    assert_eq!(fs::read_to_string(mnt.join("shared")).unwrap(), "from b");
    assert_eq!(fs::read_to_string(mnt.join("only-a")).unwrap(), "a");
    run(&["umount", &m]).expect(0);

    run(&["snapshot", "diff", "delta", "a", "c"]).expect(0);
    run(&["mount", "delta", &m]).expect(0);
    let mut names: Vec<String> = fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["added"],
        "{backend}: only what changed, deletions dropped"
    );
    run(&["umount", &m]).expect(0);
    let usage = run(&["--json", "snapshot", "usage", "ab"]).expect(0).json();
    assert!(usage[0]["inodes"].as_u64().unwrap() >= 1);
    run(&["snapshot", "merge", "bad", "a", "missing"]).expect(3);
    assert_eq!(
        run(&["snapshot", "info", "bad"]).code,
        3,
        "a failed merge leaves nothing"
    );
}

#[test]
fn merge_and_diff_overlay() {
    if strata_testkit::require_root("strata-cli::merge_and_diff_overlay") {
        merge_and_diff("overlay");
    }
}

#[test]
fn merge_and_diff_native() {
    if strata_testkit::require_root("strata-cli::merge_and_diff_native") {
        merge_and_diff("native");
    }
}
