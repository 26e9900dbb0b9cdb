//! Export (seed §8): a ref's chain as OCI layer blobs, bottom first, one
//! per committed snapshot. A layer's blob is computed once (overlay upper
//! directory when possible, else both trees walked) and remembered on its
//! record; concurrent exports of one snapshot wait for the first. A
//! different compression, when forced, is a lossless conversion of the
//! existing blob, linked to it both ways with `gc.ref.content.blob-*`
//! labels so that holding either keeps both.

use std::time::SystemTime;

use strata_core::{Classify, Descriptor, Digest, Labels, media};
use strata_diff::estargz::EStargzOptions;
use strata_diff::{Compression, UNCOMPRESSED_LABEL, WriteOptions};
use strata_leases::{OpCtx, Resource, with_lease};

use crate::error::{CacheError, Result};
use crate::import::BLOB_MEDIA_TYPE_LABEL;
use crate::manager::{CacheManager, RefOptions, SCRATCH};
use crate::metadata::{self, Edit, RefMetadata};
use crate::refs::ImmutableRef;

/// Label prefix linking a blob to its compression variants.
pub const VARIANT_LABEL_PREFIX: &str = "containerd.io/gc.ref.content.blob-";

/// The compression an export asks for; by default gzip, as the seed's
/// and the CLI's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompressionConfig {
    /// The compression of new blobs.
    pub kind: Compression,
    /// Existing blobs of another compression are converted too.
    pub force: bool,
    /// The level (the codec's default when `None`).
    pub level: Option<i32>,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            kind: Compression::Gzip,
            force: false,
            level: None,
        }
    }
}

/// How to export (the seed's `RefConfig`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefConfig {
    /// Compression.
    pub compression: CompressionConfig,
    /// Layers with URLs get non-distributable media types.
    pub prefer_non_distributable: bool,
}

/// One exported layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportLayer {
    /// The blob (its diffID in the `containerd.io/uncompressed`
    /// annotation).
    pub descriptor: Descriptor,
    /// The record's description.
    pub description: String,
    /// The record's creation time.
    pub created_at: Option<SystemTime>,
}

/// A ref's layers, bottom first; the blobs are in the root's content store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportChain {
    /// The layers.
    pub layers: Vec<ExportLayer>,
}

/// Digests a blob's labels name as its compression variants.
pub(crate) fn variants_of(labels: &Labels) -> Vec<Digest> {
    labels
        .iter()
        .filter(|(k, _)| k.starts_with(VARIANT_LABEL_PREFIX))
        .filter_map(|(_, v)| Digest::parse(v).ok())
        .collect()
}

/// The compression of a blob of `media_type` with `labels`: eStargz when
/// labelled with a TOC digest.
fn compression_of(media_type: &str, labels: &Labels) -> Option<Compression> {
    match Compression::of_media_type(media_type) {
        Some(Compression::Gzip) if labels.contains_key(media::ESTARGZ_TOC_DIGEST) => {
            Some(Compression::EStargz)
        }
        other => other,
    }
}

fn distributable(media_type: &str) -> String {
    media_type
        .replace(
            "vnd.oci.image.layer.nondistributable.v1",
            "vnd.oci.image.layer.v1",
        )
        .replace("rootfs.foreign.diff.tar", "rootfs.diff.tar")
}

fn non_distributable(media_type: &str) -> String {
    if media_type.starts_with("application/vnd.oci.image.layer.v1") {
        media_type.replace(
            "vnd.oci.image.layer.v1",
            "vnd.oci.image.layer.nondistributable.v1",
        )
    } else if media_type == "application/vnd.docker.image.rootfs.diff.tar" {
        "application/vnd.docker.image.rootfs.foreign.diff.tar".into()
    } else {
        media_type.to_owned()
    }
}

