//! `strata serve`: this process owns the root as its daemon. It serves,
//! on the root's own socket (`run/strata.sock`, mode 0600) and on any
//! `--socket` given, both the commands of this command line (any number
//! of clients at once) and containerd's snapshots API, until SIGINT or
//! SIGTERM. The client side is here too: finding the daemon of a root and
//! running a command through it.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, FromArgMatches};
use serde::Serialize;
use strata_cache::CacheManager;
use strata_core::ErrorKind;
use strata_daemon::{Client, Identity, Invocation, Io, Listen, Runner};

use indicatif::{ProgressDrawTarget, TermLike};

use crate::output::{Output, SharedWriter};
use crate::root::CliError;
use crate::{Cli, Command};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Also serve on this socket (repeatable), such as the one containerd's
    /// `proxy_plugins` entry names; --socket-mode and --group apply to it.
    #[arg(
        long = "socket",
        visible_alias = "containerd-socket",
        value_name = "PATH"
    )]
    sockets: Vec<PathBuf>,
    /// The mode of the --socket sockets, in octal (the root's own socket
    /// is always 0600).
    #[arg(long, default_value = "600", value_parser = parse_mode)]
    socket_mode: u32,
    /// The group of the --socket sockets (a name or a number): with
    /// --socket-mode 660 its members may run commands, as root would.
    #[arg(long, value_name = "GROUP", value_parser = strata_daemon::group_id)]
    group: Option<u32>,
    /// Do not serve: ask the root's daemon (or --address) whether it is up
    /// and answering, print what it says, and exit 0 if so, else 4.
    #[arg(long)]
    pub check: bool,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal mode such as 600"))
}

/// Serves the open root until SIGINT or SIGTERM; then stops accepting,
/// lets the commands and calls in flight finish, and removes the sockets.
pub fn run(mgr: &CacheManager, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let root = mgr.root();
    let snapshots = strata_containerd::Service::new(&root.snapshots, &root.leases)?;
    let mut listen = vec![Listen {
        path: strata_daemon::default_socket(&root.path),
        mode: 0o600,
        group: None,
    }];
    listen.extend(args.sockets.iter().map(|path| Listen {
        path: path.clone(),
        mode: args.socket_mode,
        group: args.group,
    }));
    let identity = Identity {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        root: root.path.clone(),
        backend: root.backend.name().to_owned(),
    };
    let runner = Arc::new(Commands { mgr: mgr.clone() });
    // The signal handlers exist before the sockets do.
    crate::snapshot::block_on_parallel(async {
        let shutdown = strata_daemon::signalled();
        strata_daemon::serve(snapshots, runner, identity, &listen, shutdown).await
    })??;
    Ok(ExitCode::SUCCESS)
}

/// The daemon's side: each command line a client sends runs here exactly
/// as `main` would run it with the root open, its streams the client's.
struct Commands {
    mgr: CacheManager,
}

impl Runner for Commands {
    fn run(&self, inv: Invocation, io: Io) -> u8 {
        let argv = std::iter::once("strata".into()).chain(inv.args.iter().cloned());
        let cli = match crate::help::command()
            .try_get_matches_from(argv)
            .and_then(|m| Cli::from_arg_matches(&m))
        {
            Ok(cli) => cli,
            Err(e) => {
                let (mut to, code) = if e.use_stderr() {
                    (io.stderr, e.exit_code())
                } else {
                    (io.stdout, 0)
                };
                let _ = write!(to, "{}", e.render().ansi());
                return u8::try_from(code).unwrap_or(1);
            }
        };
        let out = Output::remote(cli.json, &inv, io);
        let result = self.fits(&cli).and_then(|()| match cli.command {
            Command::Serve(_) => Err(CliError {
                kind: ErrorKind::AlreadyExists,
                message: format!(
                    "{} is served already, by this daemon",
                    self.mgr.root().path.display()
                ),
            }
            .into()),
            // Repair makes files and rows agree as if nothing else ran;
            // here other commands and containerd may be mid-way.
            Command::Check(args) if args.repair => Err(CliError {
                kind: ErrorKind::FailedPrecondition,
                message: "check --repair needs the root to itself: stop the daemon (strata serve), then repair".into(),
            }
            .into()),
            command => crate::run(
                command,
                self.mgr.clone(),
                cli.lease.as_deref(),
                cli.ignore_chown_errors,
                &out,
            ),
        });
        crate::finish(result, &out)
    }
}

impl Commands {
    /// Refuses global options that name another root or backend than the
    /// daemon's, as opening the root would.
    fn fits(&self, cli: &Cli) -> anyhow::Result<()> {
        let root = self.mgr.root();
        if let Some(asked) = &cli.root {
            let same = std::fs::canonicalize(asked).ok() == std::fs::canonicalize(&root.path).ok();
            if !same {
                return Err(CliError {
                    kind: ErrorKind::FailedPrecondition,
                    message: format!(
                        "the daemon serves {}, not {}",
                        root.path.display(),
                        asked.display()
                    ),
                }
                .into());
            }
        }
        let wanted = strata_cache::BackendChoice::from(cli.backend);
        if !matches!(wanted, strata_cache::BackendChoice::Auto)
            && wanted.name() != root.backend.name()
        {
            return Err(strata_cache::OpenError::BackendMismatch {
                path: root.path.clone(),
                stored: root.backend.name().to_owned(),
                wanted: wanted.name().to_owned(),
            }
            .into());
        }
        Ok(())
    }
}

