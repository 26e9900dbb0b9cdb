//! The cache manager killed in each of its operations in turn: a child
//! keeps importing small images, making refs, merging, diffing, exporting
//! (forced compression variants included), letting go and collecting, on
//! one root, and recording images lazily and then filling their refs;
//! it is SIGKILLed (the harness aims at each operation's phase
//! and fails if one is never hit), and every time the metadata checks
//! clean before any repair, the root opens with clean checks,
//! every acknowledged ref still has its snapshot and its file, every
//! acknowledged blob is there, and a collection afterwards keeps them all.

use std::path::Path;

use strata_cache::{
    BackendChoice, CacheManager, CompressionConfig, Image, ImportOptions, RefConfig, RefOptions,
    Root, RootOptions,
};
use strata_core::{Algorithm, Descriptor, Digest, Digester, Labels};
use strata_diff::Compression;
use strata_leases::gc::GcOptions;
use strata_leases::{LazyScope, OpCtx};
use strata_testkit::crash::{self, AckLog, Phase, Rng};
use strata_testkit::layer_tar::{archive, entry};

fn open(dir: &Path, backend: &BackendChoice) -> CacheManager {
    let root = Root::open(&RootOptions {
        path: Some(dir.join("root")),
        backend: backend.clone(),
    })
    .expect("open root");
    CacheManager::new(root).expect("open manager")
}

fn owner(id: &str) -> String {
    format!("keep/{id}")
}

/// Puts `data` in the store (under the operation's lease) as a blob of
/// media type `media`.
fn put(content: &strata_content::ContentStore, media: &str, data: &[u8]) -> Descriptor {
    let mut h = Digester::new(Algorithm::Sha256);
    h.update(data);
    let digest = h.finish();
    content
        .ingest(
            digest.as_str(),
            data,
            Some(data.len() as u64),
            Some(&digest),
            &Labels::new(),
        )
        .expect("ingest");
    Descriptor::new(media, digest, data.len() as u64)
}

/// An image with the file `name` holding `name`, its blobs in the store
/// under the operation's lease; with `estargz`, that layer is
/// eStargz over a plain one (the file `NAME.base`), and left out of the
/// store and returned, for a lazy import.
fn small_image(mgr: &CacheManager, ctx: &OpCtx, name: &str, estargz: bool) -> (Image, Vec<u8>) {
    let tar = archive(&[entry(name, tar::EntryType::Regular, name.as_bytes(), "")]);
    let mut d = Digester::new(Algorithm::Sha256);
    d.update(&tar);
    let mut diff_id = d.finish();
    let content = mgr.root().content.under(ctx);
    let (mut layer, left) = if estargz {
        let opts = strata_diff::estargz::EStargzOptions::default();
        let (written, blob) =
            strata_diff::estargz::write(tar.as_slice(), Vec::new(), &opts, None, 1)
                .expect("write eStargz");
        let mut h = Digester::new(Algorithm::Sha256);
        h.update(&blob);
        let mut desc = Descriptor::new(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            h.finish(),
            blob.len() as u64,
        );
        desc.annotations.extend(strata_diff::estargz::annotations(
            &written.toc_digest,
            written.uncompressed_size,
        ));
        // The stream with its TOC entry and landmark.
        diff_id = written.diff_id;
        (desc, blob)
    } else {
        let desc = put(&content, "application/vnd.oci.image.layer.v1.tar", &tar);
        (desc, Vec::new())
    };
    layer
        .annotations
        .insert("containerd.io/uncompressed".into(), diff_id.to_string());
    let config = put(
        &content,
        "application/vnd.oci.image.config.v1+json",
        name.as_bytes(),
    );
    let manifest = put(
        &content,
        "application/vnd.oci.image.manifest.v1+json",
        format!("{{\"m\":{name:?}}}").as_bytes(),
    );
    let mut layers = vec![layer];
    if estargz {
        let base = format!("{name}.base");
        let tar = archive(&[entry(&base, tar::EntryType::Regular, b"base", "")]);
        let mut d = Digester::new(Algorithm::Sha256);
        d.update(&tar);
        let mut plain = put(&content, "application/vnd.oci.image.layer.v1.tar", &tar);
        plain
            .annotations
            .insert("containerd.io/uncompressed".into(), d.finish().to_string());
        layers.insert(0, plain);
    }
    let image = Image {
        reference: name.into(),
        manifest,
        config,
        layers,
        nonlayers: Vec::new(),
    };
    (image, left)
}

