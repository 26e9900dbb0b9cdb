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
use strata_diff::{
    ApplyOptions, Comparison, Compression, WriteOptions, apply, walk_changes, write_layer,
};

use crate::output::Output;

#[derive(Debug, Subcommand)]
pub enum LayerCmd {
    /// Apply LAYER (a file, or - for stdin) onto DIR. Digests are checked at
    /// the end: on any failure DIR keeps what was applied before it.
    Apply {
        /// A tar, tar+gzip or tar+zstd file, or - for stdin.
        layer: PathBuf,
        /// An existing directory the layer lands in.
        dir: PathBuf,
        /// Refuse the layer unless its bytes have this digest.
        #[arg(long, value_name = "DIGEST")]
        digest: Option<String>,
        /// Refuse the layer unless its uncompressed tar has this digest.
        #[arg(long = "diff-id", value_name = "DIGEST")]
        diff_id: Option<String>,
        /// The layer's media type, checked against its compression.
        #[arg(long)]
        media_type: Option<String>,
        /// Skip device nodes that cannot be made without privilege.
        #[arg(long)]
        skip_devices: bool,
    },
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
        /// Clamp mtimes to this many seconds since the epoch (reproducible layers).
        #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECONDS")]
        source_date_epoch: Option<i64>,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum CompressionArg {
    Gzip,
    Zstd,
    None,
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
    let media_type = match written.compression {
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        Compression::None => "application/vnd.oci.image.layer.v1.tar",
    };
    let json = WrittenJson {
        file: output.display().to_string(),
        media_type,
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

/// Runs `cmd`; `ignore_chown_errors` is the global option of that name.
pub fn run(cmd: LayerCmd, ignore_chown_errors: bool, out: &Output) -> anyhow::Result<ExitCode> {
    let (layer, dir, digest, diff_id, media_type, skip_devices) = match cmd {
        LayerCmd::Apply {
            layer,
            dir,
            digest,
            diff_id,
            media_type,
            skip_devices,
        } => (layer, dir, digest, diff_id, media_type, skip_devices),
        LayerCmd::Diff {
            lower,
            upper,
            output,
            compression,
            level,
            source_date_epoch,
        } => {
            let opts = WriteOptions {
                compression: match compression {
                    CompressionArg::Gzip => Compression::Gzip,
                    CompressionArg::Zstd => Compression::Zstd,
                    CompressionArg::None => Compression::None,
                },
                level,
                source_date_epoch,
            };
            return diff(&lower, &upper, &output, &opts, out);
        }
    };
    let opts = ApplyOptions {
        name: layer.display().to_string(),
        media_type,
        digest: digest.as_deref().map(Digest::parse).transpose()?,
        diff_id: diff_id.as_deref().map(Digest::parse).transpose()?,
        skip_devices,
        ignore_chown_errors,
        ..ApplyOptions::default()
    };
    let applied = if layer.as_os_str() == "-" {
        apply(&strata_leases::OpCtx::new(), std::io::stdin(), &dir, &opts)?
    } else {
        let file = File::open(&layer).with_context(|| format!("open {}", layer.display()))?;
        apply(&strata_leases::OpCtx::new(), file, &dir, &opts)?
    };
    let json = AppliedJson {
        digest: applied.digest.to_string(),
        diff_id: applied.diff_id.to_string(),
        compression: format!("{:?}", applied.compression).to_lowercase(),
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
