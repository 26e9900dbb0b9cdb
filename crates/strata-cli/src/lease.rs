//! `strata lease ...` and `strata gc`, and the holds every creating command
//! takes: under `--lease ID` what a command creates joins that lease
//! (created if missing); otherwise each object gets a lease named after it
//! (`content/<digest>`, `snapshot/<key>`), which the matching `rm` drops. So
//! nothing a user created disappears at the next collection by surprise.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;
use strata_core::{ErrorKind, Filter, Labels};
use strata_leases::gc::GcOptions;
use strata_leases::{LeaseError, LeaseManager, LeaseSpec, OpCtx, Resource};

use crate::content::parse_labels;
use crate::output::{self, Output};
use crate::root::{CliError, Root};

#[derive(Debug, Subcommand)]
pub enum LeaseCmd {
    /// Create a lease and print its id.
    Create {
        /// The id [default: random].
        #[arg(long)]
        id: Option<String>,
        /// Expire after this long (e.g. 30m, 24h).
        #[arg(long, value_name = "DURATION")]
        expire: Option<String>,
        /// Labels on the lease (repeatable).
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
    },
    /// List leases.
    Ls {
        /// containerd filter on id and labels (repeat for OR).
        #[arg(long = "filter", value_name = "FILTER")]
        filters: Vec<String>,
    },
    /// Delete leases (what they held becomes collectable).
    Rm {
        /// Lease ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Collect right away.
        #[arg(long)]
        sync: bool,
    },
    /// Add a resource (TYPE: content, ingests or snapshots/<backend>).
    Add {
        /// The lease.
        id: String,
        /// content, ingests or snapshots/<backend>.
        #[arg(value_name = "TYPE")]
        kind: String,
        /// A digest, an ingest reference or a snapshot key.
        resource: String,
    },
    /// List a lease's resources.
    Resources {
        /// The lease.
        id: String,
    },
}

#[derive(Serialize)]
struct LeaseJson {
    id: String,
    created: String,
    labels: Labels,
}

#[derive(Serialize)]
struct ResourceJson {
    #[serde(rename = "type")]
    kind: String,
    id: String,
}

/// The lease a creating command puts its objects in.
#[derive(Debug)]
pub struct Hold<'a> {
    leases: &'a LeaseManager,
    explicit: Option<&'a str>,
    base: &'a OpCtx,
}

