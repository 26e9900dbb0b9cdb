//! Image import (seed §7): an image's layers, whose blobs are already in
//! the content store, unpacked into a chain of committed snapshots with
//! dedupe by (parent, blob digest) and then (parent, diffID). Imports of
//! the same (parent, diffID) wait for each other, so concurrent imports of
//! one image unpack each layer once. The dedupe rows are durable.

use std::collections::HashSet;
use std::sync::Arc;

use strata_core::{Classify, Descriptor, Digest, Labels, id};
use strata_diff::{ApplyOptions, UNCOMPRESSED_LABEL};
use strata_leases::{OpCtx, Resource};
use strata_metadata::Reader;
use strata_metadata::keys;
use strata_metadata::records::{ImportByBlobRecord, ImportByDiffRecord};

use crate::error::{CacheError, Result};
use crate::manager::{CacheManager, RefOptions};
use crate::metadata::{self, Edit, RecordType};
use crate::progress::{ProgressTracker, display_ref};
use crate::refs::ImmutableRef;

/// The content-store label naming a blob's media type.
pub const BLOB_MEDIA_TYPE_LABEL: &str = "buildkit.io/blob/mediatype";

/// A resolved image whose blobs are in the content store.
#[derive(Clone, Debug)]
pub struct ImportedImage {
    /// The image's name, for descriptions and progress.
    pub reference: String,
    /// The manifest.
    pub manifest: Descriptor,
    /// The config.
    pub config: Descriptor,
    /// The layers, bottom first; each carries its diffID in the
    /// `containerd.io/uncompressed` annotation.
    pub layers: Vec<Descriptor>,
    /// Other blobs to keep with the image.
    pub nonlayers: Vec<Descriptor>,
}

/// How to import.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// The image reference to record on every layer's record.
    pub image_ref: Option<String>,
    /// The record type (`regular` when unset).
    pub record_type: Option<RecordType>,
}

fn diff_id_of(desc: &Descriptor) -> Result<Digest> {
    let v = desc.annotations.get(UNCOMPRESSED_LABEL).ok_or_else(|| {
        CacheError::invalid(
            desc.digest.as_str(),
            format!("layer has no {UNCOMPRESSED_LABEL} annotation (its diffID)"),
        )
    })?;
    Digest::parse(v)
        .map_err(|e| CacheError::invalid(desc.digest.as_str(), format!("bad diffID {v:?}: {e}")))
}

impl CacheManager {
    /// Unpacks `img`'s layers in order (each deduplicated) and returns the
    /// top ref; manifest, config and other blobs are held by the context's
    /// lease and recorded against the top snapshot.
    #[tracing::instrument(skip_all, fields(image = %display_ref(opts.image_ref.as_deref().unwrap_or(&img.reference))))]
    pub async fn import_image(
        &self,
        ctx: &OpCtx,
        img: &ImportedImage,
        opts: &ImportOptions,
    ) -> Result<ImmutableRef> {
        let opts = ImportOptions {
            record_type: Some(opts.record_type.clone().unwrap_or_default()),
            ..opts.clone()
        };
        let mut current: Option<ImmutableRef> = None;
        for layer in &img.layers {
            ctx.check()?;
            current = Some(
                self.import_layer(ctx, layer, current.as_ref(), &opts)
                    .await?,
            );
        }
        let top = match current {
            Some(top) => top,
            None => {
                let ropts = RefOptions {
                    description: Some("import image rootfs (empty)".into()),
                    record_type: opts.record_type.clone(),
                    image_ref: opts.image_ref.clone(),
                    ..RefOptions::default()
                };
                let m = self.new_ref(ctx, None, &ropts).await?;
                m.commit(ctx).await?
            }
        };
        let mut seen = HashSet::new();
        let extra = [&img.manifest, &img.config]
            .into_iter()
            .chain(&img.nonlayers)
            .filter(|d| seen.insert(d.digest.clone()));
        for d in extra {
            self.hold(ctx, &Resource::content(&d.digest))?;
            self.record_content(top.snapshot_id(), &d.digest)?;
        }
        Ok(top)
    }

