//! The harness of the SIGKILL crash tests. A test binary (without the libtest
//! harness) is both the parent and, re-executed with `--child DIR SEED`, the
//! child. The parent kills the child many times and checks the state after
//! each kill; the child appends what it saw succeed to an acknowledgement
//! log, fsynced, so the parent knows what must survive.
//!
//! The child names the phase it is in ([`Phase::enter`]); the parent aims
//! each round's kill at one phase in turn (waits until the child is in it,
//! then kills after a random few hundred microseconds), reads where the
//! kill landed, and fails when some phase was never hit. The seed is
//! printed; `STRATA_CRASH_SEED` replays a run.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A small xorshift generator: reproducible from the printed seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// The next raw value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The acknowledgement log in a test directory: `+NAME` for what now exists,
/// `-NAME` for what is about to go (logged before it goes, so a kill after
/// the removal cannot look like a loss).
#[derive(Debug)]
pub struct AckLog {
    path: PathBuf,
}

impl AckLog {
    /// The log of `dir`.
    pub fn new(dir: &Path) -> AckLog {
        AckLog {
            path: dir.join("acked"),
        }
    }

    fn append(&self, line: &str) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .expect("open ack log");
        // One write per line; a kill can still tear it, which `live` drops.
        f.write_all(format!("{line}\n").as_bytes())
            .expect("append ack");
        f.sync_data().expect("sync ack log");
    }

    /// Records that `name` now exists.
    pub fn added(&self, name: &str) {
        self.append(&format!("+{name}"));
    }

    /// Records that `name` is about to be removed.
    pub fn removing(&self, name: &str) {
        self.append(&format!("-{name}"));
    }

    /// What must exist: added and not removed. A torn last line (cut by the
    /// kill before its fsync) is dropped from the file too, so the next
    /// child's lines start cleanly.
    pub fn live(&self) -> BTreeSet<String> {
        let log = fs::read_to_string(&self.path).unwrap_or_default();
        let complete = log.rfind('\n').map_or("", |end| &log[..=end]);
        if complete.len() != log.len() {
            fs::write(&self.path, complete).expect("truncate torn ack");
        }
        let mut live = BTreeSet::new();
        for line in complete.lines() {
            let (op, name) = line.split_at(1);
            if op == "+" {
                live.insert(name.to_owned());
            } else {
                live.remove(name);
            }
        }
        live
    }
}

/// The phase the child is in, written where the parent reads it (no
/// fsync: a SIGKILL keeps the page cache).
#[derive(Debug)]
pub struct Phase {
    file: File,
}

const PHASE_LEN: usize = 32;

impl Phase {
    /// The phase marker of the test directory `dir`.
    pub fn new(dir: &Path) -> Phase {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join("phase"))
            .expect("open the phase marker");
        Phase { file }
    }

    /// Says the child is now in `name` (at most 32 bytes).
    pub fn enter(&self, name: &str) {
        let mut buf = [b' '; PHASE_LEN];
        buf[..name.len()].copy_from_slice(name.as_bytes());
        self.file.write_all_at(&buf, 0).expect("write the phase");
    }

    fn read(dir: &Path) -> String {
        fs::read(dir.join("phase"))
            .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
            .unwrap_or_default()
    }
}

/// Asserts that a check after the kill of `round` found nothing.
#[track_caller]
pub fn assert_none<T: std::fmt::Debug>(round: usize, check: &str, problems: &[T]) {
    assert!(problems.is_empty(), "round {round}: {check}: {problems:?}");
}

/// The whole `main` of a crash test: the child's loop when this process is
/// the child, else the parent's kill loop, aiming at each of `phases` in
/// turn (the names the child passes to [`Phase::enter`]).
pub fn run(
    name: &str,
    max_ms: u64,
    phases: &[&str],
    child: impl FnOnce(&Path, u64),
    verify: impl FnMut(&Path, usize) -> usize,
) {
    run_at(None, name, max_ms, phases, child, verify);
}

/// True in the child process of a crash test (what a test that prepares
/// something for the parent only, such as a file system, asks first).
pub fn is_child() -> bool {
    child_args().is_some()
}

/// [`run`] with the test's directory made inside `base` (a file system the
/// test set up), not the system's temporary directory.
pub fn run_in(
    base: &Path,
    name: &str,
    max_ms: u64,
    phases: &[&str],
    child: impl FnOnce(&Path, u64),
    verify: impl FnMut(&Path, usize) -> usize,
) {
    run_at(Some(base), name, max_ms, phases, child, verify);
}

fn run_at(
    base: Option<&Path>,
    name: &str,
    max_ms: u64,
    phases: &[&str],
    child: impl FnOnce(&Path, u64),
    verify: impl FnMut(&Path, usize) -> usize,
) {
    match child_args() {
        Some((dir, seed)) => child(&dir, seed),
        None => kill_loop(name, max_ms, phases, base, verify),
    }
}

