//! The OCI and Docker media types Strata understands, the layer
//! compressions they name, and the label that carries a layer's diffID.

/// The label (and descriptor annotation) a compressed layer carries with
/// its diffID, the digest of its uncompressed tar stream (containerd's).
pub const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";

/// The descriptor annotation (and blob label) carrying the digest of an
/// eStargz layer's table of contents (the stargz snapshotter's).
pub const ESTARGZ_TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";

/// The descriptor annotation carrying the size of an eStargz layer's
/// uncompressed stream.
pub const ESTARGZ_UNCOMPRESSED_SIZE: &str = "io.containers.estargz.uncompressed-size";

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image manifest (schema 2).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Whether `media_type` is an image manifest (OCI or Docker).
pub fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

/// Whether `media_type` is an index of manifests (OCI or Docker).
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// Whether `media_type` is an image config (OCI or Docker).
pub fn is_config(media_type: &str) -> bool {
    media_type == OCI_CONFIG || media_type == DOCKER_CONFIG
}

/// How a layer's tar stream is compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    #[default]
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
    /// eStargz: gzip whose members start at every file's chunks, with a
    /// table of contents and a footer, so that one file can be read
    /// without the rest. Its media type is gzip's: a blob is known to be
    /// eStargz by its footer or the [`ESTARGZ_TOC_DIGEST`] annotation,
    /// never by [`Compression::detect`] or [`Compression::of_media_type`].
    EStargz,
}

/// Every layer media type Strata accepts, with its compression.
const LAYER_MEDIA_TYPES: &[(&str, Compression)] = &[
    ("application/vnd.oci.image.layer.v1.tar", Compression::None),
    (
        "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Gzip,
    ),
    (
        "application/vnd.oci.image.layer.v1.tar+zstd",
        Compression::Zstd,
    ),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        Compression::None,
    ),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        Compression::Gzip,
    ),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        Compression::Zstd,
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar",
        Compression::None,
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        Compression::Gzip,
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
        Compression::Zstd,
    ),
    (
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        Compression::Gzip,
    ),
];

impl Compression {
    /// From the magic bytes at the start of a layer.
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The compression a layer media type names; `None` for anything that
    /// is not one of the OCI or Docker layer media types.
    pub fn of_media_type(media_type: &str) -> Option<Compression> {
        LAYER_MEDIA_TYPES
            .iter()
            .find(|(m, _)| *m == media_type)
            .map(|&(_, c)| c)
    }

    /// The OCI layer media type of this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip | Compression::EStargz => {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            }
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// The name users type (`none`, `gzip`, `zstd`, `estargz`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::EStargz => "estargz",
        }
    }

    /// Whether a blob of compression `have` serves as this one: eStargz is
    /// also gzip, plain gzip is not eStargz.
    pub fn served_by(self, have: Compression) -> bool {
        self == have || (self == Compression::Gzip && have == Compression::EStargz)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_and_media_types() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Compression::Zstd
        );
        assert_eq!(Compression::detect(b"etc/"), Compression::None);
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            assert_eq!(Compression::of_media_type(c.media_type()), Some(c));
        }
        assert_eq!(
            Compression::of_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::of_media_type("text/plain"), None);
        assert_eq!(
            Compression::of_media_type(Compression::EStargz.media_type()),
            Some(Compression::Gzip)
        );
        assert!(Compression::Gzip.served_by(Compression::EStargz));
        assert!(!Compression::EStargz.served_by(Compression::Gzip));
        assert_eq!(Compression::of_media_type("application/x.evil+gzip"), None);
        assert!(is_manifest(DOCKER_MANIFEST) && is_index(OCI_INDEX) && is_config(OCI_CONFIG));
    }
}
