//! Images by name, and images in and out of a root: pull from any
//! location (layout, archive, registry) and import; export a ref as an
//! image and write it to any location.
//!
//! A name is an owner lease, `image/NAME`, labelled with the manifest,
//! config, top ref and source: it holds the chain of snapshots and every
//! blob of the image. Removing the name removes the lease; the collector
//! then reclaims what nothing else holds.

use std::sync::Arc;
use std::time::SystemTime;

use strata_core::{Digest, Labels};
use strata_leases::{LeaseSpec, OpCtx, Resource, labels as lease_labels};
use strata_oci::{History, Image, Location, Platform, PullOptions, PushReport, RegistryOptions};

use crate::error::{CacheError, Result};
use crate::export::RefConfig;
use crate::import::ImportOptions;
use crate::manager::{CacheManager, RefOptions};
use crate::refs::ImmutableRef;
use strata_snapshot::Snapshotter as _;

/// The prefix of image names' leases.
pub const IMAGE_LEASE_PREFIX: &str = "image/";

const MANIFEST_LABEL: &str = "strata.io/image.manifest";
const MANIFEST_TYPE_LABEL: &str = "strata.io/image.manifest-type";
const MANIFEST_SIZE_LABEL: &str = "strata.io/image.manifest-size";
const CONFIG_LABEL: &str = "strata.io/image.config";
const REF_LABEL: &str = "strata.io/image.ref";
const SOURCE_LABEL: &str = "strata.io/image.source";

/// A named image of a root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedImage {
    /// The name.
    pub name: String,
    /// The manifest's digest.
    pub manifest: Digest,
    /// The manifest's media type.
    pub manifest_media_type: String,
    /// The manifest's size.
    pub manifest_size: u64,
    /// The config's digest.
    pub config: Digest,
    /// The top ref of the image's chain (empty for an image without
    /// layers).
    pub top_ref: String,
    /// Where it came from.
    pub source: String,
    /// When it was named.
    pub created: SystemTime,
}

/// An image brought in.
#[derive(Debug)]
pub struct PulledImage {
    /// The image.
    pub image: Image,
    /// Its top ref (none for an image without layers).
    pub top: Option<ImmutableRef>,
    /// Blobs fetched from the source.
    pub fetched: usize,
    /// Blobs the content store already had.
    pub present: usize,
    /// The name the source gives the image, if any.
    pub name: Option<String>,
    /// Layers left lazy ([`PullOptions::lazy`]): recorded, not fetched.
    pub lazy: usize,
    /// Entries of the layers unpacked whose owner was squashed
    /// ([`ImportOptions::ignore_chown_errors`]).
    pub squashed: u64,
}

/// How to bring an image in.
#[derive(Clone, Debug, Default)]
pub struct ImagePullOptions {
    /// Platform and parallelism of the fetch.
    pub pull: PullOptions,
    /// How registries are reached.
    pub registry: RegistryOptions,
    /// How the layers are unpacked (its `lazy` is the pull's).
    pub import: ImportOptions,
}

/// The image lease of `name`.
pub fn image_lease(name: &str) -> String {
    format!("{IMAGE_LEASE_PREFIX}{name}")
}

fn validate_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 512
        || name.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(CacheError::invalid(
            name,
            "an image name is 1 to 512 characters without spaces or control characters",
        ));
    }
    Ok(())
}

/// Where `named` was pulled from, to read its blobs again.
fn source_of(named: &NamedImage) -> Result<Location> {
    Location::parse(&named.source).map_err(|e| {
        CacheError::invalid(
            &named.name,
            format!("its source {:?} cannot be read again: {e}", named.source),
        )
    })
}

fn from_lease(l: &strata_leases::Lease) -> Option<NamedImage> {
    let name = l.id.strip_prefix(IMAGE_LEASE_PREFIX)?.to_owned();
    let get = |k: &str| l.labels.get(k).cloned().unwrap_or_default();
    Some(NamedImage {
        name,
        manifest: Digest::parse(&get(MANIFEST_LABEL)).ok()?,
        manifest_media_type: get(MANIFEST_TYPE_LABEL),
        manifest_size: get(MANIFEST_SIZE_LABEL).parse().ok()?,
        config: Digest::parse(&get(CONFIG_LABEL)).ok()?,
        top_ref: get(REF_LABEL),
        source: get(SOURCE_LABEL),
        created: l.created,
    })
}

