//! The layering check: crates sit on floors (ARCHITECTURE.md's code map) and
//! a crate may depend only on crates of lower floors. It reads the resolved
//! dependency graph once from `cargo metadata` (every feature on, so an
//! optional dependency counts) and fails when cargo fails, when a
//! workspace member has no floor, or when an arrow points up. It also pins
//! the absences ARCHITECTURE.md promises: no async runtime, syscall or
//! database crate under strata-core, none of several below the crates that
//! need them, and syscall crates used directly only by strata-sys. A crate
//! written as if it lived outside the workspace (the example backend) may
//! use only the crates an outside crate could, in its tests too.

use anyhow::{Context, bail};
use std::collections::{BTreeMap, BTreeSet};

/// Workspace crates and their floors (the code map's floor times ten; the
/// snapshot backends sit half a floor above the snapshot crate whose
/// `Backend` seam they implement); test-only crates are `None`.
const FLOORS: &[(&str, Option<u8>)] = &[
    ("strata-core", Some(0)),
    ("strata-sys", Some(10)),
    ("strata-metadata", Some(10)),
    ("strata-leases", Some(15)),
    ("strata-content", Some(20)),
    ("strata-snapshot", Some(20)),
    ("strata-overlay", Some(25)),
    ("strata-native", Some(25)),
    ("strata-btrfs", Some(25)),
    ("strata-example-backend", Some(25)),
    ("strata-diff", Some(30)),
    ("strata-lazy", Some(32)),
    ("strata-oci", Some(30)),
    ("strata-api", Some(5)),
    ("strata-containerd", Some(30)),
    ("strata-daemon", Some(35)),
    ("strata-cache", Some(40)),
    ("strata-cli", Some(50)),
    ("strata-testkit", None),
    ("strata-fault-shim", None),
    ("strata-tests", None),
    ("xtask", Some(50)),
];

/// (crate, dependency it must never pull in, even indirectly, unless
/// through a feature someone turns on). What a crate must leave out when
/// its own features are off (strata-oci's and strata-cache's registry
/// client, strata-cache's backends) is `features.rs`'s to check: this graph
/// does not say which features a dependent turns on.
const FORBIDDEN: &[(&str, &str)] = &[
    ("strata-core", "tokio"),
    ("strata-core", "nix"),
    ("strata-core", "rustix"),
    ("strata-core", "redb"),
    ("strata-metadata", "tokio"),
    ("strata-content", "tokio"),
    // oci-spec belongs to the OCI boundary (strata-core's `oci` feature).
    ("strata-core", "oci-spec"),
    ("strata-snapshot", "oci-spec"),
    ("strata-content", "oci-spec"),
    ("strata-diff", "oci-spec"),
    ("strata-leases", "oci-spec"),
    // gRPC belongs to the wire bindings and the containerd edge.
    ("strata-snapshot", "tonic"),
    ("strata-diff", "tonic"),
    ("strata-oci", "tonic"),
    ("strata-cache", "tonic"),
    // Registries belong to strata-oci, the command line to strata-cli.
    ("strata-snapshot", "oci-client"),
    ("strata-diff", "oci-client"),
    ("strata-containerd", "oci-client"),
    ("strata-cache", "clap"),
    ("strata-containerd", "clap"),
    ("strata-daemon", "oci-client"),
    ("strata-daemon", "clap"),
    // A lazy layer reads its blob through a narrow trait; the registry
    // client stays with the command line.
    ("strata-lazy", "oci-client"),
];

/// Crates written as an outside crate would write them, with the workspace
/// crates they may use in any kind of dependency (dev ones included): the
/// ones whose public items are meant for the outside, never the testkit.
const OUTSIDE: &[(&str, &[&str])] = &[(
    "strata-example-backend",
    &["strata-core", "strata-snapshot", "strata-sys"],
)];

