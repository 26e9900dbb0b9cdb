//! The client: finding a daemon, asking who it is, running a command
//! through it.

use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use strata_api::strata::daemon::v1 as wire;
use strata_api::strata::daemon::v1::daemon_client::DaemonClient;
use strata_api::strata::daemon::v1::run_input::Input;
use strata_api::strata::daemon::v1::run_output::Output;
use strata_core::{Classify, ErrorKind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::Invocation;

/// Why talking to a daemon failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// Nothing answers on the socket.
    #[error("no strata daemon answers on {}: {source}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The failure (the transport's own error, boxed).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The daemon refused or failed the call.
    #[error("the strata daemon on {}: {message}", path.display())]
    Call {
        /// The socket.
        path: PathBuf,
        /// What it said.
        message: String,
    },
    /// Something accepts connections on the socket but does not answer.
    #[error("the strata daemon on {} does not answer (waited {}s)", path.display(), .waited.as_secs())]
    Silent {
        /// The socket.
        path: PathBuf,
        /// How long it was given.
        waited: Duration,
    },
    /// The daemon went away before the command ended.
    #[error("the strata daemon on {} went away before the command ended", .0.display())]
    Gone(PathBuf),
    /// Writing the command's output here failed.
    #[error("write the command's output: {0}")]
    Output(#[source] std::io::Error),
}

impl Classify for DaemonError {
    fn kind(&self) -> ErrorKind {
        match self {
            DaemonError::Connect { .. } | DaemonError::Silent { .. } | DaemonError::Gone(_) => {
                ErrorKind::Unavailable
            }
            DaemonError::Call { .. } => ErrorKind::Internal,
            DaemonError::Output(e) => Classify::kind(e),
        }
    }
}

/// What a daemon says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// Its version.
    pub version: String,
    /// Its API version.
    pub api_version: u32,
    /// The root it owns.
    pub root: PathBuf,
    /// The root's backend.
    pub backend: String,
    /// Its process id.
    pub pid: u32,
    /// Commands running now.
    pub running: u64,
    /// Commands run since it started.
    pub served: u64,
    /// How long it has been up.
    pub uptime: Duration,
}

/// How long [`Client::info`] waits for an answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// A connection to a daemon.
#[derive(Clone, Debug)]
pub struct Client {
    client: DaemonClient<Channel>,
    socket: PathBuf,
}

impl Client {
    /// Connects to the daemon on `socket` (failing at once when nothing
    /// answers there).
    pub async fn connect(socket: &Path) -> Result<Client, DaemonError> {
        let path = socket.to_owned();
        let channel = Endpoint::from_static("http://strata.invalid")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|source| DaemonError::Connect {
                path: socket.to_owned(),
                source: Box::new(source),
            })?;
        Ok(Client {
            client: DaemonClient::new(channel),
            socket: socket.to_owned(),
        })
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn call_error(&self, status: &tonic::Status) -> DaemonError {
        DaemonError::Call {
            path: self.socket.clone(),
            message: status.message().to_owned(),
        }
    }

    /// Who the daemon is, and how busy; a daemon that has not answered
    /// within [`ANSWER_WITHIN`] is [`DaemonError::Silent`] (a socket whose
    /// server is wedged, or one a service manager holds for a daemon that
    /// does not take it).
    pub async fn info(&self) -> Result<Info, DaemonError> {
        let mut client = self.client.clone();
        let i = tokio::time::timeout(ANSWER_WITHIN, client.info(wire::InfoRequest {}))
            .await
            .map_err(|_| DaemonError::Silent {
                path: self.socket.clone(),
                waited: ANSWER_WITHIN,
            })?
            .map_err(|s| self.call_error(&s))?
            .into_inner();
        Ok(Info {
            version: i.version,
            api_version: i.api_version,
            root: PathBuf::from(i.root),
            backend: i.backend,
            pid: i.pid,
            running: i.running,
            served: i.served,
            uptime: Duration::from_secs(i.uptime_seconds),
        })
    }

    /// Runs `invocation` on the daemon: what it prints goes to `stdout`
    /// and `stderr`, and `stdin` is read (on another thread) only if the
    /// command asks for its input. The command's exit code. A command runs
    /// as long as it takes; first the daemon must answer [`Client::info`].
    pub async fn run(
        &self,
        invocation: &Invocation,
        stdin: Box<dyn Read + Send>,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<u8, DaemonError> {
        self.info().await?;
        let (tx, rx) = mpsc::channel(8);
        let command = wire::Command {
            args: invocation
                .args
                .iter()
                .map(|a| a.as_bytes().to_vec())
                .collect(),
            cwd: invocation.cwd.as_os_str().as_bytes().to_vec(),
            umask: invocation.umask,
            stderr_terminal: invocation.stderr_terminal,
            terminal_width: invocation.terminal_width.into(),
        };
        // The channel has room: the first message never waits.
        let _ = tx.try_send(wire::RunInput {
            input: Some(Input::Command(command)),
        });
        let mut outputs = self
            .client
            .clone()
            .run(ReceiverStream::new(rx))
            .await
            .map_err(|s| self.call_error(&s))?
            .into_inner();
        let mut stdin = Some(stdin);
        loop {
            let msg = match outputs.message().await {
                Ok(Some(msg)) => msg,
                Ok(None) => return Err(DaemonError::Gone(self.socket.clone())),
                Err(s) => return Err(self.call_error(&s)),
            };
            match msg.output {
                Some(Output::Stdout(b)) => stdout.write_all(&b).map_err(DaemonError::Output)?,
                Some(Output::Stderr(b)) => stderr
                    .write_all(&b)
                    .and_then(|()| stderr.flush())
                    .map_err(DaemonError::Output)?,
                Some(Output::WantStdin(_)) => {
                    if let Some(input) = stdin.take() {
                        send_input(input, tx.clone());
                    }
                }
                Some(Output::Exit(code)) => {
                    stdout.flush().map_err(DaemonError::Output)?;
                    return Ok(u8::try_from(code).unwrap_or(u8::MAX));
                }
                None => {}
            }
        }
    }
}

/// Sends `input` to the daemon from a thread of its own (reading it may
/// block), ending with `stdin_closed`; a read error ends it without, which
/// the command sees as an input cut short.
fn send_input(mut input: Box<dyn Read + Send>, tx: mpsc::Sender<wire::RunInput>) {
    std::thread::spawn(move || {
        let mut buf = vec![0; 64 << 10];
        loop {
            let input = match input.read(&mut buf) {
                Ok(0) => Input::StdinClosed(true),
                Ok(n) => Input::Stdin(buf[..n].to_vec()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "reading standard input failed");
                    return;
                }
            };
            let end = matches!(input, Input::StdinClosed(_));
            if tx
                .blocking_send(wire::RunInput { input: Some(input) })
                .is_err()
                || end
            {
                return;
            }
        }
    });
}
