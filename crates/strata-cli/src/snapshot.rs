//! `strata snapshot ...`, `strata mount` and `strata umount`: the
//! snapshotter from the shell.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use serde::Serialize;
use strata_core::{Filter, Labels, Mount};
use strata_diff::{Comparison, Diff, MergeStats, Merger};
use strata_leases::{OpCtx, Resource};
use strata_snapshot::{Info, Kind, SnapshotError, Snapshotter};

use crate::content::parse_labels;
use crate::lease::Hold;
use crate::output::{self, Output};
use crate::root::{CliError, Root};

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Create an active snapshot KEY on PARENT (empty without one) and print its mounts.
    Prepare {
        /// The new active snapshot.
        key: String,
        /// A committed snapshot to build on.
        parent: Option<String>,
        /// Labels on the new snapshot.
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
    },
    /// Create a read-only view KEY of PARENT and print its mounts.
    View {
        /// The new view.
        key: String,
        /// The committed snapshot it shows.
        parent: String,
        /// Labels on the new view.
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
    },
    /// Print the mounts of an active snapshot or view.
    Mounts {
        /// An active snapshot or view.
        key: String,
    },
    /// Commit the active snapshot KEY as NAME.
    Commit {
        /// The committed snapshot to create.
        name: String,
        /// The active snapshot to commit (it goes away).
        key: String,
        /// Labels on the committed snapshot.
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
    },
    /// Remove snapshots (children first).
    Rm {
        /// Snapshots without children (or whose children come earlier in the list).
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// List snapshots.
    Ls {
        /// containerd filter, e.g. kind==committed or parent==KEY (repeat for OR).
        #[arg(long = "filter", value_name = "FILTER")]
        filters: Vec<String>,
    },
    /// Show one snapshot.
    Info {
        /// Any snapshot.
        key: String,
    },
    /// Disk usage of snapshots' own layers (all when no key is given).
    Usage {
        /// Snapshots to measure [default: all].
        keys: Vec<String>,
    },
    /// Show the snapshots as a tree of parents and children.
    Tree,
    /// Merge committed snapshots into the committed snapshot NAME; later keys win.
    Merge {
        /// The committed snapshot to create.
        name: String,
        /// Committed snapshots, lowest first.
        #[arg(required = true)]
        keys: Vec<String>,
        /// Labels on the new snapshot.
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
    },
    /// Commit as NAME a fresh tree holding what changed from LOWER to UPPER (deletions dropped).
    Diff {
        /// The committed snapshot to create.
        name: String,
        /// The committed snapshot compared from.
        lower: String,
        /// The committed snapshot compared to.
        upper: String,
        /// Labels on the new snapshot.
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
    },
}

#[derive(Serialize)]
struct MountJson {
    #[serde(rename = "type")]
    kind: String,
    source: String,
    target: String,
    options: Vec<String>,
}

#[derive(Serialize)]
struct InfoJson {
    name: String,
    parent: Option<String>,
    kind: &'static str,
    labels: Labels,
    created: String,
    updated: String,
}

impl From<&Info> for InfoJson {
    fn from(i: &Info) -> Self {
        InfoJson {
            name: i.name.clone(),
            parent: i.parent.clone(),
            kind: i.kind.as_str(),
            labels: i.labels.clone(),
            created: output::time(i.created),
            updated: output::time(i.updated),
        }
    }
}

#[derive(Serialize)]
struct UsageJson {
    name: String,
    size: u64,
    inodes: u64,
}

fn print_mounts(out: &Output, mounts: &[Mount]) -> anyhow::Result<()> {
    let json: Vec<MountJson> = mounts
        .iter()
        .map(|m| MountJson {
            kind: m.kind.name().to_owned(),
            source: m.source.display().to_string(),
            target: m.target.display().to_string(),
            options: m.flat_options(),
        })
        .collect();
    let rows = mounts
        .iter()
        .map(|m| {
            vec![
                m.kind.name().to_owned(),
                m.source.display().to_string(),
                m.flat_options().join(","),
            ]
        })
        .collect();
    out.emit(&json, &["TYPE", "SOURCE", "OPTIONS"], rows)
}

/// The lease a snapshot gets when no `--lease` is given.
fn default_lease(key: &str) -> String {
    format!("snapshot/{key}")
}

