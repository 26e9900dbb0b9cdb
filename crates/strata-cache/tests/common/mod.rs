//! Shared helpers of the cache manager's tests: a manager on a fresh root,
//! layers built by hand and put into the content store, and mounting a ref
//! to render its tree.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_cache::{BackendChoice, CacheManager, Image, RefMount, Root, RootOptions};
use strata_core::{Algorithm, Descriptor, Digest, Digester, Labels};
use strata_leases::{LazyScope, OpCtx};
use strata_snapshot::mounts::{LocalMount, MountOptions};
use strata_testkit::layer_tar::{archive, entry};

pub struct Env {
    pub dir: tempfile::TempDir,
    pub mgr: CacheManager,
    /// The file system the root is on, for a backend that needs its own
    /// (btrfs); dropped after the manager.
    pub fs: Option<strata_testkit::loopfs::LoopFs>,
}

/// The backend a test names: a built-in one, or `outside`, the example
/// backend kept outside the crates (`examples/backend-copy`), given by
/// value as an embedder gives its own.
pub fn backend(name: &str) -> BackendChoice {
    match name {
        "outside" => BackendChoice::Custom(Arc::new(strata_example_backend::CopyBackend)),
        _ => BackendChoice::named(name).unwrap_or_else(|| panic!("no backend named {name}")),
    }
}

pub fn open_at(path: &Path, backend_name: &str) -> CacheManager {
    let root = Root::open(&RootOptions {
        path: Some(path.to_path_buf()),
        backend: backend(backend_name),
    })
    .expect("open root");
    CacheManager::new(root).expect("open manager")
}

pub fn env(backend_name: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let fs = (backend_name == "btrfs")
        .then(|| strata_testkit::loopfs::LoopFs::new("btrfs", &["-q"], 4 << 30));
    let root = fs
        .as_ref()
        .map_or(dir.path(), |f| f.mnt_path())
        .join("root");
    let mgr = open_at(&root, backend_name);
    Env { dir, mgr, fs }
}

impl Env {
    pub fn root_path(&self) -> PathBuf {
        self.fs
            .as_ref()
            .map_or(self.dir.path(), |f| f.mnt_path())
            .join("root")
    }
}

/// True when `test` can run on `backend` here: root, and for btrfs a loop
/// btrfs (its tools and the kernel's). Otherwise the skip is recorded by
/// name.
pub fn usable(test: &str, backend: &str) -> bool {
    match backend {
        "btrfs" => strata_testkit::loopfs::usable(test, "btrfs", "btrfs-progs"),
        _ => strata_testkit::require_root(test),
    }
}

/// A file entry.
pub fn file(path: &str, data: &str) -> Vec<u8> {
    entry(path, tar::EntryType::Regular, data.as_bytes(), "")
}

/// A directory entry.
pub fn dir(path: &str) -> Vec<u8> {
    entry(path, tar::EntryType::Directory, b"", "")
}

/// A whiteout of `path`.
pub fn whiteout(path: &str) -> Vec<u8> {
    let (parent, name) = path.rsplit_once('/').map_or(("", path), |(p, n)| (p, n));
    let wh = if parent.is_empty() {
        format!(".wh.{name}")
    } else {
        format!("{parent}/.wh.{name}")
    };
    entry(wh, tar::EntryType::Regular, b"", "")
}

fn sha(data: &[u8]) -> Digest {
    let mut d = Digester::new(Algorithm::Sha256);
    d.update(data);
    d.finish()
}

/// The layer of `entries`, gzip-compressed, put in the store; its
/// descriptor carries the diffID.
pub fn put_layer(mgr: &CacheManager, entries: &[Vec<u8>]) -> Descriptor {
    put_tar(mgr, &archive(entries))
}