/// The layer descriptor a record describes.
fn descriptor_of(md: &RefMetadata, blob: &Digest, prefer_non_distributable: bool) -> Descriptor {
    let urls = md.urls();
    let media_type = if prefer_non_distributable && !urls.is_empty() {
        non_distributable(&md.media_type())
    } else {
        distributable(&md.media_type())
    };
    let mut d = Descriptor::new(media_type, blob.clone(), md.blob_size().unwrap_or(0));
    if prefer_non_distributable {
        d.urls = urls;
    }
    if let Some(diff_id) = md.diff_id() {
        d.annotations
            .insert(UNCOMPRESSED_LABEL.to_owned(), diff_id.to_string());
    }
    d
}

impl ImmutableRef {
    /// The ref's chain as layer blobs, computing the ones not known yet.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let root = strata_cache::Root::open(&strata_cache::RootOptions {
    /// #     path: Some(dir.path().join("root")),
    /// #     backend: strata_cache::BackendChoice::Native,
    /// # })?;
    /// # let mgr = strata_cache::CacheManager::new(root)?;
    /// # let ctx = strata_cache::OpCtx::new();
    /// use strata_cache::{Compression, CompressionConfig, RefConfig};
    ///
    /// let r = mgr.new_ref(&ctx, None, &Default::default()).await?.commit(&ctx).await?;
    /// let cfg = RefConfig {
    ///     compression: CompressionConfig { kind: Compression::Zstd, ..Default::default() },
    ///     ..Default::default()
    /// };
    /// let chain = r.export_chain(&ctx, &cfg).await?;
    /// assert_eq!(chain.layers.len(), 1);
    /// assert!(chain.layers[0].descriptor.media_type.ends_with("+zstd"));
    /// # Ok(()) }
    /// ```
    #[tracing::instrument(skip_all, fields(id = self.id()))]
    pub async fn export_chain(&self, ctx: &OpCtx, cfg: &RefConfig) -> Result<ExportChain> {
        let mgr = &self.mgr;
        let (ctx, guard) = with_lease(ctx, &mgr.root().leases)?;
        let chain = mgr.chain_keys(self.snapshot_id()).await?;
        // Refused before any record is touched: a lazy layer's blob is
        // not in the store, which the blob lookup would take for a blob
        // gone and forget.
        if let Some(lazy) = mgr.lazy_of(&chain)?.iter().position(|&l| l) {
            return Err(strata_snapshot::SnapshotError::Lazy(chain[lazy].clone()).into());
        }
        let mut out = ExportChain::default();
        let mut parent: Option<String> = None;
        for sid in chain {
            if parent.is_none() && sid == SCRATCH {
                parent = Some(sid);
                continue;
            }
            let layer = mgr
                .get_by_snapshot_id(
                    &sid,
                    &RefOptions {
                        no_update_last_used: true,
                        ..RefOptions::default()
                    },
                )
                .await?;
            let desc = mgr
                .ensure_export_blob(&ctx, parent.as_deref(), &layer, cfg)
                .await?;
            if let Some(descriptor) = desc {
                let md = layer.metadata()?;
                out.layers.push(ExportLayer {
                    descriptor,
                    description: md.description(),
                    created_at: md.created_at(),
                });
            }
            parent = Some(sid);
        }
        guard.release()?;
        Ok(out)
    }
}