/// `Some((dir, seed))` when this process is the child.
fn child_args() -> Option<(PathBuf, u64)> {
    let args: Vec<String> = std::env::args().collect();
    let pos = args.iter().position(|a| a == "--child")?;
    Some((
        PathBuf::from(&args[pos + 1]),
        args[pos + 2].parse().expect("child seed"),
    ))
}

/// Runs the parent side: `STRATA_CRASH_ROUNDS` (default 40) rounds of
/// start child, wait until it is in the round's phase (or, without phases,
/// a random 5 to `max_ms` milliseconds), SIGKILL after a random 0 to 500
/// microseconds more, then `verify(dir, round)`, which returns how many
/// acknowledged objects it found intact. Prints where the kills landed and
/// a libtest-style summary line; fails when a phase was never hit.
fn kill_loop(
    name: &str,
    max_ms: u64,
    phases: &[&str],
    base: Option<&Path>,
    mut verify: impl FnMut(&Path, usize) -> usize,
) {
    if std::env::args().any(|a| a == "--list") {
        println_out(&format!("{name}: test"));
        return;
    }
    let rounds: usize = std::env::var("STRATA_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let tmp = match base {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let dir = tmp.path();
    let seed = std::env::var("STRATA_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64
        });
    println_out(&format!(
        "{name}: {rounds} rounds, seed {seed} (STRATA_CRASH_SEED={seed} replays it)"
    ));
    let mut rng = Rng::new(seed);
    let exe = std::env::current_exe().expect("own executable");
    let mut live = 0;
    let mut landed: BTreeMap<String, usize> = BTreeMap::new();
    // Every phase must see a kill: a phase no kill has landed in yet is
    // aimed at first, and killed the moment the child enters it (a short
    // phase is over before a random delay ends on a loaded machine); then
    // the phases in turn, at a random instant inside. A few extra rounds
    // are allowed for phases still missed at the end.
    let aiming = rounds >= phases.len() * 2;
    let limit = rounds + if aiming { 4 * phases.len() } else { 0 };
    let unlanded = |landed: &BTreeMap<String, usize>| {
        phases.iter().find(|p| !landed.contains_key(**p)).copied()
    };
    let mut round = 0;
    while round < rounds || (round < limit && unlanded(&landed).is_some()) {
        Phase::new(dir).enter("start");
        let mut child = Command::new(&exe)
            .arg("--child")
            .arg(dir)
            .arg(seed.wrapping_add(round as u64).to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("start child");
        let target = unlanded(&landed)
            .filter(|_| aiming)
            .map(|p| (p, true))
            .or_else(|| phases.get(round % phases.len().max(1)).map(|p| (*p, false)));
        match target {
            Some((target, first)) => {
                // Bounded: a phase the child never reaches is reported below.
                let deadline = Instant::now() + Duration::from_millis(20 * max_ms.max(100));
                while Phase::read(dir) != target && Instant::now() < deadline {
                    std::thread::yield_now();
                }
                if !first {
                    std::thread::sleep(Duration::from_micros(rng.below(500)));
                }
            }
            None => std::thread::sleep(Duration::from_millis(5 + rng.below(max_ms))),
        }
        child.kill().expect("kill child");
        let status = child.wait().expect("reap child");
        assert!(
            status.code().is_none(),
            "round {round}: child exited by itself: {status}"
        );
        *landed.entry(Phase::read(dir)).or_default() += 1;
        live = verify(dir, round);
        round += 1;
    }
    println_out(&format!("{name}: kills landed in {landed:?}"));
    let missed: Vec<&&str> = phases
        .iter()
        .filter(|p| !landed.contains_key(**p))
        .collect();
    assert!(
        !aiming || missed.is_empty(),
        "{name}: no kill landed in {missed:?} (landed: {landed:?}; seed {seed})"
    );
    println_out(&format!(
        "{name}: {live} acknowledged objects intact after {round} kills"
    ));
    let landed_in: Vec<String> = phases
        .iter()
        .map(|p| format!("{p} {}", landed.get(*p).copied().unwrap_or(0)))
        .chain(
            landed
                .iter()
                .filter(|(p, _)| !phases.contains(&p.as_str()))
                .map(|(p, n)| format!("{p} {n}")),
        )
        .collect();
    crate::reliability::record(
        "crash",
        name,
        dir,
        &[
            ("test", name.to_owned()),
            ("build", crate::reliability::build().to_owned()),
            ("kills, each verified", round.to_string()),
            ("kills landed (per phase)", landed_in.join(", ")),
            ("acknowledged objects intact at the end", live.to_string()),
        ],
    );
    println_out("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}

fn println_out(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("write to stdout");
}
