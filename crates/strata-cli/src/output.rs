//! Output for people (aligned tables) and for programs (`--json`, one JSON
//! document per command), and the mapping of errors to kinds and one-line
//! messages.

use std::io::{IsTerminal, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use indicatif::ProgressDrawTarget;
use serde::Serialize;
use strata_core::{Classify, ErrorKind};
use strata_leases::OpCtx;

/// A writer several parts of a command share.
pub type SharedWriter = Arc<Mutex<Box<dyn Write + Send>>>;

/// Where a command's results go, where its input comes from, and the
/// operation context its work runs under: this process's own streams, or
/// (run by a daemon) a client's, carried over its call.
pub struct Output {
    json: bool,
    stdout: Mutex<Box<dyn Write + Send>>,
    stderr: SharedWriter,
    stdin: Mutex<Option<Box<dyn Read + Send>>>,
    terminal: Terminal,
    ctx: OpCtx,
}

/// Whether, and how, progress bars are drawn.
#[derive(Clone, Copy, Debug)]
enum Terminal {
    /// Standard error is not a terminal: no bars.
    None,
    /// This process's standard error is a terminal.
    Local,
    /// A client's standard error is a terminal this wide (0: unknown).
    #[cfg(feature = "daemon")]
    Remote(u16),
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("json", &self.json)
            .field("terminal", &self.terminal)
            .finish_non_exhaustive()
    }
}

impl Output {
    /// This process's own streams.
    pub fn new(json: bool) -> Self {
        Output {
            json,
            stdout: Mutex::new(Box::new(std::io::stdout())),
            stderr: Arc::new(Mutex::new(Box::new(std::io::stderr()))),
            stdin: Mutex::new(Some(Box::new(std::io::stdin()))),
            terminal: if std::io::stderr().is_terminal() {
                Terminal::Local
            } else {
                Terminal::None
            },
            ctx: OpCtx::new(),
        }
    }

    /// A daemon client's streams and context.
    #[cfg(feature = "daemon")]
    pub fn remote(json: bool, inv: &strata_daemon::Invocation, io: strata_daemon::Io) -> Self {
        Output {
            json,
            stdout: Mutex::new(io.stdout),
            stderr: Arc::new(Mutex::new(io.stderr)),
            stdin: Mutex::new(Some(io.stdin)),
            terminal: if inv.stderr_terminal {
                Terminal::Remote(inv.terminal_width)
            } else {
                Terminal::None
            },
            ctx: io.ctx,
        }
    }

    pub fn json(&self) -> bool {
        self.json
    }

    /// The context every operation of the command starts from (cancelled
    /// when a daemon's client goes away).
    pub fn ctx(&self) -> &OpCtx {
        &self.ctx
    }

    /// Standard output, for commands that write raw bytes.
    pub fn stdout(&self) -> MutexGuard<'_, Box<dyn Write + Send>> {
        self.stdout.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Standard input (a command reads it once).
    pub fn stdin(&self) -> anyhow::Result<Box<dyn Read + Send>> {
        self.stdin
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| anyhow::anyhow!("standard input was read already"))
    }

    /// Writes `text` as one line on standard error.
    pub fn note(&self, text: &str) {
        let mut err = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(err, "{text}");
        let _ = err.flush();
    }

    /// Where progress bars are drawn, when standard error is a terminal.
    pub fn progress_target(&self) -> Option<ProgressDrawTarget> {
        match self.terminal {
            Terminal::None => None,
            Terminal::Local => Some(ProgressDrawTarget::stderr()),
            #[cfg(feature = "daemon")]
            Terminal::Remote(width) => Some(crate::serve::client_terminal(
                Arc::clone(&self.stderr),
                width,
            )),
        }
    }

    /// Prints `value` as JSON, or `table` rows for people.
    pub fn emit<T: Serialize>(
        &self,
        value: &T,
        headers: &[&str],
        rows: Vec<Vec<String>>,
    ) -> anyhow::Result<()> {
        let mut stdout = self.stdout();
        if self.json {
            serde_json::to_writer_pretty(&mut *stdout, value)?;
            writeln!(stdout)?;
        } else {
            write_table(&mut *stdout, headers, &rows)?;
        }
        stdout.flush()?;
        Ok(())
    }

    /// Prints one line for people, or `value` as JSON.
    pub fn line<T: Serialize>(&self, value: &T, text: &str) -> anyhow::Result<()> {
        let mut stdout = self.stdout();
        if self.json {
            serde_json::to_writer_pretty(&mut *stdout, value)?;
            writeln!(stdout)?;
        } else {
            writeln!(stdout, "{text}")?;
        }
        stdout.flush()?;
        Ok(())
    }
}

fn write_table(w: &mut impl Write, headers: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let print = |w: &mut dyn Write, cells: &mut dyn Iterator<Item = &str>| -> std::io::Result<()> {
        let cells: Vec<&str> = cells.collect();
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                writeln!(w, "{cell}")?;
            } else {
                write!(w, "{cell:<width$}  ", width = widths[i])?;
            }
        }
        Ok(())
    };
    print(w, &mut headers.iter().copied())?;
    for row in rows {
        print(w, &mut row.iter().map(String::as_str))?;
    }
    Ok(())
}

/// The shared kind of the first classifiable error in the chain.
pub fn kind_of(err: &anyhow::Error) -> ErrorKind {
    for cause in err.chain() {
        macro_rules! try_kind {
            ($($t:ty),*) => {$(
                if let Some(e) = cause.downcast_ref::<$t>() {
                    return Classify::kind(e);
                }
            )*};
        }
        #[cfg(feature = "daemon")]
        try_kind!(strata_containerd::ServeError, strata_daemon::DaemonError);
        try_kind!(
            crate::root::CliError,
            strata_cache::CacheError,
            strata_cache::OpenError,
            strata_oci::OciError,
            strata_content::ContentError,
            strata_diff::ApplyError,
            strata_diff::DiffError,
            strata_leases::LeaseError,
            strata_snapshot::SnapshotError,
            strata_metadata::MetaError,
            strata_sys::SysError,
            strata_sys::lock::LockError,
            strata_core::DigestError,
            strata_core::LabelError,
            strata_core::FilterError,
            std::io::Error
        );
    }
    ErrorKind::Internal
}

/// The error and its causes on one line.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        // thiserror's wrappers repeat their source (skip it); a context
        // may repeat the start of what it wraps (keep the longer).
        match parts.last_mut() {
            Some(last) if last.contains(&text) => {}
            Some(last) if text.starts_with(last.as_str()) => *last = text,
            _ => parts.push(text),
        }
    }
    parts.join(": ")
}

/// RFC 3339 time for JSON and tables.
pub fn time(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Sizes for people: 1.5 MiB.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Labels as `k=v,k=v` for tables.
pub fn labels(labels: &strata_core::Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
    }

    #[test]
    fn one_line_says_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("ingest file:/x: {0}")]
        struct Ingest(#[source] std::io::Error);
        let io = std::io::Error::other("fsync /p: Input/output error");
        let err = anyhow::Error::new(Ingest(io)).context("ingest file:/x");
        assert_eq!(
            one_line(&err),
            "ingest file:/x: fsync /p: Input/output error"
        );
        let err = anyhow::anyhow!("EIO").context("read a").context("ingest b");
        assert_eq!(one_line(&err), "ingest b: read a: EIO");
    }

    #[test]
    fn tables_align() {
        let mut out = Vec::new();
        write_table(
            &mut out,
            &["A", "LONGER"],
            &[vec!["xxxx".into(), "y".into()]],
        )
        .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "A     LONGER\nxxxx  y\n");
    }
}
