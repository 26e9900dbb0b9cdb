//! `strata`: the command line of the Strata snapshot manager. Nouns and
//! verbs follow `docs/cli.md`; errors go to stderr as one line and map to
//! the documented exit codes.

#![forbid(unsafe_code)]
// clap turns the doc comments of the command types into `--help` text,
// written for a terminal: `[:TAG]` and `<backend>` there are placeholders,
// not links or HTML.
#![allow(
    rustdoc::broken_intra_doc_links,
    rustdoc::invalid_html_tags,
    reason = "doc comments here are clap help text"
)]

mod check;
mod content;
mod demo;
mod help;
mod image;
mod layer;
#[cfg(feature = "registry")]
mod lazy;
mod lease;
mod output;
mod progress;
mod refs;
mod root;
#[cfg(feature = "daemon")]
mod serve;
mod snapshot;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{FromArgMatches, Parser, Subcommand};
use strata_core::ErrorKind;

/// The heading global options sit under in every command's help.
const GLOBAL: &str = "Global options";

/// Layered filesystem snapshots for container build engines.
#[derive(Debug, Parser)]
#[command(name = "strata", version, max_term_width = 100)]
struct Cli {
    /// State root [default: $STRATA_ROOT, else /var/lib/strata as root, else $XDG_DATA_HOME/strata].
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true, help_heading = GLOBAL)]
    json: bool,
    /// Run under this lease (created if missing): what the command creates is
    /// held by it instead of by a lease named after each object.
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "ID")]
    lease: Option<String>,
    /// The socket of the daemon to run the command through [default: the
    /// root's own, run/strata.sock, when a daemon answers there; else the
    /// command opens the root itself].
    #[cfg(feature = "daemon")]
    #[arg(long, global = true, help_heading = GLOBAL, env = "STRATA_ADDRESS", value_name = "SOCKET")]
    address: Option<PathBuf>,
    /// How long to wait while another strata process owns the root (an
    /// import of a large image on a loaded machine takes minutes), then
    /// exit 4 (0s: do not wait).
    #[arg(long, global = true, help_heading = GLOBAL, env = "STRATA_LOCK_TIMEOUT", default_value = "10m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    lock_timeout: std::time::Duration,
    /// Where this user namespace cannot map the owner a layer gives an
    /// entry (rootless with a single id mapping), leave the entry owned by
    /// this process's ids, setuid and setgid dropped, instead of failing;
    /// the number squashed is said on stderr.
    #[arg(long, global = true, help_heading = GLOBAL, env = "STRATA_IGNORE_CHOWN_ERRORS", value_parser = clap::builder::BoolishValueParser::new())]
    ignore_chown_errors: bool,
    /// Snapshot backend; a root remembers the one it was created with.
    #[arg(long, global = true, help_heading = GLOBAL, value_enum, default_value = "auto")]
    backend: root::BackendArg,
    /// More logging on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short = 'v', global = true, help_heading = GLOBAL, action = clap::ArgAction::Count)]
    verbosity: u8,
    /// Logging on stderr: error, warn, info, debug, trace, or a tracing
    /// filter such as strata_cache=debug [default: warn; $STRATA_LOG].
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "LEVEL")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Blobs in the content store.
    #[command(subcommand)]
    Content(content::ContentCmd),
    /// Snapshots: prepare, view, commit, remove, list, inspect.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCmd),
    /// Mount a snapshot on DIR (committed ones read-only).
    Mount {
        /// A snapshot key or a ref id.
        key: String,
        /// An existing directory to mount on.
        dir: PathBuf,
        /// Mount an active snapshot writable.
        #[arg(long)]
        rw: bool,
    },
    /// Unmount DIR.
    Umount {
        /// A directory `strata mount` mounted on.
        dir: PathBuf,
    },
    /// Layers: apply one onto a plain directory.
    #[command(subcommand)]
    Layer(layer::LayerCmd),
    /// Lazy images: eStargz images from a registry, mounted before they
    /// are downloaded; images copied between registries without being
    /// stored.
    #[cfg(feature = "registry")]
    #[command(subcommand)]
    Lazy(lazy::LazyCmd),
    /// Leases: what keeps content and snapshots alive.
    #[command(subcommand)]
    Lease(lease::LeaseCmd),
    /// Images: import, pull, export, push; by name.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Cache records: mutable and immutable refs.
    #[command(subcommand)]
    Ref(refs::RefCmd),
    /// Disk usage of the cache's records (shared hard links counted once).
    Du(refs::DuArgs),
    /// Let go of cache records nothing else holds, by policy, and collect.
    Prune(refs::PruneArgs),
    /// Collect everything no lease, root label or mount holds.
    Gc(lease::GcArgs),
    /// Verify metadata against disk and every blob against its digest.
    Check(check::CheckArgs),
    /// Own the root as its daemon until SIGTERM: serve strata commands from
    /// any number of clients at once, and containerd's snapshots API (a
    /// proxy snapshotter).
    #[cfg(feature = "daemon")]
    Serve(serve::ServeArgs),
    /// The quick tour: an image made in-process, imported, built on,
    /// merged, diffed, exported, measured, pruned (a temporary root unless
    /// --root is given).
    Demo,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

