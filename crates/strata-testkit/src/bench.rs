//! What the side-by-side benchmarks share: how a run is set up, how its
//! contenders are timed, and how figures are recorded with their provenance
//! for `cargo xtask bench --report`.
//!
//! * A run is full, or quick (`STRATA_BENCH_QUICK=1`, what `cargo xtask
//!   bench --quick` sets): small inputs ([`pick`]), one run and no warm-up
//!   ([`runs`]), the small image of [`images`] instead of the real Debian
//!   ones; it proves every benchmark still runs.
//! * [`side_by_side`] times contenders as their users run them: each one a
//!   process (Strata is the `strata` binary, its root's close included).
//!   Before every timed run the page cache is written back and dropped
//!   (untimed); the order of the contenders rotates every round (A B C, B
//!   C A, C A B); "returned" is the time until the process exits,
//!   "durable" that plus a `sync -f` of the file system it wrote (Strata
//!   syncs before it returns, most peers do not); peak memory is the
//!   largest resident set of the process (`/usr/bin/time`'s maximum) plus
//!   the peak of each daemon it drives (containerd, `strata serve`).
//! * [`record`] appends the medians to `$STRATA_BENCH_RESULTS/<group>.json`
//!   (default `target/strata-bench/`), each with its provenance (see
//!   `provenance.rs`): the commit, whether the tree was dirty, the time
//!   (UTC), the kernel, the file system written to, root or not, cores,
//!   and the tool's version; and the peers left out of a case, and why.

mod images;
use crate::provenance;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub use images::{Images, images};
pub use provenance::version;

/// The environment variable that makes a run quick.
pub const QUICK: &str = "STRATA_BENCH_QUICK";

/// True in a quick run.
pub fn quick() -> bool {
    std::env::var_os(QUICK).is_some_and(|v| v == "1")
}

/// `full` in a full run, `quick` in a quick one.
pub fn pick<T>(full: T, quick: T) -> T {
    if self::quick() { quick } else { full }
}

/// Timed runs per contender: one in a quick run, else `$STRATA_BENCH_RUNS`
/// (default 3); a full run adds one untimed warm-up round before them.
pub fn runs() -> usize {
    if quick() {
        return 1;
    }
    std::env::var("STRATA_BENCH_RUNS").map_or(3, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("STRATA_BENCH_RUNS={v:?} is not a count"))
    })
}

/// The scratch directory the run writes to (`$STRATA_BENCH_DIR`, a fresh
/// file system `cargo xtask bench` mounts).
pub fn scratch() -> PathBuf {
    let dir = PathBuf::from(
        std::env::var_os("STRATA_BENCH_DIR").expect("run benchmarks through cargo xtask bench"),
    );
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// The type of the file system holding `dir` (`ext4`, `tmpfs`).
pub fn fs_type(dir: &Path) -> String {
    let fs = provenance::file_system(dir);
    fs.split(' ').next().unwrap_or_default().to_owned()
}

/// A `strata --root ROOT` command, of the binary `cargo xtask bench`
/// built (`$STRATA_BIN`, see [`crate::cli::strata`]).
pub fn strata(root: &Path) -> Command {
    let mut cmd = Command::new(crate::cli::strata());
    cmd.arg("--root").arg(root);
    cmd
}

/// The version line of the `strata` binary.
pub fn strata_version() -> String {
    let out = Command::new(crate::cli::strata())
        .arg("--version")
        .output()
        .expect("run strata --version");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A `bash -euo pipefail -c SCRIPT` command.
pub fn bash(script: &str) -> Command {
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", script]);
    cmd
}

/// Runs `cmd`, its output dropped; panics, with what it said on stderr,
/// when it fails.
pub fn ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `script` with `bash -euo pipefail`; panics when it fails.
pub fn sh(script: &str) {
    ok(&mut bash(script));
}

/// Removes `dir` and what is below it, after detaching whatever is
/// mounted there (a store's temporary mounts, containers/storage's
/// private bind of its own directory); the removal never crosses into
/// another file system. On btrfs the subvolumes below `dir` (a btrfs
/// root's snapshots, read-only ones too) are deleted first, deepest first.
pub fn remove(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    let mut below: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    // The deepest first.
    below.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in below {
        sh(&format!("umount -l {p}"));
    }
    let d = dir.display();
    // A subvolume's root directory is inode 256.
    sh(&format!(
        "if [ \"$(stat -f -c %T {d})\" = btrfs ]; then find {d} -mindepth 1 -inum 256 -type d -printf '%d %p\\n' | sort -rn | cut -d' ' -f2- | xargs -r -d '\\n' btrfs -q subvolume delete; fi"
    ));
    sh(&format!("rm -rf --one-file-system {d}"));
}

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Touches and frees about 2 GiB under `dir` so a timed run gets warm
/// pages (these VMs hand freed memory back to the host, and touching it
/// again is slow).
pub fn warm(dir: &Path) {
    sh(&format!(
        "head -c 2G /dev/zero > {0}/warm && rm {0}/warm",
        dir.display()
    ));
}

/// Writes back every dirty page and drops the page cache, dentries and
/// inodes, so a timed run reads from the disk like a first run after boot.
/// Only root may drop caches: otherwise this only syncs (the figures then
/// say they were not recorded as root).
pub fn drop_caches() {
    sh("sync");
    if strata_sys::effective_uid() == 0 {
        std::fs::write("/proc/sys/vm/drop_caches", "3").expect("drop the page cache");
    }
}

/// One contender of a side-by-side case.
pub struct Contender<'a> {
    peer: String,
    tool: String,
    daemons: Vec<u32>,
    run: Box<dyn FnMut(usize) -> Command + 'a>,
    after: Box<dyn FnMut(usize) + 'a>,
}

impl std::fmt::Debug for Contender<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contender")
            .field("peer", &self.peer)
            .field("tool", &self.tool)
            .finish_non_exhaustive()
    }
}

