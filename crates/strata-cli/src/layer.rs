//! `strata layer apply LAYER DIR`: a layer (tar, tar+gzip, tar+zstd) onto a
//! plain directory, verified and confined; `strata layer diff LOWER UPPER
//! -o FILE`: the layer of what changed between two plain directories. No
//! state root is involved.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;
use strata_core::Digest;
use strata_diff::estargz::{EStargzOptions, Index};
use strata_diff::{
    ApplyError, ApplyOptions, Comparison, Compression, WriteOptions, apply, walk_changes,
    write_layer,
};

use crate::output::Output;

#[derive(Debug, Subcommand)]
pub enum LayerCmd {
    /// Apply LAYER (a file, or - for stdin) onto DIR. Digests are checked at
    /// the end: on any failure DIR keeps what was applied before it.
    Apply(ApplyArgs),
    /// Write the layer of what changed from LOWER to UPPER (two directories) to FILE.
    /// A file whose size and mtime match in both is compared byte for byte.
    Diff {
        /// The directory before.
        lower: PathBuf,
        /// The directory after.
        upper: PathBuf,
        /// Where the layer is written.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        /// How the layer is compressed.
        #[arg(long, value_enum, default_value = "gzip")]
        compression: CompressionArg,
        /// Compression level (gzip 0-9, zstd 1-22); the codec's default otherwise.
        #[arg(long)]
        level: Option<i32>,
        /// With --compression estargz: a file (path in the layer) to put
        /// first, for readers to fetch before the rest; repeat in order.
        #[arg(long = "prioritize", value_name = "PATH")]
        prioritized: Vec<String>,
        /// With --compression estargz: bytes of a file per chunk [default: 4 MiB].
        #[arg(long, value_name = "BYTES")]
        chunk_size: Option<u64>,
        /// Clamp mtimes to this many seconds since the epoch (reproducible layers).
        #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECONDS")]
        source_date_epoch: Option<i64>,
    },
}

/// What `strata layer apply` takes.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// A tar, tar+gzip or tar+zstd file, or - for stdin.
    pub(crate) layer: PathBuf,
    /// An existing directory the layer lands in.
    pub(crate) dir: PathBuf,
    /// Refuse the layer unless its bytes have this digest.
    #[arg(long, value_name = "DIGEST")]
    pub(crate) digest: Option<String>,
    /// Refuse the layer unless its uncompressed tar has this digest.
    #[arg(long = "diff-id", value_name = "DIGEST")]
    pub(crate) diff_id: Option<String>,
    /// The layer's media type, checked against its compression.
    #[arg(long)]
    pub(crate) media_type: Option<String>,
    /// Skip device nodes that cannot be made without privilege.
    #[arg(long)]
    pub(crate) skip_devices: bool,
    /// Refuse the layer unless it is eStargz with a table of contents
    /// of this digest. An eStargz file is checked against its table of
    /// contents, and its landmark and TOC entries are not written.
    #[arg(long = "toc-digest", value_name = "DIGEST")]
    pub(crate) toc_digest: Option<String>,
}

/// A layer compression as users name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressionArg {
    Gzip,
    Zstd,
    /// gzip laid out for lazy reading (eStargz, with a table of contents).
    Estargz,
    None,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Compression {
        match c {
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Zstd => Compression::Zstd,
            CompressionArg::Estargz => Compression::EStargz,
            CompressionArg::None => Compression::None,
        }
    }
}

#[derive(Serialize)]
struct WrittenJson {
    file: String,
    media_type: &'static str,
    digest: String,
    size: u64,
    diff_id: String,
    uncompressed_size: u64,
    entries: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    toc_digest: Option<String>,
}

fn diff(
    lower: &Path,
    upper: &Path,
    output: &Path,
    opts: &WriteOptions,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let part = output.with_extension(format!("part-{}", strata_core::id::new_id()));
    let file = File::create(&part).with_context(|| format!("create {}", part.display()))?;
    let result = write_layer(
        &strata_leases::OpCtx::new(),
        std::io::BufWriter::new(file),
        upper,
        opts,
        |w| {
            // Two directories with no history between them: equal size and
            // mtime say nothing about the bytes, so those are compared.
            walk_changes(
                Some(lower),
                upper,
                Comparison::ContentOnMetadataMatch,
                &mut |c| w.change(&c),
            )
        },
    )
    .map_err(anyhow::Error::from)
    .and_then(|(written, sink)| {
        let file = sink.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&part, output)?;
        Ok(written)
    });
    let written = match result {
        Ok(w) => w,
        Err(e) => {
            let _already_gone = std::fs::remove_file(&part);
            return Err(e.context(format!("write {}", output.display())));
        }
    };
    let media_type = written.compression.media_type();
    let json = WrittenJson {
        file: output.display().to_string(),
        media_type,
        toc_digest: written.toc_digest.as_ref().map(ToString::to_string),
        digest: written.digest.to_string(),
        size: written.size,
        diff_id: written.diff_id.to_string(),
        uncompressed_size: written.uncompressed_size,
        entries: written.entries,
    };
    let text = format!(
        "{}: {} entries, {} bytes ({media_type}) digest {} diffID {}",
        json.file, json.entries, json.size, json.digest, json.diff_id
    );
    out.line(&json, &text)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct AppliedJson {
    digest: String,
    diff_id: String,
    compression: String,
    compressed_size: u64,
    size: u64,
    entries: u64,
}

