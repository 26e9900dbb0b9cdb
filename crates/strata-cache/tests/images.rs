//! Images through the library: pull from a layout and push to a real
//! registry, then downloads that resume what an interrupted one kept (the
//! registry serves the rest as a range) or start over when what was kept
//! is wrong, and names that hold an image until they are removed.

mod common;

use strata_cache::{CacheManager, ImagePullOptions, Location, RegistryOptions};
use strata_core::{Classify, Digest};
use strata_leases::OpCtx;
use strata_testkit::layer_tar::{archive, entry};
use strata_testkit::oci_layout::Layout;
use strata_testkit::registry::Registry;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A layout of one image with a big layer (incompressible bytes, so the
/// blob is big too) and a small one.
fn layout(dir: &std::path::Path) {
    let mut noise = vec![0u8; 3 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in &mut noise {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let l = Layout::new(dir);
    let m = l.image(&[
        archive(&[entry("big", tar::EntryType::Regular, &noise, "")]),
        archive(&[entry("small", tar::EntryType::Regular, b"small", "")]),
    ]);
    l.tag(&m, "latest");
}

/// Pulls under a lease of its own (a background collection may run at
/// any time; what the pull stores is held until the lease goes).
async fn pull(
    mgr: &CacheManager,
    location: &Location,
) -> (strata_cache::PulledImage, strata_leases::LeaseGuard) {
    let (ctx, guard) = strata_leases::with_lease(&OpCtx::new(), &mgr.root().leases).unwrap();
    let got = mgr
        .pull_image(&ctx, location, &ImagePullOptions::default())
        .await
        .unwrap();
    (got, guard)
}

#[test]
fn downloads_resume_and_names_hold_images() {
    if !strata_testkit::require_tools(
        "strata-cache::downloads_resume_and_names_hold_images",
        strata_testkit::REGISTRY_TOOLS,
    ) {
        return;
    }
    let reg = Registry::start(None);
    let rt = runtime();
    let a = common::env("native");
    let src = a.dir.path().join("layout");
    layout(&src);
    let target = Location::Registry {
        reference: format!("{}/resume:1", reg.addr),
    };
    let (big, big_size) = rt.block_on(async {
        let (got, _held) = pull(
            &a.mgr,
            &Location::Layout {
                dir: src.clone(),
                tag: None,
            },
        )
        .await;
        a.mgr
            .write_image(
                &OpCtx::new(),
                &got.image,
                &target,
                &RegistryOptions::default(),
            )
            .await
            .unwrap();
        let big = got
            .image
            .layers
            .iter()
            .max_by_key(|l| l.size)
            .unwrap()
            .clone();
        (big.digest, big.size)
    });
    let blob = std::fs::read(reg.blob_file(big.as_str())).unwrap();
    assert_eq!(blob.len() as u64, big_size);

    // An interrupted download kept the first half: the rest comes as a
    // range.
    let b = common::env("native");
    plant(&b.mgr, &big, big_size, &blob[..blob.len() / 2]);
    let (got, _held) = rt.block_on(pull(&b.mgr, &target));
    assert_eq!(got.fetched, 4, "manifest, config and both layers");
    // The registry writes its access log after the response is out.
    assert!(
        reg.log_shows("\" 206 "),
        "the registry served a partial response:\n{}",
        reg.log()
    );
    let info = b.mgr.root().content.info(&big).unwrap();
    assert_eq!(info.size, big_size);

    // What was kept is wrong: the download starts over and verifies.
    let c = common::env("native");
    plant(&c.mgr, &big, big_size, &vec![0u8; blob.len() / 2]);
    let (got, held) = rt.block_on(pull(&c.mgr, &target));
    assert!(got.top.is_some());
    assert_eq!(c.mgr.root().content.info(&big).unwrap().size, big_size);

    // A name holds the image through a collection; removing it lets go.
    rt.block_on(async {
        let top = got.top.as_ref().unwrap();
        c.mgr
            .name_image("resume:1", &got.image, Some(top), "test")
            .await
            .unwrap();
    });
    let name = got.image.manifest.digest.clone();
    drop(got);
    held.release().unwrap();
    c.mgr.root().collector.collect(Default::default()).unwrap();
    assert!(c.mgr.root().content.info(&big).is_ok(), "held by the name");
    assert_eq!(c.mgr.image("resume:1").unwrap().manifest, name);
    rt.block_on(c.mgr.remove_image("resume:1")).unwrap();
    c.mgr.root().collector.collect(Default::default()).unwrap();
    let gone = c.mgr.root().content.info(&big).unwrap_err();
    assert!(gone.is_not_found(), "{gone}");
    assert!(c.mgr.image("resume:1").unwrap_err().is_not_found());
}

/// Leaves an unfinished ingest of blob `d` holding `prefix`, as an
/// interrupted download would.
fn plant(mgr: &CacheManager, d: &Digest, size: u64, prefix: &[u8]) {
    use std::io::Write;
    let mut w = mgr
        .root()
        .content
        .writer(&format!("fetch-{d}"), Some(size), Some(d))
        .unwrap();
    w.write_all(prefix).unwrap();
}
