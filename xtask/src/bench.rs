//! Benchmarks, each against peers in the same run.
//!
//! `cargo xtask bench snapshot|gc|containerd` run `strata-cli`'s benches
//! of those names, `cargo xtask bench diff`
//! `strata-diff`'s and `cargo xtask bench cache|oci` `strata-cache`'s, on a
//! fresh loop-mounted ext4 (see those files for what they measure; `diff`,
//! `cache` and `oci` need the Debian images `cargo xtask bench-images`
//! builds).
//!
//! `cargo xtask bench content`: ingest throughput of a large file into the
//! content store against `sha256sum` followed by `cp` of the same file (the
//! least a store must do: hash it and copy it), run side by side, alternating
//! A B A B, on a tmpfs so the disk does not dominate. Prints medians, MB/s
//! and the median of the pairwise ratios.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

struct Options {
    size_mib: u64,
    runs: usize,
}

fn parse(args: &[&str]) -> anyhow::Result<(String, Options)> {
    let mut opts = Options {
        size_mib: 1024,
        runs: 5,
    };
    let mut what = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--size-mib" => {
                opts.size_mib = it.next().context("--size-mib needs a value")?.parse()?
            }
            "--runs" => opts.runs = it.next().context("--runs needs a value")?.parse()?,
            other if what.is_none() => what = Some(other.to_string()),
            other => bail!("unexpected argument {other:?}"),
        }
    }
    Ok((what.context("name a benchmark: content")?, opts))
}

pub fn run(args: &[&str]) -> anyhow::Result<()> {
    let (what, opts) = parse(args)?;
    match what.as_str() {
        "content" => content(&opts),
        "snapshot" => on_loop_ext4("strata-cli", "snapshot"),
        "gc" => on_loop_ext4("strata-cli", "gc"),
        "diff" => on_loop_ext4("strata-diff", "diff"),
        "cache" => on_loop_ext4("strata-cache", "cache"),
        "oci" => on_loop_ext4("strata-cache", "oci"),
        "containerd" => on_loop_ext4("strata-cli", "containerd"),
        other => {
            bail!(
                "unknown benchmark {other:?}; available: content, snapshot, gc, diff, cache, oci, containerd"
            )
        }
    }
}

/// A fresh ext4 on a loop device (direct I/O) for anything that creates many
/// files (the root disk's ext4 has no journal, and creating files soon after
/// deleting many is far slower there); a temporary directory when not root.
struct LoopExt4 {
    dir: PathBuf,
    image: PathBuf,
    device: Option<String>,
}

impl LoopExt4 {
    fn new(size: &str) -> anyhow::Result<LoopExt4> {
        let target = crate::workspace().join("target");
        let dir = target.join("bench-ext4");
        let image = target.join("bench-ext4.img");
        std::fs::create_dir_all(&dir)?;
        if !crate::is_root() {
            return Ok(LoopExt4 {
                dir,
                image,
                device: None,
            });
        }
        crate::run(Command::new("truncate").args(["-s", size]).arg(&image))?;
        crate::run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))?;
        let out = Command::new("losetup")
            .args(["--direct-io=on", "-f", "--show"])
            .arg(&image)
            .output()?;
        if !out.status.success() {
            bail!("losetup failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let device = String::from_utf8(out.stdout)?.trim().to_string();
        crate::run(Command::new("mount").arg(&device).arg(&dir))?;
        Ok(LoopExt4 {
            dir,
            image,
            device: Some(device),
        })
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        if let Some(device) = &self.device {
            for cmd in [
                vec!["umount".to_string(), self.dir.display().to_string()],
                vec!["losetup".into(), "-d".into(), device.clone()],
            ] {
                if let Err(e) = Command::new(&cmd[0]).args(&cmd[1..]).status() {
                    eprintln!("cleanup {cmd:?}: {e}");
                }
            }
            if let Err(e) = std::fs::remove_file(&self.image) {
                eprintln!("remove {}: {e}", self.image.display());
            }
        }
    }
}

/// Runs `package`'s bench `name` on a fresh loop-mounted ext4.
fn on_loop_ext4(package: &str, name: &str) -> anyhow::Result<()> {
    let scratch = LoopExt4::new("24G")?;
    crate::run(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["bench", "-p", package, "--bench", name])
            .env("STRATA_BENCH_DIR", &scratch.dir),
    )
}

