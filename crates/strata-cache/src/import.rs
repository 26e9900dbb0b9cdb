//! Image import (seed §7): an image's layers, whose blobs are already in
//! the content store, unpacked into a chain of committed snapshots with
//! dedupe by (parent, blob digest) and then (parent, diffID). Imports of
//! the same (parent, diffID) wait for each other, so concurrent imports of
//! one image unpack each layer once. The dedupe rows are durable. Every
//! layer's diffID is the config's, however it was found: an unpack checks
//! the tar stream, a layer found imported before its recorded diffID.

use std::collections::HashSet;
use std::sync::Arc;

use strata_core::{Classify, Compression, Descriptor, Digest, Labels, id, media};
use strata_diff::{ApplyError, ApplyOptions, DiffError, OverlayTarget, UNCOMPRESSED_LABEL};
use strata_leases::{OpCtx, Resource};
use strata_metadata::Reader;
use strata_metadata::keys;
use strata_metadata::records::{ImportByBlobRecord, ImportByDiffRecord};
use strata_oci::Image;
use strata_snapshot::{SnapshotStore, Snapshotter};

use crate::error::{CacheError, Result};
use crate::manager::{CacheManager, RefOptions};
use crate::metadata::{self, Edit, RecordType};
use crate::progress::display_ref;
use crate::refs::ImmutableRef;
use strata_leases::ProgressTracker;

/// A layer refused for `reason`.
fn invalid_layer(desc: &Descriptor, reason: String) -> CacheError {
    CacheError::from(DiffError::Apply(ApplyError::Invalid {
        layer: desc.digest.to_string(),
        reason,
    }))
}

/// The TOC digest `desc` is annotated with, if any; an annotation that
/// is no digest, or on a blob that is not gzip, is refused.
fn toc_annotation(desc: &Descriptor) -> Result<Option<Digest>> {
    let Some(value) = desc.annotations.get(media::ESTARGZ_TOC_DIGEST) else {
        return Ok(None);
    };
    let annotated = Digest::parse(value)
        .map_err(|e| invalid_layer(desc, format!("bad {}: {e}", media::ESTARGZ_TOC_DIGEST)))?;
    if Compression::of_media_type(&desc.media_type) != Some(Compression::Gzip) {
        return Err(invalid_layer(
            desc,
            format!(
                "annotated as eStargz, but its media type {} is not gzip",
                desc.media_type
            ),
        ));
    }
    Ok(Some(annotated))
}

/// A failure reading layer `desc`'s TOC: the layer's fault
/// (`InvalidData`) refuses it; any other is the reading's (the disk, the
/// network).
fn index_error(desc: &Descriptor, e: std::io::Error) -> CacheError {
    match e.kind() {
        std::io::ErrorKind::InvalidData => invalid_layer(desc, e.to_string()),
        _ => CacheError::from(DiffError::Apply(ApplyError::Io {
            layer: desc.digest.to_string(),
            source: e,
        })),
    }
}

/// Layer `desc`'s TOC as its footer gives it (`index`) against the digest
/// its annotation gives (`annotated`): a layer annotated as eStargz must
/// have that TOC.
fn matched_toc(
    desc: &Descriptor,
    index: Option<strata_diff::estargz::Index>,
    annotated: Option<Digest>,
) -> Result<Option<strata_diff::estargz::Index>> {
    match (index, annotated) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(invalid_layer(
            desc,
            "annotated as eStargz, but it has no eStargz footer".into(),
        )),
        (Some(index), Some(expected)) if index.digest != expected => {
            Err(CacheError::from(DiffError::Apply(ApplyError::Mismatch {
                layer: desc.digest.to_string(),
                what: "eStargz TOC digest",
                expected,
                actual: index.digest,
            })))
        }
        (Some(index), _) => Ok(Some(index)),
    }
}