/// The socket of the daemon to run `cli`'s command through: `--address`
/// (which must answer), else the root's own socket when a daemon answers
/// there.
pub fn find_daemon(cli: &Cli) -> anyhow::Result<Option<PathBuf>> {
    let (socket, required) = match &cli.address {
        Some(a) => (a.clone(), true),
        None => {
            let root = match &cli.root {
                Some(r) => r.clone(),
                None => strata_cache::default_root()?,
            };
            (strata_daemon::default_socket(&root), false)
        }
    };
    match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(_) => Ok(Some(socket)),
        Err(e) if required => Err(strata_daemon::DaemonError::Connect {
            path: socket,
            source: Box::new(e),
        }
        .into()),
        // No socket, or one a dead daemon left: the command opens the root
        // itself.
        Err(_) => Ok(None),
    }
}

/// Runs the command line of this process through the daemon on
/// `socket`, its output this process's own; the exit code.
pub fn through(socket: &Path, cli: &Cli, out: &Output) -> u8 {
    let ran = crate::snapshot::block_on(async {
        let daemon = Client::connect(socket).await?;
        if let Command::Serve(args) = &cli.command {
            return check_or_refuse(&daemon, args, out).await;
        }
        let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        // The daemon parses the command line in its own environment: an
        // option this client's environment turned on travels as an option.
        if cli.ignore_chown_errors && !args.iter().any(|a| a == "--ignore-chown-errors") {
            args.push("--ignore-chown-errors".into());
        }
        let inv = Invocation {
            args,
            cwd: std::env::current_dir()?,
            umask: strata_sys::thread::umask()?,
            stderr_terminal: std::io::stderr().is_terminal(),
            terminal_width: terminal_width(),
        };
        let mut stdout = std::io::stdout().lock();
        let mut stderr = std::io::stderr().lock();
        let stdin = Box::new(std::io::stdin());
        Ok(daemon.run(&inv, stdin, &mut stdout, &mut stderr).await?)
    });
    match ran {
        Ok(Ok(code)) => code,
        Ok(Err(e)) | Err(e) => crate::finish(Err(e), out),
    }
}

/// `serve --check` against a daemon that answers: its health; `serve`
/// itself: refused, the root is served.
async fn check_or_refuse(daemon: &Client, args: &ServeArgs, out: &Output) -> anyhow::Result<u8> {
    let info = daemon.info().await?;
    if !args.check {
        return Err(CliError {
            kind: ErrorKind::AlreadyExists,
            message: format!(
                "{} is served already, by strata process {} on {}",
                info.root.display(),
                info.pid,
                daemon.socket().display()
            ),
        }
        .into());
    }
    let health = Health {
        serving: true,
        socket: daemon.socket().to_owned(),
        root: info.root,
        backend: info.backend,
        pid: info.pid,
        version: info.version,
        api_version: info.api_version,
        running: info.running,
        served: info.served,
        uptime_seconds: info.uptime.as_secs(),
    };
    let text = format!(
        "serving {} ({}) on {}: pid {}, version {}, {} running, {} served, up {}",
        health.root.display(),
        health.backend,
        health.socket.display(),
        health.pid,
        health.version,
        health.running,
        health.served,
        humantime::format_duration(info.uptime)
    );
    out.line(&health, &text)?;
    Ok(0)
}

/// `serve --check` where no daemon answers: exit 4.
pub fn not_serving(cli: &Cli) -> anyhow::Result<ExitCode> {
    let root = match &cli.root {
        Some(r) => r.clone(),
        None => strata_cache::default_root()?,
    };
    Err(CliError {
        kind: ErrorKind::Unavailable,
        message: format!(
            "no strata daemon answers on {}",
            cli.address
                .clone()
                .unwrap_or_else(|| strata_daemon::default_socket(&root))
                .display()
        ),
    }
    .into())
}

#[derive(Serialize)]
struct Health {
    serving: bool,
    socket: PathBuf,
    root: PathBuf,
    backend: String,
    pid: u32,
    version: String,
    api_version: u32,
    running: u64,
    served: u64,
    uptime_seconds: u64,
}

/// The width of the terminal standard error is (0: unknown, and the
/// daemon draws 80 wide).
fn terminal_width() -> u16 {
    console::Term::stderr()
        .size_checked()
        .map_or(0, |(_, cols)| cols)
}

/// Progress bars drawn on a client's terminal (`width` columns, 0:
/// unknown, drawn 80 wide) through its standard error stream.
pub fn client_terminal(stderr: SharedWriter, width: u16) -> ProgressDrawTarget {
    ProgressDrawTarget::term_like(Box::new(RemoteTerm {
        stderr,
        width: if width == 0 { 80 } else { width },
    }))
}

/// A client's terminal, drawn on through its standard error stream with
/// the ANSI sequences a terminal understands.
struct RemoteTerm {
    stderr: SharedWriter,
    width: u16,
}

impl std::fmt::Debug for RemoteTerm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTerm")
            .field("width", &self.width)
            .finish_non_exhaustive()
    }
}

impl RemoteTerm {
    fn put(&self, s: &str) -> std::io::Result<()> {
        let mut err = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        err.write_all(s.as_bytes())
    }

    /// Moves the cursor `n` places (CSI `n` `direction`: A up, B down,
    /// C right, D left); nothing for 0, which a terminal reads as 1.
    fn cursor(&self, n: usize, direction: char) -> std::io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.put(&format!("\x1b[{n}{direction}"))
    }
}

impl TermLike for RemoteTerm {
    fn width(&self) -> u16 {
        self.width
    }

    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        self.cursor(n, 'A')
    }

    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        self.cursor(n, 'B')
    }

    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        self.cursor(n, 'C')
    }

    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        self.cursor(n, 'D')
    }

    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.put(&format!("{s}\n"))
    }

    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.put(s)
    }

    fn clear_line(&self) -> std::io::Result<()> {
        self.put("\r\x1b[2K")
    }

    fn flush(&self) -> std::io::Result<()> {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush()
    }
}