async fn child(dir: &Path, seed: u64, backend: &BackendChoice) {
    let mgr = open(dir, backend);
    let log = AckLog::new(dir);
    let phase = Phase::new(dir);
    let mut rng = Rng::new(seed);
    // Refs kept so far (from earlier children too): `r:<id>:<file>`.
    let mut kept: Vec<(String, String)> = log
        .live()
        .into_iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("r:")?;
            let (id, file) = rest.split_once(':')?;
            Some((id.to_owned(), file.to_owned()))
        })
        .collect();
    for i in 0.. {
        let scope = LazyScope::new(mgr.root().leases.clone(), strata_leases::temporary_labels());
        let ctx = OpCtx::new().with_lazy_scope(std::sync::Arc::clone(&scope));
        let token = format!("f-{seed}-{i}");
        let pick = |rng: &mut Rng, kept: &[(String, String)]| {
            (!kept.is_empty()).then(|| kept[rng.below(kept.len() as u64) as usize].clone())
        };
        let made: Option<(String, String)> = match rng.below(8) {
            0 => {
                phase.enter("import");
                let (img, _) = small_image(&mgr, &ctx, &token, false);
                let top = mgr
                    .import_image(&ctx, &img, &ImportOptions::default())
                    .await
                    .expect("import");
                Some((top.id().to_owned(), token.clone()))
            }
            1 | 2 => {
                phase.enter("ref");
                let parent = match pick(&mut rng, &kept) {
                    Some((id, _)) => Some(mgr.get(&id, &RefOptions::default()).await.expect("get")),
                    None => None,
                };
                let m = mgr
                    .new_ref(&ctx, parent.as_ref(), &RefOptions::described(&token))
                    .await
                    .expect("new");
                std::fs::write(
                    mgr.root().snapshots.fs_dir(m.id()).unwrap().join(&token),
                    &token,
                )
                .expect("write");
                let r = m.commit(&ctx).await.expect("commit");
                Some((r.id().to_owned(), token.clone()))
            }
            3 => match (pick(&mut rng, &kept), pick(&mut rng, &kept)) {
                (Some(a), Some(b)) if a.0 != b.0 => {
                    phase.enter("merge");
                    let (ra, rb) = (
                        mgr.get(&a.0, &RefOptions::default()).await.expect("get"),
                        mgr.get(&b.0, &RefOptions::default()).await.expect("get"),
                    );
                    let merged = if rng.below(2) == 0 {
                        mgr.merge(&ctx, &[Some(&ra), Some(&rb)], &RefOptions::default())
                            .await
                    } else {
                        mgr.apply_snapshot_diff(&ctx, Some(&ra), Some(&rb), &RefOptions::default())
                            .await
                    };
                    let r = merged.expect("merge").expect("two inputs");
                    // Both keep b's newest file unless a diff finds it equal.
                    Some((r.id().to_owned(), String::new()))
                }
                _ => None,
            },
            4 => {
                if let Some((id, _)) = pick(&mut rng, &kept) {
                    phase.enter("export");
                    let r = mgr.get(&id, &RefOptions::default()).await.expect("get");
                    let cfg = RefConfig {
                        compression: CompressionConfig {
                            kind: if rng.below(2) == 0 {
                                Compression::Gzip
                            } else {
                                Compression::Zstd
                            },
                            force: rng.below(2) == 0,
                            level: None,
                        },
                        ..RefConfig::default()
                    };
                    let chain = r.export_chain(&ctx, &cfg).await.expect("export");
                    // The owner lease of the ref holds its blobs now.
                    for l in chain.layers {
                        log.added(&format!("b:{}:{id}", l.descriptor.digest));
                    }
                }
                None
            }
            5 => {
                if let Some((id, file)) = pick(&mut rng, &kept) {
                    log.removing(&format!("r:{id}:{file}"));
                    for b in log
                        .live()
                        .into_iter()
                        .filter(|b| b.ends_with(&format!(":{id}")))
                    {
                        log.removing(&b);
                    }
                    phase.enter("let-go");
                    mgr.remove_lease(&owner(&id)).await.expect("remove lease");
                    kept.retain(|k| k.0 != id);
                }
                None
            }
            6 => {
                // Recorded without its layer, then filled in place once
                // the blob is here.
                phase.enter("lazy");
                let (img, blob) = small_image(&mgr, &ctx, &token, true);
                let lazy = ImportOptions {
                    lazy: true,
                    ..ImportOptions::default()
                };
                let top = mgr
                    .import_image(&ctx, &img, &lazy)
                    .await
                    .expect("lazy import");
                assert_eq!(mgr.lazy_layers(&top).await.unwrap(), [false, true]);
                // Kept before the fill: a kill during it must leave the
                // ref lazy or filled, never lost or half.
                let lazy_item = format!("l:{}:{token}", top.id());
                mgr.attach_lease(&owner(top.id()), top.id())
                    .await
                    .expect("attach");
                log.added(&lazy_item);
                phase.enter("unlazy");
                let content = mgr.root().content.under(&ctx);
                put(&content, &img.layers[1].media_type, &blob);
                let filled = mgr
                    .import_image(&ctx, &img, &ImportOptions::default())
                    .await
                    .expect("unlazy");
                assert_eq!(filled.id(), top.id());
                log.removing(&lazy_item);
                Some((top.id().to_owned(), token.clone()))
            }
            _ => {
                phase.enter("collect");
                mgr.root()
                    .collector
                    .collect(GcOptions::default())
                    .expect("collect");
                None
            }
        };
        if let Some((id, file)) = made {
            mgr.attach_lease(&owner(&id), &id).await.expect("attach");
            log.added(&format!("r:{id}:{file}"));
            kept.push((id, file));
        }
        scope.release().expect("release scope");
    }
}