/// The TOC of layer `desc` read from `source` by range: its footer, then
/// from the TOC's member to the end (at most what a TOC of
/// [`strata_diff::estargz::MAX_TOC`] bytes can take, checked before it is
/// asked for). `None` when `source` cannot read by range; `Some(None)`
/// when the blob has no eStargz footer.
async fn remote_index(
    source: &dyn strata_oci::Source,
    desc: &Descriptor,
) -> Result<Option<Option<strata_diff::estargz::Index>>> {
    use strata_diff::estargz::{FOOTER_SIZE, index_of_tail, toc_offset_in};
    let size = desc.size;
    let footer_len = size.min(FOOTER_SIZE);
    let Some(footer) = source
        .read_range(desc, size - footer_len, footer_len)
        .await?
    else {
        return Ok(None);
    };
    let Some(offset) = toc_offset_in(&footer, size).map_err(|e| index_error(desc, e))? else {
        return Ok(Some(None));
    };
    let Some(tail) = source.read_range(desc, offset, size - offset).await? else {
        return Ok(None);
    };
    // Decompressing a TOC is CPU work: off the executor.
    let desc = desc.clone();
    tokio::task::spawn_blocking(move || {
        index_of_tail(offset, &tail).map_err(|e| index_error(&desc, e))
    })
    .await
    .map_err(|e| CacheError::Task(e.to_string()))?
    .map(Some)
}

/// The content-store label naming a blob's media type.
pub const BLOB_MEDIA_TYPE_LABEL: &str = "buildkit.io/blob/mediatype";

/// How to import.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// The image reference to record on every layer's record.
    pub image_ref: Option<String>,
    /// The record type (`regular` when unset).
    pub record_type: Option<RecordType>,
    /// Layers unpacked at once on a backend of overlay layers (the
    /// machine's cores when unset; 1 unpacks one after the other).
    pub parallel: Option<usize>,
    /// Squash owners this user namespace cannot map instead of failing
    /// ([`ApplyOptions::ignore_chown_errors`]): for rootless runs with a
    /// single id mapping.
    pub ignore_chown_errors: bool,
    /// Record the layers from [`Image::first_lazy_layer`] up as lazy
    /// snapshots ([`strata_snapshot::SnapshotStore::create_lazy`]) without
    /// their blobs, which need not be in the content store; the layers
    /// below are unpacked as usual. A later import of the same layers
    /// without `lazy` fills them in place from their blobs.
    pub lazy: bool,
}

/// One layer of an import being unpacked: its blob, diffID and the
/// snapshot key it will have.
#[derive(Clone)]
struct Layer {
    desc: Descriptor,
    diff_id: Digest,
    key: String,
}

/// A layer written in parallel, before its lowers were known: the active
/// snapshot holding it and the entries whose owner was squashed with the
/// uncompressed stream's size, or why it must be written again on its
/// parent.
type Detached = (String, std::result::Result<(u64, u64), DiffError>);

impl CacheManager {
    /// Unpacks `img`'s layers in order (each deduplicated) and returns the
    /// top ref; manifest, config and other blobs are held by the context's
    /// lease and recorded against the top snapshot.
    ///
    /// Beyond the seed: on a backend of overlay layers, the layers from the
    /// first one not imported before are unpacked in parallel (at most
    /// [`ImportOptions::parallel`] at a time; the machine's cores by
    /// default), each into a snapshot without a parent whose whiteouts do
    /// not depend on the layers below, then committed in order onto their
    /// parents. A layer that does depend on them (a parent directory it
    /// does not carry, a hard link to a lower file, an opaque top) is
    /// written again on its parent.
    pub async fn import_image(
        &self,
        ctx: &OpCtx,
        img: &Image,
        opts: &ImportOptions,
    ) -> Result<ImmutableRef> {
        self.import_counting(ctx, img, opts)
            .await
            .map(|(top, _)| top)
    }

