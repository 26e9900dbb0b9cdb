//! `cargo xtask`: the one entry point for Strata's checks, tests and
//! benchmarks.
//!
//! * `test`: the whole test suite (what README and `.ci/run` call): unit,
//!   integration and doc tests, and the strata-cache examples run for real;
//!   first it installs what the tests run (`deps`), and skipped tests are
//!   listed by name and counted at the end.
//! * `deps [--ci]`: installs the tools the tests (and CI) run, or says how.
//! * `ci`: fmt check, clippy with `-D warnings`, the layering check, the
//!   feature check (`features`), `strata --help` built without its default
//!   features, the bindings
//!   check (`protos --check`), the public-API listings (`public-api
//!   --check`), tidy checks, `api-docs`,
//!   `package`, the benchmark and reliability documents redrawn unchanged
//!   (`report`), every benchmark once (`bench --quick`), `test`, the
//!   overlay scenario on Debian 12's kernel under qemu (`qemu`), two power
//!   cuts (`powerloss`), then a 30-second fuzz smoke run.
//! * `features`: strata-oci and strata-cache built without their registry
//!   client and with each snapshot backend alone: `cargo tree` must not
//!   show what is left out, clippy with `-D warnings` must pass
//!   (`features.rs`).
//! * `api-docs`: `cargo doc --workspace --no-deps` with rustdoc's warnings
//!   (broken intra-doc links among them) as errors.
//! * `package`: the published crates' manifests checked and every one
//!   packaged with `cargo package` (`publish.rs`).
//! * `bench content|snapshot|gc|diff|cache|oci|containerd`: figures against
//!   peers run side by side.
//! * `report` (or `bench --report`): the recorded benchmark medians become
//!   `docs/benchmarks.md`'s tables and SVG charts and README's figures
//!   (`report.rs`); the recorded reliability runs become
//!   `docs/reliability.md`'s tables (`reliability.rs`).
//! * `fuzz [--seconds N] [--record]`: the layer-applier fuzz target.
//! * `powerloss [--cuts N] [--broken] [--record]`: power cuts under qemu on
//!   a virtual disk, every acknowledged object verified after each
//!   (`powerloss.rs`).
//! * `under-load [--runs N] [--hogs N]`: `test` N times in a row beside a
//!   busy loop on every core (`stress.rs`).
//! * `stress [--kills N] [--cases N] [--cuts N] [--fuzz-seconds N]`: the
//!   long crash, property, power-loss and fuzz runs (`stress.rs`).
//! * `protos [--check]`: regenerates the checked-in gRPC bindings of
//!   strata-api (`protos.rs`); CI checks they are current.
//! * `public-api [--check]`: rewrites `api/<crate>.txt`, the public API of
//!   strata-cache, strata-core, strata-daemon and strata-snapshot one item
//!   a line, from rustdoc's JSON (nightly); CI checks they are current
//!   (`public_api.rs`).
//! * `docs`: rewrites `docs/cli.md` from the command tree (a test fails
//!   while it is stale).
//! * `bench-images [OUT]`: builds the real Debian images the benchmarks
//!   use (see `images.rs`).
#![forbid(unsafe_code)]
// This program reports on stdout by design.
#![allow(clippy::print_stdout)]

mod bench;
mod deps;
mod examples;
mod features;
mod fuzz;
mod images;
mod layering;
mod powerloss;
mod protos;
mod public_api;
mod publish;
mod qemu;
// The testkit's writer of reliability rows and their provenance, the same
// files compiled here for the rows xtask records itself; the functions only
// the tests call are unused here.
#[allow(
    dead_code,
    reason = "shared with strata-testkit, whose tests use all of it"
)]
#[path = "../../crates/strata-testkit/src/provenance.rs"]
mod provenance;
#[allow(
    dead_code,
    reason = "shared with strata-testkit, whose tests use all of it"
)]
#[path = "../../crates/strata-testkit/src/reliability.rs"]
mod record;
mod reliability;
mod report;
mod stress;
mod tidy;
mod unprivileged;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["test", rest @ ..] => test(rest),
        ["deps", rest @ ..] => deps::run(rest),
        ["ci"] => ci(),
        ["report"] | ["bench", "--report"] => report(),
        ["bench", rest @ ..] => bench::run(rest),
        ["fuzz", rest @ ..] => fuzz::run(rest),
        ["bench-images", rest @ ..] => images::run(rest),
        ["qemu", rest @ ..] => qemu::run(rest),
        ["powerloss", rest @ ..] => powerloss::run(rest),
        ["stress", rest @ ..] => stress::run(rest),
        ["under-load", rest @ ..] => stress::under_load(rest),
        ["layering"] => layering::check(),
        ["features"] => features::check(),
        ["tidy"] => tidy::check(),
        ["protos", rest @ ..] => protos::run(rest),
        ["public-api", rest @ ..] => public_api::run(rest),
        ["docs"] => docs(),
        ["api-docs"] => api_docs(),
        ["package"] => publish::run(),
        _ => {
            eprintln!(
                "usage: cargo xtask test [CARGO TEST ARGS] | deps [--ci] | ci | bench content [--size-mib N] [--runs N] | bench snapshot|gc|diff|cache|oci|containerd | report | fuzz [--seconds N] [--record] | bench-images [OUT] | qemu | powerloss [--cuts N] [--broken] [--record] | stress | under-load [--runs N] [--hogs N] | layering | features | tidy | protos [--check] | public-api [--check] | docs | api-docs | package"
            );
            bail!("unknown command {args:?}")
        }
    }
}

