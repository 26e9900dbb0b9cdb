//! Driving the `strata` binary as a user would: a fresh root per test,
//! commands with their stdout, stderr and exit code. The binary is the one
//! `$STRATA_BIN` names, else the one Cargo builds for this test run (see
//! [`strata`]), so it is never stale.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Stops process `pid` unless dropped within `limit` (SIGTERM, so it can
/// clean up, then SIGKILL 5 s later), so a wait on its output that would
/// never end ends instead (the output closes). The process must not be
/// waited for (reaped) while this lives: its PID could be another's.
#[derive(Debug)]
pub struct KillAfter {
    done: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KillAfter {
    /// Starts the clock for `pid`.
    pub fn new(pid: u32, limit: Duration) -> KillAfter {
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let timed_out = |limit| {
                matches!(
                    wait.recv_timeout(limit),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                )
            };
            for (signal, after) in [("-TERM", limit), ("-KILL", Duration::from_secs(5))] {
                if !timed_out(after) {
                    return;
                }
                eprintln!("process {pid} outlived its limit of {limit:?}: kill {signal}");
                let _ = Command::new("kill")
                    .args([signal, &pid.to_string()])
                    .status();
            }
        });
        KillAfter {
            done: Some(done),
            thread: Some(thread),
        }
    }
}

impl Drop for KillAfter {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The `strata` binary under test. `$STRATA_BIN` when set (a release build,
/// a binary copied into a VM); else `cargo build -p strata-cli --bin
/// strata` is run once per test process and the executable Cargo reports
/// is used. Tests outside `strata-cli` cannot have Cargo's
/// `CARGO_BIN_EXE_strata`, and asking Cargo keeps the binary current.
pub fn strata() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var_os("STRATA_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| built("strata-cli", "strata"))
    })
}

/// The fault-injecting `LD_PRELOAD` library (the `strata-fault-shim`
/// crate), built by Cargo once per test process. See [`Env::run_faulty`].
pub fn fault_shim() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| built("strata-fault-shim", "strata_fault_shim"))
}

/// The executable of `package`'s integration test `target`, built by
/// Cargo (to run it somewhere else: in a user namespace, say).
pub fn test_binary(package: &str, target: &str) -> PathBuf {
    cargo_artifact(
        &["test", "--no-run", "-p", package, "--test", target],
        target,
    )
}

/// Builds `package` and returns the file Cargo made for its target
/// `target`: the executable of a binary, the shared object of a cdylib.
fn built(package: &str, target: &str) -> PathBuf {
    cargo_artifact(&["build", "-p", package], target)
}

/// Runs `cargo ARGS` and returns the file it made for `target`.
fn cargo_artifact(args: &[&str], target: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(args)
        .args(["--quiet", "--message-format=json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo");
    assert!(out.status.success(), "cargo {} failed", args.join(" "));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == target)
        .find_map(|m| {
            m["executable"].as_str().map(PathBuf::from).or_else(|| {
                m["filenames"]
                    .as_array()?
                    .iter()
                    .filter_map(|f| f.as_str())
                    .find(|f| f.ends_with(".so"))
                    .map(PathBuf::from)
            })
        })
        .unwrap_or_else(|| panic!("cargo {} reported no file for {target}", args.join(" ")))
}

/// A fresh state root in a temporary directory.
#[derive(Debug)]
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    bin: PathBuf,
}

/// What a command did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    /// Stdout as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stdout parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.text()))
    }

    /// Asserts the exit code, showing stderr when it differs.
    #[track_caller]
    pub fn expect(self, code: i32) -> Run {
        assert_eq!(self.code, code, "exit code; stderr: {}", self.stderr);
        self
    }
}

impl Env {
    /// A fresh root for the binary at `bin`.
    pub fn new(bin: impl Into<PathBuf>) -> Env {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path().join("root");
        Env {
            tmp,
            root,
            bin: bin.into(),
        }
    }

    /// A fresh root for the binary under test ([`strata`]).
    pub fn strata() -> Env {
        Env::new(strata())
    }