    /// [`CacheManager::import_image`], and how many entries of the layers
    /// unpacked had their owner squashed
    /// ([`ImportOptions::ignore_chown_errors`]).
    #[tracing::instrument(skip_all, fields(image = %display_ref(opts.image_ref.as_deref().unwrap_or(&img.reference))))]
    pub(crate) async fn import_counting(
        &self,
        ctx: &OpCtx,
        img: &Image,
        opts: &ImportOptions,
    ) -> Result<(ImmutableRef, u64)> {
        let opts = ImportOptions {
            record_type: Some(opts.record_type.clone().unwrap_or_default()),
            ..opts.clone()
        };
        let workers = opts.parallel.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let parallel = workers > 1 && self.root().snapshots.capabilities().overlay_layers;
        let lazy_from = match opts.lazy {
            true => img.first_lazy_layer(),
            false => None,
        }
        .unwrap_or(img.layers.len());
        let mut current: Option<ImmutableRef> = None;
        let mut squashed = 0;
        let mut reused = Vec::new();
        let mut next = 0;
        while next < img.layers.len() {
            ctx.check()?;
            let desc = &img.layers[next];
            let layer = Layer {
                desc: desc.clone(),
                diff_id: Image::diff_id(desc)?,
                key: id::new_id(),
            };
            let parent_sid = current.as_ref().map_or("", |p| p.snapshot_id()).to_owned();
            // Imports of the same content on the same parent wait for each
            // other: the second finds what the first made.
            let _one = self
                .inner
                .import_locks
                .lock(&keys::join(&[&parent_sid, layer.diff_id.as_str()]))
                .await;
            if let Some(r) = self.imported(desc, &layer.diff_id, &parent_sid).await? {
                if !self.root().snapshots.is_lazy(r.snapshot_id())? {
                    // Found imported before: the descriptor's TOC digest
                    // must still be the blob's.
                    self.check_toc_annotation(desc).await?;
                } else if next < lazy_from {
                    // Found lazy, and its blob is here now.
                    let found = Layer {
                        key: r.snapshot_id().to_owned(),
                        ..layer
                    };
                    squashed += self.fill_layer(ctx, &found, &parent_sid, &opts).await?;
                }
                reused.push(r.id().to_owned());
                current = Some(r);
                next += 1;
                continue;
            }
            if next >= lazy_from {
                current = Some(
                    self.record_lazy_layer(ctx, &layer, &parent_sid, &opts)
                        .await?,
                );
                next += 1;
                continue;
            }
            let rest = &img.layers[next..lazy_from];
            let (top, n) = if parallel && rest.len() > 1 {
                self.unpack_parallel(ctx, rest, &parent_sid, &opts, workers)
                    .await?
            } else {
                self.unpack_layer(ctx, &layer, &parent_sid, &opts).await?
            };
            next += if parallel && rest.len() > 1 {
                rest.len()
            } else {
                1
            };
            current = Some(top);
            squashed += n;
        }
        self.mark_reused(&reused, &opts)?;
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
        Ok((top, squashed))
    }

