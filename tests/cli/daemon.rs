//! `strata serve` as the root's daemon, from the shell: every command on a
//! served root runs through it and prints what it prints without one (the
//! same stdout, stderr and exit code, relative paths and standard input
//! included), `serve --check` reports health, a second `serve` is refused,
//! four imports of one image at once fetch each blob once, a client that
//! goes away cancels its command (an ingest, an import) and leaves nothing
//! half-stored, and SIGTERM lets the commands in flight finish.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use strata_testkit::cli::{Env, Run};
use strata_testkit::layer_tar::{archive, entry};
use strata_testkit::oci_layout::Layout;
use tar::EntryType;

/// A fresh native root (no privileges needed) with its daemon's output
/// compared against a second root without one.
fn pair() -> (Env, Env) {
    let (plain, served) = (Env::strata(), Env::strata());
    for env in [&plain, &served] {
        env.run(&["--backend", "native", "check"]).expect(0);
    }
    (plain, served)
}

/// An image in an OCI layout at `dir`, tagged `1`: a base layer and one
/// with `tag.txt`.
fn image(dir: &std::path::Path, tag: &str) {
    let layout = Layout::new(dir);
    let base = archive(&[
        entry("etc/", EntryType::Directory, b"", ""),
        entry("etc/os-release", EntryType::Regular, b"ID=strata\n", ""),
    ]);
    let own = archive(&[entry(
        format!("{tag}.txt"),
        EntryType::Regular,
        tag.as_bytes(),
        "",
    )]);
    let manifest = layout.image(&[base, own]);
    layout.tag(&manifest, "1");
}

