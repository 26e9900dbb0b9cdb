//! `strata lease ...`, `strata gc` and the holds every creating command
//! takes: default per-object leases, `--lease`, removal dropping holds,
//! dry runs, explain and exit codes.

use strata_testkit::cli::Env;

fn env() -> Env {
    Env::strata()
}

#[test]
fn what_users_create_survives_collection_until_removed() {
    let env = env();
    let run = |args: &[&str]| {
        let mut full = vec!["--backend", "native"];
        full.extend_from_slice(args);
        env.run(&full)
    };
    let file = env.path("blob");
    std::fs::write(&file, "content").unwrap();
    let digest = run(&["content", "ingest", &file.display().to_string()])
        .expect(0)
        .text()
        .trim()
        .to_string();
    run(&["snapshot", "prepare", "a"]).expect(0);
    run(&["snapshot", "commit", "a1", "a"]).expect(0);
    run(&["snapshot", "prepare", "b", "a1"]).expect(0);
    run(&["--lease", "build", "snapshot", "prepare", "c"]).expect(0);

    let leases: Vec<String> = run(&["--json", "lease", "ls"])
        .expect(0)
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        leases,
        [
            "build".to_string(),
            format!("content/{digest}"),
            "snapshot/a1".into(),
            "snapshot/b".into()
        ]
    );
    let res = run(&["--json", "lease", "resources", "build"])
        .expect(0)
        .json();
    assert_eq!(res[0]["type"], "snapshots/native");
    assert_eq!(res[0]["id"], "c");

    let dry = run(&["--json", "gc", "--dry-run", "--explain"])
        .expect(0)
        .json();
    assert_eq!(
        dry["removed"]["snapshots"].as_array().unwrap().len(),
        0,
        "{dry}"
    );
    assert_eq!(dry["kept"], 4, "the blob, a1, b and c");
    let pins = dry["pins"].as_array().unwrap();
    let a1 = pins.iter().find(|p| p["object"] == "snapshot a1").unwrap();
    assert_eq!(a1["chain"][0], "lease default/snapshot/a1");

    // Dropping holds makes things collectable.
    run(&["lease", "rm", "build"]).expect(0);
    run(&["snapshot", "rm", "b"]).expect(0);
    let gc = run(&["--json", "gc"]).expect(0).json();
    assert_eq!(gc["removed"]["snapshots"], serde_json::json!(["c"]));
    run(&["snapshot", "info", "c"]).expect(3);
    run(&["snapshot", "info", "a1"]).expect(0);
    run(&["content", "rm", &digest]).expect(0);
    assert_eq!(
        run(&["--json", "lease", "ls"])
            .expect(0)
            .json()
            .as_array()
            .unwrap()
            .len(),
        1,
        "only snapshot/a1 is left"
    );
    run(&["check"]).expect(0);
}

#[test]
fn lease_verbs_and_errors() {
    let env = env();
    let id = env
        .run(&["lease", "create", "--expire", "1h", "--label", "team=ci"])
        .expect(0)
        .text()
        .trim()
        .to_string();
    assert_eq!(id.len(), 25);
    env.run(&["lease", "create", "--id", "fixed"]).expect(0);
    env.run(&["lease", "create", "--id", "fixed"]).expect(4);
    env.run(&["lease", "create", "--expire", "soon"]).expect(5);
    let digest = format!("sha256:{}", "a".repeat(64));
    env.run(&["lease", "add", "fixed", "content", &digest])
        .expect(0);
    env.run(&["lease", "add", "fixed", "images", "x"]).expect(5);
    env.run(&["lease", "add", "missing", "ingests", "x"])
        .expect(3);
    let ls = env
        .run(&["--json", "lease", "ls", "--filter", "labels.team==ci"])
        .expect(0)
        .json();
    assert_eq!(ls[0]["id"], id.as_str());
    assert!(ls[0]["labels"]["containerd.io/gc.expire"].is_string());
    env.run(&["lease", "rm", "fixed", "--sync"]).expect(0);
    // A temporary lease belongs to the process that made it: the next
    // process to open the root removes it.
    env.run(&[
        "lease",
        "create",
        "--id",
        "tmp",
        "--label",
        "buildkit/lease.temporary=2026-01-01T00:00:00Z",
    ])
    .expect(0);
    let left = env
        .run(&["--json", "lease", "ls", "--filter", "id==tmp"])
        .expect(0)
        .json();
    assert_eq!(left, serde_json::json!([]));
    env.run(&["lease", "rm", "fixed"]).expect(3);
    env.run(&["lease", "resources", "fixed"]).expect(3);
}