impl CacheManager {
    /// Fetches the image `location` names into the content store and
    /// unpacks its layers; the image and its top ref (none for an image
    /// without layers) are held by `ctx`'s lease until named. A registry
    /// needs the `registry` feature; without it, it is refused by name
    /// (`OciError::NotBuilt`).
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
    /// use strata_cache::{Location, Platform, RegistryOptions, with_lease};
    ///
    /// // An image to pull: an empty layer written as an OCI layout.
    /// let (ctx, guard) = with_lease(&ctx, &mgr.root().leases)?;
    /// let r = mgr.new_ref(&ctx, None, &Default::default()).await?.commit(&ctx).await?;
    /// let image = mgr
    ///     .image_of_ref(&ctx, &r, &Default::default(), "app:1", &Platform::host())
    ///     .await?;
    /// let layout = dir.path().join("layout");
    /// let dest = Location::parse(&format!("oci:{}:1", layout.display()))?;
    /// mgr.write_image(&ctx, &image, &dest, &RegistryOptions::default()).await?;
    ///
    /// // Pulled back (nothing fetched: the store has every blob) and named.
    /// let pulled = mgr.pull_image(&ctx, &dest, &Default::default()).await?;
    /// assert_eq!(pulled.image.manifest.digest, image.manifest.digest);
    /// assert_eq!(pulled.fetched, 0);
    /// mgr.name_image("app:1", &pulled.image, pulled.top.as_ref(), &dest.to_string()).await?;
    /// guard.release()?; // the name holds the image now
    /// assert_eq!(mgr.resolve_ref("app:1").await?.id(), pulled.top.unwrap().id());
    /// # Ok(()) }
    /// ```
    #[tracing::instrument(skip_all, fields(location = %location))]
    pub async fn pull_image(
        &self,
        ctx: &OpCtx,
        location: &Location,
        opts: &ImagePullOptions,
    ) -> Result<PulledImage> {
        let source = strata_oci::open_source(location, &opts.registry).await?;
        let pulled =
            strata_oci::pull(ctx, &self.root().content, Arc::clone(&source), &opts.pull).await?;
        // A lazy pull fetches the TOCs of the layers it leaves, and
        // checks them, before it records anything.
        if pulled.lazy > 0 {
            self.check_lazy_tocs(&source, &pulled.image, opts.pull.parallel)
                .await?;
        }
        let (top, squashed) = if pulled.image.layers.is_empty() {
            (None, 0)
        } else {
            let mut import = opts.import.clone();
            import.image_ref.get_or_insert_with(|| location.to_string());
            import.lazy = opts.pull.lazy;
            let (top, squashed) = self.import_counting(ctx, &pulled.image, &import).await?;
            (Some(top), squashed)
        };
        // What the import left lazy: layers it found imported are not.
        let lazy = match &top {
            Some(top) if pulled.lazy > 0 => {
                let lazy = self.lazy_layers(top).await?;
                lazy.iter().filter(|&&l| l).count()
            }
            _ => 0,
        };
        Ok(PulledImage {
            image: pulled.image,
            top,
            squashed,
            fetched: pulled.fetched,
            present: pulled.present,
            name: pulled.name,
            lazy,
        })
    }

