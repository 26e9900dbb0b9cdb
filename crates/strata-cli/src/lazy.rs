//! `strata lazy copy SRC DST`: an image copied from one registry
//! repository to another without being stored (blobs mounted across
//! repositories of one registry, else streamed through, checked).
//!
//! `strata lazy mount REF DIR --cache CACHE`: an eStargz image from a
//! registry mounted before it is downloaded (read-only, or writable over
//! an upper directory with --upper). Only the manifest,
//! the config and each layer's footer and TOC are fetched first; each
//! layer is served through FUSE (strata-lazy) under CACHE/mnt, its file
//! data fetched chunk by chunk by range requests and checked against the
//! TOC, and the layers are stacked on DIR by an overlay. A layer
//! that is not eStargz is fetched whole and unpacked once into
//! CACHE/layers, and stacked with the rest. The command serves the mount
//! until SIGINT or SIGTERM (strata-lazy's `ImageMount` does the mounting),
//! then unmounts; the checked chunks and the
//! unpacked layers stay in CACHE for the next mount. No state root is
//! involved.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use crate::image::{platform, registry_reference};
use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;
use strata_content::ContentError;
use strata_core::{Descriptor, Digest, media};
use strata_lazy::{
    Below, BlobCache, FileSource, ImageLayer, ImageMount, ImageOptions, RangeSource, prune_cache,
};
use strata_oci::{Registry, RegistryOperation};
use strata_snapshot::Snapshotter;

use crate::output::Output;

#[derive(Debug, Subcommand)]
pub enum LazyCmd {
    /// Mount HOST/REPO[:TAG|@DIGEST] on DIR before it is downloaded
    /// (read-only unless --upper; its eStargz layers are read lazily, the
    /// others fetched whole); serves it until SIGINT or SIGTERM.
    Mount(MountArgs),
    /// Copy HOST/REPO[:TAG|@DIGEST] to HOST/REPO[:TAG] without storing
    /// it: each blob the target lacks is mounted from the source
    /// repository when both are on one registry that allows it, else
    /// streamed through and checked against its digest.
    Copy(CopyArgs),
    /// Remove the chunks, TOCs and unpacked layers of a --cache used
    /// longest ago, until it holds at most --keep-storage; safe while
    /// mounts use it (the layers they stack on stay).
    Prune(PruneArgs),
}

/// What `strata lazy prune` takes.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// The cache directory `strata lazy mount --cache` was given.
    #[arg(long, value_name = "DIR")]
    cache: PathBuf,
    /// How much to keep, what was used last (e.g. 10GB, 512MiB)
    /// [default: nothing].
    #[arg(long, value_name = "SIZE")]
    keep_storage: Option<String>,
}

/// What `strata lazy copy` takes.
#[derive(Debug, clap::Args)]
pub struct CopyArgs {
    /// HOST/REPO[:TAG|@DIGEST] to copy.
    source: String,
    /// HOST/REPO[:TAG] to copy it to.
    target: String,
    /// OS/ARCH[/VARIANT] of the image: the manifest picked from a
    /// multi-platform image (only it is copied), the platform a
    /// single-platform image must be for [default: this machine's].
    #[arg(long)]
    platform: Option<String>,
    #[command(flatten)]
    registry: crate::image::RegistryArgs,
}

/// What `strata lazy mount` takes.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// HOST/REPO[:TAG|@DIGEST] (docker:// in front is accepted).
    reference: String,
    /// An existing directory to mount the image on.
    dir: PathBuf,
    /// The directory of the checked chunks (shared by every image mounted
    /// with it) and of the layers' own mounts.
    #[arg(long, value_name = "DIR")]
    cache: PathBuf,
    /// OS/ARCH[/VARIANT] picked from a multi-platform image [default: this machine's].
    #[arg(long)]
    platform: Option<String>,
    #[command(flatten)]
    serving: ServingArgs,
    #[command(flatten)]
    upper: UpperArgs,
    #[command(flatten)]
    registry: crate::image::RegistryArgs,
}

/// What `strata image mount` takes.
#[derive(Debug, clap::Args)]
pub struct ImageMountArgs {
    /// An image name.
    name: String,
    /// An existing directory to mount the image on.
    dir: PathBuf,
    /// The lazy-mount cache: the checked chunks, the blobs kept (which
    /// `image unlazy --lazy-cache` takes) and the layers' own mounts.
    #[arg(long, value_name = "DIR")]
    cache: PathBuf,
    #[command(flatten)]
    serving: ServingArgs,
    #[command(flatten)]
    upper: UpperArgs,
    #[command(flatten)]
    registry: crate::image::RegistryArgs,
}