impl<'a> Contender<'a> {
    /// `peer` (its name in the report), whose program's version is `tool`;
    /// `run(round)` prepares what the round needs (untimed) and returns the
    /// command to time.
    pub fn new(peer: &str, tool: &str, run: impl FnMut(usize) -> Command + 'a) -> Contender<'a> {
        Contender {
            peer: peer.to_owned(),
            tool: tool.to_owned(),
            daemons: Vec::new(),
            run: Box::new(run),
            after: Box::new(|_| {}),
        }
    }

    /// `after(round)` runs (untimed) once the round's command is done: a
    /// check of what it made, a cleanup.
    pub fn after(mut self, after: impl FnMut(usize) + 'a) -> Contender<'a> {
        self.after = Box::new(after);
        self
    }

    /// Processes the command drives (containerd, `strata serve`) whose
    /// peak memory during the run counts as the contender's.
    pub fn daemons(mut self, pids: &[u32]) -> Contender<'a> {
        self.daemons = pids.to_vec();
        self
    }
}

/// What one contender measured, run by run.
#[derive(Clone, Debug)]
pub struct Times {
    /// Its name in the report.
    pub peer: String,
    /// Its program's version.
    pub tool: String,
    /// Until the process exited.
    pub returned: Vec<Duration>,
    /// Until it exited and `sync -f` of its file system returned (empty
    /// when the case writes nothing).
    pub durable: Vec<Duration>,
    /// Peak resident memory, KiB.
    pub peak_kib: Vec<u64>,
}

impl Times {
    /// The medians (and the highest peak) as a figure.
    pub fn figure(&self) -> Figure {
        Figure {
            peer: self.peer.clone(),
            tool: self.tool.clone(),
            runs: self.returned.len(),
            returned: median(self.returned.clone()),
            durable: (!self.durable.is_empty()).then(|| median(self.durable.clone())),
            peak_kib: self.peak_kib.iter().max().copied(),
            detail: None,
        }
    }
}

/// Resets the peak resident set of process `pid` to what it holds now.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .unwrap_or_else(|e| panic!("reset the peak memory of process {pid}: {e}"));
}

/// The peak resident set of process `pid` since its last reset, KiB.
fn peak(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read the status of process {pid}: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM for process {pid}"))
}

/// Times `cmd` under `/usr/bin/time`: how long until it exited, and its
/// peak resident set (KiB). Panics when it fails.
fn timed(cmd: &Command, what: &str) -> (Duration, u64) {
    let rss = tempfile::NamedTempFile::new().expect("a temporary file");
    let mut wrapped = Command::new("/usr/bin/time");
    wrapped
        .args(["-f", "%M", "-o"])
        .arg(rss.path())
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdout(Stdio::null());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    let start = Instant::now();
    let status = wrapped
        .status()
        .unwrap_or_else(|e| panic!("{what}: run /usr/bin/time (apt-get install time): {e}"));
    let took = start.elapsed();
    assert!(status.success(), "{what} failed ({status}): {cmd:?}");
    let text = std::fs::read_to_string(rss.path()).expect("read /usr/bin/time's output");
    let kib = text
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("{what}: /usr/bin/time printed {text:?}"));
    (took, kib)
}