    /// Fetches the layers of the image named `name` that a lazy pull left
    /// ([`PullOptions::lazy`]) from the location it was pulled from, and
    /// fills its lazy snapshots with them, bottom first, each atomically
    /// and in place: the image's refs stay the same refs, now readable.
    /// Blobs already in the content store are not fetched again. Returns
    /// the image as [`CacheManager::pull_image`] would (`lazy` 0).
    #[tracing::instrument(skip_all, fields(image = name))]
    pub async fn unlazy_image(
        &self,
        ctx: &OpCtx,
        name: &str,
        opts: &ImagePullOptions,
    ) -> Result<PulledImage> {
        let named = self.image(name)?;
        let image = self.image_blobs(name)?;
        let keys = match named.top_ref.is_empty() {
            true => Vec::new(),
            false => {
                self.chain_keys(self.resolve_ref(name).await?.snapshot_id())
                    .await?
            }
        };
        let lazy = self.lazy_of(&keys)?;
        // Refused before anything is fetched.
        for (key, _) in keys.iter().zip(&lazy).filter(|&(_, &l)| l) {
            self.root().snapshots.not_attached(key)?;
        }
        // Only a lazy layer's blob is fetched: with none, the source is
        // not even opened (the import below still checks every layer
        // against the image's config, as an eager pull would).
        let wanted: Vec<_> = image
            .layers
            .iter()
            .zip(&lazy)
            .filter(|&(_, &l)| l)
            .map(|(d, _)| d.clone())
            .collect();
        let fetched = match wanted.is_empty() {
            true => 0,
            false => {
                let source = strata_oci::open_source(&source_of(&named)?, &opts.registry).await?;
                let content = &self.root().content;
                strata_oci::fetch_blobs(ctx, content, source, wanted, opts.pull.parallel).await?
            }
        };
        let here = image
            .blobs()
            .filter(|d| self.root().content.info(&d.digest).is_ok())
            .count();
        let mut import = opts.import.clone();
        import.image_ref.get_or_insert_with(|| named.source.clone());
        import.lazy = false;
        let (top, squashed) = match image.layers.is_empty() {
            true => (None, 0),
            false => {
                let (top, squashed) = self.import_counting(ctx, &image, &import).await?;
                (Some(top), squashed)
            }
        };
        // The same chain, filled in place, unless the layers were found
        // imported some other way: then the name follows them.
        if top.as_ref().map_or("", |t| t.id()) != named.top_ref {
            self.name_image(name, &image, top.as_ref(), &named.source)
                .await?;
        }
        Ok(PulledImage {
            image,
            top,
            fetched,
            present: here - fetched,
            name: None,
            lazy: 0,
            squashed,
        })
    }

    /// Which layers of `r`'s chain, bottom first, are lazy: recorded, not
    /// fetched.
    pub async fn lazy_layers(&self, r: &ImmutableRef) -> Result<Vec<bool>> {
        self.lazy_of(&self.chain_keys(r.snapshot_id()).await?)
    }

    /// Whether each of the snapshots `keys` is lazy.
    pub(crate) fn lazy_of(&self, keys: &[String]) -> Result<Vec<bool>> {
        let sn = &self.root().snapshots;
        Ok(keys
            .iter()
            .map(|k| sn.is_lazy(k))
            .collect::<Result<_, _>>()?)
    }

    /// The snapshot `sid` and its ancestors, bottom first.
    pub async fn chain_keys(&self, sid: &str) -> Result<Vec<String>> {
        let mut chain = Vec::new();
        let mut next = Some(sid.to_owned());
        while let Some(key) = next {
            next = self.root().snapshots.stat(&key).await?.parent;
            chain.push(key);
        }
        chain.reverse();
        Ok(chain)
    }