impl<'a> Hold<'a> {
    /// Objects go into `explicit` (`--lease`) or their default lease; work
    /// runs under `base` (the command's context).
    pub fn new(leases: &'a LeaseManager, explicit: Option<&'a str>, base: &'a OpCtx) -> Hold<'a> {
        Hold {
            leases,
            explicit,
            base,
        }
    }

    /// The `--lease` lease, or the default lease `default`; created when
    /// missing.
    fn lease(&self, default: &str) -> Result<String, LeaseError> {
        let id = self.explicit.unwrap_or(default);
        match self.leases.create(LeaseSpec {
            id: Some(id.to_owned()),
            ..LeaseSpec::default()
        }) {
            Ok(_) | Err(LeaseError::AlreadyExists(_)) => Ok(id.to_owned()),
            Err(e) => Err(e),
        }
    }

    /// The context to create an object in: what the stores make under it
    /// goes into the `--lease` lease, or the default lease `default`, in
    /// the transaction that records it.
    pub fn ctx(&self, default: &str) -> Result<OpCtx, LeaseError> {
        Ok(self.base.with_lease_id(&self.lease(default)?))
    }

    /// Holds `r` in the `--lease` lease, or in the default lease `default`.
    pub fn attach(&self, default: &str, r: &Resource) -> Result<(), LeaseError> {
        self.leases.hold(self.explicit.unwrap_or(default), r)
    }

    /// Lets go of `r`: out of the `--lease` lease, or the default lease
    /// `default` deleted.
    pub fn detach(&self, default: &str, r: &Resource) -> Result<(), LeaseError> {
        let result = match self.explicit {
            Some(id) => self.leases.delete_resource(id, r),
            None => self.leases.delete(default),
        };
        match result {
            Err(LeaseError::NotFound(_)) => Ok(()),
            other => other,
        }
    }
}

pub fn run(root: &Root, cmd: LeaseCmd, out: &Output) -> anyhow::Result<ExitCode> {
    let lm = &root.leases;
    match cmd {
        LeaseCmd::Create { id, expire, labels } => {
            let expire = expire
                .map(|e| {
                    humantime::parse_duration(&e).map_err(|err| CliError {
                        kind: ErrorKind::Invalid,
                        message: format!("--expire {e:?}: {err}"),
                    })
                })
                .transpose()?;
            let lease = lm.create(LeaseSpec {
                id,
                labels: parse_labels(&labels)?,
                expire,
            })?;
            out.line(&json(&lease), &lease.id)?;
        }
        LeaseCmd::Ls { filters } => {
            let leases = lm.list(&Filter::parse(&filters)?)?;
            let json: Vec<LeaseJson> = leases.iter().map(json).collect();
            let rows = leases
                .iter()
                .map(|l| {
                    vec![
                        l.id.clone(),
                        output::time(l.created),
                        output::labels(&l.labels),
                    ]
                })
                .collect();
            out.emit(&json, &["ID", "CREATED", "LABELS"], rows)?;
        }
        LeaseCmd::Rm { ids, sync } => {
            for (i, id) in ids.iter().enumerate() {
                if sync && i + 1 == ids.len() {
                    lm.delete_sync(id, &root.collector)?;
                } else {
                    lm.delete(id)?;
                }
            }
            out.line(&ids, &ids.join("\n"))?;
        }
        LeaseCmd::Add { id, kind, resource } => {
            lm.add_resource(
                &id,
                &Resource {
                    kind: kind.clone(),
                    id: resource.clone(),
                },
            )?;
            let text = format!("{kind} {resource}");
            out.line(&ResourceJson { kind, id: resource }, &text)?;
        }
        LeaseCmd::Resources { id } => {
            let resources = lm.list_resources(&id)?;
            let json: Vec<ResourceJson> = resources
                .iter()
                .map(|r| ResourceJson {
                    kind: r.kind.clone(),
                    id: r.id.clone(),
                })
                .collect();
            let rows = resources
                .iter()
                .map(|r| vec![r.kind.clone(), r.id.clone()])
                .collect();
            out.emit(&json, &["TYPE", "ID"], rows)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn json(l: &strata_leases::Lease) -> LeaseJson {
    LeaseJson {
        id: l.id.clone(),
        created: output::time(l.created),
        labels: l.labels.clone(),
    }
}

#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// Report what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Show, for every survivor, the chain that pins it.
    #[arg(long)]
    explain: bool,
}

#[derive(Serialize)]
struct GcJson {
    dry_run: bool,
    removed: RemovedJson,
    kept: usize,
    pins: Vec<PinJson>,
    pause_ms: f64,
    duration_ms: f64,
}

#[derive(Serialize)]
struct RemovedJson {
    content: Vec<String>,
    snapshots: Vec<String>,
    ingests: Vec<String>,
    leases: Vec<String>,
}

#[derive(Serialize)]
struct PinJson {
    object: String,
    chain: Vec<String>,
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn gc(root: &Root, args: &GcArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let (ctx, bars) = crate::progress::drawn(out.ctx(), out);
    let report = root.collector.collect_in(
        &ctx,
        GcOptions {
            dry_run: args.dry_run,
            explain: args.explain,
        },
    );
    drop(bars);
    let report = report.with_context(|| format!("collect in {}", root.path.display()))?;
    let s = &report.swept;
    let removed = RemovedJson {
        content: s.content.clone(),
        snapshots: s.snapshots.iter().map(|(k, _)| k.clone()).collect(),
        ingests: s.ingests.iter().map(|(r, _)| r.clone()).collect(),
        leases: s
            .leases
            .iter()
            .map(|(ns, id)| format!("{ns}/{id}"))
            .collect(),
    };
    let mut lines: Vec<String> = Vec::new();
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for (kind, items) in [
        ("content", &removed.content),
        ("snapshot", &removed.snapshots),
        ("ingest", &removed.ingests),
        ("lease", &removed.leases),
    ] {
        lines.extend(items.iter().map(|i| format!("{verb} {kind} {i}")));
    }
    let pins: Vec<PinJson> = report
        .pins
        .iter()
        .map(|(node, chain)| PinJson {
            object: node.to_string(),
            chain: chain.clone(),
        })
        .collect();
    for p in &pins {
        lines.push(format!("kept {}: {}", p.object, p.chain.join(" -> ")));
    }
    lines.push(format!(
        "{verb} {} object(s), kept {}, in {:.1} ms (writers paused {:.1} ms)",
        s.len(),
        report.kept,
        millis(report.duration),
        millis(report.pause)
    ));
    let json = GcJson {
        dry_run: args.dry_run,
        removed,
        kept: report.kept,
        pins,
        pause_ms: millis(report.pause),
        duration_ms: millis(report.duration),
    };
    out.line(&json, &lines.join("\n"))?;
    Ok(ExitCode::SUCCESS)
}
