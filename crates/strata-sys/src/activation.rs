//! Sockets a service manager opened for this process (systemd's socket
//! activation): `LISTEN_PID` names this process and `LISTEN_FDS` counts
//! the descriptors it passed, from 3 up.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;

use crate::{SysError, SysResult};

/// The first descriptor a service manager passes.
const FIRST: i32 = 3;

/// The unix listening sockets passed to this process, in order; none when
/// the variables are absent or name another process. A passed descriptor
/// that is not a unix stream socket is an error naming it.
pub fn inherited_listeners() -> SysResult<Vec<UnixListener>> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    if !ours || count <= 0 {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for fd in FIRST..FIRST + count {
        let name = std::path::PathBuf::from(format!("/proc/self/fd/{fd}"));
        // SAFETY: the service manager passed descriptors FIRST..FIRST+count
        // to this process for it to own (LISTEN_PID is ours), and nothing
        // else in the process takes them: this runs once, at start-up.
        #[allow(unsafe_code)]
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)
            .map_err(|e| SysError::io("set close-on-exec on", &name, e))?;
        let listening = rustix::net::sockopt::socket_type(&owned)
            .is_ok_and(|t| t == rustix::net::SocketType::STREAM)
            && rustix::net::getsockname(&owned)
                .is_ok_and(|a| a.address_family() == rustix::net::AddressFamily::UNIX);
        if !listening {
            return Err(SysError::Refused {
                op: "serve on the passed descriptor",
                path: name,
                reason: "it is not a unix stream socket",
            });
        }
        out.push(UnixListener::from(owned));
    }
    Ok(out)
}
