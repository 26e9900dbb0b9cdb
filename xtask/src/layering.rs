//! The layering check: crates sit on floors (DESIGN.md §2) and a crate may
//! depend only on crates of lower floors. For every workspace crate,
//! `cargo tree -i` lists who depends on it; each dependent must sit higher.
//! It also pins the absences ARCHITECTURE.md promises: no async runtime or
//! syscall crate in strata-core, and syscall crates used directly only by
//! strata-sys.

use std::process::Command;

use anyhow::{Context, bail};

/// Workspace crates and their floors (DESIGN.md's floor times ten; the
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
    ("strata-diff", Some(30)),
    ("strata-oci", Some(30)),
    ("strata-containerd", Some(30)),
    ("strata-cache", Some(40)),
    ("strata-cli", Some(50)),
    ("strata-testkit", None),
    ("strata-fault-shim", None),
    ("xtask", Some(50)),
];

/// (crate, dependency it must never pull in, even indirectly).
const FORBIDDEN: &[(&str, &str)] = &[
    ("strata-core", "tokio"),
    ("strata-core", "nix"),
    ("strata-core", "rustix"),
    ("strata-core", "redb"),
    ("strata-metadata", "tokio"),
    ("strata-content", "tokio"),
];

/// Syscall crates only strata-sys may use directly.
const SYSCALL_CRATES: &[&str] = &["rustix", "nix"];

fn tree(args: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .arg("tree")
        .args(args)
        .current_dir(crate::workspace())
        .output()
        .context("run cargo tree")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok((out.status.success(), text))
}

/// Direct normal-edge dependents of `krate` inside the workspace.
fn dependents(krate: &str) -> anyhow::Result<Vec<String>> {
    let (ok, text) = tree(&[
        "--workspace",
        "-e",
        "normal",
        "-i",
        krate,
        "--depth",
        "1",
        "--prefix",
        "none",
    ])?;
    if !ok {
        return Ok(Vec::new());
    }
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

fn floor(name: &str) -> Option<Option<u8>> {
    FLOORS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

pub fn check() -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for (krate, f) in FLOORS {
        for dep in dependents(krate)? {
            let Some(dep_floor) = floor(&dep) else {
                continue;
            };
            match (f, dep_floor) {
                (Some(lower), Some(upper)) if upper <= *lower => {
                    problems.push(format!("{dep} (floor {upper}) depends on {krate} (floor {lower}): arrows must point down"));
                }
                // Test-only crates sit beside the floors: anything may use
                // them in tests, nothing may depend on them normally.
                (None, _) => problems.push(format!("{dep} depends on the test-only crate {krate}")),
                _ => {}
            }
        }
    }
    for (krate, banned) in FORBIDDEN {
        let (_, text) = tree(&[
            "-p", krate, "-e", "normal", "-i", banned, "--prefix", "none",
        ])?;
        if text.lines().any(|l| l.starts_with(banned)) {
            problems.push(format!("{krate} pulls in {banned}"));
        }
    }
    for sys in SYSCALL_CRATES {
        for dep in dependents(sys)? {
            if floor(&dep).is_some() && dep != "strata-sys" {
                problems.push(format!(
                    "{dep} uses {sys} directly; syscalls belong in strata-sys"
                ));
            }
        }
    }
    if !problems.is_empty() {
        bail!("layering check failed:\n  {}", problems.join("\n  "));
    }
    eprintln!("layering: ok ({} crates)", FLOORS.len());
    Ok(())
}
