//! `strata demo`: Strata's main job on an embedded default, step by step
//! with sizes and timings. A small real OCI image (three layers: files, a
//! deletion, an opaque directory) is made in-process from files embedded
//! in the binary, so nothing is downloaded; it is imported, a build step
//! writes on top and commits, the result is merged with a second image,
//! diffed against the base, exported as an OCI layout with zstd layers,
//! measured, pruned and collected. The root is a temporary directory (or
//! `--root`); the backend is the best the machine allows.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use strata_cache::{
    BackendChoice, CacheManager, CompressionConfig, Image, ImportOptions, Location, Platform,
    PruneOptions, RefConfig, RefOptions, RegistryOptions, Root, RootOptions,
};
use strata_core::{Algorithm, Compression, Descriptor, Digest, Filter, Labels, media};
use strata_leases::{OpCtx, with_lease};

use serde::Serialize;

use crate::output::{Output, size};

/// The files of the demo image, embedded in the binary: (layer, path,
/// contents); an empty path after `!` is a whiteout, `!opq DIR` an opaque
/// directory.
const BASE: &[&[(&str, &str)]] = &[
    &[
        ("etc/os-release", "NAME=\"Strata demo\"\nID=strata-demo\n"),
        ("etc/motd", "Welcome to a Strata snapshot.\n"),
        ("usr/share/doc/demo/README", "Layer one wrote this.\n"),
        ("usr/share/doc/demo/CHANGES", "0.1: first layer\n"),
        ("usr/bin/hello", "#!/bin/sh\necho hello from strata\n"),
    ],
    &[("!etc/motd", ""), ("etc/issue", "Strata demo \\n \\l\n")],
    &[
        ("!opq usr/share/doc/demo", ""),
        (
            "usr/share/doc/demo/README",
            "Layer three replaced the whole directory.\n",
        ),
    ],
];

const TOOLS: &[&[(&str, &str)]] = &[&[("opt/tools/bin/lint", "#!/bin/sh\necho lint: ok\n")]];

/// One layer as a tar (directories made as needed, fixed times so the
/// digest is the same on every run).
fn layer_tar(files: &[(&str, &str)]) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    let mut add_dirs = |b: &mut tar::Builder<Vec<u8>>, path: &str| -> anyhow::Result<()> {
        let mut at = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, d)| d)
        {
            at.push_str(part);
            at.push('/');
            if dirs.insert(at.clone()) {
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_mtime(1_700_000_000);
                h.set_size(0);
                b.append_data(&mut h, &at, std::io::empty())?;
            }
        }
        Ok(())
    };
    for (path, data) in files {
        let (name, data, mode) = if let Some(dir) = path.strip_prefix("!opq ") {
            (format!("{dir}/.wh..wh..opq"), "", 0o644)
        } else if let Some(gone) = path.strip_prefix('!') {
            let (parent, leaf) = gone.rsplit_once('/').unwrap_or(("", gone));
            (format!("{parent}/.wh.{leaf}"), "", 0o644)
        } else {
            let mode = if data.starts_with("#!") { 0o755 } else { 0o644 };
            ((*path).to_owned(), *data, mode)
        };
        add_dirs(&mut b, &name)?;
        let mut h = tar::Header::new_ustar();
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, &name, data.as_bytes())?;
    }
    Ok(b.into_inner()?)
}

/// Makes an image of `layers` (gzip) in the root's content store: blobs,
/// config and manifest, held by `ctx`.
fn make_image(
    mgr: &CacheManager,
    ctx: &OpCtx,
    name: &str,
    layers: &[&[(&str, &str)]],
) -> anyhow::Result<Image> {
    let store = mgr.root().content.under(ctx);
    let mut descs = Vec::new();
    for files in layers {
        let tar = layer_tar(files)?;
        let diff_id = Digest::of_bytes(Algorithm::Sha256, &tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar)?;
        let blob = gz.finish()?;
        let digest = Digest::of_bytes(Algorithm::Sha256, &blob);
        store.ingest(
            &format!("demo-{digest}"),
            &blob[..],
            Some(blob.len() as u64),
            Some(&digest),
            &Labels::new(),
        )?;
        let mut d = Descriptor::new(Compression::Gzip.media_type(), digest, blob.len() as u64);
        d.annotations
            .insert(media::UNCOMPRESSED_LABEL.to_owned(), diff_id.to_string());
        descs.push(d);
    }
    let history: Vec<strata_oci::History> = (0..layers.len())
        .map(|i| strata_oci::History {
            created: None,
            created_by: format!("strata demo: {name} layer {}", i + 1),
        })
        .collect();
    Ok(strata_oci::build_image(
        &store,
        name,
        &descs,
        &history,
        &Platform::host(),
    )?)
}

