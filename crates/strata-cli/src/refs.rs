//! `strata ref ...`, `strata du` and `strata prune`: the cache manager from
//! the shell.
//!
//! What a command makes is held by the `--lease` lease, or else by the
//! record's own lease `ref/<id>` (an owner lease: the snapshot, its
//! ancestors and their blobs), which `ref rm` and `prune` let go of.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use strata_cache::{
    CacheManager, ImmutableRef, PruneOptions, RecordType, RefMetadata, RefOptions, UsageInfo,
};
use strata_core::{ErrorKind, Filter};
use strata_leases::gc::GcOptions;
use strata_leases::{LeaseError, LeaseSpec, OpCtx, with_lease};
use strata_snapshot::Snapshotter;

use crate::output::{self, Output};
use crate::root::CliError;
use crate::snapshot::block_on;

#[derive(Debug, Subcommand)]
pub enum RefCmd {
    /// List records.
    Ls {
        /// containerd filter on id, type, description, mutable (repeat for OR).
        #[arg(long = "filter", value_name = "FILTER")]
        filters: Vec<String>,
    },
    /// Show one record.
    Info {
        /// A ref id.
        id: String,
    },
    /// Open a new mutable ref on PARENT (empty without one); prints its id.
    New {
        /// A committed ref to build on.
        parent: Option<String>,
        #[command(flatten)]
        opts: RefArgs,
    },
    /// Commit mutable ref ID; prints the new immutable id.
    Commit {
        /// A mutable ref id.
        id: String,
    },
    /// Merge refs into a new one (later ones win); prints its id.
    Merge {
        /// Committed ref ids, lowest first.
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        opts: RefArgs,
    },
    /// A new ref holding what UPPER adds or changes over LOWER; prints its id.
    Diff {
        /// The committed ref compared from.
        lower: String,
        /// The committed ref compared to.
        upper: String,
        #[command(flatten)]
        opts: RefArgs,
    },
    /// Let go of refs (the collector reclaims what nothing else holds).
    Rm {
        /// Ref ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct RefArgs {
    /// A description for the new record.
    #[arg(long)]
    description: Option<String>,
    /// The record type (regular, internal, frontend, source.local, exec.cachemount, ...).
    #[arg(long)]
    record_type: Option<String>,
}

impl RefArgs {
    fn options(&self) -> RefOptions {
        RefOptions {
            description: self.description.clone(),
            record_type: self.record_type.as_deref().map(RecordType::parse),
            ..RefOptions::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct DuArgs {
    /// Every field of every record.
    #[arg(long)]
    verbose: bool,
    /// containerd filter on id, type, description, mutable, in-use, parent (repeat for OR).
    #[arg(long = "filter", value_name = "FILTER")]
    filters: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Keep records used within this long (e.g. 48h).
    #[arg(long, value_name = "DURATION")]
    keep_duration: Option<String>,
    /// Never prune below this much cache (e.g. 10GB, 512MiB).
    #[arg(long, alias = "reserved-space", value_name = "SIZE")]
    keep_storage: Option<String>,
    /// Prune until the cache is at most this big.
    #[arg(long, value_name = "SIZE")]
    max_used_space: Option<String>,
    /// Prune until the file system has this much free.
    #[arg(long, value_name = "SIZE")]
    min_free_space: Option<String>,
    /// Also internal and frontend records.
    #[arg(long)]
    all: bool,
    /// Only say what would go, and what keeps the rest.
    #[arg(long)]
    dry_run: bool,
    /// containerd filter on id, type, description, mutable, parent (repeat for OR).
    #[arg(long = "filter", value_name = "FILTER")]
    filters: Vec<String>,
}

/// A bad-input error (exit 5) with `message`.
pub(crate) fn bad(message: String) -> anyhow::Error {
    CliError {
        kind: ErrorKind::Invalid,
        message,
    }
    .into()
}

/// `10GB`, `512MiB`, `1.5G`, `4096`: decimal (kB, MB, GB, TB) and binary
/// (KiB, MiB, GiB, TiB; K, M, G, T) units.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        bad(format!(
            "size {s:?}: expected a number with an optional unit"
        ))
    })?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => return Err(bad(format!("size {s:?}: unknown unit {other:?}"))),
    };
    Ok((value * factor).round() as u64)
}

fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(s).map_err(|e| bad(format!("duration {s:?}: {e}")))
}

#[derive(Serialize)]
struct RefJson {
    id: String,
    kind: &'static str,
    parent: Option<String>,
    record_type: String,
    description: String,
    created: Option<String>,
    last_used: Option<String>,
    usage_count: u64,
    blob: Option<String>,
    diff_id: Option<String>,
    media_type: String,
    image_refs: Vec<String>,
}