impl ImageMountArgs {
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// What `strata image attach` takes.
#[derive(Debug, clap::Args)]
pub struct ImageAttachArgs {
    /// An image name.
    name: String,
    /// The lazy-mount cache, as `image mount` uses it.
    #[arg(long, value_name = "DIR")]
    cache: PathBuf,
    #[command(flatten)]
    serving: ServingArgs,
    #[command(flatten)]
    registry: crate::image::RegistryArgs,
}

impl ImageAttachArgs {
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// How a mount of an image serves it (`lazy mount` and `image mount`).
#[derive(Debug, clap::Args)]
pub struct ServingArgs {
    /// Fetch only what is read, never the rest in the background.
    #[arg(long)]
    no_prefetch: bool,
    /// Do not keep the compressed bytes fetched in CACHE/blobs (kept by
    /// default, for `image pull --lazy-cache`).
    #[arg(long)]
    no_keep_blobs: bool,
    /// Prune the cache to this size (e.g. 10GB, 512MiB) while serving, as
    /// `strata lazy prune` does: a second after the layers are open, then
    /// whenever the mount has added an eighth of it (at least 1 MiB) since
    /// the last time [default: never].
    #[arg(long, value_name = "SIZE")]
    keep_storage: Option<String>,
    /// Threads answering file reads, shared by every layer: reads fetch and
    /// decode at most this many chunks at once (lookups and listings never
    /// wait for them; each layer's prefetch fetches one more).
    #[arg(long, value_name = "N", default_value_t = 8)]
    threads: usize,
}

/// Where a mount of an image writes (`lazy mount` and `image mount`).
#[derive(Debug, clap::Args)]
pub struct UpperArgs {
    /// Mount writable: writes go to UPPER/fs, an overlay upper directory
    /// (deletions as whiteouts), with UPPER/work beside it; made if
    /// missing, kept after unmount, and used again when given again
    /// [default: read-only].
    #[arg(long, value_name = "UPPER")]
    upper: Option<PathBuf>,
}

impl ServingArgs {
    /// The options to mount with, writable over `upper` when given.
    fn options(&self, upper: &UpperArgs) -> anyhow::Result<ImageOptions> {
        Ok(ImageOptions {
            threads: self.threads,
            prefetch: !self.no_prefetch,
            // What the mount fetches of each blob is kept (unless told
            // not to), so pulling the image later (`image pull
            // --lazy-cache`, `image unlazy --lazy-cache`) fetches only the
            // rest.
            keep_blobs: !self.no_keep_blobs,
            keep_storage: self
                .keep_storage
                .as_deref()
                .map(crate::refs::parse_size)
                .transpose()?,
            upper: upper.upper.clone(),
            below: Below::default(),
        })
    }
}

/// One layer's blob, read from the registry by range.
struct RegistryBlob {
    registry: Arc<Registry>,
    desc: Descriptor,
    rt: tokio::runtime::Handle,
}

impl RangeSource for RegistryBlob {
    fn size(&self) -> u64 {
        self.desc.size
    }

