//! `strata check`: the metadata integrity check plus the content and
//! snapshot checks (rows against files, every blob re-hashed). Opening a
//! root after a kill reconciles what a crash can leave behind (after a clean
//! close it trusts its rows); `--repair` reconciles in any case and also
//! removes blobs whose bytes no longer match their digest, row first.

use std::process::ExitCode;

use clap::Args;
use serde::Serialize;
use strata_core::Digest;

use crate::output::Output;
use crate::root::Root;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Reconcile files with rows, and remove blobs that fail verification
    /// (their row, then the file).
    #[arg(long)]
    repair: bool,
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

pub fn run(root: &Root, args: &CheckArgs, out: &Output) -> anyhow::Result<ExitCode> {
    if args.repair {
        // What an open after a kill does: files and rows made to agree.
        root.content.reconcile()?;
        root.snapshots.reconcile()?;
    }
    let mut problems: Vec<ProblemJson> = Vec::new();
    for v in root
        .db
        .check()?
        .into_iter()
        .chain(root.content.check(true)?)
        .chain(root.snapshots.check()?)
    {
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
