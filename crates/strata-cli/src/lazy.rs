//! `strata lazy copy SRC DST`: an image copied from one registry
//! repository to another without being stored (blobs mounted across
//! repositories of one registry, else streamed through, checked).
//!
//! `strata lazy mount REF DIR --cache CACHE`: an eStargz image from a
//! registry mounted read-only before it is downloaded. Only the manifest,
//! the config and each layer's footer and TOC are fetched first; each
//! layer is served through FUSE (strata-lazy) under CACHE/mnt, its file
//! data fetched chunk by chunk by range requests and checked against the
//! TOC, and the layers are stacked on DIR by a read-only overlay. A layer
//! that is not eStargz is fetched whole and unpacked once into
//! CACHE/layers, and stacked with the rest. The command serves the mount
//! until SIGINT or SIGTERM, then unmounts; the checked chunks and the
//! unpacked layers stay in CACHE for the next mount. No state root is
//! involved.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::image::{platform, registry_reference};
use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;
use strata_content::ContentError;
use strata_core::{Descriptor, Digest, Mount, OverlayLayers, media};
use strata_lazy::{
    BlobCache, ChunkCache, Layer, LayerOptions, Link, Mounted, Prefetch, RangeSource,
    UnpackOptions, Unpacked,
};
use strata_oci::{Registry, RegistryOperation};

use crate::output::Output;

#[derive(Debug, Subcommand)]
pub enum LazyCmd {
    /// Mount HOST/REPO[:TAG|@DIGEST] read-only on DIR before it is
    /// downloaded (its eStargz layers are read lazily, the others fetched
    /// whole); serves it until SIGINT or SIGTERM.
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
    #[command(flatten)]
    registry: crate::image::RegistryArgs,
}

/// The attribute overlay reads for an opaque directory (a root's mounts).
const OPAQUE: &str = "trusted.overlay.opaque";

/// How long no read may have waited for a fetch before prefetch takes the
/// link: a program's start reads in bursts with short gaps between them,
/// and prefetch fetching in those gaps delayed the next burst.
const PREFETCH_QUIET: std::time::Duration = std::time::Duration::from_secs(1);

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
    dir: String,
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

#[derive(Serialize)]
struct StoppedJson {
    requests: u64,
    bytes_fetched: u64,
    chunks_fetched: u64,
}

pub fn run(cmd: LazyCmd, out: &Output) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cmd {
        LazyCmd::Mount(args) => mount(&rt, &args, out),
        LazyCmd::Copy(args) => rt.block_on(copy(&args, out)),
        LazyCmd::Prune(args) => prune(&args, out),
    }
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

/// Prunes lazy-mount cache `cache` down to `keep` bytes: its chunks and
/// TOCs, its unpacked layers and its kept blobs.
fn prune_cache(cache: &Path, keep: u64) -> std::io::Result<strata_lazy::Pruned> {
    let mut items = ChunkCache::open(&cache.join("chunks"))?.prunable()?;
    items.extend(Unpacked::prunable(&cache.join("layers"))?);
    items.extend(BlobCache::open(&cache.join("blobs"))?.prunable()?);
    strata_lazy::prune(items, keep)
}