    fn read_range(&self, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
        self.rt
            .block_on(self.registry.read_range(&self.desc, offset, len))
            .map_err(std::io::Error::other)
    }
}

#[derive(Serialize)]
struct LayerJson {
    digest: String,
    /// Served lazily (eStargz), or fetched whole and unpacked.
    lazy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    toc_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inodes: Option<usize>,
    /// The directory stacked: the layer's FUSE mount, or where it was
    /// unpacked.
    dir: String,
}

#[derive(Serialize)]
struct MountedJson {
    image: String,
    /// Where the image is mounted; none for `image attach`, whose layers
    /// are each on its own snapshot (`layers[].dir`).
    #[serde(skip_serializing_if = "Option::is_none")]
    dir: Option<String>,
    /// For `image mount` and `image attach`: how many bottom layers come
    /// from the root's snapshots (`layers` are those above them).
    #[serde(skip_serializing_if = "Option::is_none")]
    from_root: Option<usize>,
    layers: Vec<LayerJson>,
    requests: u64,
    bytes_fetched: u64,
}

#[derive(Serialize)]
struct CopiedJson {
    source: String,
    target: String,
    manifest: String,
    layers: usize,
    size: u64,
    uploaded: usize,
    mounted: usize,
    present: usize,
}

/// What a mount has fetched (the last line, once it has stopped).
#[derive(Serialize)]
struct FetchedJson {
    requests: u64,
    bytes_fetched: u64,
    chunks_fetched: u64,
}

impl From<strata_lazy::Totals> for FetchedJson {
    fn from(t: strata_lazy::Totals) -> FetchedJson {
        FetchedJson {
            requests: t.requests,
            bytes_fetched: t.bytes,
            chunks_fetched: t.chunks,
        }
    }
}

/// The line a mount prints once its prefetch has finished.
#[derive(Serialize)]
struct PrefetchedJson {
    prefetched: bool,
    /// Layer blobs the cache keeps whole (a pull takes them without
    /// downloading).
    blobs_whole: usize,
    #[serde(flatten)]
    fetched: FetchedJson,
}

pub fn run(cmd: LazyCmd, out: &Output) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    match cmd {
        LazyCmd::Mount(args) => mount(&rt, &args, out),
        LazyCmd::Copy(args) => rt.block_on(copy(&args, out)),
        LazyCmd::Prune(args) => prune(&args, out),
    }
}

/// The runtime a lazy command's registry reads run on (FUSE's reader
/// threads block on it).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

#[derive(Serialize)]
struct PrunedJson {
    cache: String,
    removed: u64,
    removed_bytes: u64,
    kept: u64,
    kept_bytes: u64,
    in_use: u64,
}

/// The chunk cache of `args.cache` cut down to `--keep-storage`.
fn prune(args: &PruneArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let keep = match &args.keep_storage {
        Some(s) => crate::refs::parse_size(s)?,
        None => 0,
    };
    let pruned = prune_cache(&existing_cache(&args.cache)?, keep)
        .with_context(|| format!("prune {}", args.cache.display()))?;
    out.line(
        &PrunedJson {
            cache: args.cache.display().to_string(),
            removed: pruned.removed,
            removed_bytes: pruned.removed_bytes,
            kept: pruned.kept,
            kept_bytes: pruned.kept_bytes,
            in_use: pruned.in_use,
        },
        &format!(
            "removed {} chunks, TOCs, kept blobs and unpacked layers ({}), kept {} ({}; {} layers in use)",
            pruned.removed,
            crate::output::size(pruned.removed_bytes),
            pruned.kept,
            crate::output::size(pruned.kept_bytes),
            pruned.in_use
        ),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `cache`, once it is seen to be a lazy-mount cache (a typo is not made
/// into a new one).
fn existing_cache(cache: &Path) -> anyhow::Result<PathBuf> {
    if !cache.join("chunks").is_dir() {
        return Err(crate::refs::bad(format!(
            "{}: not a lazy mount cache (it has no chunks directory)",
            cache.display()
        )));
    }
    // As the mount table names it (absolute, symbolic links resolved), so
    // the overlays stacked on its layers are found there.
    std::fs::canonicalize(cache).with_context(|| format!("resolve {}", cache.display()))
}

/// The image `args.source` names, copied registry to registry.
async fn copy(args: &CopyArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let platform = platform(args.platform.as_deref())?;
    let opts = args.registry.options();
    let (source, target) = (
        registry_reference(&args.source),
        registry_reference(&args.target),
    );
    let src = Registry::connect(&source, RegistryOperation::Pull, &opts).await?;
    let dst = Registry::connect(&target, RegistryOperation::Push, &opts).await?;
    let (image, report) = dst
        .copy_from(&strata_leases::OpCtx::new(), &src, &platform)
        .await
        .with_context(|| format!("copy {source} to {target}"))?;
    out.line(
        &CopiedJson {
            source: source.clone(),
            target: target.clone(),
            manifest: image.manifest.digest.to_string(),
            layers: image.layers.len(),
            size: image.blobs().map(|d| d.size).sum(),
            uploaded: report.uploaded,
            mounted: report.mounted,
            present: report.present,
        },
        &format!(
            "copied {source} to {target} ({}): {} blobs uploaded, {} mounted, {} present",
            image.manifest.digest, report.uploaded, report.mounted, report.present
        ),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The TOC digest of eStargz layer `desc`; `None` for a layer that is not
/// eStargz (no TOC digest annotation), which cannot be read lazily.
fn toc_digest(i: usize, desc: &Descriptor) -> anyhow::Result<Option<Digest>> {
    desc.annotations
        .get(media::ESTARGZ_TOC_DIGEST)
        .map(|v| {
            Digest::parse(v).with_context(|| format!("layer {i} ({}): TOC digest", desc.digest))
        })
        .transpose()
}

fn mount(rt: &tokio::runtime::Runtime, args: &MountArgs, out: &Output) -> anyhow::Result<ExitCode> {
    // Listened for from the start: a signal that comes before the mount
    // serves (even just after its line is printed) ends it cleanly once
    // it does, rather than killing the process with its mounts left.
    let stop = {
        let _in = rt.enter();
        Stop::listen()?
    };
    let platform = platform(args.platform.as_deref())?;
    let opts = args.serving.options(&args.upper)?;
    let registry = Arc::new(rt.block_on(Registry::connect(
        &registry_reference(&args.reference),
        RegistryOperation::Pull,
        &args.registry.options(),
    ))?);
    let image = rt.block_on(registry.resolve(&platform))?;
    let layers = image
        .layers
        .iter()
        .enumerate()
        .map(|(i, desc)| {
            let source = Arc::new(RegistryBlob {
                registry: registry.clone(),
                desc: desc.clone(),
                rt: rt.handle().clone(),
            });
            image_layer(i, desc, source)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mounted = ImageMount::mount(&args.cache, layers, &args.dir, &opts)?;
    let served = Served {
        image: &args.reference,
        dir: Some(&args.dir),
        from_root: None,
        prefetch: opts.prefetch,
    };
    serve(rt, mounted, &served, stop, out)
}

/// Layer `i` of an image, `desc`, read from `source`.
fn image_layer(
    i: usize,
    desc: &Descriptor,
    source: Arc<dyn RangeSource>,
) -> anyhow::Result<ImageLayer> {
    Ok(ImageLayer {
        digest: desc.digest.clone(),
        media_type: Some(desc.media_type.clone()),
        toc_digest: toc_digest(i, desc)?,
        diff_id: desc
            .annotations
            .get(media::UNCOMPRESSED_LABEL)
            .map(|d| Digest::parse(d))
            .transpose()
            .with_context(|| format!("layer {i} ({}): diffID", desc.digest))?,
        source,
    })
}

/// A root's image as a mount of it needs it, read once (its manifest and
/// chain are those of one naming), and held by a lease of the command's
/// own until the mount holds it (the collector leaves every snapshot a
/// mount in the mount table uses).
struct RootImage {
    named: strata_cache::NamedImage,
    /// Its layers' descriptors, bottom first.
    layers: Vec<Descriptor>,
    /// Its chain's snapshot keys, one per layer, bottom first.
    keys: Vec<String>,
    /// How many layers, from the bottom, the root holds: those below the
    /// first lazy one.
    here: usize,
    _held: strata_leases::LeaseGuard,
}

impl RootImage {
    fn read(
        rt: &tokio::runtime::Runtime,
        mgr: &strata_cache::CacheManager,
        name: &str,
        out: &Output,
    ) -> anyhow::Result<RootImage> {
        let root = mgr.root();
        let (ctx, held) = strata_leases::with_lease(out.ctx(), &root.leases)?;
        let named = mgr.image(name)?;
        let image = mgr.image_blobs_of(&named)?;
        if named.top_ref.is_empty() {
            return Err(crate::refs::bad(format!("image {name} has no layers")));
        }
        let (keys, lazy) = rt.block_on(async {
            let top = mgr
                .get(&named.top_ref, &strata_cache::RefOptions::default())
                .await?;
            if let Some(lease) = ctx.lease() {
                let held =
                    strata_leases::Resource::snapshot(root.snapshots.name(), top.snapshot_id());
                root.leases.add_resource(&lease, &held)?;
            }
            let keys = mgr.chain_keys(top.snapshot_id()).await?;
            anyhow::Ok((keys, mgr.lazy_layers(&top).await?))
        })?;
        // A pull or an import makes a snapshot per layer; a name given to
        // a ref of another making (a merge, say) may not.
        if keys.len() != image.layers.len() {
            return Err(unmet(format!(
                "image {name}: its chain has {} snapshots for {} layers, so its layers cannot be told apart; mount its ref with `strata mount`",
                keys.len(),
                image.layers.len()
            )));
        }
        Ok(RootImage {
            here: lazy.iter().position(|&l| l).unwrap_or(lazy.len()),
            named,
            layers: image.layers,
            keys,
            _held: held,
        })
    }

    /// Its lazy layers (those from `here` up), read by range from where
    /// the image was pulled.
    fn lazy_layers(
        &self,
        rt: &tokio::runtime::Runtime,
        registry: &crate::image::RegistryArgs,
    ) -> anyhow::Result<Vec<ImageLayer>> {
        if self.here == self.layers.len() {
            return Ok(Vec::new());
        }
        let source = range_source(rt, &self.named, registry)?;
        self.layers[self.here..]
            .iter()
            .enumerate()
            .map(|(i, desc)| image_layer(self.here + i, desc, source(desc)?))
            .collect()
    }
}

/// What `image mount` and `image attach` start from: a runtime of their
/// own, the signals that stop them (listened for at once), the options
/// to serve with, and the image `name` read once.
fn root_serving(
    mgr: &strata_cache::CacheManager,
    name: &str,
    serving: &ServingArgs,
    upper: &UpperArgs,
    out: &Output,
) -> anyhow::Result<(tokio::runtime::Runtime, Stop, ImageOptions, RootImage)> {
    let rt = runtime()?;
    let stop = {
        let _in = rt.enter();
        Stop::listen()?
    };
    let opts = serving.options(upper)?;
    let image = RootImage::read(&rt, mgr, name, out)?;
    Ok((rt, stop, opts, image))
}

/// `strata image mount NAME DIR --cache CACHE`: a root's image, its layers
/// the root has stacked from their snapshots, its lazy ones served through
/// FUSE from where it was pulled, until SIGINT or SIGTERM (or, run by a
/// daemon, until its client goes away).
pub fn mount_image(
    mgr: strata_cache::CacheManager,
    args: &ImageMountArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let (rt, stop, mut opts, image) =
        root_serving(&mgr, &args.name, &args.serving, &args.upper, out)?;
    let here = image.here;
    if here > 0 {
        opts.below = below(&mgr, &image.keys[here - 1], &image.layers[..here])?;
    }
    let mounted = ImageMount::mount(
        &args.cache,
        image.lazy_layers(&rt, &args.registry)?,
        &args.dir,
        &opts,
    )?;
    let lazy = here < image.layers.len();
    // Run here, the root is free for other commands while it serves.
    drop(image);
    drop(mgr);
    let served = Served {
        image: &args.name,
        dir: Some(&args.dir),
        from_root: Some(here),
        // Nothing is fetched for layers the root has.
        prefetch: opts.prefetch && lazy,
    };
    serve(&rt, mounted, &served, stop, out)?;
    if lazy {
        kept_note(&args.name, &args.cache, out);
    }
    Ok(ExitCode::SUCCESS)
}

/// `strata image attach NAME --cache CACHE`: a root's image's lazy
/// layers, each served through FUSE on its own lazy snapshot's
/// placeholder, so that everything the root does with a snapshot works on
/// them (new refs on them, their mounts, views), until SIGINT or SIGTERM
/// (or, run by a daemon, until its client goes away).
pub fn attach_image(
    mgr: strata_cache::CacheManager,
    args: &ImageAttachArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let name = &args.name;
    let read_only = UpperArgs { upper: None };
    let (rt, stop, mut opts, image) = root_serving(&mgr, name, &args.serving, &read_only, out)?;
    let here = image.here;
    if here == image.layers.len() {
        return Err(unmet(format!(
            "image {name} has no lazy layers: the root holds every one, so there is nothing to attach"
        )));
    }
    // Only to leave out whiteouts that hide nothing in the root's layers:
    // where those cannot be told apart as directories, the whiteouts stay,
    // harmless in a layer that is never the bottom of a chain.
    if here > 0 {
        opts.below =
            below(&mgr, &image.keys[here - 1], &image.layers[..here]).unwrap_or_else(|e| {
                tracing::debug!(error = %e, "whiteouts over the root's layers are kept");
                Below::default()
            });
    }
    // Before anything is fetched.
    for (i, desc) in image.layers.iter().enumerate().skip(here) {
        if toc_digest(i, desc)?.is_none() {
            return Err(unmet(format!(
                "image {name}: layer {i} ({}) is lazy but not eStargz, so it cannot be read lazily; `strata image unlazy {name}` fetches the image's lazy layers",
                desc.digest
            )));
        }
    }
    let sn = &mgr.root().snapshots;
    let attachments = image.keys[here..]
        .iter()
        .map(|k| sn.attach(k))
        .collect::<Result<Vec<_>, _>>()?;
    let at: Vec<PathBuf> = attachments.iter().map(|a| a.dir().to_path_buf()).collect();
    let attached = ImageMount::attach(
        &args.cache,
        image.lazy_layers(&rt, &args.registry)?,
        &at,
        &opts,
    )?;
    // The root is free for other commands while it serves: that is what
    // attaching is for.
    drop(image);
    drop(mgr);
    let served = Served {
        image: name,
        dir: None,
        from_root: Some(here),
        prefetch: opts.prefetch,
    };
    serve(&rt, attached, &served, stop, out)?;
    // Once the layers are unmounted: their directories go.
    drop(attachments);
    kept_note(name, &args.cache, out);
    Ok(ExitCode::SUCCESS)
}

/// Says how to fill `image`'s lazy refs from what a mount kept in `cache`.
fn kept_note(image: &str, cache: &Path, out: &Output) {
    out.note(&format!(
        "`strata image unlazy {image} --lazy-cache {}` takes what was kept",
        cache.display()
    ));
}

/// The root's snapshot `key` (the topmost of `layers`, which it holds
/// with those below it) as the directories a mount stacks.
fn below(
    mgr: &strata_cache::CacheManager,
    key: &str,
    layers: &[Descriptor],
) -> anyhow::Result<Below> {
    let sn = &mgr.root().snapshots;
    let mounts = sn.view_mounts(key)?;
    let userxattr = mounts
        .iter()
        .any(|m| m.layers.as_ref().is_some_and(|l| l.userxattr));
    let dirs = strata_core::Mount::stacked_dirs(&mounts)
        .filter(|_| !userxattr)
        .ok_or_else(|| {
            unmet(format!(
                "snapshot {key} of the {} backend cannot be stacked under other layers: its mounts are not one bind or one overlay without options that change how its layers read (or with user.* attributes)",
                sn.name()
            ))
        })?;
    Ok(Below {
        digests: layers.iter().map(|d| d.digest.clone()).collect(),
        dirs,
    })
}

/// An unmet-precondition error (exit 4) with `message`.
fn unmet(message: String) -> anyhow::Error {
    crate::root::CliError {
        kind: strata_core::ErrorKind::FailedPrecondition,
        message,
    }
    .into()
}

/// Opens a layer blob for range reads.
type OpenBlob = Box<dyn Fn(&Descriptor) -> anyhow::Result<Arc<dyn RangeSource>>>;

/// A range source for each layer blob of `named`, read from where it was
/// pulled: a registry, or a layout's blob files.
fn range_source(
    rt: &tokio::runtime::Runtime,
    named: &strata_cache::NamedImage,
    registry: &crate::image::RegistryArgs,
) -> anyhow::Result<OpenBlob> {
    let location = strata_oci::Location::parse(&named.source)
        .with_context(|| format!("image {}: its source {:?}", named.name, named.source))?;
    match location {
        strata_oci::Location::Registry { reference } => {
            let registry = Arc::new(rt.block_on(Registry::connect(
                &reference,
                RegistryOperation::Pull,
                &registry.options(),
            ))?);
            let rt = rt.handle().clone();
            Ok(Box::new(move |desc| {
                Ok(Arc::new(RegistryBlob {
                    registry: registry.clone(),
                    desc: desc.clone(),
                    rt: rt.clone(),
                }))
            }))
        }
        strata_oci::Location::Layout { dir, .. } => Ok(Box::new(move |desc| {
            let path = dir.join(strata_oci::layout_blob_path(&desc.digest));
            let file =
                FileSource::open(&path).with_context(|| format!("open {}", path.display()))?;
            // As the pull that recorded the image read it.
            if file.size() != desc.size {
                return Err(crate::root::CliError {
                    kind: strata_core::ErrorKind::Invalid,
                    message: format!(
                        "{}: {} bytes where its descriptor says {}",
                        path.display(),
                        file.size(),
                        desc.size
                    ),
                }
                .into());
            }
            Ok(Arc::new(file))
        })),
        other => Err(unmet(format!(
            "image {}: its lazy layers cannot be read by range from {other}, where it was imported from; `strata image unlazy {}` fetches them",
            named.name, named.name
        ))),
    }
}

/// What is said of a mounted image.
struct Served<'a> {
    image: &'a str,
    /// Where it is mounted; none when its layers are attached.
    dir: Option<&'a Path>,
    from_root: Option<usize>,
    prefetch: bool,
}

/// Says what `mounted` serves, serves it until `stop` (or until the
/// command is cancelled), unmounts it, and says what it fetched.
fn serve(
    rt: &tokio::runtime::Runtime,
    mounted: ImageMount,
    served: &Served,
    stop: Stop,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let mut json = Vec::new();
    for (i, layer) in mounted.layers().iter().enumerate() {
        let i = i + served.from_root.unwrap_or(0);
        if let Some(fetched) = layer.unpacked_fetched {
            out.note(&format!(
                "layer {i} ({}) is not eStargz, so it cannot be read lazily: {}",
                layer.digest,
                match fetched {
                    0 => format!("unpacked before, in {}", layer.dir.display()),
                    n => format!(
                        "fetched whole ({}) and unpacked into {}",
                        crate::output::size(n),
                        layer.dir.display()
                    ),
                }
            ));
        }
        json.push(LayerJson {
            digest: layer.digest.to_string(),
            lazy: layer.toc_digest.is_some(),
            toc_digest: layer.toc_digest.as_ref().map(Digest::to_string),
            inodes: layer.inodes,
            dir: layer.dir.display().to_string(),
        });
    }
    let lazy = json.iter().filter(|l| l.lazy).count();
    let all = json.len() + served.from_root.unwrap_or(0);
    let totals = mounted.totals();
    let from_root = match served.from_root {
        Some(n) => format!(", {n} from the root"),
        None => String::new(),
    };
    let human = match served.dir {
        Some(dir) => format!(
            "mounted {} ({all} layers, {lazy} lazy{from_root}) on {}; serving until SIGINT or SIGTERM",
            served.image,
            dir.display()
        ),
        None => format!(
            "attached {lazy} lazy layers of {} ({all} layers{from_root}) on their snapshots; serving until SIGINT or SIGTERM",
            served.image
        ),
    };
    out.line(
        &MountedJson {
            image: served.image.to_owned(),
            dir: served.dir.map(|d| d.display().to_string()),
            from_root: served.from_root,
            layers: json,
            requests: totals.requests,
            bytes_fetched: totals.bytes,
        },
        &human,
    )?;
    rt.block_on(serve_until_stopped(&mounted, served.prefetch, stop, out))?;
    let (totals, ended) = mounted.unmount(std::time::Duration::from_secs(5))?;
    if !ended {
        match served.dir {
            Some(dir) => {
                tracing::warn!(dir = %dir.display(), "DIR is still in use: the layers end with this process")
            }
            None => {
                tracing::warn!(
                    image = served.image,
                    "a mount stacked on the attached layers still uses them: they serve it until this process ends"
                )
            }
        }
    }
    out.line(
        &FetchedJson::from(totals),
        &format!(
            "unmounted; fetched {} bytes in {} requests",
            totals.bytes, totals.requests
        ),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// SIGINT and SIGTERM, listened for from when this is made (inside a
/// Tokio runtime): one that came before [`serve_until_stopped`] waits
/// ends it at once.
struct Stop {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Stop {
    fn listen() -> std::io::Result<Stop> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Stop {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }
}

/// Waits for SIGINT or SIGTERM (`stop`), or for the command to be
/// cancelled (run by a daemon whose client went away). With `prefetching`, says so in a
/// line once `mounted`'s prefetch has finished (every chunk it could fetch
/// is in the cache), with how many layer blobs are kept whole.
async fn serve_until_stopped(
    mounted: &ImageMount,
    mut prefetching: bool,
    mut stop: Stop,
    out: &Output,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = stop.int.recv() => return Ok(()),
            _ = stop.term.recv() => return Ok(()),
            _ = tick.tick() => {
                // Run by a daemon: its client went away.
                if out.ctx().is_cancelled() {
                    return Ok(());
                }
                if prefetching && mounted.prefetched() {
                    prefetching = false;
                    let totals = mounted.totals();
                    // Serving goes on whoever stopped reading the output.
                    if let Err(e) = out.line(
                        &PrefetchedJson {
                            prefetched: true,
                            blobs_whole: mounted.blobs_whole(),
                            fetched: totals.into(),
                        },
                        &format!(
                            "prefetch has finished ({} bytes fetched in {} requests); {} of {} layer blobs are kept whole",
                            totals.bytes,
                            totals.requests,
                            mounted.blobs_whole(),
                            mounted.layers().len()
                        ),
                    ) {
                        tracing::warn!(error = %e, "could not say that prefetch has finished");
                    }
                }
            }
        }
    }
}

/// The cache `image pull --lazy-cache` was given (once seen to be one,
/// before the pull does anything) and the registry reference it takes
/// blobs for; an error for a location that is not a registry.
pub fn cache_for_pull<'a>(
    cache: Option<&Path>,
    location: &'a strata_oci::Location,
) -> anyhow::Result<Option<(PathBuf, &'a str)>> {
    match (cache, location) {
        (None, _) => Ok(None),
        (Some(dir), strata_oci::Location::Registry { reference }) => {
            Ok(Some((existing_cache(dir)?, reference)))
        }
        (Some(dir), _) => Err(crate::refs::bad(format!(
            "--lazy-cache {}: only an image pulled from a registry takes blobs from a lazy-mount cache",
            dir.display()
        ))),
    }
}

/// Puts the layer blobs of `reference` that lazy mounts with `cache` kept
/// (whole, or in part: the rest fetched by range now, `parallel` blobs at
/// once) into the root's content store under `ctx`, checked against their
/// digests, so that the pull after it fetches none of them again. A kept
/// blob that turns out wrong is removed and said so, and so is a registry
/// that cannot be read here: the pull then fetches as it would have.
/// `cache` is what [`cache_for_pull`] returned.
pub async fn take_kept_blobs(
    store: &strata_content::ContentStore,
    reference: &str,
    platform: &strata_oci::Platform,
    opts: &strata_oci::RegistryOptions,
    parallel: usize,
    cache: &Path,
    out: &Output,
) -> anyhow::Result<crate::image::KeptJson> {
    let blobs = BlobCache::open(&cache.join("blobs"))
        .with_context(|| format!("blob cache {}", cache.display()))?;
    let found = async {
        let registry = Registry::connect(
            &registry_reference(reference),
            RegistryOperation::Pull,
            opts,
        )
        .await?;
        let image = registry.resolve(platform).await?;
        anyhow::Ok((Arc::new(registry), image))
    };
    let (registry, image) = match found.await {
        Ok(found) => found,
        Err(e) => {
            out.note(&format!("nothing taken from {}: {e:#}", cache.display()));
            return Ok(crate::image::KeptJson::default());
        }
    };
    let room = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut taking = tokio::task::JoinSet::new();
    let mut seen = std::collections::HashSet::new();
    for desc in image.layers {
        // A blob two layers share is taken once.
        if !seen.insert(desc.digest.clone()) || store.info(&desc.digest).is_ok() {
            continue;
        }
        let turn = room.clone().acquire_owned().await?;
        let src = RegistryBlob {
            registry: registry.clone(),
            desc,
            rt: tokio::runtime::Handle::current(),
        };
        let (blobs, store) = (blobs.clone(), store.clone());
        taking.spawn_blocking(move || {
            let _turn = turn;
            let taken = take_kept_blob(&blobs, &store, &src);
            (src.desc.digest, taken)
        });
    }
    let mut kept = crate::image::KeptJson::default();
    while let Some(done) = taking.join_next().await {
        let Ok(done) = done else {
            out.note("a kept blob could not be taken: the task failed; the pull fetches it");
            continue;
        };
        match done {
            (_, Ok(Some(filled))) => {
                kept.blobs += 1;
                kept.kept_bytes += filled.kept;
                kept.fetched_bytes += filled.fetched;
            }
            (_, Ok(None)) => {}
            (digest, Err(e)) => out.note(&format!(
                "blob {digest} is fetched whole: what {} kept of it was not usable: {e:#}",
                cache.display()
            )),
        }
    }
    Ok(kept)
}

/// Blob `src` completed from `blobs` and stored in `store`; `None` when
/// nothing of it was kept.
fn take_kept_blob(
    blobs: &BlobCache,
    store: &strata_content::ContentStore,
    src: &RegistryBlob,
) -> anyhow::Result<Option<strata_lazy::Filled>> {
    let d = &src.desc.digest;
    let Some(filled) = blobs.fill(d, src)? else {
        return Ok(None);
    };
    let file = std::fs::File::open(&filled.path)
        .with_context(|| format!("open {}", filled.path.display()))?;
    let labels = strata_core::Labels::new();
    match store.ingest(
        &format!("lazy-{d}"),
        file,
        Some(src.desc.size),
        Some(d),
        &labels,
    ) {
        // The pull that follows finds it present and labels it with the
        // repository that has it, as it labels the blobs it fetches.
        Ok(_) => Ok(Some(filled)),
        // A whole blob is checked here, as it is stored.
        Err(e @ (ContentError::DigestMismatch { .. } | ContentError::SizeMismatch { .. })) => {
            if let Err(gone) = blobs.remove(d) {
                tracing::warn!(blob = %d, error = %gone, "could not remove a wrong kept blob");
            }
            Err(anyhow::Error::from(e).context("removed it"))
        }
        Err(e) => Err(e.into()),
    }
}
