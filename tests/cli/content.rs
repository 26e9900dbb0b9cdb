//! `strata content ...` and `strata check` from the shell: ingest then cat
//! round trips, wrong digests exit 5 and change nothing, exit codes for
//! missing, conflicting and malformed input, labels, removal and repair.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use strata_testkit::cli::{Env, finish};

fn env() -> Env {
    Env::strata()
}

fn write_file(env: &Env, name: &str, bytes: &[u8]) -> String {
    let p = env.path(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

fn sha256_of(path: &str) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

#[test]
fn ingest_then_cat_round_trips() {
    let env = env();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file = write_file(&env, "blob", &data);
    let digest = env
        .run(&["content", "ingest", &file])
        .expect(0)
        .text()
        .trim()
        .to_string();
    assert_eq!(digest, sha256_of(&file));
    // `strata content cat DIGEST | cmp - FILE`
    let mut cat = env
        .cmd(&["content", "cat", &digest])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let cmp = std::process::Command::new("cmp")
        .args(["-", &file])
        .stdin(cat.stdout.take().unwrap())
        .status()
        .unwrap();
    assert!(cat.wait().unwrap().success(), "strata content cat failed");
    assert!(cmp.success(), "cat output differs from the file");
    // Ingesting again is not an error and reports the existing blob.
    let again = env
        .run(&["--json", "content", "ingest", &file])
        .expect(0)
        .json();
    assert_eq!(again["digest"], digest.as_str());
    assert_eq!(again["already_existed"], true);
    env.run(&["check"]).expect(0);
}

#[test]
fn wrong_expected_digest_exits_5_and_changes_nothing() {
    let env = env();
    let file = write_file(&env, "blob", b"hello");
    let other = format!("sha256:{}", "0".repeat(64));
    let run = env
        .run(&["content", "ingest", &file, "--expected", &other])
        .expect(5);
    assert!(
        run.stderr.contains(&other) && run.stderr.contains(&sha256_of(&file)),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
    assert_eq!(
        env.run(&["--json", "content", "ls"]).expect(0).json(),
        serde_json::json!([])
    );
    assert!(
        env.root
            .join("content/blobs/sha256")
            .read_dir()
            .unwrap()
            .next()
            .is_none()
    );
    assert_eq!(
        env.run(&["--json", "content", "active"]).expect(0).json(),
        serde_json::json!([])
    );
    env.run(&["check"]).expect(0);
    // A malformed expectation is bad input too.
    env.run(&["content", "ingest", &file, "--expected", "sha256:xyz"])
        .expect(5);
    // The same file then ingests fine with the right expectation.
    let right = sha256_of(&file);
    env.run(&["content", "ingest", &file, "--expected", &right])
        .expect(0);
}

#[test]
fn stdin_labels_info_ls_rm() {
    let env = env();
    let mut child = env
        .cmd(&[
            "content",
            "ingest",
            "-",
            "--label",
            "a=1",
            "--label",
            "containerd.io/gc.root=now",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin")
        .unwrap();
    let digest = finish(child.wait_with_output().unwrap())
        .expect(0)
        .text()
        .trim()
        .to_string();

    let info = env
        .run(&["--json", "content", "info", &digest])
        .expect(0)
        .json();
    assert_eq!(info["size"], 10);
    assert_eq!(info["labels"]["a"], "1");

    env.run(&["content", "label", &digest, "a=", "b=2"])
        .expect(0);
    let info = env
        .run(&["--json", "content", "info", &digest])
        .expect(0)
        .json();
    assert!(info["labels"].get("a").is_none());
    assert_eq!(info["labels"]["b"], "2");

    let listed = env
        .run(&["content", "ls", "--filter", "labels.b==2"])
        .expect(0)
        .text();
    assert!(
        listed.starts_with("DIGEST") && listed.contains(&digest),
        "{listed}"
    );
    let quiet = env
        .run(&["content", "ls", "-q", "--filter", "labels.b==3"])
        .expect(0)
        .text();
    assert!(quiet.is_empty());
    env.run(&["content", "ls", "--filter", "=="]).expect(5);

    env.run(&["content", "rm", &digest]).expect(0);
    env.run(&["content", "info", &digest]).expect(3);
    env.run(&["content", "cat", &digest]).expect(3);
    env.run(&["content", "rm", &digest]).expect(3);
}

#[test]
fn usage_and_input_errors() {
    let env = env();
    env.run(&["content", "frobnicate"]).expect(2);
    env.run(&["content", "info", "not-a-digest"]).expect(5);
    env.run(&[
        "content",
        "ingest",
        &env.path("missing").display().to_string(),
    ])
    .expect(3);
    let file = write_file(&env, "f", b"x");
    env.run(&["content", "ingest", &file, "--label", "novalue"])
        .expect(5);
    env.run(&["content", "ingest", &file, "--size", "2"])
        .expect(5);
    assert_eq!(
        env.run(&["--json", "content", "active"]).expect(0).json(),
        serde_json::json!([])
    );
    env.run(&["content", "abort", "nothing"]).expect(3);
}

#[test]
fn second_process_on_a_root_exits_4() {
    let env = env();
    // The first process holds the root while it waits for stdin.
    let (holder, stdin) = env.ingest_in_progress(b"partial");
    // Without waiting: exit 4 at once.
    let second = env
        .run(&["--lock-timeout", "0s", "content", "ls"])
        .expect(4);
    // It names the holder by pid.
    assert!(
        second
            .stderr
            .contains(&format!("locked by another process (pid {})", holder.id())),
        "{}",
        second.stderr
    );
    // Waiting a bounded time, saying so, then exit 4.
    let started = std::time::Instant::now();
    let second = env
        .run(&["--lock-timeout", "2s", "content", "ls"])
        .expect(4);
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    assert!(
        second.stderr.contains(&format!(
            "waiting up to 2s for {}: strata process {} owns the root",
            env.root.join("LOCK").display(),
            holder.id()
        )),
        "{}",
        second.stderr
    );
    assert!(second.stderr.contains("(waited 2s;"), "{}", second.stderr);
    // A waiter gets the root once the holder lets go: it says it waits
    // (so it found the root held), and what it lists is what the holder
    // committed (so it ran after the holder let go).
    let mut waiter = env
        .cmd(&["--lock-timeout", "60s", "content", "ls"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = BufReader::new(waiter.stderr.take().unwrap());
    let mut line = String::new();
    said.read_line(&mut line).unwrap();
    assert!(line.contains("waiting up to 1m"), "{line}");
    drop(stdin);
    let digest = finish(holder.wait_with_output().unwrap()).expect(0).text();
    let listed = finish(waiter.wait_with_output().unwrap()).expect(0).text();
    assert!(listed.contains(digest.trim()), "{listed}");
}

#[test]
fn check_finds_and_repairs_a_corrupt_blob() {
    use std::os::unix::fs::PermissionsExt;
    let env = env();
    let file = write_file(&env, "f", b"precious bytes");
    let digest = env
        .run(&["content", "ingest", &file])
        .expect(0)
        .text()
        .trim()
        .to_string();
    let blob = env
        .root
        .join("content/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&blob, b"precious bytez").unwrap();
    let run = env.run(&["check"]).expect(1);
    assert!(
        run.text().contains(&digest) && run.text().contains("blob hashes to"),
        "{}",
        run.text()
    );
    let json = env.run(&["--json", "check"]).expect(1).json();
    assert_eq!(json["clean"], false);
    let repaired = env.run(&["check", "--repair"]).expect(0).text();
    assert!(repaired.contains("(removed)"), "{repaired}");
    env.run(&["content", "info", &digest]).expect(3);
    assert_eq!(env.run(&["check"]).expect(0).text().trim(), "clean");
}

#[test]
fn root_is_private_and_tmp_is_emptied() {
    use std::os::unix::fs::PermissionsExt;
    let env = env();
    env.run(&["content", "ls"]).expect(0);
    let mode = std::fs::metadata(&env.root).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    std::fs::write(env.root.join("tmp/leftover"), b"x").unwrap();
    env.run(&["content", "ls"]).expect(0);
    assert!(!env.root.join("tmp/leftover").exists());
}