/// `strata ARGS` in `cwd` with `stdin`.
fn run_in(env: &Env, cwd: &std::path::Path, args: &[&str], stdin: &[u8]) -> Run {
    let mut child = env
        .cmd(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start strata");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    strata_testkit::cli::finish(child.wait_with_output().unwrap())
}

#[test]
fn commands_through_the_daemon_print_what_they_print_without() {
    let (plain, served) = pair();
    let daemon = served.serve(&[]);
    // Both roots get the same inputs, named relative to a working
    // directory of the client's (the daemon's is elsewhere).
    for env in [&plain, &served] {
        std::fs::write(env.path("blob.txt"), b"hello\n").unwrap();
        image(&env.path("app"), "app");
    }
    let steps: &[(&[&str], &[u8])] = &[
        (&["content", "ingest", "blob.txt"], b""),
        (&["content", "ingest", "-"], b"from stdin\n"),
        (
            &[
                "content",
                "ingest",
                "-",
                "--expected",
                "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            ],
            b"wrong\n",
        ),
        (
            &[
                "content",
                "cat",
                "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
            ],
            b"",
        ),
        (&["content", "cat", "sha256:nope"], b""),
        (&["image", "import", "oci:app:1", "--name", "app"], b""),
        (&["image", "ls", "--json"], b""),
        (&["image", "export", "app", "oci:out:1"], b""),
        (&["image", "import", "oci:missing:1"], b""),
        (&["snapshot", "prepare", "work"], b""),
        // (Not `lease ls`: the daemon holds containerd's lease.)
        (&["ref", "ls", "--json"], b""),
        (&["du", "--json"], b""),
        (&["prune", "--dry-run", "--json"], b""),
        (&["gc", "--dry-run"], b""),
        (&["--backend", "overlay", "du"], b""),
        (&["check", "--json"], b""),
    ];
    for (args, stdin) in steps {
        let a = run_in(&plain, plain.tmp.path(), args, stdin);
        let b = run_in(&served, served.tmp.path(), args, stdin);
        let plain_root = plain.root.display().to_string();
        let served_root = served.root.display().to_string();
        let same = |s: &str| comparable(&s.replace(&served_root, &plain_root));
        assert_eq!(
            a.code,
            b.code,
            "strata {}: {} / {}",
            args.join(" "),
            a.stderr,
            b.stderr
        );
        assert_eq!(
            comparable(&a.text()),
            same(&b.text()),
            "strata {}: stdout",
            args.join(" ")
        );
        assert_eq!(
            comparable(&a.stderr),
            same(&b.stderr),
            "strata {}: stderr",
            args.join(" ")
        );
    }
    // The export landed in the client's directory, not the daemon's.
    assert!(served.path("out/index.json").exists());
    let health = served.run(&["serve", "--check", "--json"]).expect(0).json();
    assert_eq!(
        health["served"],
        steps.len() as u64,
        "every step ran through it: {health}"
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
}

/// Output made comparable across roots: normalised, and a JSON list's
/// items sorted (lists are in id order, and ids are random).
fn comparable(s: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(serde_json::Value::Array(items)) => {
            let mut items: Vec<String> = items.iter().map(|i| normalise(&i.to_string())).collect();
            items.sort();
            items.join("\n")
        }
        _ => normalise(s),
    }
}

/// Output with what differs between two roots by nature (times, random
/// ids, durations) blanked: RFC 3339 times, 25-character ids and
/// milliseconds.
fn normalise(s: &str) -> String {
    let time = regex_lite::Regex::new(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ").unwrap();
    let id = regex_lite::Regex::new(r"\b[a-z0-9]{25}\b").unwrap();
    let ms = regex_lite::Regex::new(r"\b\d+\.\d ms\b").unwrap();
    let s = time.replace_all(s, "TIME");
    let s = id.replace_all(&s, "ID");
    ms.replace_all(&s, "N ms").into_owned()
}

#[test]
fn serve_check_reports_health_and_a_second_serve_is_refused() {
    let env = Env::strata();
    env.run(&["--backend", "native", "check"]).expect(0);
    let none = env.run(&["serve", "--check"]).expect(4);
    assert!(
        none.stderr.contains("no strata daemon answers on"),
        "{}",
        none.stderr
    );
    let daemon = env.serve(&["--socket", &env.path("extra.sock").display().to_string()]);
    let health = env.run(&["serve", "--check", "--json"]).expect(0).json();
    assert_eq!(health["pid"], daemon.pid());
    assert_eq!(health["backend"], "native");
    assert_eq!(health["api_version"], 1);
    let repair = env.run(&["check", "--repair"]).expect(4);
    assert!(
        repair
            .stderr
            .contains("check --repair needs the root to itself"),
        "{}",
        repair.stderr
    );
    let again = env.run(&["serve"]).expect(4);
    assert!(
        again
            .stderr
            .contains("is served already, by strata process"),
        "{}",
        again.stderr
    );
    // The extra socket serves the same daemon; --address names it.
    let extra = env.path("extra.sock").display().to_string();
    let through = env
        .run(&["--address", &extra, "serve", "--check", "--json"])
        .expect(0)
        .json();
    assert_eq!(through["pid"], daemon.pid());
    assert_eq!(through["socket"], extra);
    let missing = env.path("missing.sock").display().to_string();
    let gone = env.run(&["--address", &missing, "du"]).expect(4);
    assert!(
        gone.stderr.contains("no strata daemon answers on"),
        "{}",
        gone.stderr
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
    assert!(!env.path("extra.sock").exists(), "the sockets are removed");
    assert!(!env.root.join("run/strata.sock").exists());
    // A root whose daemon is gone opens again.
    env.run(&["du"]).expect(0);
}

#[test]
fn four_imports_of_one_image_at_once_fetch_each_blob_once() {
    let env = Env::strata();
    env.run(&["--backend", "native", "check"]).expect(0);
    image(&env.path("app"), "app");
    let daemon = env.serve(&[]);
    let runs: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let env = &env;
                s.spawn(move || {
                    let name = format!("app{i}");
                    let source = format!("oci:{}:1", env.path("app").display());
                    env.run(&["image", "import", &source, "--name", &name, "--json"])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let docs: Vec<serde_json::Value> = runs.into_iter().map(|r| r.expect(0).json()).collect();
    // manifest, config and two layers: four blobs, each fetched once in all.
    let fetched: u64 = docs.iter().map(|d| d["fetched"].as_u64().unwrap()).sum();
    assert_eq!(fetched, 4, "{docs:?}");
    for d in &docs {
        let seen = d["fetched"].as_u64().unwrap() + d["present"].as_u64().unwrap();
        assert_eq!(seen, 4, "{d}");
        assert_eq!(
            d["image"]["top_ref"], docs[0]["image"]["top_ref"],
            "one unpack: one top ref"
        );
    }
    assert_eq!(env.run(&["check"]).expect(0).text().trim(), "clean");
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
}

/// Starts `strata content ingest -` through the daemon with `bytes` on its
/// stdin, left open, and waits until the daemon has its ingest.
fn ingest_through(env: &Env, bytes: &[u8]) -> (std::process::Child, std::process::ChildStdin) {
    let mut child = env
        .cmd(&["content", "ingest", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(bytes).unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let statuses = env.run(&["content", "active", "--json"]);
        if statuses.code == 0 && statuses.json().as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "the ingest never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, stdin)
}

/// Waits (a minute at most) until the daemon of `env` runs no command;
/// `what` names the command waited for.
fn until_idle(env: &Env, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.run(&["serve", "--check", "--json"]).expect(0).json()["running"] != 0 {
        assert!(Instant::now() < deadline, "{what} never ended");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_that_goes_away_cancels_its_command_and_stores_nothing() {
    let env = Env::strata();
    env.run(&["--backend", "native", "check"]).expect(0);
    let daemon = env.serve(&[]);
    let (mut child, stdin) = ingest_through(&env, b"half of it");
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    // The command ends (its input cut short is an error, not an end) and
    // no blob is stored from half an input.
    until_idle(&env, "the command");
    let blobs = env.run(&["content", "ls", "--json"]).expect(0).json();
    assert_eq!(blobs, serde_json::json!([]), "nothing stored");
    assert_eq!(env.run(&["check"]).expect(0).text().trim(), "clean");
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
}

#[test]
fn sigterm_lets_the_commands_in_flight_finish() {
    let env = Env::strata();
    env.run(&["--backend", "native", "check"]).expect(0);
    let daemon = env.serve(&[]);
    let (child, mut stdin) = ingest_through(&env, b"first half, ");
    let pid = daemon.pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // The daemon stops accepting but the ingest is still served.
    std::thread::sleep(Duration::from_millis(200));
    stdin.write_all(b"second half\n").unwrap();
    drop(stdin);
    let out = strata_testkit::cli::finish(child.wait_with_output().unwrap());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let digest = out.text().trim().to_owned();
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
    // The root, opened without the daemon, has the blob whole.
    let cat = env.run(&["content", "cat", &digest]).expect(0);
    assert_eq!(cat.stdout, b"first half, second half\n");
}

#[test]
fn an_import_whose_client_goes_away_is_cancelled() {
    let env = Env::strata();
    env.run(&["--backend", "native", "check"]).expect(0);
    // One layer of 30,000 files: long enough to be cut short.
    let layout = Layout::new(&env.path("big"));
    let mut entries = vec![entry("d/", EntryType::Directory, b"", "")];
    for i in 0..30_000 {
        entries.push(entry(format!("d/f{i}"), EntryType::Regular, b"x", ""));
    }
    let manifest = layout.image(&[archive(&entries)]);
    layout.tag(&manifest, "1");
    let daemon = env.serve(&[]);
    let source = format!("oci:{}:1", env.path("big").display());
    let mut client = env
        .cmd(&["image", "import", &source, "--name", "big"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Once the daemon is unpacking (a snapshot exists), the client goes.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = env.run(&["snapshot", "ls", "--json"]).expect(0).json();
        if listed.as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(
            client.try_wait().unwrap().is_none(),
            "the import ended before it was cut"
        );
        assert!(
            Instant::now() < deadline,
            "the import never started unpacking"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    client.kill().unwrap();
    client.wait().unwrap();
    until_idle(&env, "the cancelled import");
    // Nothing named; what the import held was let go: a collection leaves
    // no snapshot; the root checks clean.
    let images = env.run(&["image", "ls", "--json"]).expect(0).json();
    assert_eq!(images, serde_json::json!([]), "no image named");
    env.run(&["gc"]).expect(0);
    let snapshots = env.run(&["snapshot", "ls", "--json"]).expect(0).json();
    assert_eq!(snapshots, serde_json::json!([]), "nothing left held");
    assert_eq!(env.run(&["check"]).expect(0).text().trim(), "clean");
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
}

/// systemd's socket activation, through `systemd-socket-activate` (what
/// systemd does for a `.socket` unit): the daemon serves the socket it is
/// passed, clients reach it with `--address`, and the socket stays when
/// the daemon stops.
#[test]
fn the_daemon_serves_a_socket_systemd_passes() {
    let name = "daemon::the_daemon_serves_a_socket_systemd_passes";
    if !strata_testkit::require_tools(name, &[("systemd-socket-activate", "systemd")]) {
        return;
    }
    let env = Env::strata();
    env.run(&["--backend", "native", "check"]).expect(0);
    let socket = env.path("activated.sock");
    let mut activator = std::process::Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg(strata_testkit::cli::strata())
        .arg("--root")
        .arg(&env.root)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let address = socket.display().to_string();
    // The first connection starts the daemon; it answers once it is up.
    let deadline = Instant::now() + Duration::from_secs(60);
    let health = loop {
        let run = env.run(&["--address", &address, "serve", "--check", "--json"]);
        if run.code == 0 {
            break run.json();
        }
        assert!(
            Instant::now() < deadline,
            "no daemon answered: {}",
            run.stderr
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(health["socket"], address.as_str());
    assert_eq!(
        health["pid"],
        activator.id(),
        "systemd-socket-activate execs the daemon"
    );
    std::fs::write(env.path("blob"), b"activated\n").unwrap();
    let blob = env.path("blob").display().to_string();
    let digest = env
        .run(&["--address", &address, "content", "ingest", &blob])
        .expect(0);
    assert!(digest.text().starts_with("sha256:"), "{}", digest.text());
    let pid = activator.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        activator.wait().unwrap().success(),
        "the daemon stops cleanly"
    );
    assert!(socket.exists(), "a passed socket stays for its owner");
    // The root, without its daemon, has the blob.
    env.run(&["content", "cat", digest.text().trim()]).expect(0);
}
