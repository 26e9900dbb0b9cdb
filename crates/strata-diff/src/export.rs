//! Exporting a committed snapshot as an OCI layer blob: the changes from
//! its parent (or from nothing) written into the content store.
//!
//! When the snapshot's view is its parent's view plus one overlay layer,
//! the changes come from that upper directory alone (cost: what changed);
//! otherwise both trees are walked. Either way the bytes are the same.

use std::path::PathBuf;

use strata_content::{ContentError, ContentStore};
use strata_core::Digest;
use strata_leases::OpCtx;
use strata_snapshot::SnapshotStore;

use crate::changes::{Comparison, walk_changes, walk_upperdir_changes};
use crate::compression::Compression;
use crate::error::DiffError;
use crate::estargz::{has_footer, strip};
use crate::merge::{Tree, upperdir_of};
use crate::write::{WriteOptions, Written, recompress, write_layer_to_store};

/// Which way an export found its changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportPath {
    /// From the overlay upper directory.
    Upperdir,
    /// By walking both trees.
    DoubleWalk,
}

/// Writes snapshots of one store as layer blobs into one content store.
#[derive(Clone, Debug)]
pub struct Exporter {
    store: SnapshotStore,
    content: ContentStore,
    tmp: PathBuf,
}

impl Exporter {
    /// An exporter from `store` into `content`, mounting views under `tmp`.
    pub fn new(store: SnapshotStore, content: ContentStore, tmp: PathBuf) -> Exporter {
        Exporter {
            store,
            content,
            tmp,
        }
    }

    /// Writes the layer of committed `key` against committed `parent` (an
    /// empty tree when `None`) through the ingest `reference`, held by
    /// `ctx`'s lease. Blocking: call it off an async executor.
    pub fn export(
        &self,
        ctx: &OpCtx,
        key: &str,
        parent: Option<&str>,
        reference: &str,
        opts: &WriteOptions,
    ) -> Result<(Written, ExportPath), DiffError> {
        let upper = Tree::open(self.store.view_mounts(key)?, &self.tmp)?;
        let lower = match parent {
            Some(p) => Some(Tree::open(self.store.view_mounts(p)?, &self.tmp)?),
            None => None,
        };
        let fast = lower
            .as_ref()
            .and_then(|l| upperdir_of(&l.mounts, &upper.mounts));
        let path = if fast.is_some() {
            ExportPath::Upperdir
        } else {
            ExportPath::DoubleWalk
        };
        let written = write_layer_to_store(
            ctx,
            &self.content,
            reference,
            &upper.path,
            opts,
            |w| match (&fast, &lower) {
                (Some(upperdir), Some(lower)) => walk_upperdir_changes(
                    upperdir,
                    &upper.path,
                    &lower.path,
                    Comparison::Compat,
                    &mut |c| w.change(&c),
                ),
                _ => walk_changes(
                    lower.as_ref().map(|l| l.path.as_path()),
                    &upper.path,
                    Comparison::Compat,
                    &mut |c| w.change(&c),
                ),
            },
        )?;
        Ok((written, path))
    }

    /// Writes blob `from` again as `opts` asks (the same entries; the same
    /// diffID unless eStargz's own entries are added or dropped) through
    /// the ingest `reference`, labelled with its diffID (and TOC digest)
    /// and held by `ctx`'s lease. An eStargz source loses its landmark and
    /// TOC entries on the way. Blocking.
    pub fn convert(
        &self,
        ctx: &OpCtx,
        from: &Digest,
        opts: &WriteOptions,
        reference: &str,
    ) -> Result<Written, DiffError> {
        let content = &self.content.under(ctx);
        let name = from.to_string();
        // A ref's blob: its TOC was checked when it was imported (a
        // footer whose TOC cannot be read is refused there) or written.
        let is_estargz = has_footer(&mut content.reader_at(from)?)
            .map_err(|e| DiffError::io("read the eStargz footer of", &name, e))?;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, content.reader_at(from)?);
        let head = std::io::BufRead::fill_buf(&mut reader)
            .map_err(|e| DiffError::io("read blob", &name, e))?;
        let source = Compression::detect(head);
        let decode = |reader| {
            crate::compression::decoder(source, reader)
                .map_err(|e| DiffError::io("decompress blob", &name, e))
        };
        let mut ingest = content.writer(reference, None, None)?;
        ingest.truncate(0)?;
        let converted = if is_estargz {
            // The plain tar flows from a stripping thread through a pipe.
            let (pipe_in, pipe_out) =
                std::io::pipe().map_err(|e| DiffError::io("convert blob", &name, e))?;
            let (name, decode) = (&name, &decode);
            std::thread::scope(|scope| {
                let stripper = scope.spawn(move || -> Result<(), DiffError> {
                    strip(decode(reader)?, pipe_out)
                        .map_err(|e| DiffError::io("strip the eStargz entries of", name, e))
                });
                let converted = recompress(pipe_in, ingest, opts, ctx)
                    .map_err(|e| DiffError::io("recompress blob", name, e));
                match stripper.join().expect("the stripping thread panicked") {
                    Err(e) => Err(e),
                    Ok(()) => converted,
                }
            })
        } else {
            recompress(decode(reader)?, ingest, opts, ctx)
                .map_err(|e| DiffError::io("recompress blob", &name, e))
        };
        let result = converted.and_then(|(written, mut ingest)| {
            match ingest.commit(written.size, Some(&written.digest), &written.blob_labels()) {
                Ok(_) | Err(ContentError::AlreadyExists(_)) => Ok(written),
                Err(e) => Err(e.into()),
            }
        });
        if result.is_err()
            && let Err(e) = content.abort(reference)
        {
            tracing::warn!(reference, error = %e, "could not abort a failed conversion");
        }
        result
    }
}
