//! `strata content ...`: ingest, list, inspect, read, label and remove blobs,
//! and list or abort partial ingests.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use strata_content::{Info, Status};
use strata_core::{Digest, Filter, Labels, labels};
use strata_leases::Resource;

use crate::lease::Hold;
use crate::output::{self, Output};
use crate::root::Root;

#[derive(Debug, Subcommand)]
pub enum ContentCmd {
    /// Ingest a file (or - for stdin) and print its digest. An interrupted
    /// ingest of the same file resumes.
    Ingest(IngestArgs),
    /// List blobs.
    Ls {
        /// containerd filter, e.g. labels."containerd.io/gc.root" (repeat for OR).
        #[arg(long = "filter", value_name = "FILTER")]
        filters: Vec<String>,
        /// Print digests only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show one blob's size, times and labels.
    Info {
        /// The blob, as ALG:HEX.
        digest: String,
    },
    /// Write a blob to stdout.
    Cat {
        /// The blob, as ALG:HEX.
        digest: String,
    },
    /// Set labels (K=V) on a blob; an empty value (K=) removes the label.
    Label {
        /// The blob, as ALG:HEX.
        digest: String,
        /// Labels to set; K= removes K.
        #[arg(required = true, value_name = "K=V")]
        labels: Vec<String>,
    },
    /// Remove blobs.
    Rm {
        /// Blobs, as ALG:HEX.
        #[arg(required = true)]
        digests: Vec<String>,
    },
    /// List partial ingests.
    Active {
        /// containerd filter on ref, offset, total (repeat for OR).
        #[arg(long = "filter", value_name = "FILTER")]
        filters: Vec<String>,
    },
    /// Abandon a partial ingest.
    Abort {
        /// The ingest, as `content active` names it.
        reference: String,
    },
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// File to ingest; - reads stdin.
    file: PathBuf,
    /// Refuse the content unless it has this digest (its algorithm is used).
    #[arg(long, value_name = "DIGEST")]
    expected: Option<String>,
    /// Refuse the content unless it has this size.
    #[arg(long, value_name = "BYTES")]
    size: Option<u64>,
    /// Label to set on the blob (repeatable).
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// Ingest ref [default: derived from the file path].
    #[arg(long = "ref", value_name = "REF")]
    reference: Option<String>,
}

#[derive(Serialize)]
struct InfoJson {
    digest: String,
    size: u64,
    created: String,
    updated: String,
    labels: Labels,
}

impl From<&Info> for InfoJson {
    fn from(i: &Info) -> Self {
        InfoJson {
            digest: i.digest.to_string(),
            size: i.size,
            created: output::time(i.created),
            updated: output::time(i.updated),
            labels: i.labels.clone(),
        }
    }
}

#[derive(Serialize)]
struct StatusJson {
    reference: String,
    offset: u64,
    total: u64,
    expected: Option<String>,
    started: String,
    updated: String,
}

impl From<&Status> for StatusJson {
    fn from(s: &Status) -> Self {
        StatusJson {
            reference: s.reference.clone(),
            offset: s.offset,
            total: s.total,
            expected: s.expected.as_ref().map(ToString::to_string),
            started: output::time(s.started),
            updated: output::time(s.updated),
        }
    }
}

#[derive(Serialize)]
struct IngestJson {
    digest: String,
    size: u64,
    already_existed: bool,
}

/// The lease a blob gets when no `--lease` is given.
fn default_lease(d: &Digest) -> String {
    format!("content/{d}")
}

/// Labels from `K=V` arguments.
pub(crate) fn parse_labels(args: &[String]) -> anyhow::Result<Labels> {
    args.iter()
        .map(|a| labels::parse_assignment(a).map_err(Into::into))
        .collect()
}

pub fn run(
    root: &Root,
    cmd: ContentCmd,
    lease: Option<&str>,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let cs = &root.content;
    let hold = Hold::new(&root.leases, lease, out.ctx());
    match cmd {
        ContentCmd::Ingest(args) => ingest(root, args, &hold, out)?,
        ContentCmd::Ls { filters, quiet } => {
            let infos = cs.list(&Filter::parse(&filters)?)?;
            if quiet && !out.json() {
                let mut stdout = out.stdout();
                for i in &infos {
                    writeln!(stdout, "{}", i.digest)?;
                }
            } else {
                let json: Vec<InfoJson> = infos.iter().map(InfoJson::from).collect();
                let rows = infos
                    .iter()
                    .map(|i| {
                        vec![
                            i.digest.to_string(),
                            output::size(i.size),
                            output::time(i.created),
                            output::labels(&i.labels),
                        ]
                    })
                    .collect();
                out.emit(&json, &["DIGEST", "SIZE", "CREATED", "LABELS"], rows)?;
            }
        }
        ContentCmd::Info { digest } => {
            let info = cs.info(&Digest::parse(&digest)?)?;
            let rows = vec![
                vec!["digest".into(), info.digest.to_string()],
                vec!["size".into(), info.size.to_string()],
                vec!["created".into(), output::time(info.created)],
                vec!["updated".into(), output::time(info.updated)],
                vec!["labels".into(), output::labels(&info.labels)],
            ];
            out.emit(&InfoJson::from(&info), &["FIELD", "VALUE"], rows)?;
        }
        ContentCmd::Cat { digest } => {
            let mut reader = cs.reader_at(&Digest::parse(&digest)?)?;
            let mut stdout = out.stdout();
            match io::copy(&mut reader, &mut *stdout).and_then(|_| stdout.flush()) {
                Ok(()) => {}
                // A closed pipe (`| head`) is the reader's choice, not a failure.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
                Err(e) => return Err(e).context("write blob to stdout"),
            }
        }
        ContentCmd::Label { digest, labels } => {
            let digest = Digest::parse(&digest)?;
            let mut info = cs.info(&digest)?;
            let set = parse_labels(&labels)?;
            let paths: Vec<String> = set.keys().map(|k| format!("labels.{k}")).collect();
            info.labels = set;
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            let info = cs.update(&info, &paths)?;
            out.line(
                &InfoJson::from(&info),
                &format!("{}: {}", info.digest, output::labels(&info.labels)),
            )?;
        }
        ContentCmd::Rm { digests } => {
            let digests: Vec<Digest> = digests
                .iter()
                .map(|d| Digest::parse(d))
                .collect::<Result<_, _>>()?;
            for d in &digests {
                hold.detach(&default_lease(d), &Resource::content(d))?;
                cs.delete(d)?;
            }
            let removed: Vec<String> = digests.iter().map(ToString::to_string).collect();
            out.line(&removed, &removed.join("\n"))?;
        }
        ContentCmd::Active { filters } => {
            let statuses = cs.list_statuses(&Filter::parse(&filters)?)?;
            let json: Vec<StatusJson> = statuses.iter().map(StatusJson::from).collect();
            let rows = statuses
                .iter()
                .map(|s| {
                    vec![
                        s.reference.clone(),
                        s.offset.to_string(),
                        s.total.to_string(),
                        output::time(s.updated),
                    ]
                })
                .collect();
            out.emit(&json, &["REF", "OFFSET", "TOTAL", "UPDATED"], rows)?;
        }
        ContentCmd::Abort { reference } => {
            cs.abort(&reference)?;
            out.line(&reference, &reference)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn ingest(root: &Root, args: IngestArgs, hold: &Hold<'_>, out: &Output) -> anyhow::Result<()> {
    let expected = args.expected.as_deref().map(Digest::parse).transpose()?;
    let labels = parse_labels(&args.labels)?;
    let stdin = args.file.as_os_str() == "-";
    let (reader, reference): (Box<dyn Read>, String) = if stdin {
        let reference = args
            .reference
            .unwrap_or_else(|| format!("stdin-{}", strata_core::id::new_id()));
        (out.stdin()?, reference)
    } else {
        let file =
            File::open(&args.file).with_context(|| format!("open {}", args.file.display()))?;
        let reference = match args.reference {
            Some(r) => r,
            None => {
                let abs = std::fs::canonicalize(&args.file)
                    .with_context(|| format!("resolve {}", args.file.display()))?;
                format!("file:{}", abs.display())
            }
        };
        (Box::new(file), reference)
    };
    // The digest (and so the default lease's name) is known only at the
    // end: a temporary lease holds the blob from the transaction that
    // records it until the object's own lease does.
    let got = (|| -> anyhow::Result<_> {
        let (ctx, guard) = strata_leases::with_lease(out.ctx(), &root.leases)?;
        let got = root.content.under(&ctx).ingest(
            &reference,
            reader,
            args.size,
            expected.as_ref(),
            &labels,
        )?;
        hold.attach(&default_lease(&got.digest), &Resource::content(&got.digest))?;
        guard.release()?;
        Ok(got)
    })()
    .with_context(|| format!("ingest {reference}"))?;
    if got.already_existed && !labels.is_empty() {
        // The blob was there already; the labels asked for still apply.
        let mut info = root.content.info(&got.digest)?;
        let paths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
        info.labels = labels;
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        root.content.update(&info, &paths)?;
    }
    let json = IngestJson {
        digest: got.digest.to_string(),
        size: got.size,
        already_existed: got.already_existed,
    };
    out.line(&json, got.digest.as_str())
}
