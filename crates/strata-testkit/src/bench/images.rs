//! The images the benchmarks import, pull, apply and merge: the real Debian
//! images `cargo xtask bench-images` builds (debian-python, gzip and zstd),
//! or, in a quick run, a small image of the same shape made here in a
//! moment: three layers with files, a symlink, a hard link, deletions
//! (whiteouts) and an opaque directory, as gzip and zstd OCI layouts and
//! OCI archives.

use std::path::{Path, PathBuf};

use crate::layer_tar::{archive, entry};
use crate::oci_layout::{Layout, gzip, sha256};

/// A set of images: an OCI layout per name under `dir`, and an OCI
/// archive of each in `dir/archives/NAME.oci.tar` (for `ctr images
/// import` and `skopeo copy oci-archive:`).
#[derive(Clone, Debug)]
pub struct Images {
    /// Where the layouts are.
    pub dir: PathBuf,
    /// The gzip image, then the same layers as zstd.
    pub names: [String; 2],
}

impl Images {
    /// The OCI layout of `name`.
    pub fn layout(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The OCI archive of `name`.
    pub fn archive(&self, name: &str) -> PathBuf {
        self.dir.join("archives").join(format!("{name}.oci.tar"))
    }

    /// The layer blobs of `name`'s only manifest, bottom first, with
    /// their media types.
    pub fn layers(&self, name: &str) -> Vec<(PathBuf, String)> {
        let layout = self.layout(name);
        let read = |p: PathBuf| -> serde_json::Value {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        let blob = |digest: &str| {
            layout
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:"))
        };
        let index = read(layout.join("index.json"));
        let manifest = read(blob(index["manifests"][0]["digest"].as_str().unwrap()));
        manifest["layers"]
            .as_array()
            .expect("a manifest lists layers")
            .iter()
            .map(|l| {
                (
                    blob(l["digest"].as_str().unwrap()),
                    l["mediaType"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

/// The images of this run: in a quick run a small image made under
/// `scratch` (see the module's comment), else the real Debian images in
/// `$STRATA_BENCH_IMAGES` (default `target/bench-images`); panics with
/// what to run when those are missing.
pub fn images(scratch: &Path) -> Images {
    if super::quick() {
        return small(&scratch.join("quick-images"));
    }
    let dir = std::env::var_os("STRATA_BENCH_IMAGES").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-images"),
        PathBuf::from,
    );
    assert!(
        dir.join("debian-python/index.json").exists(),
        "no images in {}: build them with cargo xtask bench-images",
        dir.display()
    );
    Images {
        dir,
        names: ["debian-python".into(), "debian-python-zstd".into()],
    }
}

/// The three plain tar layers of the small image.
fn small_layers() -> Vec<Vec<u8>> {
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    let mut base = Vec::new();
    for d in [
        "etc/",
        "usr/",
        "usr/bin/",
        "usr/share/",
        "usr/share/man/",
        "usr/share/doc/",
    ] {
        base.push(entry(d, Directory, b"", ""));
    }
    base.push(entry("etc/os-release", Regular, b"ID=small\n", ""));
    base.push(entry("usr/share/man/old.1", Regular, b".TH OLD 1\n", ""));
    for p in 0..20 {
        base.push(entry(format!("usr/share/doc/pkg{p}/"), Directory, b"", ""));
        for f in 0..10 {
            // Sizes from a few bytes to about 40 KiB.
            let data: Vec<u8> = (0..(p * 2000 + f * 97)).map(|i| (i % 251) as u8).collect();
            base.push(entry(
                format!("usr/share/doc/pkg{p}/file{f}"),
                Regular,
                &data,
                "",
            ));
        }
    }
    base.push(entry("usr/bin/tool", Regular, &[7; 100_000], ""));
    base.push(entry("usr/bin/tool-link", Link, b"", "usr/bin/tool"));
    base.push(entry("usr/bin/alias", Symlink, b"", "tool"));

    let change = vec![
        entry("etc/", Directory, b"", ""),
        entry("etc/os-release", Regular, b"ID=small\nVERSION=2\n", ""),
        entry("etc/new.conf", Regular, &[1; 5000], ""),
    ];

    let mut deletions = Vec::new();
    for d in [
        "usr/",
        "usr/share/",
        "usr/share/doc/",
        "usr/share/doc/pkg3/",
    ] {
        deletions.push(entry(d, Directory, b"", ""));
    }
    deletions.push(entry("usr/share/doc/.wh.pkg4", Regular, b"", ""));
    deletions.push(entry("usr/share/doc/pkg3/.wh.file1", Regular, b"", ""));
    deletions.push(entry("usr/share/man/", Directory, b"", ""));
    deletions.push(entry("usr/share/man/.wh..wh..opq", Regular, b"", ""));
    deletions.push(entry("usr/share/man/README", Regular, b"replaced\n", ""));

    [base, change, deletions]
        .iter()
        .map(|entries| archive(entries))
        .collect()
}

/// Writes the small image into `dir` (once): layouts `small` (gzip) and
/// `small-zstd`, and their archives.
fn small(dir: &Path) -> Images {
    let images = Images {
        dir: dir.to_owned(),
        names: ["small".into(), "small-zstd".into()],
    };
    if images.archive("small-zstd").exists() {
        return images;
    }
    let layers = small_layers();
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    std::fs::create_dir_all(dir.join("archives")).unwrap();
    for (name, zstd) in [("small", false), ("small-zstd", true)] {
        let layout = Layout::new(&images.layout(name));
        let descs = layers
            .iter()
            .map(|l| {
                if zstd {
                    layout
                        .blob(&zstd::encode_all(&l[..], 3).unwrap())
                        .desc("application/vnd.oci.image.layer.v1.tar+zstd")
                } else {
                    layout
                        .blob(&gzip(l))
                        .desc("application/vnd.oci.image.layer.v1.tar+gzip")
                }
            })
            .collect();
        let config = layout.config(&diff_ids);
        let manifest = layout.manifest(&config, descs);
        layout.tag(&manifest, "latest");
        let mut archive = tar::Builder::new(std::fs::File::create(images.archive(name)).unwrap());
        archive.append_dir_all(".", &layout.dir).unwrap();
        archive.finish().unwrap();
    }
    images
}