fn ref_json(md: &RefMetadata, parent: Option<String>) -> RefJson {
    RefJson {
        id: md.id().to_owned(),
        kind: if md.is_committed() {
            "committed"
        } else {
            "mutable"
        },
        parent,
        record_type: md.record_type().as_str().to_owned(),
        description: md.description(),
        created: md.created_at().map(output::time),
        last_used: md.last_used_at().map(output::time),
        usage_count: md.usage_count(),
        blob: md.blob().map(|d| d.to_string()),
        diff_id: md.diff_id().map(|d| d.to_string()),
        media_type: md.media_type(),
        image_refs: md.image_refs(),
    }
}

#[derive(Serialize)]
struct UsageJson {
    id: String,
    mutable: bool,
    in_use: bool,
    reclaimable: bool,
    size: u64,
    shared: u64,
    inodes: u64,
    parent: Option<String>,
    created: Option<String>,
    last_used: Option<String>,
    usage_count: u64,
    description: String,
    record_type: String,
}

impl From<&UsageInfo> for UsageJson {
    fn from(u: &UsageInfo) -> Self {
        UsageJson {
            id: u.id.clone(),
            mutable: u.mutable,
            in_use: u.in_use,
            reclaimable: !u.in_use,
            size: u.size,
            shared: u.shared,
            inodes: u.inodes,
            parent: u.parent.clone(),
            created: u.created_at.map(output::time),
            last_used: u.last_used_at.map(output::time),
            usage_count: u.usage_count,
            description: u.description.clone(),
            record_type: u.record_type.as_str().to_owned(),
        }
    }
}

