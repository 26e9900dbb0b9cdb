//! `strata lazy mount REF DIR --cache CACHE`: an eStargz image from a
//! registry mounted read-only before it is downloaded. Only the manifest,
//! the config and each layer's footer and TOC are fetched first; each
//! layer is served through FUSE (strata-lazy) under CACHE/mnt, its file
//! data fetched chunk by chunk by range requests and checked against the
//! TOC, and the layers are stacked on DIR by a read-only overlay. The
//! command serves the mount until SIGINT or SIGTERM, then unmounts; the
//! checked chunks stay in CACHE/chunks for the next mount. No state root
//! is involved.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;
use strata_cache::Platform;
use strata_core::{Descriptor, Digest, Mount, OverlayLayers, media};
use strata_lazy::{ChunkCache, Layer, LayerOptions, Mounted, Prefetch, RangeSource};
use strata_oci::{Registry, RegistryOperation};

use crate::output::Output;

#[derive(Debug, Subcommand)]
pub enum LazyCmd {
    /// Mount HOST/REPO[:TAG|@DIGEST], an image of eStargz layers, read-only
    /// on DIR before it is downloaded; serves it until SIGINT or SIGTERM.
    Mount(MountArgs),
}

/// What `strata lazy mount` takes.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// HOST/REPO[:TAG|@DIGEST].
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
    /// Threads answering file reads, shared by every layer: at most this
    /// many chunks are fetched and decoded at once (lookups and listings
    /// never wait for them).
    #[arg(long, value_name = "N", default_value_t = 8)]
    threads: usize,
    #[command(flatten)]
    registry: crate::image::RegistryArgs,
}

/// The attribute overlay reads for an opaque directory (a root's mounts).
const OPAQUE: &str = "trusted.overlay.opaque";

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
    toc_digest: String,
    inodes: usize,
    mount: String,
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
struct StoppedJson {
    requests: u64,
    bytes_fetched: u64,
    chunks_fetched: u64,
}

pub fn run(cmd: LazyCmd, out: &Output) -> anyhow::Result<ExitCode> {
    match cmd {
        LazyCmd::Mount(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            mount(&rt, &args, out)
        }
    }
}

/// The TOC digest of eStargz layer `desc`, or why it cannot be read lazily.
fn toc_digest(i: usize, desc: &Descriptor) -> anyhow::Result<Digest> {
    let value = desc
        .annotations
        .get(media::ESTARGZ_TOC_DIGEST)
        .with_context(|| {
            format!(
                "layer {i} ({}) has no {} annotation: only eStargz layers can be mounted lazily (pull the image with `strata image pull` instead)",
                desc.digest,
                media::ESTARGZ_TOC_DIGEST
            )
        })?;
    Digest::parse(value).with_context(|| format!("layer {i} ({}): TOC digest", desc.digest))
}

fn mount(rt: &tokio::runtime::Runtime, args: &MountArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let platform = match &args.platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    let opts = args.registry.options();
    let registry = Arc::new(rt.block_on(Registry::connect(
        &args.reference,
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
    let cache = Arc::new(
        ChunkCache::open(&args.cache.join("chunks"))
            .with_context(|| format!("chunk cache {}", args.cache.display()))?,
    );
    let (mnt, _lock) = mount_dir(&args.cache)?;
    let mut layers = Vec::new();
    for (desc, toc) in image.layers.iter().zip(tocs) {
        let src = Arc::new(RegistryBlob {
            registry: registry.clone(),
            desc: desc.clone(),
            rt: rt.handle().clone(),
        });
        let opts = LayerOptions {
            name: desc.digest.to_string(),
            toc_digest: toc,
            opaque_xattr: OPAQUE.into(),
        };
        let mut layer = Layer::open(src, cache.clone(), &opts)
            .with_context(|| format!("layer {}", desc.digest))?;
        layer.prune_whiteouts(|path| layers.iter().any(|l: &Layer| l.tree().has(path)));
        layers.push(layer);
    }
    let layers: Vec<Arc<Layer>> = layers.into_iter().map(Arc::new).collect();
    let readers = strata_lazy::Readers::new(args.threads).context("start the reader threads")?;
    let mut mounted: Vec<Mounted> = Vec::new();
    let mut json = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let dir = mnt.join(i.to_string());
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        mounted.push(
            strata_lazy::mount(layer.clone(), &dir, readers.clone())
                .with_context(|| format!("mount layer {} on {}", layer.name(), dir.display()))?,
        );
        json.push(LayerJson {
            digest: layer.name().to_owned(),
            toc_digest: image.layers[i].annotations[media::ESTARGZ_TOC_DIGEST].clone(),
            inodes: layer.tree().len(),
            mount: dir.display().to_string(),
        });
    }
    let empty = mnt.join("empty");
    std::fs::create_dir_all(&empty).with_context(|| format!("create {}", empty.display()))?;
    stack(&layers, &mounted, &empty, &args.dir)?;
    let prefetch = if args.no_prefetch {
        Vec::new()
    } else {
        layers
            .iter()
            .map(|l| Prefetch::start(l.clone()))
            .collect::<std::io::Result<Vec<_>>>()?
    };
    let total =
        |f: fn(&strata_lazy::Stats) -> u64| layers.iter().map(|l| f(l.stats())).sum::<u64>();
    out.line(
        &MountedJson {
            image: args.reference.clone(),
            dir: args.dir.display().to_string(),
            layers: json,
            requests: total(|s| s.requests.load(Ordering::Relaxed)),
            bytes_fetched: total(|s| s.bytes.load(Ordering::Relaxed)),
        },
        &format!(
            "mounted {} ({} layers) on {}; serving until SIGINT or SIGTERM",
            args.reference,
            layers.len(),
            args.dir.display()
        ),
    )?;
    rt.block_on(stopped())?;
    drop(prefetch);
    // Detached, so a process still inside DIR cannot keep this one
    // waiting; the layers' sessions get a few seconds to end, then the
    // process exits, which ends them (readers then get ENOTCONN).
    strata_sys::mount::detach_below(&args.dir)?;
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
            requests: total(|s| s.requests.load(Ordering::Relaxed)),
            bytes_fetched: total(|s| s.bytes.load(Ordering::Relaxed)),
            chunks_fetched: total(|s| s.chunks.load(Ordering::Relaxed)),
        },
        &format!(
            "unmounted; fetched {} bytes in {} requests",
            total(|s| s.bytes.load(Ordering::Relaxed)),
            total(|s| s.requests.load(Ordering::Relaxed))
        ),
    )?;
    Ok(ExitCode::SUCCESS)
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

/// Mounts the layers' file systems on `dir` as a read-only overlay, the
/// last layer on top. A layer whose root is opaque hides every layer
/// below it, so those are left out (overlay ignores the marker on a
/// layer's root). `empty` is a second lower for a lone layer: overlay,
/// not a bind, so whiteouts hide as they do in a stack.
fn stack(
    layers: &[Arc<Layer>],
    mounted: &[Mounted],
    empty: &Path,
    dir: &Path,
) -> anyhow::Result<()> {
    let mut lowers: Vec<PathBuf> = Vec::new();
    for (layer, m) in layers.iter().zip(mounted).rev() {
        lowers.push(m.target().to_path_buf());
        if layer.tree().root_is_opaque() {
            break;
        }
    }
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
