//! `strata check`: the metadata integrity check plus the content and
//! snapshot checks (rows against files, every blob re-hashed). Opening a
//! root after a kill reconciles what a crash can leave behind (after a clean
//! close it trusts its rows); `--repair` reconciles in any case and also
//! removes blobs whose bytes no longer match their digest, row first.
//!
//! A root a daemon serves is checked while other work runs: a snapshot
//! directory is renamed into place a moment before its row is committed,
//! and leaves a moment after its row goes. So a mismatch between rows and
//! files counts only if a second look, a second later, still finds it.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use strata_core::Digest;
use strata_metadata::Violation;

use crate::output::Output;
use crate::root::Root;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Reconcile files with rows, and remove blobs that fail verification
    /// (their row, then the file).
    #[arg(long)]
    pub repair: bool,
}

#[derive(Serialize)]
struct ProblemJson {
    table: &'static str,
    key: String,
    problem: String,
    repaired: bool,
}

#[derive(Serialize)]
struct CheckJson {
    clean: bool,
    problems: Vec<ProblemJson>,
}

/// The problems one look finds (`verify`: every blob re-hashed too).
fn look(root: &Root, verify: bool) -> anyhow::Result<Vec<Violation>> {
    Ok(root
        .db
        .check()?
        .into_iter()
        .chain(root.content.check(verify)?)
        .chain(root.snapshots.check()?)
        .collect())
}

/// The problems of `first` that are still there a second later (a blob
/// that does not hash to its digest is not re-hashed: it never changes).
fn lasting(root: &Root, first: Vec<Violation>) -> anyhow::Result<Vec<Violation>> {
    if first.is_empty() {
        return Ok(first);
    }
    std::thread::sleep(Duration::from_secs(1));
    let second = look(root, false)?;
    Ok(first
        .into_iter()
        .filter(|v| v.problem.starts_with("blob hashes to") || second.contains(v))
        .collect())
}

pub fn run(root: &Root, args: &CheckArgs, out: &Output) -> anyhow::Result<ExitCode> {
    if args.repair {
        // What an open after a kill does: files and rows made to agree.
        root.content.reconcile()?;
        root.snapshots.reconcile()?;
    }
    let mut problems: Vec<ProblemJson> = Vec::new();
    for v in lasting(root, look(root, true)?)? {
        let mut repaired = false;
        if args.repair && v.table == "content" && v.problem.starts_with("blob hashes to") {
            let digest = Digest::parse(&v.key)?;
            root.content.delete(&digest)?;
            repaired = true;
        }
        problems.push(ProblemJson {
            table: v.table,
            key: v.key,
            problem: v.problem,
            repaired,
        });
    }
    let clean = problems.iter().all(|p| p.repaired);
    let text = if problems.is_empty() {
        "clean".to_string()
    } else {
        problems
            .iter()
            .map(|p| {
                format!(
                    "{} {:?}: {}{}",
                    p.table,
                    p.key,
                    p.problem,
                    if p.repaired { " (removed)" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    out.line(&CheckJson { clean, problems }, &text)?;
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