/// The context a creating command runs in: the `--lease` lease (created
/// if missing), or a temporary lease that holds the new record until its
/// own lease does.
pub(crate) fn context(
    mgr: &CacheManager,
    lease: Option<&str>,
    out: &Output,
) -> anyhow::Result<(OpCtx, Option<strata_leases::LeaseGuard>)> {
    let leases = &mgr.root().leases;
    match lease {
        Some(id) => {
            match leases.create(LeaseSpec {
                id: Some(id.to_owned()),
                ..LeaseSpec::default()
            }) {
                Ok(_) | Err(LeaseError::AlreadyExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
            Ok((out.ctx().with_lease_id(id), None))
        }
        None => {
            let (ctx, guard) = with_lease(out.ctx(), leases)?;
            Ok((ctx, Some(guard)))
        }
    }
}

/// Hands a new record over to its own lease (unless `--lease` holds it)
/// and ends the temporary one; prints the id.
async fn adopt(
    mgr: &CacheManager,
    id: &str,
    guard: Option<strata_leases::LeaseGuard>,
    out: &Output,
) -> anyhow::Result<()> {
    if let Some(guard) = guard {
        mgr.keep(id).await?;
        guard.release()?;
    }
    out.line(&id, id)
}

async fn get(mgr: &CacheManager, id: &str) -> anyhow::Result<ImmutableRef> {
    Ok(mgr
        .get(
            id,
            &RefOptions {
                no_update_last_used: true,
                ..RefOptions::default()
            },
        )
        .await?)
}

pub fn run(
    mgr: &CacheManager,
    cmd: RefCmd,
    lease: Option<&str>,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    // What a change was doing, for its error (the manager's own errors
    // say the same, and the shared start is said once).
    let doing = match &cmd {
        RefCmd::New { parent, .. } => Some(match parent {
            Some(p) => format!("new ref on {p}"),
            None => "new ref".to_owned(),
        }),
        RefCmd::Commit { id } => Some(format!("commit {id}")),
        RefCmd::Merge { ids, .. } => Some(format!("merge {}", ids.join(", "))),
        RefCmd::Diff { lower, upper, .. } => Some(format!("diff {lower} to {upper}")),
        RefCmd::Rm { ids } => Some(format!("remove {}", ids.join(", "))),
        RefCmd::Ls { .. } | RefCmd::Info { .. } => None,
    };
    let done = block_on(run_async(mgr, cmd, lease, out))?;
    match doing {
        Some(doing) => done.context(doing)?,
        None => done?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn parent_of(mgr: &CacheManager, id: &str) -> anyhow::Result<Option<String>> {
    Ok(mgr.root().snapshots.stat(id).await?.parent)
}

async fn run_async(
    mgr: &CacheManager,
    cmd: RefCmd,
    lease: Option<&str>,
    out: &Output,
) -> anyhow::Result<()> {
    match cmd {
        RefCmd::Ls { filters } => {
            let filter = Filter::parse(&filters)?;
            let mut json = Vec::new();
            for md in mgr.records()?.iter().filter(|md| filter.matches(*md)) {
                json.push(ref_json(md, parent_of(mgr, md.id()).await?));
            }
            let rows = json
                .iter()
                .map(|r| {
                    vec![
                        r.id.clone(),
                        r.kind.into(),
                        r.record_type.clone(),
                        r.created.clone().unwrap_or_default(),
                        r.description.clone(),
                    ]
                })
                .collect();
            out.emit(
                &json,
                &["ID", "KIND", "TYPE", "CREATED", "DESCRIPTION"],
                rows,
            )?;
        }
        RefCmd::Info { id } => {
            let md = mgr
                .metadata(&id)?
                .ok_or_else(|| strata_cache::CacheError::NotFound(id.clone()))?;
            let j = ref_json(&md, parent_of(mgr, &id).await?);
            let rows = vec![
                vec!["id".into(), j.id.clone()],
                vec!["kind".into(), j.kind.into()],
                vec!["parent".into(), j.parent.clone().unwrap_or_default()],
                vec!["type".into(), j.record_type.clone()],
                vec!["description".into(), j.description.clone()],
                vec!["created".into(), j.created.clone().unwrap_or_default()],
                vec!["last used".into(), j.last_used.clone().unwrap_or_default()],
                vec!["usage count".into(), j.usage_count.to_string()],
                vec!["blob".into(), j.blob.clone().unwrap_or_default()],
                vec!["diff id".into(), j.diff_id.clone().unwrap_or_default()],
                vec!["media type".into(), j.media_type.clone()],
                vec!["image refs".into(), j.image_refs.join(",")],
            ];
            out.emit(&j, &["FIELD", "VALUE"], rows)?;
        }
        RefCmd::New { parent, opts } => {
            let parent = match parent {
                Some(p) => Some(get(mgr, &p).await?),
                None => None,
            };
            let (ctx, guard) = context(mgr, lease, out)?;
            let m = mgr.new_ref(&ctx, parent.as_ref(), &opts.options()).await?;
            adopt(mgr, m.id(), guard, out).await?;
        }
        RefCmd::Commit { id } => {
            let m = mgr.get_mutable(&id, &RefOptions::default()).await?;
            let (ctx, guard) = context(mgr, lease, out)?;
            let r = m.commit(&ctx).await?;
            adopt(mgr, r.id(), guard, out).await?;
            mgr.let_go(&id).await?;
            if let Some(l) = lease {
                let res = strata_leases::Resource::snapshot(mgr.root().snapshots.name(), &id);
                mgr.root().leases.delete_resource(l, &res)?;
            }
        }
        RefCmd::Merge { ids, opts } => {
            let mut refs = Vec::new();
            for id in &ids {
                refs.push(get(mgr, id).await?);
            }
            let inputs: Vec<Option<&ImmutableRef>> = refs.iter().map(Some).collect();
            let (ctx, guard) = context(mgr, lease, out)?;
            let r = mgr
                .merge(&ctx, &inputs, &opts.options())
                .await?
                .expect("at least one input");
            adopt(mgr, r.id(), guard, out).await?;
        }
        RefCmd::Diff { lower, upper, opts } => {
            let (lower, upper) = (get(mgr, &lower).await?, get(mgr, &upper).await?);
            let (ctx, guard) = context(mgr, lease, out)?;
            let r = mgr
                .apply_snapshot_diff(&ctx, Some(&lower), Some(&upper), &opts.options())
                .await?
                .expect("a lower was given");
            adopt(mgr, r.id(), guard, out).await?;
        }
        RefCmd::Rm { ids } => {
            for id in &ids {
                if mgr.metadata(id)?.is_none() {
                    return Err(strata_cache::CacheError::NotFound(id.clone()).into());
                }
            }
            for id in &ids {
                mgr.let_go(id).await?;
                if let Some(l) = lease {
                    let res = strata_leases::Resource::snapshot(mgr.root().snapshots.name(), id);
                    mgr.root().leases.delete_resource(l, &res)?;
                }
            }
            let collector = std::sync::Arc::clone(&mgr.root().collector);
            tokio::task::spawn_blocking(move || collector.collect(GcOptions::default())).await??;
            out.line(&ids, &ids.join("\n"))?;
        }
    }
    Ok(())
}

/// `strata du`.
pub fn du(mgr: &CacheManager, args: &DuArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let usage = block_on(mgr.disk_usage(&Filter::parse(&args.filters)?))??;
    let json: Vec<UsageJson> = usage.iter().map(UsageJson::from).collect();
    if out.json() {
        out.line(&json, "")?;
        return Ok(ExitCode::SUCCESS);
    }
    let total: u64 = usage.iter().map(|u| u.size).sum();
    let reclaimable: u64 = usage.iter().filter(|u| !u.in_use).map(|u| u.size).sum();
    if args.verbose {
        let mut lines = Vec::new();
        for u in &json {
            lines.push(format!("ID:\t\t{}", u.id));
            lines.push(format!(
                "Parent:\t\t{}",
                u.parent.clone().unwrap_or_default()
            ));
            lines.push(format!("Type:\t\t{}", u.record_type));
            lines.push(format!("Description:\t{}", u.description));
            lines.push(format!("Mutable:\t{}", u.mutable));
            lines.push(format!("In use:\t\t{}", u.in_use));
            lines.push(format!("Size:\t\t{}", output::size(u.size)));
            lines.push(format!("Shared:\t\t{}", output::size(u.shared)));
            lines.push(format!("Inodes:\t\t{}", u.inodes));
            lines.push(format!(
                "Created at:\t{}",
                u.created.clone().unwrap_or_default()
            ));
            lines.push(format!(
                "Last used:\t{}",
                u.last_used.clone().unwrap_or_default()
            ));
            lines.push(format!("Usage count:\t{}", u.usage_count));
            lines.push(String::new());
        }
        lines.push(format!("Reclaimable:\t{}", output::size(reclaimable)));
        lines.push(format!("Total:\t\t{}", output::size(total)));
        out.line(&json, &lines.join("\n"))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows: Vec<Vec<String>> = json
        .iter()
        .map(|u| {
            vec![
                u.id.clone(),
                if u.reclaimable { "true" } else { "false" }.into(),
                output::size(u.size),
                output::size(u.shared),
                u.last_used.clone().unwrap_or_default(),
            ]
        })
        .collect();
    rows.push(vec![
        "Reclaimable:".into(),
        String::new(),
        output::size(reclaimable),
        String::new(),
        String::new(),
    ]);
    rows.push(vec![
        "Total:".into(),
        String::new(),
        output::size(total),
        String::new(),
        String::new(),
    ]);
    out.emit(
        &json,
        &["ID", "RECLAIMABLE", "SIZE", "SHARED", "LAST ACCESSED"],
        rows,
    )?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct PruneJson {
    dry_run: bool,
    removed: Vec<UsageJson>,
    reclaimed: u64,
    kept: Vec<KeptJson>,
}

#[derive(Serialize)]
struct KeptJson {
    id: String,
    reason: String,
}

/// `strata prune`.
pub fn prune(mgr: &CacheManager, args: &PruneArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let size = |s: &Option<String>| {
        s.as_deref()
            .map(parse_size)
            .transpose()
            .map(Option::unwrap_or_default)
    };
    let opts = PruneOptions {
        filter: Filter::parse(&args.filters)?,
        all: args.all,
        keep_duration: args
            .keep_duration
            .as_deref()
            .map(parse_duration)
            .transpose()?,
        reserved_space: size(&args.keep_storage)?,
        max_used_space: size(&args.max_used_space)?,
        min_free_space: size(&args.min_free_space)?,
        dry_run: args.dry_run,
    };
    let (ctx, bars) = crate::progress::drawn(out.ctx(), out);
    let report = block_on(mgr.prune_in(&ctx, &opts));
    drop(bars);
    let report = report??;
    let json = PruneJson {
        dry_run: args.dry_run,
        removed: report.removed.iter().map(UsageJson::from).collect(),
        reclaimed: report.reclaimed,
        kept: report
            .kept
            .iter()
            .map(|(u, why)| KeptJson {
                id: u.id.clone(),
                reason: why.clone(),
            })
            .collect(),
    };
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let mut lines: Vec<String> = report
        .removed
        .iter()
        .map(|u| format!("{verb} {} {}", u.id, output::size(u.size)))
        .collect();
    if args.dry_run {
        lines.extend(
            report
                .kept
                .iter()
                .map(|(u, why)| format!("keep {}: {why}", u.id)),
        );
    }
    lines.push(format!(
        "Total: {} {}",
        output::size(report.reclaimed),
        if args.dry_run {
            "reclaimable"
        } else {
            "reclaimed"
        }
    ));
    out.line(&json, &lines.join("\n"))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("10GB").unwrap(), 10_000_000_000);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5XB").is_err());
    }
}
