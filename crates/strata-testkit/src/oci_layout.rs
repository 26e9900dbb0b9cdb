//! OCI image layouts for tests, written document by document so a test can
//! make them wrong on purpose: blobs under their digest (or any name),
//! manifests and configs from JSON values, an `index.json` of any shape.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use strata_core::{Algorithm, Digest};

/// A layout being written.
#[derive(Debug)]
pub struct Layout {
    /// Its directory.
    pub dir: PathBuf,
}

/// A blob written: its digest and size, and a descriptor of it.
#[derive(Clone, Debug)]
pub struct Blob {
    /// `sha256:HEX`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
}

impl Blob {
    /// A descriptor of this blob with `media_type`.
    pub fn desc(&self, media_type: &str) -> Value {
        json!({"mediaType": media_type, "digest": self.digest, "size": self.size})
    }
}

/// The sha256 digest of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    Digest::of_bytes(Algorithm::Sha256, bytes).to_string()
}

/// `data` gzip-compressed.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

impl Layout {
    /// An empty layout (its `oci-layout` file written) at `dir`.
    pub fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_owned(),
        }
    }

    /// Writes `bytes` as a blob under its digest.
    pub fn blob(&self, bytes: &[u8]) -> Blob {
        let digest = sha256(bytes);
        std::fs::write(self.blob_path(&digest), bytes).unwrap();
        Blob {
            digest,
            size: bytes.len() as u64,
        }
    }

    /// Writes `value` as a JSON blob.
    pub fn json(&self, value: &Value) -> Blob {
        self.blob(&serde_json::to_vec(value).unwrap())
    }

    /// Where blob `digest` lives.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
        self.dir.join("blobs/sha256").join(hex)
    }

    /// A config listing `diff_ids`, for linux/amd64.
    pub fn config(&self, diff_ids: &[String]) -> Blob {
        self.json(&json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
    }

    /// An OCI manifest of `config` and `layers` (descriptors).
    pub fn manifest(&self, config: &Blob, layers: Vec<Value>) -> Blob {
        self.json(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config.desc("application/vnd.oci.image.config.v1+json"),
            "layers": layers,
        }))
    }

    /// An image of gzip layers made of the plain tars `layers`: blobs,
    /// config and manifest; returns the manifest.
    pub fn image(&self, layers: &[Vec<u8>]) -> Blob {
        let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
        let descs = layers
            .iter()
            .map(|l| {
                self.blob(&gzip(l))
                    .desc("application/vnd.oci.image.layer.v1.tar+gzip")
            })
            .collect();
        let config = self.config(&diff_ids);
        self.manifest(&config, descs)
    }

    /// Writes `index.json` listing `manifests` (descriptors).
    pub fn index(&self, manifests: Vec<Value>) {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }

    /// Writes `index.json` naming one manifest under `tag`.
    pub fn tag(&self, manifest: &Blob, tag: &str) {
        let mut d = manifest.desc("application/vnd.oci.image.manifest.v1+json");
        d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        self.index(vec![d]);
    }
}