    /// Names `image` (its top ref `top`) `name`, replacing what the name
    /// held before: the name's lease holds the chain and every blob.
    pub async fn name_image(
        &self,
        name: &str,
        image: &Image,
        top: Option<&ImmutableRef>,
        source: &str,
    ) -> Result<NamedImage> {
        validate_name(name)?;
        let lease = image_lease(name);
        let _one = self.inner.owner_locks.lock(&lease).await;
        let mut held = match top {
            Some(top) => self.chain_resources(top.snapshot_id()).await?,
            None => Vec::new(),
        };
        held.extend(image.blobs().map(|d| Resource::content(&d.digest)));
        let labels = Labels::from([
            (
                lease_labels::GC_FLAT.to_owned(),
                lease_labels::format_time(SystemTime::now()),
            ),
            (MANIFEST_LABEL.to_owned(), image.manifest.digest.to_string()),
            (
                MANIFEST_TYPE_LABEL.to_owned(),
                image.manifest.media_type.clone(),
            ),
            (
                MANIFEST_SIZE_LABEL.to_owned(),
                image.manifest.size.to_string(),
            ),
            (CONFIG_LABEL.to_owned(), image.config.digest.to_string()),
            (
                REF_LABEL.to_owned(),
                top.map(|t| t.id().to_owned()).unwrap_or_default(),
            ),
            (SOURCE_LABEL.to_owned(), source.chars().take(1024).collect()),
        ]);
        // The old name goes and the new one comes whole in one
        // transaction: no crash leaves the name missing, or naming an image
        // whose blobs nothing holds.
        let lm = &self.root().leases;
        let tx = self.root().db.write()?;
        match lm.delete_in(&tx, &lease) {
            Ok(()) => {}
            Err(e) if strata_core::Classify::is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
        lm.create_in(
            &tx,
            LeaseSpec {
                id: Some(lease.clone()),
                labels,
                expire: None,
            },
        )?;
        for r in &held {
            lm.add_resource_in(&tx, &lease, r)?;
        }
        tx.commit()?;
        self.image(name)
    }

    /// Every named image, by name.
    pub fn images(&self) -> Result<Vec<NamedImage>> {
        let mut out: Vec<NamedImage> = self
            .root()
            .leases
            .list(&strata_core::Filter::default())?
            .iter()
            .filter_map(from_lease)
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The image named `name`.
    pub fn image(&self, name: &str) -> Result<NamedImage> {
        match self.root().leases.get(&image_lease(name)) {
            Ok(l) => from_lease(&l)
                .ok_or_else(|| CacheError::invalid(name, "image lease has bad labels")),
            Err(e) if strata_core::Classify::is_not_found(&e) => {
                Err(CacheError::NotFound(format!("image {name}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The image named `name` with its blobs' descriptors, read back from
    /// the content store.
    pub fn image_blobs(&self, name: &str) -> Result<Image> {
        self.image_blobs_of(&self.image(name)?)
    }

    /// [`CacheManager::image_blobs`] of an image already read by name.
    pub fn image_blobs_of(&self, named: &NamedImage) -> Result<Image> {
        let name = &named.name;
        let manifest = strata_core::Descriptor::new(
            named.manifest_media_type.clone(),
            named.manifest.clone(),
            named.manifest_size,
        );
        Ok(strata_oci::image_of_manifest(
            &self.root().content,
            name,
            &manifest,
        )?)
    }

    /// Removes the name `name`; the collector reclaims what only it held.
    pub async fn remove_image(&self, name: &str) -> Result<()> {
        self.image(name)?;
        self.remove_lease(&image_lease(name)).await
    }

    /// The image of `r`'s chain: its layers exported as `cfg` asks, a
    /// config (diffIDs, one history line per layer, `platform`) and a
    /// manifest, held by `ctx`'s lease.
    pub async fn image_of_ref(
        &self,
        ctx: &OpCtx,
        r: &ImmutableRef,
        cfg: &RefConfig,
        reference: &str,
        platform: &Platform,
    ) -> Result<Image> {
        let chain = r.export_chain(ctx, cfg).await?;
        let layers: Vec<_> = chain.layers.iter().map(|l| l.descriptor.clone()).collect();
        let history: Vec<History> = chain
            .layers
            .iter()
            .map(|l| History {
                created: l.created_at,
                created_by: l.description.clone(),
            })
            .collect();
        let store = self.root().content.under(ctx);
        Ok(strata_oci::build_image(
            &store, reference, &layers, &history, platform,
        )?)
    }

    /// Writes `image` to `dest`: an OCI layout, a docker archive or a
    /// registry (a push report for the last; refused by name without the
    /// `registry` feature).
    pub async fn write_image(
        &self,
        ctx: &OpCtx,
        image: &Image,
        dest: &Location,
        registry: &RegistryOptions,
    ) -> Result<Option<PushReport>> {
        let store = self.root().content.under(ctx);
        if let Some(layer) = self.absent_layers(image)?.first() {
            return Err(CacheError::invalid(
                &image.reference,
                format!(
                    "layer {} is not in the content store (write a lazily pulled image by its name)",
                    layer.digest
                ),
            ));
        }
        match dest {
            Location::Layout { dir, tag } => {
                let (store, image, dir) = (store.clone(), image.clone(), dir.clone());
                let tag = tag.clone().unwrap_or_else(|| "latest".to_owned());
                tokio::task::spawn_blocking(move || {
                    strata_oci::write_layout(&store, &image, &dir, &tag)
                })
                .await
                .map_err(|e| CacheError::Task(e.to_string()))??;
                Ok(None)
            }
            Location::Archive { file, name } => {
                let name = name.clone().unwrap_or_else(|| image.reference.clone());
                write_tar(&store, image, file, name, strata_oci::write_archive).await
            }
            Location::OciArchive { file, reference } => {
                let reference = reference.clone().unwrap_or_else(|| "latest".to_owned());
                write_tar(
                    &store,
                    image,
                    file,
                    reference,
                    strata_oci::write_oci_archive,
                )
                .await
            }
            Location::Registry { reference } => Ok(Some(
                strata_oci::push(ctx, &store, image, reference, None, registry).await?,
            )),
        }
    }

    /// Writes the image named `name` as it was stored (the same manifest
    /// digest) to `dest`, as [`CacheManager::write_image`] does, and
    /// returns it. The layers a lazy pull left come from where the image
    /// was pulled: from a registry to a registry, copied without being
    /// stored (mounted within one registry when it allows that, else
    /// streamed through and checked against their digests); otherwise (a
    /// layout or an archive on either side) fetched into the content
    /// store first.
    pub async fn write_named_image(
        &self,
        ctx: &OpCtx,
        name: &str,
        dest: &Location,
        registry: &RegistryOptions,
    ) -> Result<(Image, Option<PushReport>)> {
        let named = self.image(name)?;
        let image = self.image_blobs(name)?;
        let absent = self.absent_layers(&image)?;
        if absent.is_empty() {
            let report = self.write_image(ctx, &image, dest, registry).await?;
            return Ok((image, report));
        }
        let source = source_of(&named)?;
        if let (Location::Registry { reference }, Location::Registry { reference: from }) =
            (dest, &source)
        {
            let store = self.root().content.under(ctx);
            let pushed =
                strata_oci::push(ctx, &store, &image, reference, Some(from), registry).await?;
            return Ok((image, Some(pushed)));
        }
        let src = strata_oci::open_source(&source, registry).await?;
        let parallel = PullOptions::default().parallel;
        strata_oci::fetch_blobs(ctx, &self.root().content, src, absent, parallel).await?;
        let report = self.write_image(ctx, &image, dest, registry).await?;
        Ok((image, report))
    }

    /// The layers of `image` whose blobs the content store lacks (those a
    /// lazy pull left).
    fn absent_layers(&self, image: &Image) -> Result<Vec<strata_core::Descriptor>> {
        let mut absent = Vec::new();
        for layer in &image.layers {
            match self.root().content.info(&layer.digest) {
                Ok(_) => {}
                Err(e) if strata_core::Classify::is_not_found(&e) => absent.push(layer.clone()),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(absent)
    }

    /// The ref `name` names: an image's top ref, else a ref id.
    pub async fn resolve_ref(&self, name: &str) -> Result<ImmutableRef> {
        match self.image(name) {
            Ok(img) if !img.top_ref.is_empty() => {
                self.get(&img.top_ref, &RefOptions::default()).await
            }
            Ok(_) => Err(CacheError::invalid(name, "image has no layers")),
            Err(CacheError::NotFound(_)) => self.get(name, &RefOptions::default()).await,
            Err(e) => Err(e),
        }
    }
}

/// Writes `image` as the tar `file` with `write` (a docker or an OCI
/// archive, the image under `name`), on the blocking pool.
async fn write_tar(
    store: &strata_content::ContentStore,
    image: &Image,
    file: &std::path::Path,
    name: String,
    write: fn(
        &strata_content::ContentStore,
        &Image,
        &std::path::Path,
        &str,
    ) -> strata_oci::Result<()>,
) -> Result<Option<PushReport>> {
    let (store, image, file) = (store.clone(), image.clone(), file.to_path_buf());
    tokio::task::spawn_blocking(move || write(&store, &image, &file, &name))
        .await
        .map_err(|e| CacheError::Task(e.to_string()))??;
    Ok(None)
}
