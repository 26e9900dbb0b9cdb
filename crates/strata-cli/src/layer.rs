//! `strata layer apply LAYER DIR`: a layer (tar, tar+gzip, tar+zstd) onto a
//! plain directory, verified and confined. No state root is involved.

use std::fs::File;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;
use strata_core::Digest;
use strata_diff::{ApplyOptions, apply};

use crate::output::Output;

#[derive(Debug, Subcommand)]
pub enum LayerCmd {
    /// Apply LAYER (a file, or - for stdin) onto DIR. Digests are checked at
    /// the end: on any failure DIR keeps what was applied before it.
    Apply {
        layer: PathBuf,
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

pub fn run(cmd: LayerCmd, out: &Output) -> anyhow::Result<ExitCode> {
    let LayerCmd::Apply {
        layer,
        dir,
        digest,
        diff_id,
        media_type,
        skip_devices,
    } = cmd;
    let opts = ApplyOptions {
        name: layer.display().to_string(),
        media_type,
        digest: digest.as_deref().map(Digest::parse).transpose()?,
        diff_id: diff_id.as_deref().map(Digest::parse).transpose()?,
        skip_devices,
        ..ApplyOptions::default()
    };
    let applied = if layer.as_os_str() == "-" {
        apply(std::io::stdin(), &dir, &opts)?
    } else {
        let file = File::open(&layer).with_context(|| format!("open {}", layer.display()))?;
        apply(file, &dir, &opts)?
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
    out.line(&json, &text)?;
    Ok(ExitCode::SUCCESS)
}
