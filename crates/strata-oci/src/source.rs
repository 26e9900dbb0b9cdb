//! Pulling an image from any [`Source`] into the content store: the
//! source names its entries, an index is walked to the manifest of the
//! asked-for platform, the manifest and config are checked against each
//! other, and the layers are fetched in parallel. Every blob is verified
//! (size and digest) as it is written; what is already stored is not
//! fetched again; what is written is held by the operation's lease.

use std::collections::HashSet;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use oci_spec::image as oci;
use strata_content::{ContentError, ContentStore};
use strata_core::{Classify, Compression, Descriptor, Digest, Labels, media};
use strata_leases::{OpCtx, ProgressTracker};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::error::{OciError, Result};
use crate::image::{Image, MAX_INDEX_DEPTH, check_document_size, read_described, read_document};
use crate::platform::{Platform, pick};

/// Where an image's blobs come from: a layout, an archive, a registry.
#[async_trait::async_trait]
pub trait Source: Send + Sync {
    /// The location, for messages.
    fn name(&self) -> String;

    /// The entries the location names: one manifest or index, or several
    /// (one per platform) when a tag names several or none was given.
    /// Documents the source already had to read are put in `store`.
    async fn roots(&self, store: &ContentStore) -> Result<Roots>;

    /// Copies blob `desc` into `store`, verified against its size and
    /// digest, reporting bytes to `progress`. Fails with the content
    /// store's `AlreadyExists` when the blob turns out to be stored
    /// already (another operation stored it meanwhile).
    async fn fetch(
        &self,
        store: &ContentStore,
        desc: &Descriptor,
        progress: &Arc<ProgressTracker>,
    ) -> Result<()>;

    /// Notes that blob `desc` was found in `store` rather than fetched,
    /// with what the source records on blobs it fetches (a registry: that
    /// its repository has the blob). Nothing by default.
    fn present(&self, _store: &ContentStore, _desc: &Descriptor) -> Result<()> {
        Ok(())
    }

    /// Exactly `len` bytes of blob `desc` from `offset`, when the source
    /// can read by range (a registry, a layout's files); `None` when it
    /// cannot (an archive, read as one stream).
    async fn read_range(
        &self,
        _desc: &Descriptor,
        _offset: u64,
        _len: u64,
    ) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
}

/// What a source's name points at.
#[derive(Clone, Debug, Default)]
pub struct Roots {
    /// The entries.
    pub entries: Vec<oci::Descriptor>,
    /// Blobs the source stored (new to the store) while finding them.
    pub stored: usize,
}

/// The annotation carrying an image's full name on an index entry
/// (containerd's and docker's).
pub const IMAGE_NAME_ANNOTATION: &str = "io.containerd.image.name";

/// How to pull.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// The platform picked from indexes (the host's by default).
    pub platform: Platform,
    /// Blobs fetched at once.
    pub parallel: usize,
    /// Leave the layers from [`Image::first_lazy_layer`] up unfetched, to
    /// be read lazily or fetched later ([`fetch_blobs`]).
    pub lazy: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: Platform::host(),
            parallel: 4,
            lazy: false,
        }
    }
}

/// The ingest ref of a blob being fetched: stable, so an interrupted fetch
/// resumes.
pub(crate) fn ingest_ref(d: &Digest) -> String {
    format!("fetch-{d}")
}

/// A reader that reports how many bytes went through it.
struct Counting<'a, R> {
    inner: R,
    done: u64,
    progress: &'a ProgressTracker,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        self.progress.update(self.done);
        Ok(n)
    }
}

