//! The server: both APIs on every socket, one thread per command.

use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use futures_util::stream;
use strata_api::containerd::services::snapshots::v1::snapshots_server::SnapshotsServer;
use strata_api::strata::daemon::v1 as wire;
use strata_api::strata::daemon::v1::daemon_server::{Daemon, DaemonServer};
use strata_api::strata::daemon::v1::run_input::Input;
use strata_api::strata::daemon::v1::run_output::Output;
use strata_leases::OpCtx;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};

pub use strata_containerd::ServeError;

use crate::{API_VERSION, Identity, Invocation, Io, Runner};

/// One socket to serve on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    /// Its path.
    pub path: PathBuf,
    /// Its mode.
    pub mode: u32,
    /// Its group, when not the daemon's own.
    pub group: Option<u32>,
}

/// The id of group `name` (a number, or a name in `/etc/group`).
pub fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    let groups = std::fs::read_to_string("/etc/group")
        .map_err(|e| format!("cannot read /etc/group to find group {name:?}: {e}"))?;
    groups
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(n, _)| *n == name)
        .and_then(|(_, id)| id.parse().ok())
        .ok_or_else(|| format!("no group {name:?} in /etc/group"))
}

/// Serves containerd's snapshots API (`snapshots`) and the daemon API
/// (commands run by `runner`) on every socket in `listen`, and on those a
/// service manager passed (systemd's socket activation: `LISTEN_PID`,
/// `LISTEN_FDS`), until `shutdown` completes; then stops accepting, lets
/// the calls in flight finish and removes the sockets it bound.
pub async fn serve(
    snapshots: strata_containerd::Service,
    runner: Arc<dyn Runner>,
    identity: Identity,
    listen: &[Listen],
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let mut incoming = Vec::new();
    // Sockets a service manager opened for this process (socket
    // activation) are served too; they stay when the daemon stops.
    let activation = |source| ServeError::Io {
        op: "serve the sockets passed in",
        path: PathBuf::from("LISTEN_FDS"),
        source,
    };
    let passed = strata_sys::activation::inherited_listeners()
        .map_err(|e| activation(std::io::Error::other(e)))?;
    for l in passed {
        l.set_nonblocking(true).map_err(activation)?;
        let l = tokio::net::UnixListener::from_std(l).map_err(activation)?;
        tracing::info!(socket = ?l.local_addr().ok(), "serving a passed socket");
        incoming.push(UnixListenerStream::new(l));
    }
    for l in listen {
        let listener = strata_containerd::bind(&l.path, l.mode, l.group)?;
        tracing::info!(socket = %l.path.display(), "serving");
        incoming.push(UnixListenerStream::new(listener));
    }
    let daemon = Service {
        runner,
        identity,
        started: Instant::now(),
        counts: Arc::default(),
    };
    let served = Server::builder()
        .add_service(SnapshotsServer::new(snapshots))
        .add_service(DaemonServer::new(daemon))
        .serve_with_incoming_shutdown(stream::select_all(incoming), shutdown)
        .await;
    for l in listen {
        if let Err(e) = std::fs::remove_file(&l.path) {
            tracing::warn!(socket = %l.path.display(), error = %e, "could not remove the socket");
        }
    }
    served.map_err(|source| ServeError::Transport {
        path: listen.first().map(|l| l.path.clone()).unwrap_or_default(),
        source: Box::new(source),
    })
}

/// Commands running now and run so far.
#[derive(Debug, Default)]
struct Counts {
    running: AtomicU64,
    served: AtomicU64,
}

struct Service {
    runner: Arc<dyn Runner>,
    identity: Identity,
    started: Instant,
    counts: Arc<Counts>,
}

/// What a command's streams send: in order, to one forwarding thread.
type Sink = std_mpsc::SyncSender<Output>;

#[tonic::async_trait]
impl Daemon for Service {
    async fn info(
        &self,
        _request: Request<wire::InfoRequest>,
    ) -> Result<Response<wire::InfoResponse>, Status> {
        Ok(Response::new(wire::InfoResponse {
            version: self.identity.version.clone(),
            api_version: API_VERSION,
            root: self.identity.root.to_string_lossy().into_owned(),
            backend: self.identity.backend.clone(),
            pid: std::process::id(),
            running: self.counts.running.load(Ordering::Relaxed),
            served: self.counts.served.load(Ordering::Relaxed),
            uptime_seconds: self.started.elapsed().as_secs(),
        }))
    }

    type RunStream = ReceiverStream<Result<wire::RunOutput, Status>>;