/// Prunes a mount's cache while it serves: a second after it starts, then,
/// checking every second how much the mount's layers have added to the
/// cache (bytes fetched, kept as blobs, and chunks decoded), whenever that
/// has grown by an eighth of `keep` (at least 1 MiB) since the last prune.
/// Stops when dropped.
struct Pruner {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pruner {
    fn start(cache: PathBuf, keep: u64, layers: Vec<Arc<Layer>>) -> std::io::Result<Pruner> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let step = (keep / 8).max(1 << 20);
        let fetched = move || {
            layers
                .iter()
                .map(|l| {
                    let s = l.stats();
                    s.bytes.load(Ordering::Relaxed) + s.decoded.load(Ordering::Relaxed)
                })
                .sum::<u64>()
        };
        let thread = std::thread::Builder::new()
            .name("strata-lazy-prune".into())
            .spawn(move || {
                let mut last: Option<u64> = None;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(std::time::Duration::from_secs(1))
                {
                    let now = fetched();
                    if last.is_some_and(|last| now.saturating_sub(last) < step) {
                        continue;
                    }
                    last = Some(now);
                    if let Err(e) = prune_cache(&cache, keep) {
                        tracing::warn!(cache = %cache.display(), error = %e, "could not prune the cache");
                    }
                }
            })?;
        Ok(Pruner {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Pruner {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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
    canonical(cache)
}

/// `dir` as the mount table names it (absolute, symbolic links resolved),
/// so the overlays stacked on its layers are found there.
fn canonical(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(dir).with_context(|| format!("resolve {}", dir.display()))
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

/// A layer of the stack.
enum Lower {
    /// Served through FUSE from its TOC.
    Lazy(Arc<Layer>, Mounted),
    /// Fetched whole and unpacked in the cache.
    Unpacked(Unpacked),
}

impl Lower {
    fn dir(&self) -> &Path {
        match self {
            Lower::Lazy(_, m) => m.target(),
            Lower::Unpacked(u) => u.dir(),
        }
    }

    fn has(&self, path: &[&str]) -> bool {
        match self {
            Lower::Lazy(l, _) => l.tree().has(path),
            Lower::Unpacked(u) => u.has(path),
        }
    }

    fn root_is_opaque(&self) -> bool {
        match self {
            Lower::Lazy(l, _) => l.tree().root_is_opaque(),
            Lower::Unpacked(u) => u.root_is_opaque(OPAQUE),
        }
    }
}

/// The directories overlay reads for `lowers` (bottom first): topmost
/// first, down to the first whose root is opaque (it hides the rest;
/// overlay ignores the marker on a layer's root).
fn visible(lowers: &[Lower]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for l in lowers.iter().rev() {
        dirs.push(l.dir().to_path_buf());
        if l.root_is_opaque() {
            break;
        }
    }
    dirs
}

fn mount(rt: &tokio::runtime::Runtime, args: &MountArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let platform = platform(args.platform.as_deref())?;
    let keep = args
        .keep_storage
        .as_deref()
        .map(crate::refs::parse_size)
        .transpose()?;
    let opts = args.registry.options();
    let registry = Arc::new(rt.block_on(Registry::connect(
        &registry_reference(&args.reference),
        RegistryOperation::Pull,
        &opts,
    ))?);
    let image = rt.block_on(registry.resolve(&platform))?;
    let tocs = image
        .layers
        .iter()
        .enumerate()
        .map(|(i, d)| toc_digest(i, d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::create_dir_all(&args.cache)
        .with_context(|| format!("create {}", args.cache.display()))?;
    let cache_dir = canonical(&args.cache)?;
    let cache = Arc::new(
        ChunkCache::open(&cache_dir.join("chunks"))
            .with_context(|| format!("chunk cache {}", args.cache.display()))?,
    );
    let (mnt, _lock) = mount_dir(&cache_dir)?;
    let readers = strata_lazy::Readers::new(args.threads).context("start the reader threads")?;
    let link = Arc::new(Link::new(PREFETCH_QUIET));
    // What the mount fetches of each blob is also kept (unless told not
    // to), so pulling the image later (`image pull --lazy-cache`) fetches
    // only the rest.
    let blobs = match args.no_keep_blobs {
        true => None,
        false => Some(
            BlobCache::open(&cache_dir.join("blobs"))
                .with_context(|| format!("blob cache {}", args.cache.display()))?,
        ),
    };
    let sources: Vec<Arc<dyn RangeSource>> = image
        .layers
        .iter()
        .map(|desc| {
            let src = Arc::new(RegistryBlob {
                registry: registry.clone(),
                desc: desc.clone(),
                rt: rt.handle().clone(),
            });
            match &blobs {
                Some(blobs) => blobs.recording(&desc.digest, src),
                None => src,
            }
        })
        .collect();
    // Every eStargz layer's footer and TOC at once: two round trips for
    // the image rather than two per layer.
    let mut opened = std::thread::scope(|s| {
        let opening: Vec<_> = image
            .layers
            .iter()
            .zip(&tocs)
            .zip(&sources)
            .map(|((desc, toc), src)| {
                let toc = toc.clone()?;
                let opts = LayerOptions {
                    name: desc.digest.to_string(),
                    toc_digest: toc,
                    opaque_xattr: OPAQUE.into(),
                    link: link.clone(),
                };
                let cache = cache.clone();
                let src = src.clone();
                Some(s.spawn(move || {
                    Layer::open(src, cache, &opts).with_context(|| format!("layer {}", opts.name))
                }))
            })
            .collect();
        // Every thread joined before the first error (in layer order) is
        // returned.
        let joined: Vec<Option<anyhow::Result<Layer>>> = opening
            .into_iter()
            .map(|t| t.map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))))
            .collect();
        joined
            .into_iter()
            .map(Option::transpose)
            .collect::<anyhow::Result<Vec<Option<Layer>>>>()
    })?;
    // Bottom up: a layer's whiteouts, and an unpacked layer's whole tree,
    // depend on the layers below it.
    let mut lowers: Vec<Lower> = Vec::new();
    let mut json = Vec::new();
    // The sources live as long as the mount: a blob kept whole is checked
    // on a thread its source waits for when dropped, which must not hold
    // up the mount.
    for (i, (desc, src)) in image.layers.iter().zip(&sources).enumerate() {
        let below = |path: &[&str]| lowers.iter().any(|l| l.has(path));
        let lower = match opened[i].take() {
            Some(mut layer) => {
                layer.prune_whiteouts(below);
                let layer = Arc::new(layer);
                let dir = mnt.join(i.to_string());
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("create {}", dir.display()))?;
                let m = strata_lazy::mount(layer.clone(), &dir, readers.clone()).with_context(
                    || format!("mount layer {} on {}", layer.name(), dir.display()),
                )?;
                Lower::Lazy(layer, m)
            }
            None => {
                let dir = cache_dir
                    .join("layers")
                    .join(stack_key(&image.layers[..=i]).hex());
                let opts = UnpackOptions {
                    name: desc.digest.to_string(),
                    digest: desc.digest.clone(),
                    media_type: Some(desc.media_type.clone()),
                    diff_id: desc
                        .annotations
                        .get(media::UNCOMPRESSED_LABEL)
                        .map(|d| Digest::parse(d))
                        .transpose()
                        .with_context(|| format!("layer {i} ({}): diffID", desc.digest))?,
                    lowers: visible(&lowers),
                };
                let u = Unpacked::get(src.clone(), &dir, &opts)
                    .with_context(|| format!("layer {i} ({})", desc.digest))?;
                out.note(&format!(
                    "layer {i} ({}) is not eStargz, so it cannot be read lazily: {}",
                    desc.digest,
                    match u.fetched() {
                        0 => format!("unpacked before, in {}", dir.display()),
                        n => format!(
                            "fetched whole ({}) and unpacked into {}",
                            crate::output::size(n),
                            dir.display()
                        ),
                    }
                ));
                Lower::Unpacked(u)
            }
        };
        json.push(LayerJson {
            digest: desc.digest.to_string(),
            lazy: tocs[i].is_some(),
            toc_digest: tocs[i].as_ref().map(Digest::to_string),
            inodes: match &lower {
                Lower::Lazy(l, _) => Some(l.tree().len()),
                Lower::Unpacked(_) => None,
            },
            dir: lower.dir().display().to_string(),
        });
        lowers.push(lower);
    }
    let empty = mnt.join("empty");
    std::fs::create_dir_all(&empty).with_context(|| format!("create {}", empty.display()))?;
    stack(visible(&lowers), &empty, &args.dir)?;
    let layers: Vec<Arc<Layer>> = lowers
        .iter()
        .filter_map(|l| match l {
            Lower::Lazy(layer, _) => Some(layer.clone()),
            Lower::Unpacked(_) => None,
        })
        .collect();
    let pruner = keep
        .map(|keep| Pruner::start(cache_dir.clone(), keep, layers.clone()))
        .transpose()
        .context("start the cache's pruner")?;
    let prefetch = if args.no_prefetch {
        Vec::new()
    } else {
        link.quiet_from_now();
        layers
            .iter()
            .map(|l| Prefetch::start(l.clone()))
            .collect::<std::io::Result<Vec<_>>>()?
    };
    // The unpacked layers' fetches count once, with the lazy ones'.
    let (unpacked_requests, unpacked_bytes) = lowers
        .iter()
        .filter_map(|l| match l {
            Lower::Unpacked(u) => Some((u.requests(), u.fetched())),
            Lower::Lazy(..) => None,
        })
        .fold((0, 0), |(r, b), (r2, b2)| (r + r2, b + b2));
    let total = |f: fn(&strata_lazy::Stats) -> u64, unpacked: u64| {
        unpacked + layers.iter().map(|l| f(l.stats())).sum::<u64>()
    };
    let requests = |s: &strata_lazy::Stats| s.requests.load(Ordering::Relaxed);
    let bytes = |s: &strata_lazy::Stats| s.bytes.load(Ordering::Relaxed);
    out.line(
        &MountedJson {
            image: args.reference.clone(),
            dir: args.dir.display().to_string(),
            layers: json,
            requests: total(requests, unpacked_requests),
            bytes_fetched: total(bytes, unpacked_bytes),
        },
        &format!(
            "mounted {} ({} layers, {} lazy) on {}; serving until SIGINT or SIGTERM",
            args.reference,
            lowers.len(),
            layers.len(),
            args.dir.display()
        ),
    )?;
    rt.block_on(stopped())?;
    drop(prefetch);
    drop(pruner);
    // Detached, so a process still inside DIR cannot keep this one
    // waiting; the layers' sessions get a few seconds to end, then the
    // process exits, which ends them (readers then get ENOTCONN).
    strata_sys::mount::detach_below(&args.dir)?;
    let mounted: Vec<Mounted> = lowers
        .into_iter()
        .filter_map(|l| match l {
            Lower::Lazy(_, m) => Some(m),
            Lower::Unpacked(_) => None,
        })
        .collect();
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let result: std::io::Result<()> = mounted.into_iter().try_for_each(Mounted::unmount);
        let _ = done.send(result);
    });
    match wait.recv_timeout(std::time::Duration::from_secs(5)) {
        Ok(result) => result.context("unmount the layers")?,
        Err(_) => {
            tracing::warn!(dir = %args.dir.display(), "DIR is still in use: the layers end with this process")
        }
    }
    out.line(
        &StoppedJson {
            requests: total(requests, unpacked_requests),
            bytes_fetched: total(bytes, unpacked_bytes),
            chunks_fetched: total(|s| s.chunks.load(Ordering::Relaxed), 0),
        },
        &format!(
            "unmounted; fetched {} bytes in {} requests",
            total(bytes, unpacked_bytes),
            total(requests, unpacked_requests)
        ),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The name of the directory layer `layers.last()` unpacks into: what it
/// holds depends on the layers below too (its whiteouts, parents resolved
/// through them), so the key is the digest of every blob digest up to it.
fn stack_key(layers: &[Descriptor]) -> Digest {
    let mut text = String::new();
    for d in layers {
        text.push_str(d.digest.as_str());
        text.push('\n');
    }
    Digest::of_bytes(strata_core::Algorithm::Sha256, text.as_bytes())
}

/// This process's directory for the layers' mounts, `CACHE/mnt/ID`
/// (CACHE and CACHE/mnt mode 0700: the layers keep their set-user-ID files
/// and devices, so only root may reach them), locked while it serves.
/// Directories of mounts that ended without cleaning up (their lock is
/// free) are detached and removed first; those of live mounts are left.
fn mount_dir(cache: &Path) -> anyhow::Result<(PathBuf, strata_sys::lock::FileLock)> {
    use std::os::unix::fs::PermissionsExt;
    let mnt = cache.join("mnt");
    std::fs::create_dir_all(&mnt).with_context(|| format!("create {}", mnt.display()))?;
    for dir in [cache, &mnt] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("make {} private", dir.display()))?;
    }
    for entry in std::fs::read_dir(&mnt).with_context(|| format!("read {}", mnt.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "lock")
            && let Ok(stale) = strata_sys::lock::FileLock::try_exclusive(&path)
        {
            let dir = path.with_extension("");
            strata_sys::mount::detach_below(&dir)?;
            if dir.exists() {
                strata_sys::Root::open(&mnt)?
                    .remove_all(Path::new(dir.file_name().unwrap_or_default()))?;
            }
            std::fs::remove_file(stale.path())?;
        }
    }
    let id = strata_core::id::new_id();
    let lock = strata_sys::lock::FileLock::try_exclusive(&mnt.join(format!("{id}.lock")))?;
    let dir = mnt.join(id);
    std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok((dir, lock))
}

/// Mounts `lowers` (topmost first) on `dir` as a read-only overlay.
/// `empty` is a second lower for a lone layer: overlay, not a bind, so
/// whiteouts hide as they do in a stack.
fn stack(mut lowers: Vec<PathBuf>, empty: &Path, dir: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(!lowers.is_empty(), "the image has no layers");
    if lowers.len() == 1 {
        lowers.push(empty.to_path_buf());
    }
    let m = Mount::overlay(
        OverlayLayers {
            lowers,
            ..OverlayLayers::default()
        },
        // Lower directories only: the kernel makes it read-only.
        Vec::new(),
    );
    strata_sys::mount::mount(&m, dir)
        .with_context(|| format!("mount the image's layers on {}", dir.display()))
}

/// Waits for SIGINT or SIGTERM.
async fn stopped() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

/// The cache `image pull --lazy-cache` was given and the registry
/// reference it takes blobs for; an error for a location that is not a
/// registry.
pub fn cache_for_pull<'a>(
    cache: Option<&'a Path>,
    location: &'a strata_oci::Location,
) -> anyhow::Result<Option<(&'a Path, &'a str)>> {
    match (cache, location) {
        (None, _) => Ok(None),
        (Some(dir), strata_oci::Location::Registry { reference }) => Ok(Some((dir, reference))),
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
pub async fn take_kept_blobs(
    store: &strata_content::ContentStore,
    reference: &str,
    platform: &strata_oci::Platform,
    opts: &strata_oci::RegistryOptions,
    parallel: usize,
    cache: &Path,
    out: &Output,
) -> anyhow::Result<crate::image::KeptJson> {
    let blobs = BlobCache::open(&existing_cache(cache)?.join("blobs"))
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
        // Labelled as a fetched blob is, with the repository that has it.
        Ok(_) => {
            src.registry.label_source(store, d)?;
            Ok(Some(filled))
        }
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