/// A scratch tmpfs, mounted for the run when we are root, else /dev/shm.
struct Scratch {
    dir: PathBuf,
    mounted: bool,
}

impl Scratch {
    fn new() -> anyhow::Result<Scratch> {
        if crate::is_root() {
            let dir = crate::workspace().join("target/bench-tmpfs");
            std::fs::create_dir_all(&dir)?;
            crate::run(
                Command::new("mount")
                    .args(["-t", "tmpfs", "-o", "size=8g,mode=0700", "strata-bench"])
                    .arg(&dir),
            )?;
            Ok(Scratch { dir, mounted: true })
        } else {
            let dir = PathBuf::from("/dev/shm/strata-bench");
            std::fs::create_dir_all(&dir)?;
            Ok(Scratch {
                dir,
                mounted: false,
            })
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = Command::new("umount").arg(&self.dir).status() {
                eprintln!("could not unmount {}: {e}", self.dir.display());
            }
        } else if let Err(e) = Command::new("rm").arg("-rf").arg(&self.dir).status() {
            eprintln!("could not remove {}: {e}", self.dir.display());
        }
    }
}

fn write_input(path: &Path, mib: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        f.write_all(&block)?;
    }
    f.flush()?;
    Ok(())
}

/// Touches and frees about 2 GiB so timed runs get warm pages.
fn warm(dir: &Path) -> anyhow::Result<()> {
    let p = dir.join("warm");
    write_input(&p, 2048)?;
    std::fs::remove_file(&p)?;
    Ok(())
}

fn time(cmd: &mut Command) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(start.elapsed())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn content(opts: &Options) -> anyhow::Result<()> {
    crate::run(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())).args([
            "build",
            "--release",
            "-p",
            "strata-cli",
        ]),
    )?;
    let strata = crate::workspace().join("target/release/strata");
    let scratch = Scratch::new()?;
    let input = scratch.dir.join("input");
    eprintln!(
        "writing a {} MiB input in {}",
        opts.size_mib,
        scratch.dir.display()
    );
    write_input(&input, opts.size_mib)?;
    let root = scratch.dir.join("root");
    let copy = scratch.dir.join("copy");
    let (mut a, mut b, mut ratios, mut hash_only) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..=opts.runs {
        Command::new("rm")
            .arg("-rf")
            .arg(&root)
            .arg(&copy)
            .status()?;
        warm(&scratch.dir)?;
        let ta = time(
            Command::new(&strata)
                .arg("--root")
                .arg(&root)
                .args(["content", "ingest"])
                .arg(&input),
        )?;
        Command::new("rm").arg("-rf").arg(&root).status()?;
        warm(&scratch.dir)?;
        let th = time(Command::new("sha256sum").arg(&input))?;
        let tc = time(Command::new("cp").arg(&input).arg(&copy))?;
        let tb = th + tc;
        if i == 0 {
            continue; // warm-up pair
        }
        eprintln!(
            "run {i}: strata ingest {:.3}s, sha256sum+cp {:.3}s",
            ta.as_secs_f64(),
            tb.as_secs_f64()
        );
        a.push(ta.as_secs_f64());
        b.push(tb.as_secs_f64());
        hash_only.push(th.as_secs_f64());
        ratios.push(ta.as_secs_f64() / tb.as_secs_f64());
    }
    let mb = opts.size_mib as f64 * 1.048_576;
    let (ma, mb_, mh) = (median(a), median(b), median(hash_only));
    println!(
        "bench content: {} MiB, {} runs, tmpfs",
        opts.size_mib, opts.runs
    );
    println!(
        "  strata content ingest   median {ma:.3}s  {:.0} MB/s",
        mb / ma
    );
    println!(
        "  sha256sum + cp          median {mb_:.3}s  {:.0} MB/s",
        mb / mb_
    );
    println!(
        "  sha256sum alone         median {mh:.3}s  {:.0} MB/s",
        mb / mh
    );
    println!(
        "  ratio strata / (sha256sum + cp): median {:.2} (below 1 is faster)",
        median(ratios)
    );
    Ok(())
}
