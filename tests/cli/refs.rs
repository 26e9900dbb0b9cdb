//! `strata ref`, `strata du` and `strata prune` from the shell, one process
//! per command as a user runs them: a ref made, written through a real
//! mount, committed, merged and diffed, listed and inspected (`--json`
//! parsed), its disk usage, a dry-run prune that explains, a prune that
//! reclaims, and exit codes for what is missing or locked. Needs root.

use std::fs;

use strata_testkit::cli::Env;

fn env() -> Env {
    Env::strata()
}

fn id(env: &Env, args: &[&str]) -> String {
    env.run(args).expect(0).text().trim().to_owned()
}

fn read_tree(env: &Env, id: &str) -> Vec<(String, String)> {
    let dir = env.path(&format!("ro-{id}"));
    fs::create_dir_all(&dir).unwrap();
    let d = dir.display().to_string();
    env.run(&["mount", id, &d]).expect(0);
    let mut out: Vec<(String, String)> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect();
    // Committed refs mount read-only.
    assert!(fs::write(dir.join("nope"), "x").is_err());
    env.run(&["umount", &d]).expect(0);
    out.sort();
    out
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[test]
fn refs_from_the_shell() {
    for backend in ["overlay", "native"] {
        if !strata_testkit::require_root(&format!("strata-cli refs_from_the_shell::{backend}")) {
            return;
        }
        let env = env();
        env.run(&["--backend", backend, "check"]).expect(0);
        let a = id(&env, &["ref", "new", "--description", "base"]);
        env.write_through_mount(&a, &[("a", "1"), ("b", "base")]);
        let a2 = id(&env, &["ref", "commit", &a]);
        assert_ne!(a, a2);
        // The mutable id is gone; its record moved to the committed one.
        env.run(&["ref", "info", &a]).expect(3);
        let info = env.run(&["--json", "ref", "info", &a2]).expect(0).json();
        assert_eq!(info["kind"], "committed");
        assert_eq!(info["description"], "base");
        let b = id(&env, &["ref", "new", &a2]);
        env.write_through_mount(&b, &[("b", "top"), ("c", "3")]);
        let b2 = id(&env, &["ref", "commit", &b]);
        let info = env.run(&["--json", "ref", "info", &b2]).expect(0).json();
        assert_eq!(info["parent"], a2.as_str());
        let merged = id(&env, &["ref", "merge", &a2, &b2, "--description", "m"]);
        assert_eq!(
            read_tree(&env, &merged),
            pairs(&[("a", "1"), ("b", "top"), ("c", "3")])
        );
        let diff = id(&env, &["ref", "diff", &a2, &b2]);
        assert_eq!(read_tree(&env, &diff), pairs(&[("b", "top"), ("c", "3")]));
        let list = env.run(&["--json", "ref", "ls"]).expect(0).json();
        assert_eq!(list.as_array().unwrap().len(), 4, "{list}");
        let only = env
            .run(&["--json", "ref", "ls", "--filter", "description==m"])
            .expect(0)
            .json();
        assert_eq!(only[0]["id"], merged.as_str());
        let du = env.run(&["--json", "du"]).expect(0).json();
        assert_eq!(du.as_array().unwrap().len(), 4);
        let human = env.run(&["du"]).expect(0).text();
        assert!(
            human.contains("RECLAIMABLE") && human.contains("Total:"),
            "{human}"
        );
        // Missing inputs exit 3; a bad size is bad input (5).
        env.run(&["ref", "merge", &a2, "missing"]).expect(3);
        env.run(&["ref", "rm", "missing"]).expect(3);
        env.run(&["prune", "--max-used-space", "lots"]).expect(5);
        // A dry run removes nothing and explains what stays.
        let dry = env
            .run(&["--json", "prune", "--dry-run", "--filter", "description==m"])
            .expect(0)
            .json();
        assert_eq!(dry["removed"].as_array().unwrap().len(), 1, "{dry}");
        assert_eq!(dry["removed"][0]["id"], merged.as_str());
        let kept = dry["kept"].as_array().unwrap();
        let reason = |id: &str| {
            kept.iter()
                .find(|k| k["id"] == id)
                .map(|k| k["reason"].as_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        assert_eq!(reason(&a2), format!("parent of {b2}"));
        assert_eq!(reason(&diff), "filtered out");
        env.run(&["ref", "info", &merged]).expect(0);
        // rm lets go and collects; the rest survives.
        env.run(&["ref", "rm", &merged]).expect(0);
        env.run(&["ref", "info", &merged]).expect(3);
        assert_eq!(
            read_tree(&env, &b2),
            pairs(&[("a", "1"), ("b", "top"), ("c", "3")])
        );
        let pruned = env.run(&["--json", "prune"]).expect(0).json();
        assert_eq!(pruned["removed"].as_array().unwrap().len(), 3, "{pruned}");
        assert!(pruned["reclaimed"].as_u64().unwrap() > 0);
        let list = env.run(&["--json", "ref", "ls"]).expect(0).json();
        assert!(list.as_array().unwrap().is_empty(), "{list}");
        env.run(&["check"]).expect(0);
    }
}

#[test]
fn refs_held_by_an_explicit_lease_are_not_pruned() {
    if !strata_testkit::require_root("strata-cli refs_held_by_an_explicit_lease_are_not_pruned") {
        return;
    }
    let env = env();
    let r = id(&env, &["--lease", "build-42", "ref", "new"]);
    let c = id(&env, &["--lease", "build-42", "ref", "commit", &r]);
    let dry = env.run(&["--json", "prune", "--dry-run"]).expect(0).json();
    assert!(dry["removed"].as_array().unwrap().is_empty(), "{dry}");
    assert_eq!(dry["kept"][0]["reason"], "held by lease build-42");
    env.run(&["lease", "rm", "build-42"]).expect(0);
    env.run(&["gc"]).expect(0);
    env.run(&["ref", "info", &c]).expect(3);
    env.run(&["check"]).expect(0);
}
