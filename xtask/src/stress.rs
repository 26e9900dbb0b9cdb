//! `cargo xtask stress`: the long runs CI keeps short. Every SIGKILL crash
//! test with `STRATA_CRASH_ROUNDS` kills (1,000 each by default, release
//! builds), the property tests with `PROPTEST_CASES` cases (the collector's
//! model 5,000, the random-tree tests 200), the one-process soak for ten
//! minutes per backend (`STRATA_SOAK_SECS`), `powerloss` with many cuts
//! (50) and the fuzz target for half an hour. Each figure can be set:
//! `--kills N`, `--cases N`, `--soak-seconds N`, `--cuts N`,
//! `--fuzz-seconds N`.

use anyhow::{Context, bail};

struct Options {
    kills: u64,
    cases: u64,
    soak_seconds: u64,
    cuts: u64,
    fuzz_seconds: u64,
}

fn parse(args: &[&str]) -> anyhow::Result<Options> {
    let mut o = Options {
        kills: 1000,
        cases: 5000,
        soak_seconds: 600,
        cuts: 50,
        fuzz_seconds: 1800,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v: u64 = it
            .next()
            .with_context(|| format!("{a} needs a number"))?
            .parse()?;
        match *a {
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
    for (package, test) in [
        ("strata-content", "crash"),
        ("strata-native", "crash"),
        ("strata-tests", "gc_crash"),
        ("strata-cache", "crash_overlay"),
        ("strata-cache", "crash_native"),
    ] {
        crate::run(
            crate::cargo()
                .args(["test", "--release", "-p", package, "--test", test])
                .env("STRATA_CRASH_ROUNDS", &kills),
        )?;
    }
    crate::run(
        crate::cargo()
            .args(["test", "--release", "-p", "strata-leases", "--test", "gc"])
            .env("PROPTEST_CASES", o.cases.to_string()),
    )?;
    crate::run(
        crate::cargo()
            .args(["test", "--release", "-p", "strata-diff"])
            .env("PROPTEST_CASES", (o.cases / 25).max(1).to_string()),
    )?;
    crate::run(
        crate::cargo()
            .args(["test", "--release", "-p", "strata-cache", "--test", "soak"])
            .env("STRATA_SOAK_SECS", o.soak_seconds.to_string()),
    )?;
    crate::powerloss::run(&["--cuts", &o.cuts.to_string()])?;
    crate::fuzz::run(&["--seconds", &o.fuzz_seconds.to_string()])
}
