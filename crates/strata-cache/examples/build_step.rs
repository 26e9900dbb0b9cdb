//! A build step on top of an imported image: a new mutable ref, mounted and
//! written to, committed, and the result exported as an OCI layout with
//! zstd layers.
//!
//! ```console
//! $ cargo run -p strata-cache --example import_image -- /tmp/root oci:/path/to/layout app
//! $ sudo cargo run -p strata-cache --example build_step -- /tmp/root app /tmp/out
//! ```

// An example reports on stdout.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use strata_cache::{
    CacheManager, Compression, CompressionConfig, LocalMount, Location, MountOptions, OpCtx,
    Platform, RefConfig, RefOptions, RegistryOptions, Root, RootOptions, with_lease,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, image, out] = &args[..] else {
        return Err("usage: build_step ROOT IMAGE OUT_DIR".into());
    };
    let mgr = CacheManager::new(Root::open(&RootOptions {
        path: Some(PathBuf::from(root)),
        ..RootOptions::default()
    })?)?;
    let (ctx, guard) = with_lease(&OpCtx::new(), &mgr.root().leases)?;
    let base = mgr.resolve_ref(image).await?;

    // The step: a mutable ref on the image, written through a real mount.
    let step = mgr
        .new_ref(&ctx, Some(&base), &RefOptions::described("build step"))
        .await?;
    let mounts = step.mount(&ctx, false).await?;
    let target = tempfile::tempdir()?;
    let mounted = LocalMount::mount(&mounts.mounts, target.path(), MountOptions::default())?;
    std::fs::write(mounted.path().join("built-by-strata"), "hello\n")?;
    mounted.unmount()?;
    drop(mounts);
    let done = step.commit(&ctx).await?;

    // Its chain as an image: layers exported in zstd, a config and a
    // manifest made for them, written as an OCI layout.
    let cfg = RefConfig {
        compression: CompressionConfig {
            kind: Compression::Zstd,
            ..CompressionConfig::default()
        },
        ..RefConfig::default()
    };
    let image = mgr
        .image_of_ref(&ctx, &done, &cfg, "step:latest", &Platform::host())
        .await?;
    let dest = Location::Layout {
        dir: PathBuf::from(out),
        tag: Some("latest".into()),
    };
    mgr.write_image(&ctx, &image, &dest, &RegistryOptions::default())
        .await?;
    println!(
        "{dest}: manifest {}, {} layers",
        image.manifest.digest,
        image.layers.len()
    );
    drop(done);
    guard.release()?;
    mgr.close().await?;
    Ok(())
}
