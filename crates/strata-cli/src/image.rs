//! `strata image ...`: images in and out of a root (OCI layouts, docker
//! archives, registries) and images by name.
//!
//! An image's name is an owner lease (`image/NAME`) holding its chain and
//! every blob; `image rm` lets go of it and the collector reclaims what
//! nothing else holds.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use strata_cache::{
    CacheManager, CompressionConfig, Image, ImagePullOptions, ImportOptions, Location, NamedImage,
    Platform, PullOptions, RefConfig, RegistryOptions,
};
use strata_core::Compression;

use crate::layer::CompressionArg;

use crate::output::{self, Output};
use crate::progress;
use crate::refs::{bad, context};
use crate::snapshot::block_on_parallel;

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Import an image from oci:DIR[:TAG], oci-archive:FILE[:REF],
    /// docker-archive:FILE[:NAME] or docker://HOST/REPO[:TAG|@DIGEST];
    /// prints the top ref id.
    Import {
        /// oci:DIR[:TAG], oci-archive:FILE[:REF], docker-archive:FILE[:NAME] or
        /// docker://HOST/REPO[:TAG|@DIGEST].
        source: String,
        #[command(flatten)]
        opts: PullArgs,
    },
    /// Pull HOST/REPO[:TAG|@DIGEST] from a registry; prints the top ref id.
    Pull {
        /// HOST/REPO[:TAG|@DIGEST].
        reference: String,
        #[command(flatten)]
        opts: PullArgs,
    },
    /// Write an image (by name) or a ref's chain to DEST (oci:DIR[:TAG],
    /// oci-archive:FILE[:REF], docker-archive:FILE[:NAME] or
    /// docker://HOST/REPO[:TAG]).
    Export {
        /// An image name or a ref id.
        image: String,
        /// oci:DIR[:TAG], oci-archive:FILE[:REF], docker-archive:FILE[:NAME] or
        /// docker://HOST/REPO[:TAG].
        dest: String,
        #[command(flatten)]
        opts: ExportArgs,
    },
    /// Push an image (by name) or a ref's chain to HOST/REPO[:TAG].
    Push {
        /// An image name or a ref id.
        image: String,
        /// HOST/REPO[:TAG].
        target: String,
        #[command(flatten)]
        opts: ExportArgs,
    },
    /// Fetch the layers a `pull --lazy` left and fill the image's lazy
    /// refs with them, in place (the same ref ids), from where it was
    /// pulled.
    Unlazy {
        /// An image name.
        name: String,
        #[command(flatten)]
        opts: UnlazyArgs,
    },
    /// Mount an image on DIR: the layers the root has from its snapshots,
    /// its lazy layers read as they are used, from where it was pulled
    /// (read-only unless --upper); serves it until SIGINT or SIGTERM.
    #[cfg(feature = "registry")]
    Mount(crate::lazy::ImageMountArgs),
    /// Serve an image's lazy layers on their own snapshots, read as they
    /// are used, so that new refs, mounts and views of the root can stack
    /// on them; serves them until SIGINT or SIGTERM.
    #[cfg(feature = "registry")]
    Attach(crate::lazy::ImageAttachArgs),
    /// List images by name.
    Ls,
    /// Show an image: its manifest, config and layers.
    Inspect {
        /// An image name.
        name: String,
    },
    /// Remove names (the collector reclaims what nothing else holds).
    Rm {
        /// Image names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// The name to give the image [default: what the source calls it].
    #[arg(long)]
    name: Option<String>,
    /// OS/ARCH[/VARIANT] picked from a multi-platform image [default: this machine's].
    #[arg(long)]
    platform: Option<String>,
    /// Layers unpacked at once [default: the cores this process may use].
    #[arg(long, value_name = "N")]
    jobs: Option<std::num::NonZeroUsize>,
    #[command(flatten)]
    kept: KeptArg,
    /// Record the image without its layers from the first eStargz one up
    /// (their refs are lazy until `image unlazy`); the layers below, and
    /// every layer of an image without eStargz layers, are pulled whole.
    #[arg(long)]
    #[cfg_attr(feature = "registry", arg(conflicts_with = "lazy_cache"))]
    lazy: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// `--lazy-cache`, in builds with registries.
#[derive(Debug, Args)]
pub struct KeptArg {
    /// A `strata lazy mount --cache` (or `image mount --cache`) directory:
    /// the layer blobs its mounts of this image fetched (whole or in part)
    /// are taken from it, checked, and only what they lack is fetched.
    #[cfg(feature = "registry")]
    #[arg(long, value_name = "DIR")]
    lazy_cache: Option<std::path::PathBuf>,
}

impl KeptArg {
    /// The directory, if given.
    fn dir(&self) -> Option<&std::path::Path> {
        #[cfg(feature = "registry")]
        return self.lazy_cache.as_deref();
        #[cfg(not(feature = "registry"))]
        None
    }
}

#[derive(Debug, Args)]
pub struct UnlazyArgs {
    #[command(flatten)]
    kept: KeptArg,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// A registry (HOST[:PORT]) reached over plain HTTP; loopback hosts always are.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure: Vec<String>,
}

impl RegistryArgs {
    pub(crate) fn options(&self) -> RegistryOptions {
        RegistryOptions {
            insecure: self.insecure.clone(),
            ..RegistryOptions::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Compression of layers that need a blob [default: gzip; a named image
    /// is written as it was stored unless this is given].
    #[arg(long, value_enum)]
    compression: Option<CompressionArg>,
    /// Convert existing blobs of another compression too.
    #[arg(long)]
    force_compression: bool,
    /// Compression level.
    #[arg(long)]
    level: Option<i32>,
    /// OS/ARCH[/VARIANT] written into a new config [default: this machine's].
    #[arg(long)]
    platform: Option<String>,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Serialize)]
struct ImageJson {
    name: String,
    #[serde(rename = "ref")]
    top_ref: String,
    manifest: String,
    config: String,
    source: String,
    created: String,
}

impl From<&NamedImage> for ImageJson {
    fn from(n: &NamedImage) -> Self {
        ImageJson {
            name: n.name.clone(),
            top_ref: n.top_ref.clone(),
            manifest: n.manifest.to_string(),
            config: n.config.to_string(),
            source: n.source.clone(),
            created: output::time(n.created),
        }
    }
}

#[derive(Serialize)]
struct ImportedJson {
    #[serde(flatten)]
    image: ImageJson,
    /// Blobs fetched from the source.
    fetched: usize,
    /// Blobs the root already had.
    present: usize,
    /// Layers left lazy (`--lazy`): recorded, not fetched.
    lazy: usize,
    /// What `--lazy-cache` gave (null without it).
    lazy_cache: Option<KeptJson>,
}

/// What `image pull --lazy-cache` took from a lazy-mount cache.
#[derive(Debug, Default, Serialize)]
pub(crate) struct KeptJson {
    /// Layer blobs taken from the cache (whole, or completed by range).
    pub(crate) blobs: usize,
    /// Bytes a lazy mount had fetched before.
    pub(crate) kept_bytes: u64,
    /// Bytes fetched now to complete them.
    pub(crate) fetched_bytes: u64,
}

#[derive(Serialize)]
struct LayerJson {
    digest: String,
    media_type: String,
    size: u64,
    diff_id: String,
    /// Not fetched yet (`pull --lazy`).
    lazy: bool,
}

#[derive(Serialize)]
struct InspectJson {
    #[serde(flatten)]
    image: ImageJson,
    manifest_media_type: String,
    layers: Vec<LayerJson>,
    size: u64,
}

#[derive(Serialize)]
struct WrittenJson {
    destination: String,
    manifest: String,
    layers: usize,
    size: u64,
    uploaded: Option<usize>,
    present: Option<usize>,
    mounted: Option<usize>,
}

/// The platform `--platform` names, or this machine's.
pub(crate) fn platform(p: Option<&str>) -> anyhow::Result<Platform> {
    Ok(match p {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    })
}

/// A registry reference as given, with or without `docker://`.
pub(crate) fn registry_reference(given: &str) -> String {
    given.strip_prefix("docker://").unwrap_or(given).to_owned()
}

/// The name an image gets when none is given: the layout's directory and
/// tag, the archive's file name, an OCI archive's reference when it is a
/// full one (else the file name and the tag), the registry reference.
fn default_name(location: &Location) -> String {
    let stem = |file: &std::path::Path| {
        file.file_stem()
            .map_or_else(|| "image".to_owned(), |n| n.to_string_lossy().into_owned())
    };
    match location {
        Location::Layout { dir, tag } => {
            let base = dir
                .file_name()
                .map_or_else(|| "image".to_owned(), |n| n.to_string_lossy().into_owned());
            format!("{base}:{}", tag.as_deref().unwrap_or("latest"))
        }
        Location::Archive { file, name } => name.clone().unwrap_or_else(|| stem(file)),
        Location::OciArchive { file, reference } => match reference {
            Some(r) if r.contains(['/', ':']) => r.clone(),
            r => format!("{}:{}", stem(file), r.as_deref().unwrap_or("latest")),
        },
        Location::Registry { reference } => reference.clone(),
    }
}

pub fn run(
    mgr: CacheManager,
    cmd: ImageCmd,
    lease: Option<&str>,
    ignore_chown_errors: bool,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    block_on_parallel(run_async(mgr, cmd, lease, ignore_chown_errors, out))??;
    Ok(ExitCode::SUCCESS)
}

async fn run_async(
    owned: CacheManager,
    cmd: ImageCmd,
    lease: Option<&str>,
    ignore_chown_errors: bool,
    out: &Output,
) -> anyhow::Result<()> {
    let mgr = &owned;
    match cmd {
        ImageCmd::Import { source, opts } => {
            let location = Location::parse(&source)?;
            import(mgr, &location, &opts, lease, ignore_chown_errors, out)
                .await
                .with_context(|| format!("import {source}"))
        }
        ImageCmd::Pull { reference, opts } => {
            let location = Location::Registry {
                reference: registry_reference(&reference),
            };
            import(mgr, &location, &opts, lease, ignore_chown_errors, out)
                .await
                .with_context(|| format!("pull {location}"))
        }
        ImageCmd::Export { image, dest, opts } => {
            export(mgr, &image, &Location::parse(&dest)?, &opts, lease, out)
                .await
                .with_context(|| format!("export {image} to {dest}"))
        }
        ImageCmd::Push {
            image,
            target,
            opts,
        } => {
            let location = Location::Registry {
                reference: registry_reference(&target),
            };
            export(mgr, &image, &location, &opts, lease, out)
                .await
                .with_context(|| format!("push {image} to {location}"))
        }
        ImageCmd::Unlazy { name, opts } => {
            unlazy(mgr, &name, &opts, lease, ignore_chown_errors, out)
                .await
                .with_context(|| format!("unlazy {name}"))
        }
        // It serves until stopped, on a runtime of its own (FUSE's reader
        // threads block on it), so it leaves this one's threads.
        #[cfg(feature = "registry")]
        ImageCmd::Mount(args) => tokio::task::block_in_place(move || {
            crate::lazy::mount_image(owned, &args, out)
                .map(drop)
                .with_context(|| format!("mount {}", args.name()))
        }),
        #[cfg(feature = "registry")]
        ImageCmd::Attach(args) => tokio::task::block_in_place(move || {
            crate::lazy::attach_image(owned, &args, out)
                .map(drop)
                .with_context(|| format!("attach {}", args.name()))
        }),
        ImageCmd::Ls => {
            let images = mgr.images()?;
            let json: Vec<ImageJson> = images.iter().map(ImageJson::from).collect();
            let rows = json
                .iter()
                .map(|i| {
                    vec![
                        i.name.clone(),
                        i.top_ref.clone(),
                        i.manifest.chars().take(19).collect(),
                        i.created.clone(),
                        i.source.clone(),
                    ]
                })
                .collect();
            out.emit(
                &json,
                &["NAME", "REF", "MANIFEST", "CREATED", "SOURCE"],
                rows,
            )
        }
        ImageCmd::Inspect { name } => {
            let named = mgr.image(&name)?;
            let image = mgr.image_blobs(&name)?;
            let lazy = match named.top_ref.is_empty() {
                true => Vec::new(),
                false => mgr.lazy_layers(&mgr.resolve_ref(&name).await?).await?,
            };
            let layers: Vec<LayerJson> = image
                .layers
                .iter()
                .enumerate()
                .map(|(i, l)| LayerJson {
                    digest: l.digest.to_string(),
                    media_type: l.media_type.clone(),
                    size: l.size,
                    diff_id: Image::diff_id(l).map(|d| d.to_string()).unwrap_or_default(),
                    lazy: lazy.get(i).copied().unwrap_or(false),
                })
                .collect();
            let size = image.blobs().map(|d| d.size).sum();
            let json = InspectJson {
                image: ImageJson::from(&named),
                manifest_media_type: named.manifest_media_type.clone(),
                layers,
                size,
            };
            let mut rows: Vec<Vec<String>> = [
                ("name", named.name.clone()),
                ("ref", named.top_ref.clone()),
                (
                    "manifest",
                    format!("{} ({})", named.manifest, named.manifest_media_type),
                ),
                ("config", named.config.to_string()),
                ("source", named.source.clone()),
                ("created", output::time(named.created)),
                ("size", output::size(size)),
            ]
            .into_iter()
            .map(|(k, v)| vec![k.to_owned(), v])
            .collect();
            for (i, l) in json.layers.iter().enumerate() {
                let lazy = if l.lazy { " (lazy)" } else { "" };
                rows.push(vec![
                    format!("layer {i}"),
                    format!(
                        "{} {} {}{lazy}",
                        l.digest,
                        output::size(l.size),
                        l.media_type
                    ),
                ]);
            }
            out.emit(&json, &["FIELD", "VALUE"], rows)
        }
        ImageCmd::Rm { names } => {
            for name in &names {
                mgr.remove_image(name).await?;
            }
            out.line(&names, &names.join("\n"))
        }
    }
}

async fn import(
    mgr: &CacheManager,
    location: &Location,
    args: &PullArgs,
    lease: Option<&str>,
    ignore_chown_errors: bool,
    out: &Output,
) -> anyhow::Result<()> {
    let opts = ImagePullOptions {
        pull: PullOptions {
            platform: platform(args.platform.as_deref())?,
            lazy: args.lazy,
            ..PullOptions::default()
        },
        registry: args.registry.options(),
        import: ImportOptions {
            parallel: args.jobs.map(std::num::NonZeroUsize::get),
            ignore_chown_errors,
            ..ImportOptions::default()
        },
    };
    let (ctx, guard, lazy_cache) =
        context_taking_kept(mgr, lease, args.kept.dir(), location, &opts, out).await?;
    let (ctx, bars) = progress::drawn(&ctx, out);
    let pulled = mgr.pull_image(&ctx, location, &opts).await;
    drop(bars);
    let pulled = pulled?;
    let name = match (&args.name, location) {
        (Some(n), _) => n.clone(),
        // What the archive calls it, else its file name.
        (None, Location::Archive { .. } | Location::OciArchive { .. }) => pulled
            .name
            .clone()
            .unwrap_or_else(|| default_name(location)),
        (None, _) => default_name(location),
    };
    let named = mgr
        .name_image(
            &name,
            &pulled.image,
            pulled.top.as_ref(),
            &location.to_string(),
        )
        .await?;
    let (fetched, present, lazy) = (pulled.fetched, pulled.present, pulled.lazy);
    squashed_note(pulled.squashed, out);
    if args.lazy {
        out.note(&match lazy {
            0 => format!(
                "strata: no layer of {} was left lazy: none is eStargz, or each was in the root already",
                named.name
            ),
            n => format!(
                "strata: {n} of {} layers of {} left lazy; `strata image unlazy {}` fetches them",
                pulled.image.layers.len(),
                named.name,
                named.name
            ),
        });
    }
    drop(pulled);
    drop(ctx);
    if let Some(g) = guard {
        g.release()?;
    }
    tracing::info!(image = named.name, fetched, present, "imported");
    ImportedJson {
        image: ImageJson::from(&named),
        fetched,
        present,
        lazy,
        lazy_cache,
    }
    .print(out)
}

impl ImportedJson {
    /// Prints the image's top ref id (its name when it has no layers), or
    /// this as JSON.
    fn print(&self, out: &Output) -> anyhow::Result<()> {
        let text = match self.image.top_ref.is_empty() {
            true => format!("{} (no layers)", self.image.name),
            false => self.image.top_ref.clone(),
        };
        out.line(self, &text)
    }
}

/// The operation's context and its lease's guard, with what `--lazy-cache
/// CACHE` gives taken first: the blobs lazy mounts kept of the image at
/// `location` (a registry's), put in the root under the context (none
/// without a cache).
async fn context_taking_kept(
    mgr: &CacheManager,
    lease: Option<&str>,
    cache: Option<&std::path::Path>,
    location: &Location,
    opts: &ImagePullOptions,
    out: &Output,
) -> anyhow::Result<(
    strata_cache::OpCtx,
    Option<strata_leases::LeaseGuard>,
    Option<KeptJson>,
)> {
    // Seen to be a cache before anything is done.
    #[cfg(feature = "registry")]
    let from_cache = crate::lazy::cache_for_pull(cache, location)?;
    let (ctx, guard) = context(mgr, lease, out)?;
    #[cfg(feature = "registry")]
    let kept = match from_cache {
        Some((dir, reference)) => Some(
            crate::lazy::take_kept_blobs(
                &mgr.root().content.under(&ctx),
                reference,
                &opts.pull.platform,
                &opts.registry,
                opts.pull.parallel,
                &dir,
                out,
            )
            .await
            .with_context(|| format!("take kept blobs from {}", dir.display()))?,
        ),
        None => None,
    };
    #[cfg(not(feature = "registry"))]
    let kept = {
        // Builds without registries have no --lazy-cache.
        let _ = (cache, location, opts);
        None
    };
    Ok((ctx, guard, kept))
}

async fn unlazy(
    mgr: &CacheManager,
    name: &str,
    args: &UnlazyArgs,
    lease: Option<&str>,
    ignore_chown_errors: bool,
    out: &Output,
) -> anyhow::Result<()> {
    let opts = ImagePullOptions {
        registry: args.registry.options(),
        import: ImportOptions {
            ignore_chown_errors,
            ..ImportOptions::default()
        },
        ..ImagePullOptions::default()
    };
    let source = Location::parse(&mgr.image(name)?.source)?;
    let (ctx, guard, lazy_cache) =
        context_taking_kept(mgr, lease, args.kept.dir(), &source, &opts, out).await?;
    let (ctx, bars) = progress::drawn(&ctx, out);
    let pulled = mgr.unlazy_image(&ctx, name, &opts).await;
    drop(bars);
    let pulled = pulled?;
    squashed_note(pulled.squashed, out);
    let (fetched, present) = (pulled.fetched, pulled.present);
    drop(pulled);
    drop(ctx);
    if let Some(g) = guard {
        g.release()?;
    }
    ImportedJson {
        image: ImageJson::from(&mgr.image(name)?),
        fetched,
        present,
        lazy: 0,
        lazy_cache,
    }
    .print(out)
}

/// Says once, on stderr, that `n` entries had their owner squashed: the
/// tree is not quite the image's.
pub fn squashed_note(n: u64, out: &Output) {
    if n > 0 {
        out.note(&format!(
            "strata: squashed the ownership of {n} entries this user namespace cannot map (--ignore-chown-errors)"
        ));
    }
}

async fn export(
    mgr: &CacheManager,
    what: &str,
    dest: &Location,
    args: &ExportArgs,
    lease: Option<&str>,
    out: &Output,
) -> anyhow::Result<()> {
    if args.force_compression && args.compression.is_none() {
        return Err(bad("--force-compression needs --compression".into()));
    }
    let (ctx, guard) = context(mgr, lease, out)?;
    let (ctx, bars) = progress::drawn(&ctx, out);
    let named = match mgr.image(what) {
        Ok(n) => Some(n),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e.into()),
    };
    let registry = args.registry.options();
    let written = match (&named, args.compression) {
        // A named image as it was stored (the same manifest digest), the
        // layers a lazy pull left taken from where it was pulled.
        (Some(n), None) => mgr.write_named_image(&ctx, &n.name, dest, &registry).await,
        _ => {
            let r = mgr.resolve_ref(what).await?;
            let kind = Compression::from(args.compression.unwrap_or(CompressionArg::Gzip));
            let cfg = RefConfig {
                compression: CompressionConfig {
                    kind,
                    force: args.force_compression,
                    level: args.level,
                },
                ..RefConfig::default()
            };
            let reference = named
                .as_ref()
                .map_or_else(|| what.to_owned(), |n| n.name.clone());
            let image = mgr
                .image_of_ref(
                    &ctx,
                    &r,
                    &cfg,
                    &reference,
                    &platform(args.platform.as_deref())?,
                )
                .await?;
            let written = mgr.write_image(&ctx, &image, dest, &registry).await;
            written.map(|report| (image, report))
        }
    };
    drop(bars);
    let (image, report) = written?;
    drop(ctx);
    if let Some(g) = guard {
        g.release()?;
    }
    let json = WrittenJson {
        destination: dest.to_string(),
        manifest: image.manifest.digest.to_string(),
        layers: image.layers.len(),
        size: image.blobs().map(|d| d.size).sum(),
        uploaded: report.as_ref().map(|r| r.uploaded),
        present: report.as_ref().map(|r| r.present),
        mounted: report.as_ref().map(|r| r.mounted),
    };
    let text = match &report {
        Some(r) => format!(
            "{} {} ({} uploaded, {} already there, {} mounted)",
            dest, image.manifest.digest, r.uploaded, r.present, r.mounted
        ),
        None => format!("{dest} {}", image.manifest.digest),
    };
    out.line(&json, &text)
}
