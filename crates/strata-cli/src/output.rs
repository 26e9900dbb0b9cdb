//! Output for people (aligned tables) and for programs (`--json`, one JSON
//! document per command), and the mapping of errors to kinds and one-line
//! messages.

use std::io::Write;

use serde::Serialize;
use strata_core::{Classify, ErrorKind};

/// Where a command's results go.
#[derive(Debug)]
pub struct Output {
    json: bool,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Output { json }
    }

    pub fn json(&self) -> bool {
        self.json
    }

    /// Prints `value` as JSON, or `table` rows for people.
    pub fn emit<T: Serialize>(
        &self,
        value: &T,
        headers: &[&str],
        rows: Vec<Vec<String>>,
    ) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        if self.json {
            serde_json::to_writer_pretty(&mut stdout, value)?;
            writeln!(stdout)?;
        } else {
            write_table(&mut stdout, headers, &rows)?;
        }
        Ok(())
    }

    /// Prints one line for people, or `value` as JSON.
    pub fn line<T: Serialize>(&self, value: &T, text: &str) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        if self.json {
            serde_json::to_writer_pretty(&mut stdout, value)?;
            writeln!(stdout)?;
        } else {
            writeln!(stdout, "{text}")?;
        }
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
        #[cfg(feature = "containerd")]
        try_kind!(strata_containerd::ServeError);
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