/// The TOC of an eStargz layer file (none read from stdin, which cannot
/// be read from its end), checked against `expected` when given.
fn estargz_of(
    file: Option<&File>,
    name: &str,
    expected: Option<Digest>,
) -> anyhow::Result<Option<std::sync::Arc<Index>>> {
    let index = match file {
        Some(mut f) => {
            let index = Index::read(&mut f).map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidData => ApplyError::Invalid {
                    layer: name.to_owned(),
                    reason: e.to_string(),
                },
                _ => ApplyError::Io {
                    layer: name.to_owned(),
                    source: e,
                },
            })?;
            std::io::Seek::rewind(&mut f).with_context(|| format!("read {name}"))?;
            index
        }
        None => None,
    };
    match (index, expected) {
        (None, Some(_)) => Err(ApplyError::Invalid {
            layer: name.to_owned(),
            reason: if file.is_some() {
                "--toc-digest given, but it has no eStargz footer".into()
            } else {
                "--toc-digest needs a file: an eStargz layer is not read from stdin".into()
            },
        }
        .into()),
        (Some(index), Some(expected)) if index.digest != expected => Err(ApplyError::Mismatch {
            layer: name.to_owned(),
            what: "eStargz TOC digest",
            expected,
            actual: index.digest,
        }
        .into()),
        (index, _) => Ok(index.map(std::sync::Arc::new)),
    }
}

/// Runs `cmd`; `ignore_chown_errors` is the global option of that name.
pub fn run(cmd: LayerCmd, ignore_chown_errors: bool, out: &Output) -> anyhow::Result<ExitCode> {
    let ApplyArgs {
        layer,
        dir,
        digest,
        diff_id,
        media_type,
        skip_devices,
        toc_digest,
    } = match cmd {
        LayerCmd::Apply(args) => args,
        LayerCmd::Diff {
            lower,
            upper,
            output,
            compression,
            level,
            prioritized,
            chunk_size,
            source_date_epoch,
        } => {
            if compression != CompressionArg::Estargz
                && (!prioritized.is_empty() || chunk_size.is_some())
            {
                return Err(crate::refs::bad(
                    "--prioritize and --chunk-size need --compression estargz".into(),
                ));
            }
            let opts = WriteOptions {
                compression: compression.into(),
                level,
                source_date_epoch,
                estargz: EStargzOptions {
                    prioritized,
                    chunk_size: chunk_size.unwrap_or(0),
                    spool_dir: output.parent().map(Path::to_path_buf),
                },
            };
            return diff(&lower, &upper, &output, &opts, out);
        }
    };
    let name = layer.display().to_string();
    let toc_digest = toc_digest.as_deref().map(Digest::parse).transpose()?;
    let file = if layer.as_os_str() == "-" {
        None
    } else {
        Some(File::open(&layer).with_context(|| format!("open {}", layer.display()))?)
    };
    let estargz = estargz_of(file.as_ref(), &name, toc_digest)?;
    let opts = ApplyOptions {
        name,
        estargz,
        media_type,
        digest: digest.as_deref().map(Digest::parse).transpose()?,
        diff_id: diff_id.as_deref().map(Digest::parse).transpose()?,
        skip_devices,
        ignore_chown_errors,
        ..ApplyOptions::default()
    };
    let applied = match file {
        None => apply(&strata_leases::OpCtx::new(), std::io::stdin(), &dir, &opts)?,
        Some(file) => apply(&strata_leases::OpCtx::new(), file, &dir, &opts)?,
    };
    let compression = if opts.estargz.is_some() {
        Compression::EStargz
    } else {
        applied.compression
    };
    let json = AppliedJson {
        digest: applied.digest.to_string(),
        diff_id: applied.diff_id.to_string(),
        compression: compression.name().to_owned(),
        compressed_size: applied.compressed_size,
        size: applied.size,
        entries: applied.entries,
    };
    let text = format!(
        "applied {} entries ({} bytes, {}) digest {} diffID {}",
        json.entries, json.size, json.compression, json.digest, json.diff_id
    );
    crate::image::squashed_note(applied.squashed, out);
    out.line(&json, &text)?;
    Ok(ExitCode::SUCCESS)
}