fn main() -> ExitCode {
    let cli = match Cli::from_arg_matches(&help::command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logging(cli.verbosity, cli.log_level.as_deref());
    let out = output::Output::new(cli.json);
    let result = match cli.command {
        // Unmounting needs no root, nor do completions; the demo opens its own.
        Command::Umount { dir } => snapshot::umount(&dir, &out),
        Command::Completions { shell } => completions(shell),
        Command::Demo => demo::run(cli.root.as_deref(), cli.backend.into(), &out),
        Command::Layer(cmd) => layer::run(cmd, cli.ignore_chown_errors, &out),
        #[cfg(feature = "registry")]
        Command::Lazy(cmd) => lazy::run(cmd, &out),
        _ => return ExitCode::from(with_root(cli, &out)),
    };
    ExitCode::from(finish(result, &out))
}

/// Runs a command that needs the root: through the root's daemon when one
/// serves it, else with the root opened here. The exit code.
fn with_root(cli: Cli, out: &output::Output) -> u8 {
    #[cfg(feature = "daemon")]
    {
        match serve::find_daemon(&cli) {
            Ok(Some(daemon)) => return serve::through(&daemon, &cli, out),
            Ok(None) => {}
            Err(e) => return finish(Err(e), out),
        }
        if let Command::Serve(args) = &cli.command
            && args.check
        {
            return finish(serve::not_serving(&cli), out);
        }
    }
    let opened = root::open(cli.root.as_deref(), cli.backend, cli.lock_timeout);
    finish(
        opened.and_then(|mgr| {
            run(
                cli.command,
                mgr,
                cli.lease.as_deref(),
                cli.ignore_chown_errors,
                out,
            )
        }),
        out,
    )
}

/// Runs `command` against the open root `mgr` (here, or in the daemon);
/// `ignore_chown_errors` is the global option of that name. A command
/// that serves until stopped (`image mount`) lets go of `mgr` once it
/// serves: here, the root is then free for other commands.
fn run(
    command: Command,
    mgr: strata_cache::CacheManager,
    lease: Option<&str>,
    ignore_chown_errors: bool,
    out: &output::Output,
) -> anyhow::Result<ExitCode> {
    let root = mgr.root();
    match command {
        Command::Content(cmd) => content::run(root, cmd, lease, out),
        Command::Snapshot(cmd) => snapshot::run(root, cmd, lease, out),
        Command::Lease(cmd) => lease::run(root, cmd, out),
        Command::Gc(args) => lease::gc(root, &args, out),
        Command::Mount { key, dir, rw } => snapshot::mount(root, &key, &dir, rw, out),
        Command::Umount { dir } => snapshot::umount(&dir, out),
        Command::Layer(cmd) => layer::run(cmd, ignore_chown_errors, out),
        #[cfg(feature = "registry")]
        Command::Lazy(cmd) => lazy::run(cmd, out),
        Command::Check(args) => check::run(root, &args, out),
        Command::Ref(cmd) => refs::run(&mgr, cmd, lease, out),
        Command::Image(cmd) => image::run(mgr, cmd, lease, ignore_chown_errors, out),
        Command::Du(args) => refs::du(&mgr, &args, out),
        Command::Prune(args) => refs::prune(&mgr, &args, out),
        #[cfg(feature = "daemon")]
        Command::Serve(args) => serve::run(&mgr, &args),
        Command::Completions { shell } => completions(shell),
        // The demo makes a root of its own, and a daemon's root is taken.
        Command::Demo => Err(root::CliError {
            kind: ErrorKind::FailedPrecondition,
            message: "the demo needs a root of its own: run it without --root, or stop the daemon"
                .into(),
        }
        .into()),
    }
}

/// A command's exit code; a failure is reported on its standard error as
/// one line.
fn finish(result: anyhow::Result<ExitCode>, out: &output::Output) -> u8 {
    match result {
        // Commands end in success or in the one documented failure code
        // (`check` finding problems); ExitCode has no accessor for its value.
        Ok(code) if code == ExitCode::SUCCESS => 0,
        Ok(_) => 1,
        // A closed pipe (`strata snapshot ls | head`) is the reader's
        // choice, not a failure.
        Err(err)
            if err.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            0
        }
        Err(err) => {
            out.note(&format!("strata: {}", output::one_line(&err)));
            exit_code(output::kind_of(&err))
        }
    }
}

/// The completion script for `shell` on stdout (a closed pipe is not an
/// error: `strata completions bash | head` is fine).
fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut help::command(), "strata", &mut script);
    match std::io::stdout().lock().write_all(&script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// The documented exit codes.
fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::NotFound => 3,
        ErrorKind::AlreadyExists
        | ErrorKind::Locked
        | ErrorKind::Unavailable
        | ErrorKind::FailedPrecondition => 4,
        ErrorKind::Invalid => 5,
        _ => 1,
    }
}

fn init_logging(verbosity: u8, level: Option<&str>) {
    let default = match verbosity {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = match level {
        Some(l) => tracing_subscriber::EnvFilter::new(l),
        None => tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