    /// A layer on `parent`: an earlier import of the same blob or diffID
    /// on the same parent, else a fresh unpack.
    async fn import_layer(
        &self,
        ctx: &OpCtx,
        desc: &Descriptor,
        parent: Option<&ImmutableRef>,
        opts: &ImportOptions,
    ) -> Result<ImmutableRef> {
        let diff_id = diff_id_of(desc)?;
        let parent_sid = parent.map_or("", |p| p.snapshot_id());
        let _one = self
            .inner
            .import_locks
            .lock(&keys::join(&[parent_sid, diff_id.as_str()]))
            .await;
        let blob_key = keys::join(&[parent_sid, desc.digest.as_str()]);
        let diff_key = keys::join(&[parent_sid, diff_id.as_str()]);
        let found = {
            let tx = self.root().db.read()?;
            [
                tx.get::<ImportByBlobRecord>(&blob_key)?.map(|r| r.snapshot),
                tx.get::<ImportByDiffRecord>(&diff_key)?.map(|r| r.snapshot),
            ]
        };
        for sid in found.into_iter().flatten() {
            let reuse = RefOptions {
                no_update_last_used: true,
                ..RefOptions::default()
            };
            match self.get_by_snapshot_id(&sid, &reuse).await {
                Ok(r) => {
                    let mut edit = Edit::default();
                    if let Some(t) = &opts.record_type {
                        edit = edit.set(metadata::RECORD_TYPE, &t.as_str());
                    }
                    if let Some(i) = &opts.image_ref {
                        edit = edit.append(metadata::IMAGE_REFS, std::slice::from_ref(i));
                    }
                    if !edit.is_empty() {
                        self.update(r.id(), edit)?;
                    }
                    tracing::debug!(layer = %desc.digest, snapshot = sid, "layer already imported");
                    return Ok(r);
                }
                Err(e) if e.is_not_found() => {
                    let tx = self.root().db.write()?;
                    tx.delete::<ImportByBlobRecord>(&blob_key)?;
                    tx.delete::<ImportByDiffRecord>(&diff_key)?;
                    tx.commit()?;
                }
                Err(e) => return Err(e),
            }
        }
        self.unpack_layer(ctx, desc, &diff_id, parent_sid, opts)
            .await
    }

    async fn unpack_layer(
        &self,
        ctx: &OpCtx,
        desc: &Descriptor,
        diff_id: &Digest,
        parent_sid: &str,
        opts: &ImportOptions,
    ) -> Result<ImmutableRef> {
        let root = self.root();
        let key = id::new_id();
        // The seed links the layer blob to the operation's lease; the
        // unpacker holds the snapshot in the transaction that records it.
        self.hold(ctx, &Resource::content(&desc.digest))?;
        let content = root.content.clone();
        let digest = desc.digest.clone();
        let open: strata_diff::LayerSource = Arc::new(move || {
            let r = content
                .reader_at(&digest)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, r))
                as Box<dyn std::io::Read + Send>)
        });
        let apply = ApplyOptions {
            name: desc.digest.to_string(),
            media_type: Some(desc.media_type.clone()),
            digest: Some(desc.digest.clone()),
            size: Some(desc.size),
            diff_id: Some(diff_id.clone()),
            ..ApplyOptions::default()
        };
        let parent = (!parent_sid.is_empty()).then_some(parent_sid);
        // Bytes of the layer read so far, reported as the layer's progress.
        let tracker = (desc.size > 0 && ctx.has_events()).then(|| {
            Arc::new(ProgressTracker::new(
                ctx,
                desc.digest.as_str(),
                desc.size,
                "bytes",
            ))
        });
        let apply_ctx = match &tracker {
            Some(t) => {
                let t = Arc::clone(t);
                ctx.with_progress(move |n| t.update(n))
            }
            None => ctx.clone(),
        };
        self.inner
            .unpacker
            .unpack(&apply_ctx, &key, parent, open, &apply, Labels::new())
            .await?;
        if let Some(t) = tracker {
            t.update(desc.size);
            t.finish();
        }
        let ropts = RefOptions {
            description: Some(format!("import image layer {}", desc.digest)),
            record_type: opts.record_type.clone(),
            image_ref: opts.image_ref.clone(),
            ..RefOptions::default()
        };
        let mut record = metadata::new_record(&key, true, &ropts);
        let tx = root.db.write()?;
        metadata::put_record(&tx, &key, None, &record)?;
        let edit = Edit::default()
            .set(metadata::DIFF_ID, &diff_id.as_str())
            .set(metadata::BLOB, &desc.digest.as_str())
            .set(metadata::MEDIA_TYPE, &desc.media_type.as_str())
            .set(metadata::BLOB_SIZE, &i64::try_from(desc.size).unwrap_or(-1))
            .append(metadata::URLS, &desc.urls);
        record = metadata::apply_edit(&tx, &key, edit)?;
        let parent_key = parent_sid;
        tx.put(
            &keys::join(&[parent_key, desc.digest.as_str()]),
            &ImportByBlobRecord {
                snapshot: key.clone(),
            },
        )?;
        tx.put(
            &keys::join(&[parent_key, diff_id.as_str()]),
            &ImportByDiffRecord {
                snapshot: key.clone(),
            },
        )?;
        tx.commit()?;
        drop(record);
        self.label_blob(&desc.digest, &desc.media_type, diff_id)?;
        self.record_content(&key, &desc.digest)?;
        Ok(ImmutableRef::new(self.clone(), &key, true))
    }

    /// Labels a layer blob with its media type and diffID (kept when
    /// already there).
    pub(crate) fn label_blob(&self, d: &Digest, media_type: &str, diff_id: &Digest) -> Result<()> {
        let content = &self.root().content;
        let mut info = match content.info(d) {
            Ok(i) => i,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut paths = Vec::new();
        for (k, v) in [
            (BLOB_MEDIA_TYPE_LABEL, media_type.to_owned()),
            (UNCOMPRESSED_LABEL, diff_id.to_string()),
        ] {
            if !info.labels.contains_key(k) {
                info.labels.insert(k.to_owned(), v);
                paths.push(format!("labels.{k}"));
            }
        }
        if !paths.is_empty() {
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            match content.update(&info, &paths) {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