/// Syscall crates only strata-sys may use directly (the test-only fault
/// shim is an `LD_PRELOAD` library and speaks the C library itself).
const SYSCALL_CRATES: &[&str] = &["rustix", "nix"];

/// The resolved graph: every package by id with its name, the workspace
/// members' ids, each package's normal (not dev, not build) dependencies
/// by id, its dependencies of every kind by id, and the (package,
/// dependency) names declared optional.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    pub names: BTreeMap<String, String>,
    pub members: BTreeSet<String>,
    pub normal: BTreeMap<String, BTreeSet<String>>,
    pub any: BTreeMap<String, BTreeSet<String>>,
    pub optional: BTreeSet<(String, String)>,
}

impl Graph {
    /// Reads `cargo metadata` of the workspace; a cargo failure is an error.
    fn load() -> anyhow::Result<Graph> {
        Graph::parse(&crate::cargo_metadata(&[])?)
    }

    pub(crate) fn parse(meta: &serde_json::Value) -> anyhow::Result<Graph> {
        let text = |v: &serde_json::Value, what: &str| -> anyhow::Result<String> {
            v.as_str()
                .map(str::to_owned)
                .with_context(|| format!("cargo metadata: {what} is not a string"))
        };
        let list = |v: &serde_json::Value, what: &str| -> anyhow::Result<Vec<serde_json::Value>> {
            v.as_array()
                .cloned()
                .with_context(|| format!("cargo metadata: no {what} list"))
        };
        let mut g = Graph::default();
        for p in list(&meta["packages"], "packages")? {
            let name = text(&p["name"], "a package name")?;
            for d in p["dependencies"].as_array().into_iter().flatten() {
                if d["optional"].as_bool() == Some(true) {
                    g.optional
                        .insert((name.clone(), text(&d["name"], "a dependency name")?));
                }
            }
            g.names.insert(text(&p["id"], "a package id")?, name);
        }
        for m in list(&meta["workspace_members"], "workspace_members")? {
            g.members.insert(text(&m, "a member id")?);
        }
        for node in list(&meta["resolve"]["nodes"], "resolve nodes")? {
            let id = text(&node["id"], "a node id")?;
            let mut deps = BTreeSet::new();
            let mut any = BTreeSet::new();
            for d in list(&node["deps"], "deps")? {
                let pkg = text(&d["pkg"], "a dependency id")?;
                let normal = list(&d["dep_kinds"], "dep_kinds")?
                    .iter()
                    .any(|k| k["kind"].is_null());
                if normal {
                    deps.insert(pkg.clone());
                }
                any.insert(pkg);
            }
            g.normal.insert(id.clone(), deps);
            g.any.insert(id, any);
        }
        Ok(g)
    }

    fn name<'a>(&'a self, id: &'a str) -> &'a str {
        self.names.get(id).map_or(id, String::as_str)
    }

    /// The member whose package is called `name`.
    fn member(&self, name: &str) -> Option<&String> {
        self.members.iter().find(|id| self.name(id) == name)
    }