fn verify(
    dir: &Path,
    round: usize,
    backend: &BackendChoice,
    rt: &tokio::runtime::Runtime,
) -> usize {
    // Before any repair, the metadata file must check clean: every change
    // to it was one committed transaction or none.
    let before = strata_metadata::MetaDb::open(&dir.join("meta.redb"))
        .unwrap()
        .check()
        .unwrap();
    crash::assert_none(round, "metadata before repair", &before);
    let mgr = open(dir, backend);
    let root = mgr.root();
    let problems: Vec<String> = root
        .db
        .check()
        .unwrap()
        .into_iter()
        .chain(root.content.check(true).unwrap())
        .chain(root.snapshots.check().unwrap())
        .map(|v| v.to_string())
        .collect();
    assert!(problems.is_empty(), "round {round}: checks: {problems:?}");
    let live = AckLog::new(dir).live();
    let check_live = |when: &str| {
        for item in &live {
            // A ref recorded lazily is lazy or filled: its file is read
            // once it is filled.
            let (rest, lazy) = match item.strip_prefix("l:") {
                Some(rest) => (Some(rest), true),
                None => (item.strip_prefix("r:"), false),
            };
            if let Some(rest) = rest {
                let (id, file) = rest.split_once(':').unwrap();
                let r = rt
                    .block_on(mgr.get(id, &RefOptions::default()))
                    .unwrap_or_else(|e| panic!("round {round} {when}: ref {id} lost: {e}"));
                let unread = lazy && root.snapshots.is_lazy(r.snapshot_id()).unwrap();
                if !file.is_empty() && !unread {
                    let reader = rt.block_on(r.reader(&OpCtx::new())).unwrap();
                    let data = reader.read_file(file.as_ref(), None).unwrap_or_else(|e| {
                        panic!("round {round} {when}: ref {id} lost {file}: {e}")
                    });
                    assert_eq!(data, file.as_bytes(), "round {round} {when}: {id}/{file}");
                }
            } else if let Some(rest) = item.strip_prefix("b:") {
                let d = Digest::parse(rest.rsplit_once(':').unwrap().0).unwrap();
                root.content
                    .info(&d)
                    .unwrap_or_else(|e| panic!("round {round} {when}: blob {d} lost: {e}"));
            }
        }
    };
    check_live("after reopen");
    root.collector.collect(GcOptions::default()).unwrap();
    check_live("after collecting");
    assert!(
        root.db.check().unwrap().is_empty(),
        "round {round}: checks after collecting"
    );
    live.len()
}

pub fn main_for(name: &str, backend: BackendChoice) {
    let skipped = || {
        println!("test result: ok. 0 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out");
    };
    // btrfs runs on a loop btrfs the parent makes (the child is handed its
    // directory inside it).
    let btrfs = match backend {
        BackendChoice::Btrfs if crash::is_child() => None,
        BackendChoice::Btrfs => {
            if !strata_testkit::loopfs::usable(name, "btrfs", "btrfs-progs") {
                return skipped();
            }
            Some(strata_testkit::loopfs::LoopFs::new(
                "btrfs",
                &["-q"],
                4 << 30,
            ))
        }
        BackendChoice::Overlay(_) if !strata_testkit::require_root(name) => return skipped(),
        _ => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let base = btrfs
        .as_ref()
        .map_or_else(std::env::temp_dir, |fs| fs.mnt());
    crash::run_in(
        &base,
        name,
        400,
        &[
            "import", "ref", "merge", "export", "let-go", "lazy", "unlazy", "collect",
        ],
        |dir, seed| rt.block_on(child(dir, seed, &backend)),
        |dir, round| verify(dir, round, &backend, &rt),
    );
}