    /// An earlier import of the same blob, else of the same diffID, on the
    /// same parent (the caller holds the import lock). What is known of the
    /// layer found (its record's diffID, the diffID its blob was labelled
    /// with when unpacked) must be `diff_id`, the config's: else the image
    /// is refused, whichever way the layer was found.
    async fn imported(
        &self,
        desc: &Descriptor,
        diff_id: &Digest,
        parent_sid: &str,
    ) -> Result<Option<ImmutableRef>> {
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
                // A lazy layer's recorded diffID is only its image's
                // claim: the fill checks the stream against this one's.
                // It is filled from its own blob only: one found by the
                // diffID alone names another.
                Ok(r) if self.root().snapshots.is_lazy(&sid)? => {
                    if r.metadata()?.blob().as_ref() == Some(&desc.digest) {
                        return Ok(Some(r));
                    }
                }
                Ok(r) => {
                    check_diff_id(desc, diff_id, r.metadata()?.diff_id())?;
                    check_diff_id(desc, diff_id, self.labelled_diff_id(&desc.digest)?)?;
                    tracing::debug!(layer = %desc.digest, snapshot = sid, "layer already imported");
                    return Ok(Some(r));
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
        Ok(None)
    }

    /// Records `opts`' record type and image reference on the layers an
    /// import found imported before, in one transaction once every layer is
    /// in place: an import refused halfway leaves them as they were.
    fn mark_reused(&self, ids: &[String], opts: &ImportOptions) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let tx = self.root().db.write()?;
        for id in ids {
            let mut edit = Edit::default();
            if let Some(t) = &opts.record_type {
                edit = edit.set(metadata::RECORD_TYPE, &t.as_str());
            }
            if let Some(i) = &opts.image_ref {
                edit = edit.append(metadata::IMAGE_REFS, std::slice::from_ref(i));
            }
            if !edit.is_empty() {
                metadata::apply_edit(&tx, id, edit)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The diffID blob `d` was labelled with when a layer of it was
    /// unpacked or written, if any.
    fn labelled_diff_id(&self, d: &Digest) -> Result<Option<Digest>> {
        match self.root().content.info(d) {
            Ok(info) => Ok(info
                .labels
                .get(UNCOMPRESSED_LABEL)
                .and_then(|v| Digest::parse(v).ok())),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A descriptor's eStargz TOC digest, if it has one, against the blob:
    /// the digest the blob was labelled with when its TOC was read, else
    /// its TOC read now.
    async fn check_toc_annotation(&self, desc: &Descriptor) -> Result<()> {
        let Some(want) = desc.annotations.get(media::ESTARGZ_TOC_DIGEST) else {
            return Ok(());
        };
        let info = self.root().content.info(&desc.digest)?;
        if info.labels.get(media::ESTARGZ_TOC_DIGEST) == Some(want) {
            return Ok(());
        }
        self.estargz_index(desc).await.map(|_| ())
    }

    /// The TOC of an eStargz layer (found by its footer), checked against
    /// the digest its descriptor's annotation gives; the blob is labelled
    /// with it (a fact about its footer's TOC, whether or not the layer
    /// then matches it: apply checks that). A descriptor annotated as
    /// eStargz whose blob is not, or whose TOC is another, is refused.
    async fn estargz_index(
        &self,
        desc: &Descriptor,
    ) -> Result<Option<Arc<strata_diff::estargz::Index>>> {
        let annotated = toc_annotation(desc)?;
        if Compression::of_media_type(&desc.media_type) != Some(Compression::Gzip) {
            return Ok(None);
        }
        let mut reader = self.root().content.reader_at(&desc.digest)?;
        // Reading and parsing a TOC is file work: off the executor.
        let index =
            tokio::task::spawn_blocking(move || strata_diff::estargz::Index::read(&mut reader))
                .await
                .map_err(|e| CacheError::Task(e.to_string()))?
                .map_err(|e| index_error(desc, e))?;
        let Some(index) = matched_toc(desc, index, annotated)? else {
            return Ok(None);
        };
        self.label_blob(
            &desc.digest,
            &desc.media_type,
            Labels::from([(
                media::ESTARGZ_TOC_DIGEST.to_owned(),
                index.digest.to_string(),
            )]),
        )?;
        Ok(Some(Arc::new(index)))
    }

    /// Reads, by range from `source`, the TOC of each layer of `image` a
    /// lazy pull leaves unfetched and that is annotated as eStargz (its
    /// footer, then the TOC's member to the end: two requests), `parallel`
    /// layers at a time, and checks each against its annotation as an
    /// import checks a stored blob's ([`CacheManager::estargz_index`]): a
    /// lazy pull refuses an image whose TOCs do not match before it
    /// records anything. Layers the store has are left to the import.
    /// A source that cannot read by range (an archive) is not asked: its
    /// TOCs are checked when the layers are fetched.
    pub(crate) async fn check_lazy_tocs(
        &self,
        source: &Arc<dyn strata_oci::Source>,
        image: &Image,
        parallel: usize,
    ) -> Result<()> {
        let Some(first) = image.first_lazy_layer() else {
            return Ok(());
        };
        let gate = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
        let mut checks = tokio::task::JoinSet::new();
        for desc in &image.layers[first..] {
            let Some(annotated) = toc_annotation(desc)? else {
                continue;
            };
            if self.root().content.info(&desc.digest).is_ok() {
                continue;
            }
            let (source, desc, gate) = (Arc::clone(source), desc.clone(), Arc::clone(&gate));
            checks.spawn(async move {
                let _turn = gate
                    .acquire_owned()
                    .await
                    .map_err(|e| CacheError::Task(e.to_string()))?;
                match remote_index(source.as_ref(), &desc).await? {
                    Some(index) => matched_toc(&desc, index, Some(annotated)).map(drop),
                    None => Ok(()),
                }
            });
        }
        while let Some(done) = checks.join_next().await {
            done.map_err(|e| CacheError::Task(e.to_string()))??;
        }
        Ok(())
    }

    /// How to open and check one layer's blob, and the context that
    /// reports its progress.
    async fn layer_input(
        &self,
        ctx: &OpCtx,
        layer: &Layer,
        ignore_chown_errors: bool,
    ) -> Result<(
        strata_diff::LayerSource,
        ApplyOptions,
        OpCtx,
        Option<Arc<ProgressTracker>>,
    )> {
        let desc = &layer.desc;
        // The seed links the layer blob to the operation's lease.
        self.hold(ctx, &Resource::content(&desc.digest))?;
        let content = self.root().content.clone();
        let digest = desc.digest.clone();
        let open: strata_diff::LayerSource = Arc::new(move || {
            let r = content
                .reader_at(&digest)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, r))
                as Box<dyn std::io::Read + Send>)
        });
        let estargz = self.estargz_index(desc).await?;
        let apply = ApplyOptions {
            estargz,
            name: desc.digest.to_string(),
            media_type: Some(desc.media_type.clone()),
            digest: Some(desc.digest.clone()),
            size: Some(desc.size),
            diff_id: Some(layer.diff_id.clone()),
            ignore_chown_errors,
            ..ApplyOptions::default()
        };
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
        Ok((open, apply, apply_ctx, tracker))
    }

    /// Unpacks one layer onto its parent and records it; the entries whose
    /// owner was squashed.
    async fn unpack_layer(
        &self,
        ctx: &OpCtx,
        layer: &Layer,
        parent_sid: &str,
        opts: &ImportOptions,
    ) -> Result<(ImmutableRef, u64)> {
        let applied = self.unpack_blob(ctx, layer, parent_sid, opts).await?;
        Ok((
            self.record_layer(layer, parent_sid, opts, Some(applied.size))?,
            applied.squashed,
        ))
    }

    /// Records `layer` on `parent_sid` as a lazy snapshot: its ref and
    /// blob dedupe row (not its diffID's, unchecked until its blob is
    /// unpacked); the blob is held by `ctx`'s lease, for when it comes.
    async fn record_lazy_layer(
        &self,
        ctx: &OpCtx,
        layer: &Layer,
        parent_sid: &str,
        opts: &ImportOptions,
    ) -> Result<ImmutableRef> {
        self.hold(ctx, &Resource::content(&layer.desc.digest))?;
        let parent = (!parent_sid.is_empty()).then_some(parent_sid);
        self.root()
            .snapshots
            .under(ctx)
            .create_lazy(&layer.key, parent, Labels::new())
            .await?;
        self.record_layer(layer, parent_sid, opts, None)
    }

    /// Gives the lazy snapshot `layer.key` its layer: unpacked from the
    /// blob, now in the content store, into a snapshot on the same parent
    /// that then takes its place
    /// ([`strata_snapshot::SnapshotStore::fill_lazy`]). The rows and labels
    /// an unpack records are written before that swap, so a crash between
    /// leaves true rows on a snapshot still lazy. The entries whose owner
    /// was squashed.
    async fn fill_layer(
        &self,
        ctx: &OpCtx,
        layer: &Layer,
        parent_sid: &str,
        opts: &ImportOptions,
    ) -> Result<u64> {
        let filled = Layer {
            key: format!("unlazy-{}", id::new_id()),
            ..layer.clone()
        };
        let applied = self.unpack_blob(ctx, &filled, parent_sid, opts).await?;
        // What the unpack checked is recorded first (the diffID, now the
        // stream's, and its dedupe row; the blob's labels and link): a
        // crash before the fill leaves true rows on a snapshot still lazy,
        // which the next import fills; the fill itself is one transaction.
        let recorded = (|| {
            let tx = self.root().db.write()?;
            metadata::apply_edit(&tx, &layer.key, blob_edit(layer))?;
            put_diff_row(&tx, layer, parent_sid)?;
            tx.commit()?;
            self.label_unpacked(layer, applied.size)
        })();
        let filling = match recorded {
            Ok(()) => self
                .root()
                .snapshots
                .under(ctx)
                .fill_lazy(&layer.key, &filled.key)
                .await
                .map_err(CacheError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = filling {
            self.discard(&filled.key).await;
            return Err(e);
        }
        tracing::debug!(layer = %layer.desc.digest, snapshot = layer.key, "lazy layer filled");
        Ok(applied.squashed)
    }

    /// Unpacks one layer's blob onto its parent as the committed snapshot
    /// `layer.key`, unrecorded.
    async fn unpack_blob(
        &self,
        ctx: &OpCtx,
        layer: &Layer,
        parent_sid: &str,
        opts: &ImportOptions,
    ) -> Result<strata_diff::Applied> {
        let (open, apply, apply_ctx, tracker) = self
            .layer_input(ctx, layer, opts.ignore_chown_errors)
            .await?;
        let parent = (!parent_sid.is_empty()).then_some(parent_sid);
        let applied = self
            .inner
            .unpacker
            .unpack(&apply_ctx, &layer.key, parent, open, &apply, Labels::new())
            .await?;
        if let Some(t) = tracker {
            t.update(layer.desc.size);
            t.finish();
        }
        Ok(applied)
    }

    /// Writes `layer` without its lowers into a new parentless active
    /// snapshot, on the blocking pool.
    async fn unpack_detached(
        &self,
        ctx: &OpCtx,
        layer: &Layer,
        ignore_chown_errors: bool,
    ) -> Result<Detached> {
        let (open, apply, apply_ctx, tracker) =
            self.layer_input(ctx, layer, ignore_chown_errors).await?;
        let sn = self.root().snapshots.under(ctx);
        let active = format!("extract-{}", id::new_id());
        let mounts = sn.prepare(&active, None, Labels::new()).await?;
        let upper = match mounts.as_slice() {
            [m] if m.is_bind() => m.source.clone(),
            _ => {
                return Ok((
                    active,
                    Err(DiffError::Unsupported {
                        path: self.root().tmp.clone(),
                        reason: "a parentless snapshot is not a single bind".into(),
                    }),
                ));
            }
        };
        let detached = ApplyOptions {
            overlay: Some(OverlayTarget {
                lowers: Vec::new(),
                userxattr: self.root().snapshots.capabilities().userxattr,
                detached: true,
            }),
            ..apply
        };
        let applied = tokio::task::spawn_blocking(move || {
            let reader = open().map_err(|e| {
                DiffError::Apply(ApplyError::Io {
                    layer: detached.name.clone(),
                    source: e,
                })
            })?;
            strata_diff::apply(&apply_ctx, reader, &upper, &detached)
                .map(|applied| (applied.squashed, applied.size))
                .map_err(DiffError::from)
        })
        .await
        .map_err(|e| CacheError::Task(e.to_string()))?;
        if applied.is_ok()
            && let Some(t) = tracker
        {
            t.update(layer.desc.size);
            t.finish();
        }
        Ok((active, applied))
    }

    /// The layers `descs` (none imported before) on `parent_sid`: written
    /// in parallel, committed in order; the top and the entries whose owner
    /// was squashed.
    async fn unpack_parallel(
        &self,
        ctx: &OpCtx,
        descs: &[Descriptor],
        parent_sid: &str,
        opts: &ImportOptions,
        workers: usize,
    ) -> Result<(ImmutableRef, u64)> {
        let layers: Vec<Layer> = descs
            .iter()
            .map(|desc| {
                Ok(Layer {
                    desc: desc.clone(),
                    diff_id: Image::diff_id(desc)?,
                    key: id::new_id(),
                })
            })
            .collect::<Result<_>>()?;
        let limit = Arc::new(tokio::sync::Semaphore::new(workers));
        let mut writes = Vec::new();
        for layer in &layers {
            let (mgr, ctx, layer) = (self.clone(), ctx.clone(), layer.clone());
            let ignore_chown_errors = opts.ignore_chown_errors;
            let limit = Arc::clone(&limit);
            writes.push(tokio::spawn(async move {
                let _permit = limit
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                mgr.unpack_detached(&ctx, &layer, ignore_chown_errors).await
            }));
        }
        // Commit in order as the writes end; after a failure, only clean up.
        let sn = self.root().snapshots.under(ctx);
        let mut parent = parent_sid.to_owned();
        let mut failure: Option<CacheError> = None;
        let mut squashed = 0;
        for (layer, write) in layers.iter().zip(writes) {
            let written = write
                .await
                .map_err(|e| CacheError::Task(e.to_string()))
                .and_then(|r| r);
            let written = match written {
                Ok(w) => w,
                Err(e) => {
                    failure.get_or_insert(e);
                    continue;
                }
            };
            if failure.is_some() {
                self.discard(&written.0).await;
                continue;
            }
            match self.place(ctx, &sn, layer, written, &parent, opts).await {
                Ok(n) => {
                    parent = layer.key.clone();
                    squashed += n;
                }
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok((ImmutableRef::new(self.clone(), &parent, true), squashed)),
        }
    }

    /// Commits a layer written without its lowers onto `parent`, or writes
    /// it again on `parent` when it needed them; records it. The entries
    /// whose owner was squashed.
    async fn place(
        &self,
        ctx: &OpCtx,
        sn: &SnapshotStore,
        layer: &Layer,
        (active, applied): Detached,
        parent: &str,
        opts: &ImportOptions,
    ) -> Result<u64> {
        match applied {
            Ok((squashed, size)) => {
                let committed = if parent.is_empty() {
                    sn.commit(&layer.key, &active, Labels::new()).await
                } else {
                    sn.commit_onto(&layer.key, &active, parent, Labels::new())
                        .await
                };
                if let Err(e) = committed {
                    self.discard(&active).await;
                    return Err(e.into());
                }
                self.record_layer(layer, parent, opts, Some(size))?;
                Ok(squashed)
            }
            Err(DiffError::Apply(ApplyError::NeedsLowers { entry, reason, .. })) => {
                tracing::debug!(layer = %layer.desc.digest, entry, reason, "writing a layer again on its parent");
                self.discard(&active).await;
                self.unpack_layer(ctx, layer, parent, opts)
                    .await
                    .map(|(_, squashed)| squashed)
            }
            Err(e) => {
                self.discard(&active).await;
                Err(e.into())
            }
        }
    }

    /// Removes an active snapshot a failed or redone write left.
    async fn discard(&self, active: &str) {
        if let Err(e) = self.root().snapshots.remove(active).await {
            tracing::warn!(key = active, error = %e, "could not remove a discarded layer write");
        }
    }

    /// The record and dedupe rows of a layer just committed as
    /// `layer.key` on `parent_sid`, whose uncompressed stream held `size`
    /// bytes (none for a lazy layer: no diffID row, no labels, no link to
    /// a blob not here).
    fn record_layer(
        &self,
        layer: &Layer,
        parent_sid: &str,
        opts: &ImportOptions,
        size: Option<u64>,
    ) -> Result<ImmutableRef> {
        let (desc, key) = (&layer.desc, &layer.key);
        let ropts = RefOptions {
            description: Some(format!("import image layer {}", desc.digest)),
            record_type: opts.record_type.clone(),
            image_ref: opts.image_ref.clone(),
            ..RefOptions::default()
        };
        let tx = self.root().db.write()?;
        metadata::put_record(&tx, key, None, &metadata::new_record(key, true, &ropts))?;
        metadata::apply_edit(&tx, key, blob_edit(layer))?;
        tx.put(
            &keys::join(&[parent_sid, desc.digest.as_str()]),
            &ImportByBlobRecord {
                snapshot: key.to_owned(),
            },
        )?;
        if size.is_some() {
            put_diff_row(&tx, layer, parent_sid)?;
        }
        tx.commit()?;
        if let Some(size) = size {
            self.label_unpacked(layer, size)?;
        }
        Ok(ImmutableRef::new(self.clone(), key, true))
    }

    /// Labels the blob of `layer`, just unpacked into `layer.key`, with its
    /// diffID (and, for eStargz, the uncompressed stream's `size`, as its
    /// exports annotate it), and links the snapshot to it.
    fn label_unpacked(&self, layer: &Layer, size: u64) -> Result<()> {
        let desc = &layer.desc;
        let mut labels = Labels::from([(UNCOMPRESSED_LABEL.to_owned(), layer.diff_id.to_string())]);
        let estargz = match self.root().content.info(&desc.digest) {
            Ok(info) => info.labels.contains_key(media::ESTARGZ_TOC_DIGEST),
            Err(e) if e.is_not_found() => false,
            Err(e) => return Err(e.into()),
        };
        if estargz {
            labels.insert(
                media::ESTARGZ_UNCOMPRESSED_SIZE.to_owned(),
                size.to_string(),
            );
        }
        self.label_blob(&desc.digest, &desc.media_type, labels)?;
        self.record_content(&layer.key, &desc.digest)
    }

    /// Labels a layer blob with its media type and `labels` (its diffID,
    /// an eStargz TOC digest); labels already there are kept.
    pub(crate) fn label_blob(&self, d: &Digest, media_type: &str, labels: Labels) -> Result<()> {
        let content = &self.root().content;
        let mut info = match content.info(d) {
            Ok(i) => i,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut paths = Vec::new();
        let all = std::iter::once((BLOB_MEDIA_TYPE_LABEL.to_owned(), media_type.to_owned()))
            .chain(labels);
        for (k, v) in all {
            if let std::collections::btree_map::Entry::Vacant(slot) = info.labels.entry(k) {
                paths.push(format!("labels.{}", slot.key()));
                slot.insert(v);
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

/// The record values naming `layer`'s blob and diffID.
fn blob_edit(layer: &Layer) -> Edit {
    let desc = &layer.desc;
    Edit::default()
        .set(metadata::DIFF_ID, &layer.diff_id.as_str())
        .set(metadata::BLOB, &desc.digest.as_str())
        .set(metadata::MEDIA_TYPE, &desc.media_type.as_str())
        .set(metadata::BLOB_SIZE, &i64::try_from(desc.size).unwrap_or(-1))
        .append(metadata::URLS, &desc.urls)
}

/// The diffID dedupe row of `layer`, unpacked as `layer.key` on
/// `parent_sid`.
fn put_diff_row(tx: &strata_metadata::WriteTx, layer: &Layer, parent_sid: &str) -> Result<()> {
    tx.put(
        &keys::join(&[parent_sid, layer.diff_id.as_str()]),
        &ImportByDiffRecord {
            snapshot: layer.key.clone(),
        },
    )?;
    Ok(())
}

/// Refuses layer `desc` when `known`, a diffID recorded for it, is not
/// `claimed`, the one its image's config gives: the mismatch an unpack
/// would report, naming the layer and both.
fn check_diff_id(desc: &Descriptor, claimed: &Digest, known: Option<Digest>) -> Result<()> {
    match known {
        Some(actual) if actual != *claimed => Err(DiffError::from(ApplyError::Mismatch {
            layer: desc.digest.to_string(),
            what: "recorded diffID",
            expected: claimed.clone(),
            actual,
        })
        .into()),
        _ => Ok(()),
    }
}
