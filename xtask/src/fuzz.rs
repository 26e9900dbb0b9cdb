//! `cargo xtask fuzz [--seconds N] [--record]`: runs each fuzz target
//! (`fuzz/`, its own workspace, `cargo +nightly fuzz`) for N seconds
//! (default 300), seeded with real tar layers made by GNU tar: `apply`, the
//! layer applier, and `estargz`, the eStargz reader, writer and checker. `cargo xtask
//! ci` runs it briefly as a smoke test. With `--record` the number of
//! inputs libFuzzer ran goes into the reliability record (`cargo xtask
//! report`).

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

fn seeds(dir: &Path) -> anyhow::Result<()> {
    let corpus = dir.join("corpus");
    if corpus.join("simple.tar").exists() {
        return Ok(());
    }
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("etc/sub"))?;
    std::fs::write(src.join("etc/hostname"), "box\n")?;
    if std::fs::symlink_metadata(src.join("etc/link")).is_err() {
        std::os::unix::fs::symlink("hostname", src.join("etc/link"))?;
    }
    if std::fs::symlink_metadata(src.join("etc/hard")).is_err() {
        std::fs::hard_link(src.join("etc/hostname"), src.join("etc/hard"))?;
    }
    std::fs::write(src.join("etc/.wh.gone"), "")?;
    std::fs::write(src.join("etc/sub/.wh..wh..opq"), "")?;
    // A deep tree (paths past 100 bytes take GNU long names) and a sparse
    // file (GNU sparse entries), shapes the applier has had trouble with.
    let deep = src.join("deep").join("d/".repeat(64));
    std::fs::create_dir_all(&deep)?;
    std::fs::write(deep.join("bottom"), "deep")?;
    let sparse = dir.join("sparse-src");
    std::fs::create_dir_all(&sparse)?;
    let holes = std::fs::File::create(sparse.join("holes"))?;
    holes.set_len(1 << 20)?;
    std::os::unix::fs::FileExt::write_at(&holes, b"data", 512 << 10)?;
    // A tree GNU tar and the applier must extract alike (regular files,
    // directories, symlinks, modes and owners only): the target compares
    // the two on inputs of that shape.
    let simple = dir.join("simple-src");
    std::fs::create_dir_all(simple.join("usr/bin"))?;
    std::fs::write(simple.join("usr/bin/tool"), "#!/bin/sh\n")?;
    std::fs::set_permissions(
        simple.join("usr/bin/tool"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )?;
    std::fs::write(simple.join("readme"), "simple\n")?;
    if std::fs::symlink_metadata(simple.join("usr/bin/alias")).is_err() {
        std::os::unix::fs::symlink("tool", simple.join("usr/bin/alias"))?;
    }
    std::fs::create_dir_all(&corpus)?;
    let tar = |from: &Path, args: &[&str], out: &str| {
        crate::run(
            Command::new("tar")
                .arg("-C")
                .arg(from)
                .args(args)
                .arg("-cf")
                .arg(corpus.join(out))
                .arg("."),
        )
    };
    tar(&sparse, &["--sparse"], "sparse.tar")?;
    tar(&src, &[], "plain.tar")?;
    tar(&src, &["-z"], "layer.tgz")?;
    tar(&src, &["--format=pax"], "pax.tar")?;
    tar(
        &simple,
        &["--owner=1000", "--group=1000", "--sort=name"],
        "simple.tar",
    )?;
    Ok(())
}

