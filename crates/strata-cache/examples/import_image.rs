//! Open a state root and import an image into it, by name.
//!
//! ```console
//! $ cargo run -p strata-cache --example import_image -- /tmp/root oci:/path/to/layout:latest app
//! ```
//!
//! The location may also be `docker-archive:FILE` or
//! `docker://HOST/REPO:TAG` (loopback registries speak plain HTTP).

// An example reports on stdout.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use strata_cache::{
    CacheManager, ImagePullOptions, Location, OpCtx, Root, RootOptions, with_lease,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, location, name] = &args[..] else {
        return Err("usage: import_image ROOT LOCATION NAME".into());
    };
    // One call opens a root: lock, cleanup of what a killed process left,
    // stores, the best backend the machine allows, the collector.
    let mgr = CacheManager::new(Root::open(&RootOptions {
        path: Some(PathBuf::from(root)),
        ..RootOptions::default()
    })?)?;
    // Everything the pull stores is held by a lease until the name holds it.
    let (ctx, guard) = with_lease(&OpCtx::new(), &mgr.root().leases)?;
    let location = Location::parse(location)?;
    let pulled = mgr
        .pull_image(&ctx, &location, &ImagePullOptions::default())
        .await?;
    let named = mgr
        .name_image(
            name,
            &pulled.image,
            pulled.top.as_ref(),
            &location.to_string(),
        )
        .await?;
    println!(
        "{}: manifest {}, {} layers, top ref {} ({} blobs fetched, {} already here)",
        named.name,
        named.manifest,
        pulled.image.layers.len(),
        named.top_ref,
        pulled.fetched,
        pulled.present
    );
    drop(pulled);
    guard.release()?;
    mgr.close().await?;
    Ok(())
}