/// Both reports: the benchmark figures and the reliability runs, each
/// drawn from its record into the documents that quote it.
fn report() -> anyhow::Result<()> {
    report::run()?;
    reliability::run()
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Where cargo builds: `CARGO_TARGET_DIR`, else the workspace's `target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), PathBuf::from)
}

/// Runs a command in the workspace, failing on a non-zero exit.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("$ {shown}");
    let status = cmd
        .current_dir(workspace())
        .status()
        .with_context(|| format!("start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// True when this runs as root.
pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// `cargo metadata` of the workspace (with `extra` arguments), parsed; a
/// cargo failure is an error.
pub(crate) fn cargo_metadata(extra: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = cargo()
        .args(["metadata", "--format-version", "1"])
        .args(extra)
        .current_dir(workspace())
        .output()
        .context("run cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("parse cargo metadata")
}

pub(crate) fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

pub(crate) fn test(extra: &[&str]) -> anyhow::Result<()> {
    deps::ensure(false)?;
    let skips = workspace().join("target/strata-skips.log");
    if skips.exists() {
        std::fs::remove_file(&skips).with_context(|| format!("clear {}", skips.display()))?;
    }
    std::fs::create_dir_all(workspace().join("target"))?;
    // Libraries, binaries and tests; not benches, which `cargo xtask bench`
    // runs on the scratch file systems they need. Built first, then run,
    // so the log says which of the two took the time.
    //
    // Each test binary is run through `timed_runner`, which says how long
    // it took. `--no-run` goes before `extra`, which may end with
    // `-- ARGS` for the test binaries.
    let runner = timed_runner()?;
    let unit = |build_only: bool| {
        let mut tests = cargo();
        tests
            .args(["test", "--workspace", "--lib", "--bins", "--tests"])
            .arg("--config")
            .arg(format!(
                "target.'cfg(all())'.runner = ['{}']",
                runner.display()
            ));
        if build_only {
            tests.arg("--no-run");
        }
        tests.args(extra).env("STRATA_SKIP_LOG", &skips);
        tests
    };
    let mut steps = Steps::new("test");
    let result = steps
        .run("build", || run(&mut unit(true)))
        .and_then(|()| steps.run("run", || run(&mut unit(false))))
        // The examples in the documentation compile and run.
        .and_then(|()| {
            steps.run("doc", || {
                run(cargo()
                    .args(["test", "--workspace", "--doc"])
                    .env("STRATA_SKIP_LOG", &skips))
            })
        })
        .and_then(|()| steps.run("examples", || examples::run(&skips)))
        // As root, the conformance cases that do not mount once more as
        // nobody.
        .and_then(|()| steps.run("unprivileged", unprivileged::run));
    if result.is_ok() {
        steps.summary();
    }
    let skipped = std::fs::read_to_string(&skips).unwrap_or_default();
    let names: Vec<&str> = skipped.lines().collect();
    if names.is_empty() {
        eprintln!("xtask test: no test skipped");
    } else {
        eprintln!("xtask test: {} test(s) skipped:", names.len());
        for n in &names {
            eprintln!("  {n}");
        }
    }
    result
}

/// Writes the runner cargo runs each test binary through: it runs the
/// binary and then prints `test: PACKAGE/NAME took N s` (NAME without
/// cargo's hash; cargo gives the runner the package's name), so the log
/// says which binaries take the test step's time. The binary's exit
/// status is the runner's, and a failed one's is printed with its time
/// (128 + N: the binary was killed by signal N, which cargo then reports
/// as that status).
fn timed_runner() -> anyhow::Result<PathBuf> {
    let path = workspace().join("target/xtask-timed-runner");
    let script = r#"#!/bin/sh
start=$(date +%s)
"$@"
status=$?
name=$(basename "$1")
took="test: $CARGO_PKG_NAME/${name%-*} took $(( $(date +%s) - start )) s"
if [ "$status" -ne 0 ]; then
    took="$took, exit status $status"
fi
echo "$took" >&2
exit $status
"#;
    std::fs::write(&path, script).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .with_context(|| format!("make {} executable", path.display()))?;
    Ok(path)
}

/// Renders `docs/cli.md` from strata-cli's command tree: the test that
/// checks it, told to write it.
fn docs() -> anyhow::Result<()> {
    run(cargo()
        .args([
            "test",
            "-p",
            "strata-cli",
            "--bin",
            "strata",
            "help::tests::docs_cli_md_is_current",
        ])
        .env("STRATA_BLESS", "1"))
}

/// The API documentation of every workspace crate, built with rustdoc's
/// warnings as errors: a broken intra-doc link or a malformed doc comment
/// fails.
fn api_docs() -> anyhow::Result<()> {
    run(cargo()
        .args(["doc", "--workspace", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings"))
}

fn ci() -> anyhow::Result<()> {
    // CI checks what is committed; a blessing run would rewrite it and pass.
    if std::env::var_os("STRATA_BLESS").is_some() {
        bail!("STRATA_BLESS is set: CI checks docs/cli.md, it never rewrites it (unset it)");
    }
    let mut steps = Steps::new("ci");
    steps.run("fmt", || run(cargo().args(["fmt", "--all", "--check"])))?;
    steps.run("clippy", || {
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    steps.run("layering", layering::check)?;
    steps.run("features", features::check)?;
    // The command line without containerd's API (no tonic, no hyper) and
    // without registries builds and starts.
    steps.run("reduced build", || {
        run(cargo().args([
            "run",
            "-q",
            "-p",
            "strata-cli",
            "--no-default-features",
            "--",
            "--help",
        ]))
    })?;
    steps.run("protos", || protos::run(&["--check"]))?;
    // A changed public signature, a removed item or a new variant of the
    // crates others build on is a reviewed diff of `api/`, blessed with
    // `cargo xtask public-api`.
    steps.run("public-api", || public_api::run(&["--check"]))?;
    steps.run("tidy", tidy::check)?;
    steps.run("api-docs", api_docs)?;
    steps.run("package", publish::run)?;
    // The benchmark and reliability tables are what the records draw.
    steps.run("report", || {
        report()?;
        run(Command::new("git").args([
            "diff",
            "--exit-code",
            "--",
            "docs/benchmarks.md",
            "docs/benchmarks",
            "docs/reliability.md",
            "docs/reliability",
            "README.md",
        ]))
    })?;
    // Every benchmark once, small: none may rot (figures to a scratch dir).
    steps.run("bench --quick", || bench::run(&["--quick"]))?;
    steps.run("test", || test(&[]))?;
    // The overlay backend on Debian 12's 6.1 kernel, booted under qemu.
    steps.run("qemu", || qemu::run(&[]))?;
    // Two power cuts under qemu; `cargo xtask stress` makes many.
    steps.run("powerloss", || powerloss::run(&["--cuts", "2"]))?;
    // A short smoke run of the fuzz target; the long runs are `cargo xtask
    // fuzz`.
    steps.run("fuzz", || fuzz::run(&["--seconds", "30"]))?;
    steps.summary();
    Ok(())
}

/// The steps of a long command (CI, the tests) and how long each took, so
/// a run's log says where its time went (CI must stay well inside its
/// limit).
struct Steps {
    /// The command, leading each line it prints: `ci`, `test`.
    who: &'static str,
    took: Vec<(&'static str, Duration)>,
}

impl Steps {
    fn new(who: &'static str) -> Steps {
        Steps {
            who,
            took: Vec::new(),
        }
    }

    /// Runs the step `name`; a failure names it and the times of the
    /// steps so far, its own included.
    fn run(
        &mut self,
        name: &'static str,
        step: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        let result = step();
        let took = start.elapsed();
        self.took.push((name, took));
        let who = self.who;
        eprintln!("{who}: {name} took {:.0} s", took.as_secs_f64());
        result.with_context(|| format!("{who} step {name} (times so far: {})", self.line()))
    }

    /// `name N s, ...` for every step run so far.
    fn line(&self) -> String {
        let parts: Vec<String> = self
            .took
            .iter()
            .map(|(name, took)| format!("{name} {:.0} s", took.as_secs_f64()))
            .collect();
        parts.join(", ")
    }

    fn summary(&self) {
        let total: Duration = self.took.iter().map(|(_, t)| *t).sum();
        eprintln!(
            "{}: every step passed in {:.0} s: {}",
            self.who,
            total.as_secs_f64(),
            self.line()
        );
    }
}