    /// The binary this environment runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// A command for `strata --root <root> ARGS...`.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Runs `strata --root <root> ARGS...` to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        finish(self.cmd(args).output().expect("run strata"))
    }

    /// `strata image import SOURCE --name NAME`, which must succeed: the
    /// image's top ref id.
    pub fn import(&self, source: &str, name: &str) -> String {
        let got = self
            .run(&["--json", "image", "import", source, "--name", name])
            .expect(0)
            .json();
        got["ref"]
            .as_str()
            .unwrap_or_else(|| panic!("image import printed no ref: {got}"))
            .to_owned()
    }

    /// The layers `strata image inspect NAME` lists, which must succeed.
    pub fn image_layers(&self, name: &str) -> Vec<serde_json::Value> {
        let got = self
            .run(&["--json", "image", "inspect", name])
            .expect(0)
            .json();
        match got["layers"].as_array() {
            Some(layers) => layers.clone(),
            None => panic!("image inspect listed no layers: {got}"),
        }
    }

    /// Starts `strata content ingest -` with `bytes` on its stdin (left
    /// open) and returns once its ingest exists, so the process holds the
    /// root and a partial ingest is on disk. Closing the returned stdin lets
    /// the ingest finish; killing the child leaves the partial ingest.
    pub fn ingest_in_progress(&self, bytes: &[u8]) -> (Child, ChildStdin) {
        let mut child = self
            .cmd(&["content", "ingest", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start strata content ingest -");
        let mut stdin = child.stdin.take().expect("the child's stdin");
        stdin.write_all(bytes).expect("feed the ingest");
        stdin.flush().expect("flush the ingest's input");
        // The process opens the root, takes its lock, records the ingest
        // (directory, data file, then its row) and only then reads stdin:
        // once the data file holds the bytes, the ingest is recorded and
        // the process holds the root. Bounded.
        let ingest = self.root.join("content/ingest");
        let fed = || {
            ingest.read_dir().is_ok_and(|d| {
                d.flatten().any(|e| {
                    std::fs::metadata(e.path().join("data"))
                        .is_ok_and(|m| m.len() == bytes.len() as u64)
                })
            })
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !fed() {
            assert!(
                child.try_wait().expect("poll the ingest").is_none(),
                "the ingest exited early"
            );
            assert!(Instant::now() < deadline, "the ingest never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        (child, stdin)
    }

    /// Runs `strata --root <root> ARGS...` with the fault shim preloaded
    /// and `plan` as its `STRATA_FAULTS` (see the `strata-fault-shim`
    /// crate: `CALL:PATH-SUBSTRING[:AFTER[:ERRNO]]`, `;`-separated).
    /// Returns the run and the faults the shim injected, one line each.
    pub fn run_faulty(&self, plan: &str, args: &[&str]) -> (Run, Vec<String>) {
        let log = self.path("faults.log");
        let _ = std::fs::remove_file(&log);
        let out = self
            .cmd(args)
            .env("LD_PRELOAD", fault_shim())
            .env("STRATA_FAULTS", plan)
            .env("STRATA_FAULTS_LOG", &log)
            .output()
            .expect("run strata");
        let injected = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        (finish(out), injected)
    }

    /// Writes `files` (name, contents) into the mutable ref `id` through a
    /// writable mount (`strata mount --rw`, then `strata umount`).
    pub fn write_through_mount(&self, id: &str, files: &[(&str, &str)]) {
        let dir = self.path(&format!("mnt-{id}"));
        std::fs::create_dir_all(&dir).expect("mount point");
        let d = dir.display().to_string();
        self.run(&["mount", id, &d, "--rw"]).expect(0);
        for (name, data) in files {
            std::fs::write(dir.join(name), data).expect("write through the mount");
        }
        self.run(&["umount", &d]).expect(0);
    }

    /// A path inside the test's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Starts `strata --root <root> serve ARGS...` and returns once it
    /// answers (`serve --check`), so every later command on this root runs
    /// through it. Bounded.
    pub fn serve(&self, args: &[&str]) -> Daemon {
        let log = self.path("serve.log");
        let mut child = Command::new(&self.bin)
            .arg("--root")
            .arg(&self.root)
            .arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("daemon log"))
            .spawn()
            .expect("start strata serve");
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.run(&["serve", "--check"]).code != 0 {
            if let Some(status) = child.try_wait().expect("poll the daemon") {
                panic!(
                    "strata serve exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "strata serve never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { child, log }
    }
}

/// A running `strata serve`; killed if still running when dropped.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for it to exit: its exit code and log.
    pub fn stop(mut self) -> (i32, String) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        let status = self.child.wait().expect("wait for the daemon");
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        (status.code().unwrap_or(-1), log)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Converts a finished process's output.
pub fn finish(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
