//! The snapshotter conformance cases that never mount, run as `nobody`.
//! The suite's mounting cases need root; the others must pass for any
//! user, and a root test run cannot show that by itself. As root, this
//! builds the backends' conformance binaries, copies them where `nobody`
//! can run them, and runs their `without_root` cases under `setpriv` with
//! no privilege left; every case must pass and none may be missing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The conformance binaries whose plain cases run as `nobody`.
const PACKAGES: &[&str] = &["strata-native", "strata-overlay", "strata-example-backend"];

/// Plain cases per suite (`without_root` in `conformance_suite!`).
const CASES: usize = 6;

pub fn run() -> anyhow::Result<()> {
    if !crate::is_root() {
        eprintln!("unprivileged: not root; the plain cases already ran as this user");
        return Ok(());
    }
    let mut build = crate::cargo();
    build.args([
        "test",
        "--no-run",
        "--message-format=json",
        "--test",
        "conformance",
    ]);
    for p in PACKAGES {
        build.args(["-p", p]);
    }
    let out = build
        .current_dir(crate::workspace())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("build the conformance binaries")?;
    if !out.status.success() {
        bail!("cargo test --no-run failed");
    }
    // (package directory, test binary) for each conformance target.
    let binaries: Vec<(String, PathBuf)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "conformance")
        .filter_map(|m| {
            let manifest = Path::new(m["manifest_path"].as_str()?);
            let package = manifest
                .parent()?
                .file_name()?
                .to_string_lossy()
                .into_owned();
            Some((package, m["executable"].as_str()?.into()))
        })
        .collect();
    if binaries.len() != PACKAGES.len() {
        bail!(
            "expected {} conformance binaries, cargo built {binaries:?}",
            PACKAGES.len()
        );
    }
    // A directory `nobody` can enter, holding the binaries and their
    // temporary files (the checkout may sit where it cannot).
    let dir = std::env::temp_dir().join(format!("strata-unprivileged-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777))?;
    let result = run_in(&dir, &binaries);
    // The copies, then the directory (the tests removed their own files).
    for (pkg, _) in &binaries {
        let _ = std::fs::remove_file(dir.join(pkg));
    }
    let _ = std::fs::remove_dir(&dir);
    result
}

fn run_in(dir: &Path, binaries: &[(String, PathBuf)]) -> anyhow::Result<()> {
    for (pkg, bin) in binaries {
        let copy = dir.join(pkg);
        std::fs::copy(bin, &copy).with_context(|| format!("copy {}", bin.display()))?;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))?;
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg("--")
            .arg(&copy)
            .args(["without_root::", "--test-threads", "2"])
            .env("TMPDIR", dir)
            .env_remove("STRATA_SKIP_LOG")
            .output()
            .context("run setpriv")?;
        let text = String::from_utf8_lossy(&out.stdout);
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        let passed = text
            .lines()
            .find_map(|l| l.strip_prefix("test result: ok. "))
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse::<usize>().ok());
        if !out.status.success() || passed != Some(CASES) {
            bail!("{pkg}: the conformance cases that do not mount, as nobody:\n{text}");
        }
        eprintln!("unprivileged: {pkg}: {CASES} conformance cases passed as nobody");
    }
    Ok(())
}