/// Creates under the context of the object's lease (the stores record the
/// object and its hold in one transaction); lets go of a default lease
/// again when creating fails.
fn created<T>(
    hold: &Hold<'_>,
    (lease, resource): (String, Resource),
    create: impl FnOnce(&OpCtx) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let ctx = hold.ctx(&lease)?;
    match create(&ctx) {
        Ok(v) => Ok(v),
        Err(e) => {
            if let Err(undo) = hold.detach(&lease, &resource) {
                tracing::warn!(lease, error = %undo, "could not release the hold of a failed create");
            }
            Err(e)
        }
    }
}

pub(crate) fn block_on<T>(f: impl Future<Output = T>) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(f))
}

/// [`block_on`] with worker threads, for commands whose work runs side by
/// side (downloads, unpacking and hashing; a server's calls).
pub(crate) fn block_on_parallel<T>(f: impl Future<Output = T>) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(f))
}

async fn list(sn: &dyn Snapshotter, filter: &Filter) -> Result<Vec<Info>, SnapshotError> {
    let mut infos = Vec::new();
    sn.walk(filter, &mut |i: Info| {
        infos.push(i);
        Box::pin(async { Ok(()) })
    })
    .await?;
    Ok(infos)
}

pub fn run(
    root: &Root,
    cmd: SnapshotCmd,
    lease: Option<&str>,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let sn: &dyn Snapshotter = &root.snapshots;
    let merger = Merger::new(root.snapshots.clone(), root.tmp.clone());
    let hold = Hold::new(&root.leases, lease, out.ctx());
    let held = |key: &str| (default_lease(key), Resource::snapshot(sn.name(), key));
    match cmd {
        SnapshotCmd::Prepare {
            key,
            parent,
            labels,
        } => {
            let labels = parse_labels(&labels)?;
            let mounts = created(&hold, held(&key), |ctx| {
                let sn = root.snapshots.under(ctx);
                Ok(block_on(sn.prepare(&key, parent.as_deref(), labels))??)
            })?;
            print_mounts(out, &mounts)?;
        }
        SnapshotCmd::View {
            key,
            parent,
            labels,
        } => {
            let labels = parse_labels(&labels)?;
            let mounts = created(&hold, held(&key), |ctx| {
                let sn = root.snapshots.under(ctx);
                Ok(block_on(sn.view(&key, Some(&parent), labels))??)
            })?;
            print_mounts(out, &mounts)?;
        }
        SnapshotCmd::Mounts { key } => print_mounts(out, &block_on(sn.mounts(&key))??)?,
        SnapshotCmd::Commit { name, key, labels } => {
            let labels = parse_labels(&labels)?;
            created(&hold, held(&name), |ctx| {
                let sn = root.snapshots.under(ctx);
                Ok(block_on(sn.commit(&name, &key, labels))??)
            })?;
            let (lease, resource) = held(&key);
            hold.detach(&lease, &resource)?;
            out.line(&name, &name)?;
        }
        SnapshotCmd::Rm { keys } => {
            for key in &keys {
                block_on(sn.remove(key))??;
                let (lease, resource) = held(key);
                hold.detach(&lease, &resource)?;
            }
            out.line(&keys, &keys.join("\n"))?;
        }
        SnapshotCmd::Ls { filters } => {
            let infos = block_on(list(sn, &Filter::parse(&filters)?))??;
            let json: Vec<InfoJson> = infos.iter().map(InfoJson::from).collect();
            let rows = infos
                .iter()
                .map(|i| {
                    vec![
                        i.name.clone(),
                        i.parent.clone().unwrap_or_default(),
                        i.kind.as_str().into(),
                        output::time(i.created),
                        output::labels(&i.labels),
                    ]
                })
                .collect();
            out.emit(&json, &["KEY", "PARENT", "KIND", "CREATED", "LABELS"], rows)?;
        }
        SnapshotCmd::Info { key } => {
            let info = block_on(sn.stat(&key))??;
            let rows = vec![
                vec!["name".into(), info.name.clone()],
                vec!["parent".into(), info.parent.clone().unwrap_or_default()],
                vec!["kind".into(), info.kind.as_str().into()],
                vec!["created".into(), output::time(info.created)],
                vec!["updated".into(), output::time(info.updated)],
                vec!["labels".into(), output::labels(&info.labels)],
            ];
            out.emit(&InfoJson::from(&info), &["FIELD", "VALUE"], rows)?;
        }
        SnapshotCmd::Usage { keys } => {
            let keys = if keys.is_empty() {
                block_on(list(sn, &Filter::default()))??
                    .into_iter()
                    .map(|i| i.name)
                    .collect()
            } else {
                keys
            };
            let mut json = Vec::new();
            for key in keys {
                let u = block_on(merger.usage(&key))??;
                json.push(UsageJson {
                    name: key,
                    size: u.size,
                    inodes: u.inodes,
                });
            }
            let rows = json
                .iter()
                .map(|u| vec![u.name.clone(), output::size(u.size), u.inodes.to_string()])
                .collect();
            out.emit(&json, &["KEY", "SIZE", "INODES"], rows)?;
        }
        SnapshotCmd::Tree => tree(sn, out)?,
        SnapshotCmd::Merge { name, keys, labels } => {
            let labels = parse_labels(&labels)?;
            let diffs: Vec<Diff> = keys.iter().map(|k| Diff::whole(k)).collect();
            let stats = created(&hold, held(&name), |ctx| {
                Ok(block_on(merger.merge(ctx, &name, &diffs, labels))??)
            })?;
            print_merged(out, &name, &stats)?;
        }
        SnapshotCmd::Diff {
            name,
            lower,
            upper,
            labels,
        } => {
            let labels = parse_labels(&labels)?;
            let diff = Diff {
                lower: Some(lower),
                upper: Some(upper),
                comparison: Comparison::ContentOnMetadataMatch,
            };
            let stats = created(&hold, held(&name), |ctx| {
                Ok(block_on(merger.merge(ctx, &name, &[diff], labels))??)
            })?;
            print_merged(out, &name, &stats)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct MergedJson<'a> {
    name: &'a str,
    changes: u64,
    linked: u64,
    copied: u64,
    size: u64,
    inodes: u64,
}

fn print_merged(out: &Output, name: &str, stats: &MergeStats) -> anyhow::Result<()> {
    let json = MergedJson {
        name,
        changes: stats.changes,
        linked: stats.linked,
        copied: stats.copied,
        size: stats.usage.size,
        inodes: stats.usage.inodes,
    };
    let text = format!(
        "{name}: {} changes, {} files shared, {} copied, {} own",
        stats.changes,
        stats.linked,
        stats.copied,
        output::size(stats.usage.size)
    );
    out.line(&json, &text)
}

fn tree(sn: &dyn Snapshotter, out: &Output) -> anyhow::Result<()> {
    let infos = block_on(list(sn, &Filter::default()))??;
    let mut children: BTreeMap<Option<String>, Vec<&Info>> = BTreeMap::new();
    for i in &infos {
        children.entry(i.parent.clone()).or_default().push(i);
    }
    let mut lines = Vec::new();
    let mut stack: Vec<(&Info, usize)> = children
        .get(&None)
        .into_iter()
        .flatten()
        .rev()
        .map(|i| (*i, 0))
        .collect();
    while let Some((info, depth)) = stack.pop() {
        lines.push(format!(
            "{}{} [{}]",
            "  ".repeat(depth),
            info.name,
            info.kind.as_str()
        ));
        for child in children
            .get(&Some(info.name.clone()))
            .into_iter()
            .flatten()
            .rev()
        {
            stack.push((child, depth + 1));
        }
    }
    let json: Vec<InfoJson> = infos.iter().map(InfoJson::from).collect();
    out.line(&json, lines.join("\n").as_str())
}

/// `strata mount KEY DIR [--rw]`.
pub fn mount(
    root: &Root,
    key: &str,
    dir: &Path,
    rw: bool,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let sn: &dyn Snapshotter = &root.snapshots;
    let info = block_on(sn.stat(key))??;
    let mounts = match info.kind {
        Kind::Committed if rw => {
            return Err(CliError {
                kind: strata_core::ErrorKind::FailedPrecondition,
                message: format!(
                    "snapshot {key:?} is committed and immutable; prepare a snapshot on it to write"
                ),
            }
            .into());
        }
        Kind::Committed => root.snapshots.view_mounts(key)?,
        Kind::View => block_on(sn.mounts(key))??,
        Kind::Active if rw => block_on(sn.mounts(key))??,
        Kind::Active => strata_snapshot::mounts::read_only(&block_on(sn.mounts(key))??),
    };
    strata_sys::mount::mount_all(&mounts, dir)?;
    out.line(&dir.display().to_string(), &dir.display().to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// `strata umount DIR`: unmounts everything stacked on DIR.
pub fn umount(dir: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    if !strata_sys::mount::is_mount_point(dir)? {
        return Err(CliError {
            kind: strata_core::ErrorKind::NotFound,
            message: format!("{} is not a mount point", dir.display()),
        }
        .into());
    }
    while strata_sys::mount::is_mount_point(dir)? {
        strata_sys::mount::unmount(dir)?;
    }
    out.line(&dir.display().to_string(), &dir.display().to_string())?;
    Ok(ExitCode::SUCCESS)
}