/// A layer of the tar stream `tar`, gzip-compressed, put in the store.
pub fn put_tar(mgr: &CacheManager, tar: &[u8]) -> Descriptor {
    let tar = tar.to_vec();
    let diff_id = sha(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let blob = gz.finish().unwrap();
    let mut desc = put_blob(mgr, "application/vnd.oci.image.layer.v1.tar+gzip", &blob);
    desc.annotations
        .insert("containerd.io/uncompressed".into(), diff_id.to_string());
    desc
}

/// Any blob, put in the store (held by a lease of its own so a collection
/// in the test does not take it before the import holds it).
pub fn put_blob(mgr: &CacheManager, media_type: &str, data: &[u8]) -> Descriptor {
    let digest = sha(data);
    let root = mgr.root();
    let lease = format!("test-blob-{}", digest.hex());
    let _ = root.leases.create(strata_leases::LeaseSpec {
        id: Some(lease.clone()),
        ..Default::default()
    });
    root.leases
        .add_resource(&lease, &strata_leases::Resource::content(&digest))
        .unwrap();
    root.content
        .ingest(
            &format!("test-{}", digest.hex()),
            data,
            Some(data.len() as u64),
            Some(&digest),
            &Labels::new(),
        )
        .unwrap();
    Descriptor::new(media_type, digest, data.len() as u64)
}

/// An image of the given layers (manifest and config are small JSON
/// blobs; their content does not matter to the manager).
pub fn image(mgr: &CacheManager, name: &str, layers: Vec<Descriptor>) -> Image {
    let config = put_blob(
        mgr,
        "application/vnd.oci.image.config.v1+json",
        format!("{{\"name\":{name:?}}}").as_bytes(),
    );
    let manifest = put_blob(
        mgr,
        "application/vnd.oci.image.manifest.v1+json",
        format!("{{\"config\":{:?}}}", config.digest.to_string()).as_bytes(),
    );
    Image {
        reference: name.into(),
        manifest,
        config,
        layers,
        nonlayers: Vec::new(),
    }
}

/// The three layers most tests import: a base, a change with a deletion,
/// and an opaque directory.
pub fn three_layers(mgr: &CacheManager) -> Vec<Descriptor> {
    vec![
        put_layer(
            mgr,
            &[
                dir("etc/"),
                file("etc/os-release", "strata test os\n"),
                dir("usr/"),
                dir("usr/lib/"),
                file("usr/lib/a", "a1"),
                file("usr/lib/b", "b1"),
            ],
        ),
        put_layer(
            mgr,
            &[
                dir("usr/"),
                dir("usr/lib/"),
                whiteout("usr/lib/a"),
                file("usr/lib/c", "c2"),
            ],
        ),
        put_layer(
            mgr,
            &[
                dir("etc/"),
                entry("etc/.wh..wh..opq", tar::EntryType::Regular, b"", ""),
                file("etc/hostname", "box\n"),
            ],
        ),
    ]
}

/// The tree the three layers make.
pub fn three_layers_expected() -> Vec<(&'static str, &'static str)> {
    vec![
        ("etc/hostname", "box\n"),
        ("usr/lib/b", "b1"),
        ("usr/lib/c", "c2"),
    ]
}

/// Mounts `m` under `tmp` and hands the path to `f`.
pub fn with_mounted<T>(m: &RefMount, tmp: &Path, f: impl FnOnce(&Path) -> T) -> T {
    let lm = LocalMount::mount(
        &m.mounts,
        tmp,
        MountOptions {
            force_remount: true,
            temporary: true,
        },
    )
    .expect("mount");
    let out = f(lm.path());
    lm.unmount().expect("unmount");
    out
}

/// Regular files below `dir` with their contents, sorted.
pub fn files(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, std::fs::read_to_string(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

pub fn expect_files(got: Vec<(String, String)>, want: &[(&str, &str)]) {
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    assert_eq!(got, want);
}

pub fn lazy(mgr: &CacheManager) -> (OpCtx, Arc<LazyScope>) {
    let scope = LazyScope::new(mgr.root().leases.clone(), Labels::new());
    (OpCtx::new().with_lazy_scope(Arc::clone(&scope)), scope)
}

pub fn assert_clean(mgr: &CacheManager) {
    let v = mgr.root().db.check().unwrap();
    assert!(v.is_empty(), "metadata check: {v:?}");
    let v = mgr.root().snapshots.check().unwrap();
    assert!(v.is_empty(), "snapshot check: {v:?}");
}