/// Runs `contenders` side by side, as the module's comment says: a
/// warm-up round in a full run, then [`runs`] timed rounds, the order
/// rotated each round, the cache dropped before each run. When `writes`,
/// each run also gets its durable time: `sync -f fs` after it returned.
/// Returns what each contender measured, in the order given.
pub fn side_by_side(fs: &Path, writes: bool, contenders: &mut [Contender<'_>]) -> Vec<Times> {
    let warmup = usize::from(!quick());
    let n = contenders.len();
    let mut times: Vec<Times> = contenders
        .iter()
        .map(|c| Times {
            peer: c.peer.clone(),
            tool: c.tool.clone(),
            returned: Vec::new(),
            durable: Vec::new(),
            peak_kib: Vec::new(),
        })
        .collect();
    for round in 0..warmup + runs() {
        for i in (0..n).map(|k| (k + round) % n) {
            let c = &mut contenders[i];
            let cmd = (c.run)(round);
            if !quick() {
                warm(fs);
            }
            drop_caches();
            c.daemons.iter().for_each(|&p| reset_peak(p));
            let what = format!("{} (round {round})", c.peer);
            let (returned, own_peak) = timed(&cmd, &what);
            let durable = writes.then(|| {
                let start = Instant::now();
                sh(&format!("sync -f {}", fs.display()));
                returned + start.elapsed()
            });
            let peak_kib = own_peak + c.daemons.iter().map(|&p| peak(p)).sum::<u64>();
            (c.after)(round);
            eprintln!(
                "    {what}: returned {:.3}s{}, peak {} MiB{}",
                returned.as_secs_f64(),
                durable.map_or(String::new(), |d| format!(
                    ", durable {:.3}s",
                    d.as_secs_f64()
                )),
                peak_kib / 1024,
                if round < warmup { " (warm-up)" } else { "" }
            );
            if round >= warmup {
                let t = &mut times[i];
                t.returned.push(returned);
                t.durable.extend(durable);
                t.peak_kib.push(peak_kib);
            }
        }
    }
    times
}

/// One median figure of a case.
#[derive(Clone, Debug)]
pub struct Figure {
    /// Its name in the report; Strata's start with "strata".
    pub peer: String,
    /// The version of the program measured.
    pub tool: String,
    /// Timed runs the medians are of.
    pub runs: usize,
    /// Median time until the process returned.
    pub returned: Duration,
    /// Median time until its writes were durable, for a case that writes.
    pub durable: Option<Duration>,
    /// Highest peak resident memory seen, KiB (none for figures measured
    /// inside the bench process).
    pub peak_kib: Option<u64>,
    /// What else the run measured, shown beside the peer (bytes fetched).
    pub detail: Option<String>,
}

impl Figure {
    /// A figure measured by timing a library call inside the bench process
    /// (no peer, no process of its own to weigh).
    pub fn in_process(peer: &str, runs: usize, returned: Duration) -> Figure {
        Figure {
            peer: peer.to_owned(),
            tool: format!("strata {} (library, in process)", env!("CARGO_PKG_VERSION")),
            runs,
            returned,
            durable: None,
            peak_kib: None,
            detail: None,
        }
    }
}

/// A peer left out of a case, and why (its result differs from Strata's).
#[derive(Clone, Debug)]
pub struct Excluded {
    /// Its name in the report.
    pub peer: String,
    /// The version of its program.
    pub tool: String,
    /// Why it does not count.
    pub why: String,
}

/// Prints `figures` and records them as case `case` of `group`, measured
/// on the file system holding `fs`, each with its provenance; `excluded`
/// peers are recorded as left out (the report says so beside the group's
/// table).
pub fn record(group: &str, case: &str, fs: &Path, figures: &[Figure], excluded: &[Excluded]) {
    let provenance = provenance::here(fs);
    let secs = |d: Duration| d.as_secs_f64();
    eprintln!("  {group}: {case}");
    let mut entries: Vec<Value> = figures
        .iter()
        .map(|f| {
            eprintln!(
                "    {:<48} returned {:.3}s{}{}",
                f.peer,
                secs(f.returned),
                f.durable
                    .map_or(String::new(), |d| format!(", durable {:.3}s", secs(d))),
                f.peak_kib
                    .map_or(String::new(), |k| format!(", peak {} MiB", k / 1024))
            );
            json!({
                "group": group,
                "case": case,
                "peer": f.peer,
                "tool": f.tool,
                "runs": f.runs,
                "returned": secs(f.returned),
                "durable": f.durable.map(secs),
                "peak_kib": f.peak_kib,
                "detail": f.detail,
                "provenance": provenance,
            })
        })
        .collect();
    for e in excluded {
        eprintln!("    {:<48} not counted: {}", e.peer, e.why);
        entries.push(json!({
            "group": group,
            "case": case,
            "peer": e.peer,
            "tool": e.tool,
            "excluded": e.why,
            "provenance": provenance,
        }));
    }
    store(group, entries);
}

/// Appends `entries` to `$STRATA_BENCH_RESULTS/<group>.json`, each
/// replacing one of the same case and peer.
fn store(group: &str, entries: Vec<Value>) {
    let dir = std::env::var_os("STRATA_BENCH_RESULTS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/strata-bench"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).expect("make the bench results directory");
    let file = dir.join(format!("{group}.json"));
    let mut list: Vec<Value> = std::fs::read(&file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    for e in entries {
        list.retain(|f| !(f["case"] == e["case"] && f["peer"] == e["peer"]));
        list.push(e);
    }
    let text = serde_json::to_string_pretty(&list).expect("figures as JSON");
    std::fs::write(&file, text + "\n").expect("write bench results");
}