impl CacheManager {
    /// The blob of `layer` against `parent` in the compression `cfg` asks
    /// for (any, unless forced); `None` for an empty parentless layer.
    async fn ensure_export_blob(
        &self,
        ctx: &OpCtx,
        parent: Option<&str>,
        layer: &ImmutableRef,
        cfg: &RefConfig,
    ) -> Result<Option<Descriptor>> {
        let comp = cfg.compression;
        let lock_key = strata_metadata::keys::join(&[layer.snapshot_id(), parent.unwrap_or("")]);
        let _one = self.inner.export_locks.lock(&lock_key).await;
        let md = layer.metadata()?;
        if let Some(blob) = self.held_blob(ctx, layer, &md)? {
            let mut desc = descriptor_of(&md, &blob, cfg.prefer_non_distributable);
            let have = self.blob_compression(&desc)?;
            if comp.force && !have.is_some_and(|h| comp.kind.served_by(h)) {
                desc = self.variant(ctx, layer, &desc, comp).await?;
            }
            self.annotate_estargz(&mut desc)?;
            self.hold(ctx, &Resource::content(&desc.digest))?;
            self.record_content(layer.snapshot_id(), &desc.digest)?;
            return Ok(Some(desc));
        }
        let usage = self.inner.merger.usage(layer.snapshot_id()).await?;
        if parent.is_none() && usage.size == 0 && usage.inodes <= 1 && self.is_empty(layer).await? {
            return Ok(None);
        }
        let (key, parent_key) = (layer.snapshot_id().to_owned(), parent.map(str::to_owned));
        let reference = format!("export-{key}-{}", comp.kind.name());
        let opts = self.write_options(comp);
        let (mgr, job_ctx) = (self.clone(), ctx.clone());
        let (written, path) = tokio::task::spawn_blocking(move || {
            mgr.inner
                .exporter
                .export(&job_ctx, &key, parent_key.as_deref(), &reference, &opts)
        })
        .await
        .map_err(|e| CacheError::Task(e.to_string()))??;
        tracing::debug!(layer = layer.id(), ?path, digest = %written.digest, "exported a layer");
        let media_type = comp.kind.media_type();
        self.label_blob(&written.digest, media_type, written.blob_labels())?;
        self.update(
            layer.id(),
            Edit::default()
                .set(metadata::DIFF_ID, &written.diff_id.as_str())
                .set(metadata::BLOB, &written.digest.as_str())
                .set(metadata::MEDIA_TYPE, &media_type)
                .set(
                    metadata::BLOB_SIZE,
                    &i64::try_from(written.size).unwrap_or(-1),
                )
                .remove(metadata::SIZE),
        )?;
        self.record_content(layer.snapshot_id(), &written.digest)?;
        let md = layer.metadata()?;
        let mut desc = descriptor_of(&md, &written.digest, cfg.prefer_non_distributable);
        self.annotate_estargz(&mut desc)?;
        Ok(Some(desc))
    }

    /// How to write a blob in `comp` (an eStargz spool in the root's
    /// temporary directory).
    fn write_options(&self, comp: CompressionConfig) -> WriteOptions {
        WriteOptions {
            compression: comp.kind,
            level: comp.level,
            estargz: EStargzOptions {
                spool_dir: Some(self.root().tmp.clone()),
                ..EStargzOptions::default()
            },
            ..WriteOptions::default()
        }
    }

    /// The compression of the stored blob `desc` names: its media type's,
    /// eStargz when the blob is labelled with a TOC digest.
    fn blob_compression(&self, desc: &Descriptor) -> Result<Option<Compression>> {
        let labels = self.root().content.info(&desc.digest)?.labels;
        Ok(compression_of(&desc.media_type, &labels))
    }

    /// Gives an eStargz blob's descriptor the annotations readers look for
    /// (TOC digest, uncompressed size), from the blob's labels.
    fn annotate_estargz(&self, desc: &mut Descriptor) -> Result<()> {
        let labels = self.root().content.info(&desc.digest)?.labels;
        for key in [media::ESTARGZ_TOC_DIGEST, media::ESTARGZ_UNCOMPRESSED_SIZE] {
            if let Some(v) = labels.get(key) {
                desc.annotations.insert(key.to_owned(), v.clone());
            }
        }
        Ok(())
    }