/// Writes `reader` (blob `desc`, read from `object`) into `store`,
/// verifying size and digest; `AlreadyExists` when the store had it.
/// Blocking.
pub(crate) fn ingest_reader(
    store: &ContentStore,
    object: &str,
    desc: &Descriptor,
    reader: impl Read,
    progress: &ProgressTracker,
) -> Result<()> {
    let counted = Counting {
        inner: reader,
        done: 0,
        progress,
    };
    let got = store
        .ingest(
            &ingest_ref(&desc.digest),
            counted,
            Some(desc.size),
            Some(&desc.digest),
            &Labels::new(),
        )
        .map_err(|e| match e {
            ContentError::SizeMismatch { actual, .. } => OciError::invalid(
                object,
                format!(
                    "blob {} has {actual} bytes where its descriptor says {}",
                    desc.digest, desc.size
                ),
            ),
            ContentError::DigestMismatch { actual, .. } => {
                OciError::invalid(object, format!("blob {} hashes to {actual}", desc.digest))
            }
            e => e.into(),
        })?;
    progress.finish();
    if got.already_existed {
        return Err(ContentError::AlreadyExists(got.digest).into());
    }
    Ok(())
}

/// Fetches `desc` unless the store has it; whether it fetched.
///
/// When another operation of this process is fetching the same blob (two
/// pulls of one image, or of images sharing a layer, side by side in a
/// daemon), this waits for it and uses what it stored, as containerd's
/// fetcher does: one fetch per blob. If that fetch fails, this one fetches.
/// A blob stored between the first look and the fetch is found by the
/// fetch (`AlreadyExists`) and counted as present, not fetched.
async fn ensure(
    ctx: &OpCtx,
    source: &dyn Source,
    store: &ContentStore,
    desc: &Descriptor,
) -> Result<bool> {
    let mut pause = Duration::from_millis(5);
    loop {
        match store.hold(&desc.digest) {
            Ok(info) if info.size == desc.size => {
                // Only later pushes gain by it: a failure fails no pull.
                if let Err(e) = source.present(store, desc) {
                    tracing::warn!(source = %source.name(), blob = %desc.digest, error = %e, "could not record where a stored blob was found");
                }
                return Ok(false);
            }
            Ok(info) => {
                return Err(OciError::invalid(
                    source.name(),
                    format!(
                        "descriptor of {} says {} bytes; the stored blob has {}",
                        desc.digest, desc.size, info.size
                    ),
                ));
            }
            Err(e) if e.is_not_found() => {
                let tracker = Arc::new(ProgressTracker::new(
                    ctx,
                    desc.digest.as_str(),
                    desc.size,
                    "bytes",
                ));
                match source.fetch(store, desc, &tracker).await {
                    Err(OciError::Content(ContentError::RefInUse(_))) => {
                        ctx.check()?;
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(200));
                    }
                    // Held by the next look.
                    Err(OciError::Content(ContentError::AlreadyExists(_))) => {}
                    fetched => return fetched.map(|()| true),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// An image pulled, and what that took.
#[derive(Clone, Debug)]
pub struct Pulled {
    /// The image.
    pub image: Image,
    /// Blobs fetched from the source.
    pub fetched: usize,
    /// Blobs the store already had.
    pub present: usize,
    /// Layers a lazy pull left unfetched (counted in neither of the
    /// above): the top ones, from [`Image::first_lazy_layer`].
    pub lazy: usize,
    /// The name the source gives the image (an archive's `RepoTags`, an
    /// index entry's `io.containerd.image.name`), if any.
    pub name: Option<String>,
}

/// Resolves what `source` names to one image for `opts.platform` and puts
/// every blob of it in `store` (held by `ctx`'s lease).
#[tracing::instrument(skip_all, fields(source = %source.name()))]
pub async fn pull(
    ctx: &OpCtx,
    store: &ContentStore,
    source: Arc<dyn Source>,
    opts: &PullOptions,
) -> Result<Pulled> {
    let store = store.under(ctx);
    let roots = source.roots(&store).await?;
    let mut fetched = roots.stored;
    let mut count = |got: bool| {
        if got {
            fetched += 1;
        }
    };
    let mut entries = roots.entries;
    let mut name = None;
    let mut object = source.name();
    let mut nonlayers = Vec::new();
    let mut seen = HashSet::new();
    let manifest_desc = loop {
        ctx.check()?;
        let chosen = pick(&object, &entries, &opts.platform)?;
        if name.is_none() {
            name = chosen
                .annotations()
                .as_ref()
                .and_then(|a| a.get(IMAGE_NAME_ANNOTATION))
                .cloned();
        }
        let desc = Descriptor::try_from(chosen)
            .map_err(|e| OciError::invalid(&object, format!("names a bad digest: {e}")))?;
        if !seen.insert(desc.digest.clone()) {
            return Err(OciError::invalid(
                &object,
                format!("refers back to {} (a cycle of indexes)", desc.digest),
            ));
        }
        if media::is_index(&desc.media_type) {
            if nonlayers.len() >= MAX_INDEX_DEPTH {
                return Err(OciError::invalid(
                    &object,
                    format!("nests indexes deeper than {MAX_INDEX_DEPTH}"),
                ));
            }
            check_document_size("index", &desc)?;
            count(ensure(ctx, &*source, &store, &desc).await?);
            let index: oci::ImageIndex = read_described(&store, &desc)?;
            object = format!("index {}", desc.digest);
            entries = index.manifests().clone();
            nonlayers.push(desc);
            continue;
        }
        if !media::is_manifest(&desc.media_type) {
            return Err(OciError::invalid(
                &object,
                format!(
                    "entry {} has media type {:?}, not an image manifest or index",
                    desc.digest, desc.media_type
                ),
            ));
        }
        break desc;
    };
    check_document_size("manifest", &manifest_desc)?;
    count(ensure(ctx, &*source, &store, &manifest_desc).await?);
    let manifest: oci::ImageManifest = read_described(&store, &manifest_desc)?;
    let config_desc = config_of(&manifest_desc, &manifest)?;
    check_document_size("config", &config_desc)?;
    count(ensure(ctx, &*source, &store, &config_desc).await?);
    let config: oci::ImageConfiguration = read_document(&store, "config", &config_desc)?;
    let mut image = image_checked(
        &source.name(),
        &manifest_desc,
        &manifest,
        config_desc,
        &config,
        &opts.platform,
    )?;
    image.nonlayers = nonlayers;
    let fetch_to = match opts.lazy {
        true => image.first_lazy_layer().unwrap_or(image.layers.len()),
        false => image.layers.len(),
    };
    let layers = image.layers[..fetch_to].to_vec();
    fetched += fetch_blobs(ctx, &store, source, layers, opts.parallel).await?;
    let lazy = image.layers.len() - fetch_to;
    let total = image.blobs().count() - lazy;
    Ok(Pulled {
        image,
        fetched,
        present: total.saturating_sub(fetched),
        lazy,
        name,
    })
}

/// Puts the blobs `descs` in `store` (held by `ctx`'s lease), fetching
/// from `source` those it lacks, at most `parallel` at once; how many it
/// fetched. A lazy image's layers are fetched this way when it is
/// unlazied.
pub async fn fetch_blobs(
    ctx: &OpCtx,
    store: &ContentStore,
    source: Arc<dyn Source>,
    descs: Vec<Descriptor>,
    parallel: usize,
) -> Result<usize> {
    let store = store.under(ctx);
    let gate = Arc::new(Semaphore::new(parallel.max(1)));
    let mut tasks = JoinSet::new();
    for desc in descs {
        let (ctx, source, store, gate) = (
            ctx.clone(),
            Arc::clone(&source),
            store.clone(),
            Arc::clone(&gate),
        );
        tasks.spawn(async move {
            let _permit = gate.acquire().await;
            ctx.check()?;
            ensure(&ctx, &*source, &store, &desc).await
        });
    }
    let mut fetched = 0;
    while let Some(done) = tasks.join_next().await {
        let result =
            done.map_err(|e| OciError::io("fetch a layer", source.name(), io::Error::other(e)));
        match result.and_then(|r| r) {
            Ok(got) => fetched += usize::from(got),
            Err(e) => {
                tasks.abort_all();
                return Err(e);
            }
        }
    }
    Ok(fetched)
}

/// The image of a manifest and config read, checked to be one for
/// `platform`.
pub(crate) fn image_checked(
    reference: &str,
    manifest_desc: &Descriptor,
    manifest: &oci::ImageManifest,
    config_desc: Descriptor,
    config: &oci::ImageConfiguration,
    platform: &Platform,
) -> Result<Image> {
    let built_for = Platform {
        os: config.os().to_string(),
        architecture: config.architecture().to_string(),
        variant: config.variant().clone(),
    };
    if !platform.accepts(&built_for) {
        return Err(OciError::invalid(
            format!("manifest {}", manifest_desc.digest),
            format!("is an image for {built_for}, not {platform}"),
        ));
    }
    image_from(reference, manifest_desc, manifest, config_desc, config)
}

/// The config descriptor of a manifest, checked to be an image config.
pub(crate) fn config_of(
    manifest_desc: &Descriptor,
    manifest: &oci::ImageManifest,
) -> Result<Descriptor> {
    let what = format!("manifest {}", manifest_desc.digest);
    let config_desc = Descriptor::try_from(manifest.config())
        .map_err(|e| OciError::invalid(&what, format!("config has a bad digest: {e}")))?;
    if !media::is_config(&config_desc.media_type) {
        return Err(OciError::invalid(
            &what,
            format!(
                "config has media type {:?}, not an image config",
                config_desc.media_type
            ),
        ));
    }
    Ok(config_desc)
}

/// The image of the manifest `manifest_desc`, whose manifest and config
/// are in `store`: layers checked against the config and annotated with
/// their diffIDs (the layer blobs need not be there).
pub fn image_of_manifest(
    store: &ContentStore,
    reference: &str,
    manifest_desc: &Descriptor,
) -> Result<Image> {
    let manifest: oci::ImageManifest = read_described(store, manifest_desc)?;
    let config_desc = config_of(manifest_desc, &manifest)?;
    let config: oci::ImageConfiguration = read_document(store, "config", &config_desc)?;
    image_from(reference, manifest_desc, &manifest, config_desc, &config)
}

/// The image of a manifest and config already read.
fn image_from(
    reference: &str,
    manifest_desc: &Descriptor,
    manifest: &oci::ImageManifest,
    config_desc: Descriptor,
    config: &oci::ImageConfiguration,
) -> Result<Image> {
    let what = format!("manifest {}", manifest_desc.digest);
    Ok(Image {
        reference: reference.to_owned(),
        manifest: manifest_desc.clone(),
        config: config_desc,
        layers: layers_of(&what, manifest, config)?,
        nonlayers: Vec::new(),
    })
}

/// The manifest's layers, each checked (a known layer media type, a diffID
/// from the config, an uncompressed layer's digest equal to its diffID) and
/// annotated with its diffID.
fn layers_of(
    what: &str,
    manifest: &oci::ImageManifest,
    config: &oci::ImageConfiguration,
) -> Result<Vec<Descriptor>> {
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(OciError::invalid(
            what,
            format!(
                "has {} layers but its config lists {} diffIDs",
                manifest.layers().len(),
                diff_ids.len()
            ),
        ));
    }
    let mut layers = Vec::with_capacity(diff_ids.len());
    for (i, (layer, diff_id)) in manifest.layers().iter().zip(diff_ids).enumerate() {
        let mut desc = Descriptor::try_from(layer)
            .map_err(|e| OciError::invalid(what, format!("layer {i} has a bad digest: {e}")))?;
        let Some(compression) = Compression::of_media_type(&desc.media_type) else {
            return Err(OciError::invalid(
                what,
                format!(
                    "layer {i} ({}) has media type {:?}, not a layer media type Strata unpacks",
                    desc.digest, desc.media_type
                ),
            ));
        };
        let diff_id = Digest::parse(diff_id)
            .map_err(|e| OciError::invalid(what, format!("diffID {i} {diff_id:?}: {e}")))?;
        if compression == Compression::None && diff_id != desc.digest {
            return Err(OciError::invalid(
                what,
                format!(
                    "uncompressed layer {i} is {} but its diffID says {diff_id}",
                    desc.digest
                ),
            ));
        }
        desc.annotations
            .insert(media::UNCOMPRESSED_LABEL.to_owned(), diff_id.to_string());
        layers.push(desc);
    }
    Ok(layers)
}
