//! The feature boundaries: strata-oci and strata-cache build without their
//! heavy parts (the registry client, each snapshot backend), so a
//! downstream crate can take them one by one. For each reduced build in
//! [`REDUCED`], two checks that fail when the boundary breaks:
//!
//! * `cargo tree` of the crate, its default features off, must not list
//!   what the build leaves out (a manifest that turns a part on whatever
//!   the features say fails here). The layering check cannot say this: it
//!   reads one graph with the workspace's features unified, in which
//!   strata-cli turns everything on.
//! * clippy with `-D warnings` must pass on it, its tests too (code using a
//!   left-out part outside its `cfg`, or an import only that part used,
//!   fails here). Clippy is `cargo check` plus lints, so nothing is built;
//!   `--no-default-features` of both crates is one invocation.

use std::collections::BTreeSet;

use anyhow::{Context, bail};

/// The registry client and what it brings.
const REGISTRY: &[&str] = &["oci-client", "reqwest", "rustls", "hyper"];

/// (package, features turned on with its defaults off, crates the build
/// must not pull in besides [`REGISTRY`]'s).
const REDUCED: &[(&str, &[&str], &[&str])] = &[
    ("strata-oci", &[], &[]),
    (
        "strata-cache",
        &[],
        &["strata-overlay", "strata-native", "strata-btrfs"],
    ),
    (
        "strata-cache",
        &["overlay"],
        &["strata-native", "strata-btrfs"],
    ),
    (
        "strata-cache",
        &["native"],
        &["strata-overlay", "strata-btrfs"],
    ),
    (
        "strata-cache",
        &["btrfs"],
        &["strata-overlay", "strata-native"],
    ),
];

/// The package names in `cargo tree --prefix none` output (`name vX.Y.Z
/// (path)`, one a line).
fn tree_names(out: &str) -> BTreeSet<&str> {
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

/// What `names` holds of `banned`, each as a problem of `build`.
fn breaches(build: &str, names: &BTreeSet<&str>, banned: &[&str]) -> Vec<String> {
    banned
        .iter()
        .filter(|b| names.contains(**b))
        .map(|b| format!("{build} pulls in {b}"))
        .collect()
}

/// `cargo` arguments selecting a reduced build: its defaults off, `features`
/// on.
fn selection(package: &str, features: &[&str]) -> Vec<String> {
    let mut args = vec![
        "-p".to_owned(),
        package.to_owned(),
        "--no-default-features".to_owned(),
    ];
    if !features.is_empty() {
        args.extend(["--features".to_owned(), features.join(",")]);
    }
    args
}

fn describe(package: &str, features: &[&str]) -> String {
    if features.is_empty() {
        format!("{package} without its default features")
    } else {
        format!("{package} with only {}", features.join(", "))
    }
}

/// The absences: each reduced build's normal dependencies, from cargo.
fn absences() -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    for (package, features, banned) in REDUCED {
        let out = crate::cargo()
            .args(["tree", "-e", "normal", "--prefix", "none"])
            .args(selection(package, features))
            .current_dir(crate::workspace())
            .output()
            .context("run cargo tree")?;
        if !out.status.success() {
            bail!(
                "cargo tree of {} failed ({}): {}",
                describe(package, features),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let names = tree_names(&text);
        let build = describe(package, features);
        problems.extend(breaches(&build, &names, REGISTRY));
        problems.extend(breaches(&build, &names, banned));
    }
    Ok(problems)
}

pub fn check() -> anyhow::Result<()> {
    let found = absences()?;
    if !found.is_empty() {
        bail!("feature check failed:\n  {}", found.join("\n  "));
    }
    // Without defaults, both crates in one invocation; then each backend
    // alone (strata-oci has no other feature).
    let mut builds: Vec<Vec<String>> = vec![vec![
        "-p".into(),
        "strata-oci".into(),
        "-p".into(),
        "strata-cache".into(),
        "--no-default-features".into(),
    ]];
    builds.extend(
        REDUCED
            .iter()
            .filter(|(_, features, _)| !features.is_empty())
            .map(|(package, features, _)| selection(package, features)),
    );
    for build in builds {
        crate::run(crate::cargo().arg("clippy").args(build).args([
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    eprintln!("features: ok ({} reduced builds)", REDUCED.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_left_out_crate_in_the_tree_fails() {
        let out = "strata-cache v0.1.0 (/w/crates/strata-cache)\n\
                   strata-oci v0.1.0 (/w/crates/strata-oci)\n\
                   oci-client v0.18.0\n\
                   strata-native v0.1.0 (/w/crates/strata-native)\n";
        let names = tree_names(out);
        let build = describe("strata-cache", &["native"]);
        assert_eq!(
            breaches(&build, &names, REGISTRY),
            ["strata-cache with only native pulls in oci-client"]
        );
        assert!(breaches(&build, &names, &["strata-overlay", "strata-btrfs"]).is_empty());
    }

    #[test]
    fn selections_turn_the_defaults_off() {
        assert_eq!(
            selection("strata-cache", &["btrfs"]),
            [
                "-p",
                "strata-cache",
                "--no-default-features",
                "--features",
                "btrfs"
            ]
        );
        assert_eq!(
            selection("strata-oci", &[]),
            ["-p", "strata-oci", "--no-default-features"]
        );
    }
}
