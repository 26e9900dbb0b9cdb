//! `cargo xtask package`: the crates meant for crates.io package cleanly.
//!
//! Which crates those are is read from the manifests through `cargo
//! metadata`: the workspace sets `publish = false` and each published crate
//! drops it. Before packaging, every published crate must name a
//! description, a licence, a readme and at most five keywords in crates.io's
//! form, and none may have a normal or build dependency (optional ones
//! included: a feature could turn them on) on a workspace crate that is not
//! published; test-only crates belong in dev-dependencies, path-only, which
//! cargo drops from a package. Then `cargo package` packages every
//! published crate, which fails on a readme file that is missing, a path
//! dependency without a version, or a manifest crates.io would refuse.

use std::collections::BTreeSet;

use anyhow::{Context, bail};

/// What the checks need of one workspace member.
#[derive(Debug, Default)]
pub(crate) struct Member {
    pub name: String,
    pub published: bool,
    pub description: bool,
    pub license: bool,
    pub readme: bool,
    pub keywords: Vec<String>,
    pub categories: Vec<String>,
    /// Names of its normal and build dependencies (optional ones too).
    pub needs: Vec<String>,
}

/// The workspace's members, from `cargo metadata --no-deps`.
pub(crate) fn members(meta: &serde_json::Value) -> anyhow::Result<Vec<Member>> {
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let present = |v: &serde_json::Value| v.as_str().is_some_and(|s| !s.trim().is_empty());
    let mut out = Vec::new();
    for p in meta["packages"]
        .as_array()
        .context("cargo metadata: no packages list")?
    {
        let name = p["name"]
            .as_str()
            .context("cargo metadata: a package without a name")?
            .to_owned();
        // `null`: any registry; `[]`: none; a list: those registries.
        let published = !p["publish"].as_array().is_some_and(Vec::is_empty);
        let needs = p["dependencies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["kind"].as_str() != Some("dev"))
            .filter_map(|d| d["name"].as_str().map(str::to_owned))
            .collect();
        out.push(Member {
            name,
            published,
            description: present(&p["description"]),
            license: present(&p["license"]) || present(&p["license_file"]),
            readme: present(&p["readme"]),
            keywords: strings(&p["keywords"]),
            categories: strings(&p["categories"]),
            needs,
        });
    }
    Ok(out)
}

/// crates.io's rule for a keyword: ASCII, at most 20 characters, starting
/// with a letter, then letters, digits, `_`, `-` or `+`.
fn valid_keyword(k: &str) -> bool {
    let mut chars = k.chars();
    k.len() <= 20
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+'))
}

/// Every reason the published members could not go to crates.io as they
/// are.
pub(crate) fn problems(members: &[Member]) -> Vec<String> {
    let unpublished: BTreeSet<&str> = members
        .iter()
        .filter(|m| !m.published)
        .map(|m| m.name.as_str())
        .collect();
    let mut problems = Vec::new();
    for m in members.iter().filter(|m| m.published) {
        let name = &m.name;
        for (has, what) in [
            (m.description, "description"),
            (m.license, "license"),
            (m.readme, "readme"),
        ] {
            if !has {
                problems.push(format!("{name} is published but has no {what}"));
            }
        }
        if m.keywords.len() > 5 || m.categories.len() > 5 {
            problems.push(format!(
                "{name}: crates.io takes at most 5 keywords and 5 categories"
            ));
        }
        for k in m.keywords.iter().filter(|k| !valid_keyword(k)) {
            problems.push(format!(
                "{name}: keyword {k:?} is not one crates.io takes (a letter, then up to 19 letters, digits, _, - or +)"
            ));
        }
        for d in m.needs.iter().filter(|d| unpublished.contains(d.as_str())) {
            problems.push(format!(
                "{name} is published but depends on {d}, which is not (only a dev-dependency may be test-only)"
            ));
        }
    }
    problems
}

pub fn run() -> anyhow::Result<()> {
    let meta = crate::cargo_metadata(&["--no-deps"])?;
    let members = members(&meta)?;
    let problems = problems(&members);
    if !problems.is_empty() {
        bail!("package check failed:\n  {}", problems.join("\n  "));
    }
    let mut cmd = crate::cargo();
    cmd.args(["package", "--workspace", "--allow-dirty"]);
    for m in members.iter().filter(|m| !m.published) {
        cmd.args(["--exclude", &m.name]);
    }
    // Without the verifying build: it builds every package again from its
    // archive, compiling some 400 crates, which took 12 minutes on a 2-core
    // machine against 23 seconds for the packaging alone, and the
    // workspace's builds and doc tests compile the same sources. What only
    // it would catch is a crate reading a file outside its own directory.
    cmd.arg("--no-verify");
    crate::run(&mut cmd)?;
    let published: Vec<&str> = members
        .iter()
        .filter(|m| m.published)
        .map(|m| m.name.as_str())
        .collect();
    eprintln!(
        "package: ok ({} crates: {})",
        published.len(),
        published.join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn package(
        name: &str,
        publish: serde_json::Value,
        deps: serde_json::Value,
    ) -> serde_json::Value {
        json!({
            "name": name,
            "publish": publish,
            "description": "a crate",
            "license": "Apache-2.0",
            "readme": "README.md",
            "keywords": ["container"],
            "categories": ["filesystem"],
            "dependencies": deps,
        })
    }

    fn check(packages: Vec<serde_json::Value>) -> Vec<String> {
        problems(&members(&json!({ "packages": packages })).unwrap())
    }

    #[test]
    fn a_published_crate_may_use_a_test_only_one_in_tests_only() {
        let testkit = package("testkit", json!([]), json!([]));
        let lib = |kind: serde_json::Value, optional: bool| {
            package(
                "lib",
                json!(null),
                json!([{"name": "testkit", "kind": kind, "optional": optional}]),
            )
        };
        assert!(check(vec![testkit.clone(), lib(json!("dev"), false)]).is_empty());
        for (kind, optional) in [
            (json!(null), false),
            (json!(null), true),
            (json!("build"), false),
        ] {
            let found = check(vec![testkit.clone(), lib(kind, optional)]);
            assert_eq!(found.len(), 1, "{found:?}");
            assert!(found[0].contains("depends on testkit"), "{found:?}");
        }
        // An unpublished crate may depend on anything.
        let tests = package(
            "tests",
            json!([]),
            json!([{"name": "testkit", "kind": null}]),
        );
        assert!(check(vec![testkit, tests]).is_empty());
    }

    #[test]
    fn published_crates_need_what_crates_io_shows() {
        let mut bare = package("lib", json!(null), json!([]));
        bare["readme"] = json!(null);
        bare["description"] = json!("");
        bare["keywords"] = json!(["ok", "9lives", "far-too-long-for-crates-io", "a b"]);
        let found = check(vec![bare]);
        assert_eq!(found.len(), 5, "{found:?}");
        assert!(found.iter().any(|p| p.contains("has no readme")));
        assert!(found.iter().any(|p| p.contains("has no description")));
        assert_eq!(found.iter().filter(|p| p.contains("keyword")).count(), 3);
        let mut six = package("lib", json!(null), json!([]));
        six["keywords"] = json!(["a", "b", "c", "d", "e", "f"]);
        assert_eq!(check(vec![six]).len(), 1);
    }
}