    /// Every package `id` reaches through normal edges.
    /// What `id` pulls in through normal dependencies, not following an
    /// optional one: a feature is judged where it is turned on.
    fn reaches(&self, id: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![id.to_owned()];
        while let Some(next) = todo.pop() {
            let from = self.name(&next).to_owned();
            for d in self.normal.get(&next).into_iter().flatten() {
                if self
                    .optional
                    .contains(&(from.clone(), self.name(d).to_owned()))
                {
                    continue;
                }
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        seen
    }
}

fn floor(name: &str) -> Option<Option<u8>> {
    FLOORS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Every breach of the rules in `g`.
pub(crate) fn problems(g: &Graph) -> Vec<String> {
    let mut problems = Vec::new();
    for id in &g.members {
        let name = g.name(id);
        let Some(f) = floor(name) else {
            problems.push(format!(
                "workspace member {name} has no floor in xtask's layering table"
            ));
            continue;
        };
        for dep in g.normal.get(id).into_iter().flatten() {
            if !g.members.contains(dep) {
                if SYSCALL_CRATES.contains(&g.name(dep))
                    && !matches!(name, "strata-sys" | "strata-fault-shim")
                {
                    problems.push(format!(
                        "{name} uses {} directly; syscalls belong in strata-sys",
                        g.name(dep)
                    ));
                }
                continue;
            }
            let dep_name = g.name(dep);
            match (f, floor(dep_name).flatten()) {
                // Test-only crates sit beside the floors: anything may use
                // them in tests, nothing may depend on them normally but
                // behind an optional feature (strata-snapshot's conformance
                // suite, which the backends turn on in their dev-dependencies;
                // cargo's graph unifies those features in).
                (Some(_), None)
                    if !g.optional.contains(&(name.to_owned(), dep_name.to_owned())) =>
                {
                    problems.push(format!(
                        "{name} depends on the test-only crate {dep_name}"
                    ));
                }
                (Some(upper), Some(lower)) if upper <= lower => problems.push(format!(
                    "{name} (floor {upper}) depends on {dep_name} (floor {lower}): arrows must point down"
                )),
                _ => {}
            }
        }
    }
    for (name, _) in FLOORS {
        if g.member(name).is_none() {
            problems.push(format!(
                "{name} is in xtask's layering table but not in the workspace"
            ));
        }
    }
    for (krate, allowed) in OUTSIDE {
        let Some(id) = g.member(krate) else { continue };
        for dep in g.any.get(id).into_iter().flatten() {
            let dep_name = g.name(dep);
            if g.members.contains(dep) && !allowed.contains(&dep_name) {
                problems.push(format!(
                    "{krate} is written as an outside crate would be: it may use {} only, not {dep_name}",
                    allowed.join(", ")
                ));
            }
        }
    }
    for (krate, banned) in FORBIDDEN {
        let Some(id) = g.member(krate) else { continue };
        if g.reaches(id).iter().any(|d| g.name(d) == *banned) {
            problems.push(format!("{krate} pulls in {banned}"));
        }
    }
    problems
}

pub fn check() -> anyhow::Result<()> {
    let g = Graph::load()?;
    let found = problems(&g);
    if !found.is_empty() {
        bail!("layering check failed:\n  {}", found.join("\n  "));
    }
    eprintln!("layering: ok ({} workspace crates)", g.members.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A metadata document: members with their normal dependencies, plus
    /// outside packages (`name@version`).
    fn meta(edges: &[(&str, &[&str])], outside: &[&str]) -> serde_json::Value {
        let id = |n: &str| format!("id-{n}");
        let mut packages = Vec::new();
        let mut nodes = Vec::new();
        for (n, deps) in edges {
            packages.push(json!({"id": id(n), "name": n}));
            let deps: Vec<_> = deps
                .iter()
                .map(|d| json!({"pkg": id(d), "dep_kinds": [{"kind": null}]}))
                .collect();
            nodes.push(json!({"id": id(n), "deps": deps}));
        }
        for o in outside {
            let name = o.split('@').next().unwrap_or(o);
            packages.push(json!({"id": id(o), "name": name}));
            nodes.push(json!({"id": id(o), "deps": []}));
        }
        let members: Vec<_> = edges.iter().map(|(n, _)| id(n)).collect();
        json!({"packages": packages, "workspace_members": members, "resolve": {"nodes": nodes}})
    }

    /// The real table's members plus `added`, each with no dependencies
    /// but those `extra` gives it; checked.
    fn check_of(extra: &[(&str, &[&str])], added: &[&str], outside: &[&str]) -> Vec<String> {
        let names = FLOORS.iter().map(|(n, _)| *n).chain(added.iter().copied());
        let edges: Vec<(&str, &[&str])> = names
            .map(|n| {
                let deps = extra
                    .iter()
                    .find(|(e, _)| *e == n)
                    .map_or(&[][..], |(_, d)| *d);
                (n, deps)
            })
            .collect();
        problems(&Graph::parse(&meta(&edges, outside)).unwrap())
    }

    #[test]
    fn a_sound_graph_passes() {
        let found = check_of(
            &[
                ("strata-cache", &["strata-core", "strata-sys"]),
                ("strata-sys", &["rustix@1"]),
            ],
            &[],
            &["rustix@1"],
        );
        assert_eq!(found, Vec::<String>::new());
    }

    #[test]
    fn an_upward_arrow_fails() {
        let found = check_of(&[("strata-core", &["strata-cache"])], &[], &[]);
        assert!(found[0].contains("arrows must point down"), "{found:?}");
    }

    #[test]
    fn a_second_rustix_version_is_still_seen() {
        // Two versions in the lock file made `cargo tree -i rustix`
        // ambiguous, which the old check read as "no dependents".
        let found = check_of(
            &[
                ("strata-sys", &["rustix@1"]),
                ("strata-content", &["rustix@0.38"]),
            ],
            &[],
            &["rustix@1", "rustix@0.38"],
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("strata-content uses rustix directly"));
        // ... and a transitive one under strata-core.
        let found = check_of(&[("strata-core", &["strata-sys"])], &[], &[]);
        assert!(found.iter().any(|p| p.contains("arrows")), "{found:?}");
    }

    #[test]
    fn a_test_only_crate_only_behind_an_optional_feature() {
        let found = check_of(&[("strata-snapshot", &["strata-testkit"])], &[], &[]);
        assert!(
            found[0].contains("test-only crate strata-testkit"),
            "{found:?}"
        );
        let mut m = meta(&[("strata-snapshot", &["strata-testkit"])], &[]);
        m["packages"][0]["dependencies"] = json!([{"name": "strata-testkit", "optional": true}]);
        let found = problems(&Graph::parse(&m).unwrap());
        assert!(!found.iter().any(|p| p.contains("test-only")), "{found:?}");
    }

    #[test]
    fn the_outside_example_uses_only_what_an_outside_crate_could() {
        let published: &[&str] = &["strata-core", "strata-snapshot", "strata-sys"];
        let found = check_of(&[("strata-example-backend", published)], &[], &[]);
        assert_eq!(found, Vec::<String>::new());
        // A dev-dependency counts too: its tests cannot use the testkit.
        let mut m = meta(
            &[
                ("strata-example-backend", &["strata-testkit"]),
                ("strata-testkit", &[]),
            ],
            &[],
        );
        m["resolve"]["nodes"][0]["deps"][0]["dep_kinds"] = json!([{"kind": "dev"}]);
        let found = problems(&Graph::parse(&m).unwrap());
        assert!(
            found.iter().any(|p| p
                .contains("strata-example-backend is written as an outside crate")
                && p.ends_with("not strata-testkit")),
            "{found:?}"
        );
    }

    #[test]
    fn a_member_without_a_floor_fails() {
        let found = check_of(&[], &["strata-new"], &[]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("strata-new has no floor"));
    }

    #[test]
    fn a_forbidden_crate_deep_down_fails() {
        let found = check_of(
            &[("strata-core", &["serde@1"])],
            &[],
            &["serde@1", "tokio@1"],
        );
        assert!(found.is_empty(), "{found:?}");
        let mut m = meta(&[("strata-core", &["serde@1"])], &["serde@1", "tokio@1"]);
        // serde -> tokio, two levels below strata-core.
        m["resolve"]["nodes"][1]["deps"] =
            json!([{"pkg": "id-tokio@1", "dep_kinds": [{"kind": null}]}]);
        let found = problems(&Graph::parse(&m).unwrap());
        assert!(
            found.iter().any(|p| p == "strata-core pulls in tokio"),
            "{found:?}"
        );
    }
}