    async fn run(
        &self,
        request: Request<Streaming<wire::RunInput>>,
    ) -> Result<Response<Self::RunStream>, Status> {
        let mut inbound = request.into_inner();
        let invocation = match inbound.message().await?.and_then(|m| m.input) {
            Some(Input::Command(c)) => invocation(c)?,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be the command",
                ));
            }
        };
        let (tx, rx) = mpsc::channel(16);
        let ctx = OpCtx::new();
        // A client that goes away (its end of the stream dropped) cancels
        // the command's operations.
        let watched = tx.clone();
        let cancel = ctx.clone();
        tokio::spawn(async move {
            watched.closed().await;
            cancel.cancel();
        });
        // The client's standard input, as it sends it.
        let (stdin_tx, stdin_rx) = std_mpsc::channel();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                let chunk = match msg.input {
                    Some(Input::Stdin(b)) => Some(b),
                    Some(Input::StdinClosed(_)) => None,
                    _ => continue,
                };
                if stdin_tx.send(chunk).is_err() {
                    break;
                }
            }
        });
        // The command's writes go, in order, through a bounded channel to a
        // thread that hands them to the response stream; a slow client
        // slows its own command only.
        let (sink, outputs) = std_mpsc::sync_channel::<Output>(16);
        std::thread::Builder::new()
            .name("strata-forward".into())
            .spawn(move || {
                for output in outputs {
                    let msg = wire::RunOutput {
                        output: Some(output),
                    };
                    if tx.blocking_send(Ok(msg)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Status::resource_exhausted(format!("start a thread: {e}")))?;
        let io = Io {
            stdout: Box::new(std::io::BufWriter::with_capacity(
                64 << 10,
                Chunks {
                    sink: sink.clone(),
                    stdout: true,
                },
            )),
            stderr: Box::new(Chunks {
                sink: sink.clone(),
                stdout: false,
            }),
            stdin: Box::new(Stdin {
                sink: sink.clone(),
                asked: false,
                chunks: stdin_rx,
                pending: Vec::new(),
                at: 0,
            }),
            ctx,
        };
        let runner = Arc::clone(&self.runner);
        let counts = Arc::clone(&self.counts);
        counts.served.fetch_add(1, Ordering::Relaxed);
        counts.running.fetch_add(1, Ordering::Relaxed);
        std::thread::Builder::new()
            .name("strata-command".into())
            .spawn(move || {
                let code = run_one(&*runner, invocation, io);
                counts.running.fetch_sub(1, Ordering::Relaxed);
                let _ = sink.send(Output::Exit(code.into()));
            })
            .map_err(|e| {
                // The command never ran.
                self.counts.running.fetch_sub(1, Ordering::Relaxed);
                Status::resource_exhausted(format!("start a thread: {e}"))
            })?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The invocation a `Command` message describes.
fn invocation(c: wire::Command) -> Result<Invocation, Status> {
    let cwd = PathBuf::from(std::ffi::OsString::from_vec(c.cwd));
    if !cwd.is_absolute() {
        return Err(Status::invalid_argument(format!(
            "the working directory {} is not absolute",
            cwd.display()
        )));
    }
    Ok(Invocation {
        args: c
            .args
            .into_iter()
            .map(std::ffi::OsString::from_vec)
            .collect(),
        cwd,
        umask: c.umask,
        stderr_terminal: c.stderr_terminal,
        terminal_width: u16::try_from(c.terminal_width).unwrap_or(u16::MAX),
    })
}

/// Runs one command on this thread, in the client's working directory and
/// umask; its exit code. The streams are dropped (standard output flushed)
/// when the runner returns, before the exit code is sent.
fn run_one(runner: &dyn Runner, invocation: Invocation, mut io: Io) -> u8 {
    let entered =
        strata_sys::thread::own_working_directory(&invocation.cwd, Some(invocation.umask));
    if let Err(e) = entered {
        let _ = writeln!(
            io.stderr,
            "strata: the daemon cannot enter your working directory: {e}"
        );
        return 1;
    }
    runner.run(invocation, io)
}

/// A writer whose chunks go to the client as standard output or error.
struct Chunks {
    sink: Sink,
    stdout: bool,
}

impl Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let chunk = buf.to_vec();
        let output = if self.stdout {
            Output::Stdout(chunk)
        } else {
            Output::Stderr(chunk)
        };
        self.sink.send(output).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The client's standard input: asked for on the first read.
struct Stdin {
    sink: Sink,
    asked: bool,
    chunks: std_mpsc::Receiver<Option<Vec<u8>>>,
    pending: Vec<u8>,
    at: usize,
}

impl Read for Stdin {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.asked {
            self.asked = true;
            self.sink.send(Output::WantStdin(true)).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
            })?;
        }
        while self.at == self.pending.len() {
            match self.chunks.recv() {
                Ok(Some(chunk)) => {
                    self.pending = chunk;
                    self.at = 0;
                }
                Ok(None) => return Ok(0),
                // Not an end of input: a truncated input must not pass
                // for a whole one.
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the client went away before its input ended",
                    ));
                }
            }
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
