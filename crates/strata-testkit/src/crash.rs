//! The harness of the SIGKILL crash tests. A test binary (without the libtest
//! harness) is both the parent and, re-executed with `--child DIR SEED`, the
//! child. The parent kills the child at random instants, many times, and
//! checks the state after each kill; the child appends what it saw succeed to
//! an acknowledgement log, fsynced, so the parent knows what must survive.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// The whole `main` of a crash test: the child's loop when this process is
/// the child, else the parent's kill loop.
pub fn run(
    name: &str,
    max_ms: u64,
    child: impl FnOnce(&Path, u64),
    verify: impl FnMut(&Path, usize) -> usize,
) {
    match child_args() {
        Some((dir, seed)) => child(&dir, seed),
        None => kill_loop(name, max_ms, verify),
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
/// start child, sleep a random 5 to `max_ms` milliseconds, SIGKILL, then
/// `verify(dir, round)`, which returns how many acknowledged objects it
/// found intact. Prints a libtest-style summary line.
fn kill_loop(name: &str, max_ms: u64, mut verify: impl FnMut(&Path, usize) -> usize) {
    if std::env::args().any(|a| a == "--list") {
        println_out(&format!("{name}: test"));
        return;
    }
    let rounds: usize = std::env::var("STRATA_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    println_out(&format!("{name}: {rounds} rounds, seed {seed}"));
    let mut rng = Rng::new(seed);
    let exe = std::env::current_exe().expect("own executable");
    let mut live = 0;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .arg("--child")
            .arg(dir)
            .arg(seed.wrapping_add(round as u64).to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("start child");
        // Random instants spread over opening, writing, committing and
        // removing; the sleep is the experiment, not synchronisation.
        std::thread::sleep(Duration::from_millis(5 + rng.below(max_ms)));
        child.kill().expect("kill child");
        let status = child.wait().expect("reap child");
        assert!(
            status.code().is_none(),
            "round {round}: child exited by itself: {status}"
        );
        live = verify(dir, round);
    }
    println_out(&format!(
        "{name}: {live} acknowledged objects intact after {rounds} kills"
    ));
    println_out("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}

fn println_out(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("write to stdout");
}
