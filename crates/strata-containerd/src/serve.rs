//! Serving the service on a unix socket until a shutdown signal: a stale
//! socket is replaced, a live one (another server) refused, the socket's
//! mode set before the first request, in-flight calls finished on
//! shutdown, the socket removed at the end.

use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use strata_api::containerd::services::snapshots::v1::snapshots_server::SnapshotsServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;

use crate::service::Service;

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The socket's path.
    pub socket: PathBuf,
    /// The socket's mode (0600 by default: containerd runs as root).
    pub mode: u32,
    /// The socket's group, when not the server's own (with a mode such as
    /// 0660, the users of that group may connect).
    pub group: Option<u32>,
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Another server answers on the socket.
    #[error("{}: another server is listening there", .0.display())]
    InUse(PathBuf),
    /// Something that is not a socket is in the way.
    #[error("{}: exists and is not a socket", .0.display())]
    NotASocket(PathBuf),
    /// A file-system or socket operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The socket.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed (the transport's own error, boxed so that
    /// no gRPC library's type is part of this API).
    #[error("serving {}: {source}", path.display())]
    Transport {
        /// The socket.
        path: PathBuf,
        /// The failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl strata_core::Classify for ServeError {
    fn kind(&self) -> strata_core::ErrorKind {
        match self {
            ServeError::InUse(_) | ServeError::NotASocket(_) => {
                strata_core::ErrorKind::AlreadyExists
            }
            ServeError::Io { source, .. } => strata_core::Classify::kind(source),
            ServeError::Transport { .. } => strata_core::ErrorKind::Internal,
        }
    }
}

/// Binds `path` with `mode` (and `group`, if given): a socket nobody
/// answers on is replaced; a live one or a file that is not a socket is
/// refused.
pub fn bind(path: &Path, mode: u32, group: Option<u32>) -> Result<UnixListener, ServeError> {
    let io = |op, source| ServeError::Io {
        op,
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => return Err(ServeError::NotASocket(path.to_owned())),
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(ServeError::InUse(path.to_owned())),
            Err(_) => {
                tracing::info!(socket = %path.display(), "replacing a stale socket");
                std::fs::remove_file(path).map_err(|e| io("remove stale socket", e))?;
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("stat", e)),
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io("create the socket's directory", e))?;
    // The socket listens from the moment it is bound, so it is bound where
    // only this user can reach it, given its mode, then renamed into place:
    // nobody can connect while it still has the umask's mode.
    let name = path
        .file_name()
        .map_or_else(|| "socket".into(), |n| n.to_string_lossy().into_owned());
    let staging = dir.join(format!(".{name}.{}.binding", std::process::id()));
    let staged = staging.join("socket");
    // What a killed process of the same pid left: at most the socket.
    let clear = || -> std::io::Result<()> {
        match std::fs::remove_file(&staged) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        match std::fs::remove_dir(&staging) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    };
    clear().map_err(|e| io("clear a staging directory", e))?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|e| io("create a staging directory", e))?;
    let bound = (|| {
        let listener = UnixListener::bind(&staged).map_err(|e| io("bind", e))?;
        if group.is_some() {
            std::os::unix::fs::chown(&staged, None, group).map_err(|e| io("chgrp", e))?;
        }
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
            .map_err(|e| io("chmod", e))?;
        std::fs::rename(&staged, path).map_err(|e| io("move the socket into place", e))?;
        Ok(listener)
    })();
    if let Err(e) = clear() {
        tracing::warn!(dir = %staging.display(), error = %e, "could not remove a staging directory");
    }
    bound
}

/// Serves `service` on `opts.socket` until `shutdown` completes, then
/// stops accepting, lets in-flight calls finish and removes the socket.
/// Calls are served concurrently.
pub async fn serve(
    service: Service,
    opts: &ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let listener = bind(&opts.socket, opts.mode, opts.group)?;
    serve_on(service, listener, &opts.socket, shutdown).await
}

/// Serves `service` on `listener` (bound at `socket`) until `shutdown`
/// completes; see [`serve`].
pub async fn serve_on(
    service: Service,
    listener: UnixListener,
    socket: &Path,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    tracing::info!(socket = %socket.display(), "serving containerd's snapshots API");
    let served = Server::builder()
        .add_service(SnapshotsServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    if let Err(e) = std::fs::remove_file(socket) {
        tracing::warn!(socket = %socket.display(), error = %e, "could not remove the socket");
    }
    served.map_err(|source| ServeError::Transport {
        path: socket.to_owned(),
        source: Box::new(source),
    })
}

/// A future that completes on SIGINT or SIGTERM. The handlers are installed
/// when this is called (inside a Tokio runtime), not when the future is
/// first polled, so a signal that comes while the socket is being bound
/// still shuts the server down cleanly.
pub fn signalled() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        let (Ok(mut int), Ok(mut term)) = handlers else {
            tracing::error!("cannot listen for SIGINT and SIGTERM");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        }
    }
}
