//! Unpacking a layer into a new committed snapshot: prepare on the parent,
//! apply, commit; on any failure (a hostile entry, a digest or diffID
//! mismatch) the half-applied snapshot is removed, never committed.
//!
//! On overlay the layer is written straight into the new upper directory
//! (no mount); a layer that reaches below a lower layer's symlink is
//! applied again through a mount of the snapshot.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use strata_core::Labels;
use strata_leases::OpCtx;
use strata_snapshot::mounts::{LocalMount, MountOptions};
use strata_snapshot::{SnapshotError, SnapshotStore, Snapshotter};

use crate::apply::{Applied, ApplyOptions, OverlayTarget, apply};
use crate::error::{ApplyError, DiffError};

/// Opens the layer (again, when it must be applied a second way).
pub type LayerSource = Arc<dyn Fn() -> std::io::Result<Box<dyn Read + Send>> + Send + Sync>;

/// Unpacks layers into snapshots of one store.
#[derive(Clone, Debug)]
pub struct Unpacker {
    store: SnapshotStore,
    tmp: PathBuf,
}

impl Unpacker {
    /// An unpacker into `store` that mounts, when it must, under `tmp`.
    pub fn new(store: SnapshotStore, tmp: PathBuf) -> Unpacker {
        Unpacker { store, tmp }
    }

    /// Applies the layer `open` gives onto `parent` as the committed
    /// snapshot `key` (with `labels`).
    pub async fn unpack(
        &self,
        ctx: &OpCtx,
        key: &str,
        parent: Option<&str>,
        open: LayerSource,
        opts: &ApplyOptions,
        labels: Labels,
    ) -> Result<Applied, DiffError> {
        // The new snapshot is held by the operation's lease from the
        // transaction that records it.
        let store = &self.store.under(ctx);
        let active = format!("extract-{}", strata_core::id::new_id());
        let mounts = store.prepare(&active, parent, Labels::new()).await?;
        // The file-system work runs on the blocking pool, off the caller's
        // executor.
        let (job_ctx, job_opts, job_tmp) = (ctx.clone(), opts.clone(), self.tmp.clone());
        let applied = tokio::task::spawn_blocking(move || {
            apply_to_mounts(&job_ctx, &mounts, &open, &job_opts, &job_tmp)
        })
        .await
        .unwrap_or_else(|e| Err(DiffError::Snapshot(SnapshotError::Task(e.to_string()))));
        let result = match applied {
            Ok(applied) => store
                .commit(key, &active, labels)
                .await
                .map(|()| applied)
                .map_err(DiffError::from),
            Err(e) => Err(e),
        };
        if result.is_err()
            && let Err(e) = store.remove(&active).await
        {
            tracing::warn!(key = active, error = %e, "could not discard a failed unpack");
        }
        result
    }
}

/// Applies the layer `open` gives onto `mounts`: straight into the upper
/// directory of an overlay (its lowers given to the applier), or, when
/// the layer reaches below a lower layer's symlink, again through a real
/// mount of them under `tmp` (the upper directory emptied first); any
/// other mount, through a mount.
pub fn apply_to_mounts(
    ctx: &OpCtx,
    mounts: &[strata_core::Mount],
    open: &LayerSource,
    opts: &ApplyOptions,
    tmp: &std::path::Path,
) -> Result<Applied, DiffError> {
    let io = |e| DiffError::io("open layer", opts.name.clone(), e);
    if let [m] = mounts
        && m.is_overlay()
        && let Some(layers) = &m.layers
        && let Some(upper) = layers.upper.clone()
    {
        let direct = ApplyOptions {
            overlay: Some(OverlayTarget {
                lowers: layers.lowers.clone(),
                userxattr: layers.userxattr,
                detached: false,
            }),
            ..opts.clone()
        };
        match apply(ctx, open().map_err(io)?, &upper, &direct) {
            Err(ApplyError::NeedsMount { .. }) => {
                tracing::debug!(layer = opts.name, "applying through a mount instead");
                let root = strata_sys::Root::open(&upper)?;
                for (name, _) in root.read_dir(std::path::Path::new(""))? {
                    root.remove_all(std::path::Path::new(&name))?;
                }
            }
            other => return Ok(other?),
        }
    }
    let mount = LocalMount::mount(mounts, tmp, MountOptions::default())?;
    let applied = apply(ctx, open().map_err(io)?, mount.path(), opts)?;
    mount.unmount()?;
    Ok(applied)
}
