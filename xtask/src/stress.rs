//! `cargo xtask stress`: the long runs CI keeps short. Every SIGKILL crash
//! test with `STRATA_CRASH_ROUNDS` kills (1,000 each by default, release
//! builds), the property tests with `PROPTEST_CASES` cases (the collector's
//! model 5,000, the random-tree tests 200), the one-process soak for ten
//! minutes per backend (`STRATA_SOAK_SECS`), `powerloss` with many cuts
//! (50) and each fuzz target for half an hour. Each figure can be set:
//! `--kills N`, `--cases N`, `--soak-seconds N`, `--cuts N`,
//! `--fuzz-seconds N`; `--only crash,faults,property,soak,powerloss,fuzz`
//! runs some of the parts. It also runs the fault sweep (debug, as in CI: it
//! tries every fault point, so it has no size to set).
//!
//! Every part records what it did and checked, with its provenance, in
//! `target/strata-reliability/` (the testkit's rows through
//! `STRATA_RELIABILITY_RESULTS`, xtask's own directly); `cargo xtask
//! report` turns the rows into `docs/reliability.md`'s tables.

use anyhow::{Context, bail};

struct Options {
    kills: u64,
    cases: u64,
    soak_seconds: u64,
    cuts: u64,
    fuzz_seconds: u64,
    /// The parts to run (all when empty).
    only: Vec<String>,
}

/// The parts of a stress run, in the order they run.
const PARTS: &[&str] = &["crash", "faults", "property", "soak", "powerloss", "fuzz"];

impl Options {
    fn runs(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

/// `--name N` pairs, each N a number.
fn numbers<'a>(args: &[&'a str]) -> anyhow::Result<Vec<(&'a str, u64)>> {
    args.chunks(2)
        .map(|pair| {
            let name = pair[0];
            let n = pair
                .get(1)
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("{name} needs a number"))?;
            Ok((name, n))
        })
        .collect()
}

fn parse(args: &[&str]) -> anyhow::Result<Options> {
    let mut o = Options {
        kills: 1000,
        cases: 5000,
        soak_seconds: 600,
        cuts: 50,
        fuzz_seconds: 1800,
        only: Vec::new(),
    };
    let mut args = args.to_vec();
    if let Some(at) = args.iter().position(|a| *a == "--only") {
        let list = args
            .get(at + 1)
            .context("--only needs a list of parts")?
            .to_string();
        args.drain(at..at + 2);
        for part in list.split(',') {
            if !PARTS.contains(&part) {
                bail!("unknown part {part:?}; the parts: {}", PARTS.join(","));
            }
            o.only.push(part.to_owned());
        }
    }
    for (a, v) in numbers(&args)? {
        match a {
            "--kills" => o.kills = v,
            "--cases" => o.cases = v,
            "--soak-seconds" => o.soak_seconds = v,
            "--cuts" => o.cuts = v,
            "--fuzz-seconds" => o.fuzz_seconds = v,
            other => bail!("unknown option {other:?}"),
        }
    }
    Ok(o)
}

pub fn run(args: &[&str]) -> anyhow::Result<()> {
    let o = parse(args)?;
    let kills = o.kills.to_string();
    let results = crate::reliability::results_dir();
    let recorded = |mut cmd: std::process::Command| {
        cmd.env(crate::record::RESULTS_ENV, &results);
        cmd
    };
    let crash: &[(&str, &str)] = if o.runs("crash") {
        &[
            ("strata-content", "crash"),
            ("strata-native", "crash"),
            ("strata-tests", "gc_crash"),
            ("strata-cache", "crash_overlay"),
            ("strata-cache", "crash_native"),
            ("strata-cache", "crash_btrfs"),
        ]
    } else {
        &[]
    };
    for &(package, test) in crash {
        crate::run(
            recorded(crate::cargo())
                .args(["test", "--release", "-p", package, "--test", test])
                .env("STRATA_CRASH_ROUNDS", &kills),
        )?;
    }
    if o.runs("faults") {
        crate::run(recorded(crate::cargo()).args([
            "test",
            "-p",
            "strata-tests",
            "--test",
            "cli_faults",
        ]))?;
    }
    for (package, what, cases) in [
        (
            "strata-leases",
            "the collector against its reference model (`strata-leases --test gc`)",
            o.cases,
        ),
        (
            "strata-diff",
            "random trees through apply, diff and export (`strata-diff`)",
            (o.cases / 25).max(1),
        ),
    ]
    .into_iter()
    .filter(|_| o.runs("property"))
    {
        let mut cmd = crate::cargo();
        cmd.args(["test", "--release", "-p", package]);
        if package == "strata-leases" {
            cmd.args(["--test", "gc"]);
        }
        crate::run(cmd.env("PROPTEST_CASES", cases.to_string()))?;
        crate::reliability::record(
            "property",
            package,
            &[
                ("property tests", what.to_owned()),
                ("build", "release".to_owned()),
                ("cases per test, all passed", cases.to_string()),
            ],
        );
    }
    if o.runs("soak") {
        crate::run(
            recorded(crate::cargo())
                .args(["test", "--release", "-p", "strata-cache", "--test", "soak"])
                .env("STRATA_SOAK_SECS", o.soak_seconds.to_string()),
        )?;
    }
    if o.runs("powerloss") {
        crate::powerloss::run(&["--cuts", &o.cuts.to_string(), "--record"])?;
    }
    if o.runs("fuzz") {
        crate::fuzz::run(&["--seconds", &o.fuzz_seconds.to_string(), "--record"])?;
    }
    Ok(())
}

/// `cargo xtask under-load [--runs N] [--hogs N]`: the whole suite (`cargo
/// xtask test`) N times in a row (3 by default) while a busy loop runs on
/// every core (or N of them), stopping at the first failure: races with
/// daemons, collectors and deadlines show here before they show in CI.
pub fn under_load(args: &[&str]) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let (mut runs, mut hogs) = (3usize, cores);
    for (a, v) in numbers(args)? {
        let v = usize::try_from(v)?;
        match a {
            "--runs" => runs = v,
            "--hogs" => hogs = v,
            other => bail!("unknown option {other:?}"),
        }
    }
    let mut busy: Vec<std::process::Child> = (0..hogs)
        .map(|_| {
            std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .context("start a busy loop")
        })
        .collect::<anyhow::Result<_>>()?;
    let mut outcome = Ok(());
    let mut took = Vec::new();
    for run in 1..=runs {
        eprintln!("under-load: run {run} of {runs}, {hogs} busy loops beside it");
        let started = std::time::Instant::now();
        outcome = crate::test(&[]).with_context(|| format!("run {run} of {runs} under load"));
        if outcome.is_err() {
            break;
        }
        let skipped = std::fs::read_to_string(crate::workspace().join("target/strata-skips.log"))
            .map_or(0, |s| s.lines().count());
        took.push(format!(
            "{:.0} s ({skipped} skipped)",
            started.elapsed().as_secs_f64()
        ));
        eprintln!("under-load: run {run} passed in {}", took[took.len() - 1]);
    }
    for b in &mut busy {
        b.kill().ok();
        b.wait().ok();
    }
    outcome?;
    eprintln!("under-load: {runs} runs in a row passed with {hogs} busy loops");
    crate::reliability::record(
        "under-load",
        "cargo xtask test",
        &[
            ("suite", "`cargo xtask test` (debug)".to_owned()),
            ("runs in a row, all passed", runs.to_string()),
            ("busy loops beside it", hogs.to_string()),
            ("each run's time (tests skipped)", took.join(", ")),
        ],
    );
    Ok(())
}
