//! Strata's daemon: one process owns a state root and serves it to many
//! clients at once.
//!
//! A root belongs to one process at a time (its metadata has a single
//! writer). [`serve`] makes that process a server: on each of its unix
//! sockets it answers containerd's snapshots API (the proxy snapshotter of
//! `strata-containerd`) and Strata's own daemon API
//! (`strata.daemon.v1`, in `strata-api`), whose `Run` call runs one
//! command of the command line against the root. Each command runs on a
//! thread of its own, in the client's working directory and umask
//! ([`strata_sys::thread::own_working_directory`]), with its standard
//! streams carried over the call, so independent commands run side by side
//! and one slow command never holds up another. A client that goes away
//! cancels its command's operation context ([`strata_leases::OpCtx`]).
//!
//! What a command *is* belongs to the caller: the daemon hands the command
//! line to a [`Runner`] (the `strata` binary's own dispatcher), so output,
//! JSON shapes, exit codes and progress bars are the command line's by
//! construction. [`Client`] is the other end.
//!
//! No tonic or prost type is part of this crate's API.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod server;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;

pub use client::{ANSWER_WITHIN, Client, DaemonError, Info};
pub use server::{Listen, ServeError, group_id, serve};
pub use strata_containerd::signalled;

/// The daemon API's version (the `v1` of `strata.daemon.v1`).
pub const API_VERSION: u32 = 1;

/// One command line sent by a client, and the terminal it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    /// The arguments after the program name.
    pub args: Vec<OsString>,
    /// The client's working directory (absolute).
    pub cwd: PathBuf,
    /// The client's umask.
    pub umask: u32,
    /// Whether the client's standard error is a terminal.
    pub stderr_terminal: bool,
    /// The terminal's width in columns (0: unknown).
    pub terminal_width: u16,
}

/// The standard streams and operation context of one command the daemon
/// runs: writes go to the client, reads come from it (asked for on the
/// first read), and the context is cancelled when the client goes away.
pub struct Io {
    /// The client's standard output (buffered; flushed when the command
    /// ends).
    pub stdout: Box<dyn Write + Send>,
    /// The client's standard error.
    pub stderr: Box<dyn Write + Send>,
    /// The client's standard input.
    pub stdin: Box<dyn Read + Send>,
    /// The command's operation context: cancelled when the client goes.
    pub ctx: strata_leases::OpCtx,
}

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Io")
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

/// What runs a command line against the daemon's root: the `strata`
/// binary's dispatcher. Called on a thread of the command's own (which may
/// block and may build a runtime), already in the client's working
/// directory; returns the exit code.
pub trait Runner: Send + Sync + 'static {
    /// Runs `invocation` with `io`; the exit code.
    fn run(&self, invocation: Invocation, io: Io) -> u8;
}

/// Who serves: what [`Client::info`] reports about the daemon.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The daemon's version.
    pub version: String,
    /// The root it owns (absolute).
    pub root: PathBuf,
    /// The root's backend.
    pub backend: String,
}

/// Where the daemon of a root listens by default: `run/strata.sock` inside
/// the root (which only the root's owner can enter).
pub fn default_socket(root: &std::path::Path) -> PathBuf {
    root.join("run").join("strata.sock")
}

// The README's example compiles and runs as a doc test, so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
