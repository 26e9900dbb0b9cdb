//! Driving the `strata` binary as a user would: a fresh root per test,
//! commands with their stdout, stderr and exit code. Tests pass the binary
//! Cargo built for them (`env!("CARGO_BIN_EXE_strata")`), so it is never
//! stale.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

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

    /// A path inside the test's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
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