/// Files below `dir`, counted.
fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => n += 1,
                Err(_) => {}
            }
        }
    }
    n
}

/// The tour's steps as they finish: printed for people at once, or kept
/// for one JSON document at the end.
struct Report {
    json: bool,
    started: Instant,
    steps: Vec<StepJson>,
}

#[derive(Serialize)]
struct StepJson {
    step: &'static str,
    what: String,
    ms: f64,
}

#[derive(Serialize)]
struct DemoJson<'a> {
    root: String,
    backend: &'a str,
    steps: &'a [StepJson],
}

impl Report {
    fn say(&self, text: &str) -> anyhow::Result<()> {
        if !self.json {
            writeln!(std::io::stdout(), "{text}")?;
        }
        Ok(())
    }

    fn line(&mut self, step: &'static str, said: &str) -> anyhow::Result<()> {
        let ms = self.started.elapsed().as_secs_f64() * 1e3;
        self.say(&format!(
            "  {}. {step:<8} {said} ({ms:.0} ms)",
            self.steps.len() + 1
        ))?;
        self.steps.push(StepJson {
            step,
            what: said.to_owned(),
            ms,
        });
        self.started = Instant::now();
        Ok(())
    }
}

/// Runs the demo in `root` (a temporary one, removed at the end, when
/// `None`).
pub fn run(root: Option<&Path>, backend: BackendChoice, out: &Output) -> anyhow::Result<ExitCode> {
    let tmp = tempfile::Builder::new().prefix("strata-demo-").tempdir()?;
    let kept = root.is_some();
    let root = root.map_or_else(|| tmp.path().join("root"), Path::to_path_buf);
    let mut report = Report {
        json: out.json(),
        started: Instant::now(),
        steps: Vec::new(),
    };
    let backend =
        crate::snapshot::block_on_parallel(demo(&root, tmp.path(), backend, kept, &mut report))??;
    if report.json {
        let json = DemoJson {
            root: root.display().to_string(),
            backend: &backend,
            steps: &report.steps,
        };
        out.line(&json, "")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The tour; returns the backend's name.
async fn demo(
    root: &Path,
    scratch: &Path,
    backend: BackendChoice,
    kept: bool,
    r: &mut Report,
) -> anyhow::Result<String> {
    let mgr = CacheManager::new(Root::open(&RootOptions {
        path: Some(root.to_owned()),
        backend,
    })?)?;
    let backend_name = strata_snapshot::Snapshotter::name(&mgr.root().snapshots).to_owned();
    r.say(&format!(
        "strata demo: root {} ({backend_name} backend{})",
        root.display(),
        if mgr.root().snapshots.capabilities().overlay_layers {
            ", kernel overlayfs"
        } else {
            ", full copies"
        }
    ))?;
    if strata_sys::effective_uid() != 0 {
        r.say(
            "  (not root: no overlay mounts and no mounting; the native backend writes snapshots directly)",
        )?;
    }
    r.started = Instant::now();
    let (ctx, guard) = with_lease(&OpCtx::new(), &mgr.root().leases)?;

    let base = make_image(&mgr, &ctx, "demo/base:1", BASE)?;
    let bytes: u64 = base.blobs().map(|d| d.size).sum();
    r.line(
        "image",
        &format!(
            "made demo/base:1 in-process: {} layers (a deletion, an opaque directory), {}, manifest {}",
            base.layers.len(),
            size(bytes),
            short(&base.manifest.digest)
        ),
    )?;

    let top = mgr
        .import_image(&ctx, &base, &ImportOptions::default())
        .await?;
    mgr.name_image("demo/base:1", &base, Some(&top), "strata demo")
        .await?;
    r.line(
        "import",
        &format!(
            "unpacked into {} snapshots; named demo/base:1 (top ref {})",
            base.layers.len(),
            top.id()
        ),
    )?;

    let step = mgr
        .new_ref(&ctx, Some(&top), &RefOptions::described("demo build step"))
        .await?;
    let dir = mgr.root().snapshots.fs_dir(step.id())?;
    std::fs::create_dir_all(dir.join("app"))?;
    std::fs::write(dir.join("app/main.sh"), "#!/bin/sh\nexec /usr/bin/hello\n")?;
    std::fs::write(dir.join("app/VERSION"), "1.0\n")?;
    let built = step.commit(&ctx).await?;
    r.line(
        "build",
        &format!(
            "a mutable ref on the image, 2 files written, committed as {}",
            built.id()
        ),
    )?;

    let tools = make_image(&mgr, &ctx, "demo/tools:1", TOOLS)?;
    let tools_top = mgr
        .import_image(&ctx, &tools, &ImportOptions::default())
        .await?;
    let merged = mgr
        .merge(
            &ctx,
            &[Some(&built), Some(&tools_top)],
            &RefOptions::described("demo merge"),
        )
        .await?
        .ok_or_else(|| anyhow::anyhow!("the merge made nothing"))?;
    r.line(
        "merge",
        &format!(
            "the build step and demo/tools:1 merged into {} (later inputs win)",
            merged.id()
        ),
    )?;

    let diff = mgr
        .apply_snapshot_diff(
            &ctx,
            Some(&top),
            Some(&built),
            &RefOptions::described("demo diff"),
        )
        .await?
        .ok_or_else(|| anyhow::anyhow!("the diff made nothing"))?;
    let changed = count_files(&mgr.root().snapshots.fs_dir(diff.id())?);
    r.line(
        "diff",
        &format!(
            "{} holds what the build step changed over the image: {changed} files",
            diff.id()
        ),
    )?;

    let cfg = RefConfig {
        compression: CompressionConfig {
            kind: Compression::Zstd,
            force: true,
            level: None,
        },
        ..RefConfig::default()
    };
    let exported = mgr
        .image_of_ref(&ctx, &merged, &cfg, "demo/app:1", &Platform::host())
        .await?;
    let layout = scratch.join("demo-app-layout");
    let dest = Location::Layout {
        dir: layout.clone(),
        tag: Some("1".into()),
    };
    mgr.write_image(&ctx, &exported, &dest, &RegistryOptions::default())
        .await?;
    mgr.name_image("demo/app:1", &exported, Some(&merged), "strata demo")
        .await?;
    r.line(
        "export",
        &format!(
            "{dest}: {} zstd layers, {}, manifest {}",
            exported.layers.len(),
            size(exported.blobs().map(|d| d.size).sum()),
            short(&exported.manifest.digest)
        ),
    )?;

    drop((top, step, tools_top, merged, diff, built));
    guard.release()?;
    let usage = mgr.disk_usage(&Filter::default()).await?;
    let total: u64 = usage.iter().map(|u| u.size).sum();
    r.line(
        "du",
        &format!("{} records, {} on disk", usage.len(), size(total)),
    )?;

    // Prune collects what it let go of; its sweep reports how much.
    let swept = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&swept);
    let ctx = OpCtx::new().with_events(move |e| {
        if e.item == "gc" {
            seen.store(e.total, Ordering::Relaxed);
        }
    });
    let pruned = mgr.prune_in(&ctx, &PruneOptions::default()).await?;
    r.line(
        "prune",
        &format!(
            "let go of {} records nothing held ({}); kept {} (the named images); the collector removed {} objects",
            pruned.removed.len(),
            size(pruned.reclaimed),
            pruned.kept.len(),
            swept.load(Ordering::Relaxed)
        ),
    )?;
    mgr.close().await?;
    if kept {
        r.say(&format!(
            "done: `strata --root {} image ls` shows what is left",
            root.display()
        ))?;
    } else {
        r.say("done: the temporary root goes now; `strata --root DIR demo` keeps one")?;
    }
    Ok(backend_name)
}

fn short(d: &Digest) -> String {
    d.to_string().chars().take(19).collect()
}