    /// The blob the record names, held by the operation's lease; `None`
    /// when it has none or it was collected (a crash can leave a record
    /// naming a blob nothing held), in which case the record forgets it.
    /// Held first, looked at second: a collection either sees the hold or
    /// has removed the blob before the look.
    fn held_blob(
        &self,
        ctx: &OpCtx,
        layer: &ImmutableRef,
        md: &RefMetadata,
    ) -> Result<Option<Digest>> {
        let Some(blob) = md.blob() else {
            return Ok(None);
        };
        self.hold(ctx, &Resource::content(&blob))?;
        match self.root().content.info(&blob) {
            Ok(_) => Ok(Some(blob)),
            Err(e) if e.is_not_found() => {
                tracing::debug!(layer = layer.id(), %blob, "the recorded blob is gone; computing it again");
                self.update(
                    layer.id(),
                    Edit::default()
                        .remove(metadata::BLOB)
                        .remove(metadata::MEDIA_TYPE)
                        .remove(metadata::BLOB_SIZE)
                        .remove(metadata::SIZE),
                )?;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// True when `layer`'s tree has no entries.
    async fn is_empty(&self, layer: &ImmutableRef) -> Result<bool> {
        let sn = self.root().snapshots.clone();
        let key = layer.snapshot_id().to_owned();
        tokio::task::spawn_blocking(move || -> Result<bool> {
            let dir = sn.fs_dir(&key)?;
            let root = strata_sys::Root::open(&dir)?;
            Ok(root.read_dir(std::path::Path::new(""))?.is_empty())
        })
        .await
        .map_err(|e| CacheError::Task(e.to_string()))?
    }

    /// The variant of `desc` in `comp.kind`: one already linked, else a
    /// lossless conversion, linked both ways.
    async fn variant(
        &self,
        ctx: &OpCtx,
        layer: &ImmutableRef,
        desc: &Descriptor,
        comp: CompressionConfig,
    ) -> Result<Descriptor> {
        let content = self.root().content.clone();
        let info = content.info(&desc.digest)?;
        for v in variants_of(&info.labels) {
            match content.info(&v) {
                Ok(vi) => {
                    let mt = vi
                        .labels
                        .get(BLOB_MEDIA_TYPE_LABEL)
                        .cloned()
                        .unwrap_or_default();
                    if compression_of(&mt, &vi.labels).is_some_and(|c| comp.kind.served_by(c)) {
                        let mut d = desc.clone();
                        d.media_type = mt;
                        d.digest = v;
                        d.size = vi.size;
                        if let Some(diff_id) = vi.labels.get(UNCOMPRESSED_LABEL) {
                            d.annotations
                                .insert(UNCOMPRESSED_LABEL.to_owned(), diff_id.clone());
                        }
                        return Ok(d);
                    }
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        let (from, reference) = (
            desc.digest.clone(),
            format!("convert-{}-{}", desc.digest.hex(), comp.kind.name()),
        );
        let (mgr, job_ctx, opts) = (self.clone(), ctx.clone(), self.write_options(comp));
        let written = tokio::task::spawn_blocking(move || {
            mgr.inner
                .exporter
                .convert(&job_ctx, &from, &opts, &reference)
        })
        .await
        .map_err(|e| CacheError::Task(e.to_string()))??;
        let media_type = comp.kind.media_type();
        self.label_blob(&written.digest, media_type, written.blob_labels())?;
        self.link_variants(&desc.digest, &written.digest)?;
        self.update(layer.id(), Edit::default().remove(metadata::SIZE))?;
        self.record_content(layer.snapshot_id(), &written.digest)?;
        let mut d = desc.clone();
        d.media_type = media_type.to_owned();
        d.digest = written.digest;
        d.size = written.size;
        // eStargz's own entries make another diffID.
        d.annotations
            .insert(UNCOMPRESSED_LABEL.to_owned(), written.diff_id.to_string());
        Ok(d)
    }

    /// Mutual `gc.ref.content.blob-*` labels between two blobs.
    fn link_variants(&self, a: &Digest, b: &Digest) -> Result<()> {
        if a == b {
            return Ok(());
        }
        let content = &self.root().content;
        for (on, to) in [(a, b), (b, a)] {
            let mut info = content.info(on)?;
            let label = format!("{VARIANT_LABEL_PREFIX}{}", to.hex());
            info.labels.insert(label.clone(), to.to_string());
            content.update(&info, &[&format!("labels.{label}")])?;
        }
        Ok(())
    }
}
