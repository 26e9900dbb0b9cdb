//! A working directory and umask of the calling thread's own.
//!
//! The working directory and umask belong to the process, shared by all its
//! threads, unless a thread unshares its file-system context
//! (`unshare(CLONE_FS)`). Threads it starts afterwards share its new
//! context, so a thread that does this and then builds a runtime gives the
//! whole runtime the same view. The legacy overlay mount uses this to name
//! lower directories by short relative paths; the daemon uses it to run a
//! client's command in the client's working directory.

use std::path::Path;

use rustix::fs::Mode;
use rustix::thread::UnshareFlags;

use crate::{SysError, SysResult};

/// Gives the calling thread (and the threads it starts from now on) a
/// working directory of its own, `dir`, and its own umask (`umask`, or a
/// copy of the current one). Other threads keep theirs.
pub fn own_working_directory(dir: &Path, umask: Option<u32>) -> SysResult<()> {
    // SAFETY: only the file-system context (working directory, root,
    // umask) is unshared, and only for this thread; no file descriptor
    // table is unshared, so every fd stays valid for every thread.
    #[allow(unsafe_code)]
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::FS) }
        .map_err(|e| SysError::io("unshare working directory for", dir, e))?;
    rustix::process::chdir(dir).map_err(|e| SysError::io("chdir", dir, e))?;
    if let Some(umask) = umask {
        rustix::process::umask(Mode::from_bits_truncate(umask & 0o777));
    }
    Ok(())
}

/// The calling thread's umask, read from `/proc/thread-self/status`
/// (setting it to read it back would race with other threads).
pub fn umask() -> SysResult<u32> {
    let path = Path::new("/proc/thread-self/status");
    let status = std::fs::read_to_string(path).map_err(|e| SysError::io("read", path, e))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .ok_or(SysError::Refused {
            op: "read the umask from",
            path: path.to_owned(),
            reason: "it has no Umask line",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_gets_its_own_directory_and_umask() {
        let dir = tempfile::tempdir().unwrap();
        let before = std::env::current_dir().unwrap();
        let umask = umask().unwrap();
        let (seen, child_seen, mode) = std::thread::spawn({
            let dir = dir.path().to_owned();
            move || {
                own_working_directory(&dir, Some(0o077)).unwrap();
                assert_eq!(super::umask().unwrap(), 0o077);
                // A thread started from here shares the new context.
                let child = std::thread::spawn(|| std::env::current_dir().unwrap())
                    .join()
                    .unwrap();
                std::fs::write("made", b"x").unwrap();
                let mode = std::os::unix::fs::PermissionsExt::mode(
                    &std::fs::metadata("made").unwrap().permissions(),
                );
                (std::env::current_dir().unwrap(), child, mode)
            }
        })
        .join()
        .unwrap();
        let dir = dir.path().canonicalize().unwrap();
        assert_eq!(seen, dir);
        assert_eq!(child_seen, dir);
        assert_eq!(mode & 0o777, 0o600);
        assert!(dir.join("made").exists());
        // The rest of the process is untouched.
        assert_eq!(std::env::current_dir().unwrap(), before);
        assert_eq!(super::umask().unwrap(), umask);
    }
}
