//! Benchmarks, each against peers in the same run.
//!
//! `cargo xtask bench NAME [--runs N] [--size-mib N]` builds the `strata`
//! binary (release; a copy in `target/bench-bin` is what runs), makes a
//! fresh scratch file system and runs the bench
//! NAME on it: `content` (strata-cli's bench of that name, on a tmpfs and a
//! loop-mounted ext4), `snapshot`, `gc` and `containerd` (strata-cli's),
//! `diff` (strata-diff's), `cache` and `oci` (strata-cache's), `daemon`,
//! `estargz` and `lazy` (strata-cli's), each on a fresh loop-mounted ext4;
//! see those files for what they measure, and
//! `strata_testkit::bench` for how (every contender a process, the cache
//! dropped before each run, the order rotated, returned and durable
//! times, peak memory, provenance). `diff`, `cache`, `oci`,
//! `containerd`, `daemon`, `estargz` and `lazy` need the Debian images
//! `cargo xtask bench-images` builds.
//! Figures go to `target/strata-bench/`, for `cargo xtask bench --report`.
//!
//! `cargo xtask bench --quick` runs every bench once with small inputs (the
//! small image the testkit makes instead of the Debian ones, the debug
//! `strata`), so none rots: it fails when one cannot run, never on a
//! timing, and records only into `target/bench-quick/results`, whose
//! figures it then checks for full provenance.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

/// Every bench, by the name of its bench target (each in one package of
/// the workspace).
const BENCHES: &[&str] = &[
    "content",
    "snapshot",
    "gc",
    "diff",
    "cache",
    "oci",
    "containerd",
    "daemon",
    "estargz",
    "lazy",
];

pub fn run(args: &[&str]) -> anyhow::Result<()> {
    let mut env: Vec<(&str, String)> = Vec::new();
    let mut what = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--quick" => return quick(),
            "--size-mib" => env.push((
                "STRATA_BENCH_SIZE_MIB",
                it.next().context("--size-mib needs a value")?.to_string(),
            )),
            "--runs" => env.push((
                "STRATA_BENCH_RUNS",
                it.next().context("--runs needs a value")?.to_string(),
            )),
            other if what.is_none() => what = Some(other),
            other => bail!("unexpected argument {other:?}"),
        }
    }
    let Some(name) = what else {
        bail!(
            "name a benchmark ({}), or --quick, or --report",
            BENCHES.join(", ")
        );
    };
    if !BENCHES.contains(&name) {
        bail!(
            "unknown benchmark {name:?}; available: {}",
            BENCHES.join(", ")
        );
    }
    bench(name, false, &env)
}

/// Every bench once, small, recording into a scratch directory only.
fn quick() -> anyhow::Result<()> {
    let results = crate::target_dir().join("bench-quick/results");
    crate::run(Command::new("rm").arg("-rf").arg(&results))?;
    let env = [
        ("STRATA_BENCH_QUICK", "1".to_owned()),
        ("STRATA_BENCH_RESULTS", results.display().to_string()),
    ];
    let mut took = Vec::new();
    for name in BENCHES {
        let start = Instant::now();
        bench(name, true, &env).with_context(|| format!("quick run of bench {name}"))?;
        took.push(format!("{name} {:.0}s", start.elapsed().as_secs_f64()));
    }
    let checked = crate::report::check(&results)?;
    eprintln!(
        "bench --quick: every bench ran ({}); {checked} figures recorded in {}, each with full provenance",
        took.join(", "),
        results.display()
    );
    Ok(())
}

/// Builds `strata` (release, or the debug build in a quick run) and runs
/// the bench `name` on fresh scratch file systems with `env` set.
fn bench(name: &str, quick: bool, env: &[(&str, String)]) -> anyhow::Result<()> {
    let profile = if quick { "dev" } else { "release" };
    crate::run(crate::cargo().args([
        "build",
        "--profile",
        profile,
        "-p",
        "strata-cli",
        "--bin",
        "strata",
    ]))?;
    // A copy: building the benches below may put a binary built with
    // their dev-dependencies' features where cargo put this one.
    let strata = crate::target_dir().join("bench-bin/strata");
    std::fs::create_dir_all(crate::target_dir().join("bench-bin"))?;
    std::fs::copy(
        crate::target_dir()
            .join(if quick { "debug" } else { "release" })
            .join("strata"),
        &strata,
    )
    .context("copy the strata binary")?;
    let scratch = LoopExt4::new(if quick { "4G" } else { "24G" })?;
    let tmpfs = (name == "content").then(Tmpfs::new).transpose()?;
    let mut cmd = crate::cargo();
    // The whole workspace's features every time, so no bench's build
    // rebuilds what another's built.
    cmd.args([
        "bench",
        "--profile",
        profile,
        "--workspace",
        "--bench",
        name,
    ])
    .env("STRATA_BENCH_DIR", &scratch.dir)
    .env("STRATA_BIN", &strata)
    .envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(t) = &tmpfs {
        cmd.env("STRATA_BENCH_TMPFS", &t.dir);
    }
    crate::run(&mut cmd)
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
        let target = crate::target_dir();
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
            // A bench that failed may leave mounts below (containerd's,
            // containers/storage's): detach them all with the file system.
            for cmd in [
                vec![
                    "umount".to_string(),
                    "-R".into(),
                    "-l".into(),
                    self.dir.display().to_string(),
                ],
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

/// A scratch tmpfs, mounted for the run when we are root, else /dev/shm.
struct Tmpfs {
    dir: PathBuf,
    mounted: bool,
}

impl Tmpfs {
    fn new() -> anyhow::Result<Tmpfs> {
        if crate::is_root() {
            let dir = crate::target_dir().join("bench-tmpfs");
            std::fs::create_dir_all(&dir)?;
            crate::run(
                Command::new("mount")
                    .args(["-t", "tmpfs", "-o", "size=8g,mode=0700", "strata-bench"])
                    .arg(&dir),
            )?;
            Ok(Tmpfs { dir, mounted: true })
        } else {
            let dir = Path::new("/dev/shm/strata-bench").to_path_buf();
            std::fs::create_dir_all(&dir)?;
            Ok(Tmpfs {
                dir,
                mounted: false,
            })
        }
    }
}

impl Drop for Tmpfs {
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
