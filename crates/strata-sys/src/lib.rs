//! The one crate that talks to the kernel directly. Everything that could let
//! hostile data reach outside a snapshot (path resolution, links, device
//! nodes, xattrs, mounts, removal) goes through the narrow, fd-based API here,
//! so the rules of SECURITY.md are enforced in one place:
//!
//! * [`Root`] resolves every path inside a directory with
//!   `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` and never follows the
//!   final component.
//! * [`mount`] mounts and unmounts [`strata_core::Mount`] values, using the
//!   new mount API (`fsopen`/`fsconfig`/`fsmount`) for overlays so a chain can
//!   hold hundreds of lower directories.
//! * [`copy`] clones files with `FICLONE`, falling back to `copy_file_range`.
//! * [`lock`] holds `flock` locks; [`sync`] makes data and directories
//!   durable, and starts writeback early.
//! * [`thread`] gives a thread a working directory and umask of its own;
//!   [`activation`] takes the sockets a service manager passed.
//! * [`btrfs`] creates, snapshots, flips read-only and deletes subvolumes
//!   and reads their qgroups, with the file system's ioctls.
//!
//! It is built on `rustix`, whose safe wrappers cover nearly every syscall
//! needed; the `unsafe` blocks (`unshare(CLONE_FS)` for a thread that
//! needs a working directory of its own: the one mounting a legacy overlay
//! and the daemon's command threads, `sync_file_range`,
//! which rustix does not wrap, taking ownership of the sockets systemd
//! passed, and the six btrfs ioctls, one opcode and
//! argument type each, in one private module of [`btrfs`]) say why they
//! are sound.
//! It remains the only crate allowed any.
#![warn(missing_docs)]

pub mod activation;
pub mod btrfs;
pub mod copy;
pub mod errno;
mod error;
pub mod lock;
pub mod mount;
mod path;
mod root;
pub mod sync;
pub mod thread;

pub use error::{SysError, SysResult, machine_fault, short_path};
pub use path::{RelPath, clean};
pub use root::{At, FileKind, Metadata, Root, Times};

/// The effective user id of this process.
pub fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The effective group id of this process.
pub fn effective_gid() -> u32 {
    rustix::process::getegid().as_raw()
}

/// Bytes available to unprivileged users on the file system holding `path`.
pub fn free_space(path: &std::path::Path) -> SysResult<u64> {
    let st = rustix::fs::statvfs(path).map_err(|e| SysError::io("statvfs", path, e))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

// The README's examples compile and run as doc tests, so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