pub fn run(args: &[&str]) -> anyhow::Result<()> {
    let (mut seconds, mut record) = (300u64, false);
    let mut rest = args;
    while let Some((first, tail)) = rest.split_first() {
        rest = match (*first, tail) {
            ("--seconds", [n, tail @ ..]) => {
                seconds = n.parse().context("--seconds needs a number")?;
                tail
            }
            ("--record", tail) => {
                record = true;
                tail
            }
            _ => bail!(
                "unexpected arguments {rest:?}; usage: cargo xtask fuzz [--seconds N] [--record]"
            ),
        };
    }
    let found = Command::new("cargo").args(["fuzz", "--version"]).output();
    if !found.is_ok_and(|o| o.status.success()) {
        bail!("cargo-fuzz is missing: cargo install cargo-fuzz --locked");
    }
    let ws = crate::workspace();
    let seed_dir = ws.join("target/fuzz-seeds");
    seeds(&seed_dir)?;
    for (target, what) in TARGETS {
        let done = fuzz(&ws, &seed_dir, target, seconds)?;
        eprintln!("fuzz {target}: {done} inputs in {seconds} s, none failed");
        if record {
            crate::reliability::record(
                "fuzz",
                target,
                &[
                    ("target", (*what).to_owned()),
                    ("seconds", seconds.to_string()),
                    ("inputs run, none failed", done.to_string()),
                ],
            );
        }
    }
    Ok(())
}

/// Every fuzz target, with what it covers (the reliability record's words).
const TARGETS: &[(&str, &str)] = &[
    ("apply", "apply (plain and overlay-upper destinations)"),
    (
        "estargz",
        "estargz (TOC reading, writing, checking against corrupted blobs)",
    ),
    (
        "lazy",
        "lazy reads (TOC and tree from any blob; every file read lazily as extracted, or refused when corrupted)",
    ),
];

/// Runs `target` for `seconds` on its corpus and the seeds; the number of
/// inputs libFuzzer ran.
fn fuzz(ws: &Path, seed_dir: &Path, target: &str, seconds: u64) -> anyhow::Result<u64> {
    let corpus = ws.join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    // The targets make and remove temporary trees for every input; on a
    // disk without a journal, making files soon after removing many is
    // many times slower, so they work in memory where there is a tmpfs.
    // (A small one, as containers often have, would fail inputs for want
    // of space: 4 GiB free at least.)
    let scratch = (free_bytes(Path::new("/dev/shm")) >= 4 << 30)
        .then(|| {
            tempfile::Builder::new()
                .prefix("strata-fuzz-")
                .tempdir_in("/dev/shm")
        })
        .transpose()
        .context("make a scratch directory in /dev/shm")?;
    let mut cmd = Command::new("cargo");
    if let Some(dir) = &scratch {
        cmd.env("TMPDIR", dir.path());
    }
    cmd.args(["+nightly", "fuzz", "run", target])
        .arg(&corpus)
        .arg(seed_dir.join("corpus"))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // Each run makes a temporary tree: keep the rate honest and the
        // inputs small enough to stay within the limits the target sets.
        .arg("-max_len=65536")
        .current_dir(ws)
        .stderr(Stdio::piped());
    eprintln!("$ {cmd:?}");
    let mut child = cmd.spawn().context("start cargo fuzz")?;
    // libFuzzer reports on stderr; pass it through, keeping its last word.
    let mut done = None;
    for line in std::io::BufReader::new(child.stderr.take().expect("piped")).lines() {
        let line = line.context("read cargo fuzz's output")?;
        eprintln!("{line}");
        if let Some(n) = inputs_run(&line) {
            done = Some(n);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo fuzz run {target} failed: {status}");
    }
    done.context("libFuzzer ended without its \"Done N runs\" line")
}

/// Bytes free on the file system holding `dir` (0 when `df` cannot say).
fn free_bytes(dir: &Path) -> u64 {
    Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The N of libFuzzer's closing "Done N runs in S second(s)".
fn inputs_run(line: &str) -> Option<u64> {
    line.strip_prefix("Done ")?
        .split_once(" runs in ")?
        .0
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn libfuzzer_closing_line() {
        assert_eq!(
            super::inputs_run("Done 21695 runs in 241 second(s)"),
            Some(21695)
        );
        assert_eq!(super::inputs_run("#2 INITED cov: 10 ft: 10"), None);
    }
}
