//! `strata layer apply` from the shell: a GNU tar layer applies, a wrong
//! digest and a hostile layer exit 5, nothing lands outside the directory.

use std::process::Command;

use strata_testkit::cli::Env;

fn env() -> Env {
    Env::strata()
}

#[test]
fn applies_a_gnu_tar_layer_and_refuses_bad_ones() {
    let env = env();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hostname"), "box\n").unwrap();
    std::os::unix::fs::symlink("hostname", src.join("etc/alias")).unwrap();
    let layer = env.path("layer.tar.gz");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("-czf")
        .arg(&layer)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let out = env.path("out");
    std::fs::create_dir(&out).unwrap();
    let (layer_s, out_s) = (layer.display().to_string(), out.display().to_string());
    let applied = env
        .run(&["--json", "layer", "apply", &layer_s, &out_s])
        .expect(0)
        .json();
    assert_eq!(applied["compression"], "gzip");
    assert_eq!(
        std::fs::read_to_string(out.join("etc/hostname")).unwrap(),
        "box\n"
    );
    assert_eq!(
        std::fs::read_link(out.join("etc/alias")).unwrap().to_str(),
        Some("hostname")
    );
    let digest = applied["digest"].as_str().unwrap().to_string();
    let diff_id = applied["diff_id"].as_str().unwrap().to_string();
    env.run(&[
        "layer",
        "apply",
        &layer_s,
        &out_s,
        "--digest",
        &digest,
        "--diff-id",
        &diff_id,
    ])
    .expect(0);

    let wrong = format!("sha256:{}", "0".repeat(64));
    let run = env
        .run(&["layer", "apply", &layer_s, &out_s, "--diff-id", &wrong])
        .expect(5);
    assert!(
        run.stderr.contains(&wrong) && run.stderr.contains(&diff_id),
        "{}",
        run.stderr
    );

    // A hostile layer: a member climbing out of the directory.
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..13].copy_from_slice(b"../escaped.tx");
    h.set_size(1);
    h.set_mode(0o644);
    h.set_cksum();
    let mut bytes = h.as_bytes().to_vec();
    bytes.extend_from_slice(b"x");
    bytes.resize(512 * 2 + 1024, 0);
    let hostile = env.path("hostile.tar");
    std::fs::write(&hostile, bytes).unwrap();
    let run = env
        .run(&["layer", "apply", &hostile.display().to_string(), &out_s])
        .expect(5);
    assert!(
        run.stderr.contains("climbs above the root"),
        "{}",
        run.stderr
    );
    assert!(!env.path("escaped.tx").exists());
    env.run(&[
        "layer",
        "apply",
        &env.path("missing").display().to_string(),
        &out_s,
    ])
    .expect(3);
}

/// `layer diff` of two unrelated directories: a file whose size and mtime
/// match but whose bytes differ is a change (a coarse clock, `cp -p` or
/// `touch -r` make such pairs), and lands in the layer.
#[test]
fn diff_of_two_directories_compares_contents_when_metadata_matches() {
    let env = env();
    let (old, new) = (env.path("old"), env.path("new"));
    for (dir, text) in [(&old, "old\n"), (&new, "new\n")] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("x"), text).unwrap();
        let pinned = Command::new("touch")
            .args(["-d", "2024-01-01 00:00:00.5"])
            .arg(dir.join("x"))
            .status()
            .unwrap();
        assert!(pinned.success());
    }
    let layer = env.path("change.tar");
    env.run(&[
        "layer",
        "diff",
        &old.display().to_string(),
        &new.display().to_string(),
        "-o",
        &layer.display().to_string(),
        "--compression",
        "none",
    ])
    .expect(0);
    let copy = env.path("copy");
    std::fs::create_dir(&copy).unwrap();
    std::fs::write(copy.join("x"), "old\n").unwrap();
    env.run(&[
        "layer",
        "apply",
        &layer.display().to_string(),
        &copy.display().to_string(),
    ])
    .expect(0);
    assert_eq!(std::fs::read_to_string(copy.join("x")).unwrap(), "new\n");
}
