//! Layer compression: detected from the first bytes and cross-checked with
//! the media type when one is given.

use std::io::{self, BufRead, Read};

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
}

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

    /// What an OCI or Docker layer media type says, if it says.
    pub fn of_media_type(media_type: &str) -> Option<Compression> {
        if media_type.ends_with("+gzip")
            || media_type.ends_with(".gzip")
            || media_type.ends_with("tar.gzip")
        {
            Some(Compression::Gzip)
        } else if media_type.ends_with("+zstd") || media_type.ends_with(".zstd") {
            Some(Compression::Zstd)
        } else if media_type.ends_with(".tar")
            || media_type.ends_with("layer.v1.tar")
            || media_type.ends_with(".rootfs.diff.tar")
        {
            Some(Compression::None)
        } else {
            None
        }
    }

    /// The OCI layer media type of this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// The name users type (`none`, `gzip`, `zstd`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// A decoder of this compression over `input`.
    pub(crate) fn decoder<'a, R: BufRead + 'a>(self, input: R) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(input),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(input)?),
        })
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
        assert_eq!(
            Compression::of_media_type("application/vnd.oci.image.layer.v1.tar+gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::of_media_type("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            Compression::of_media_type("application/vnd.oci.image.layer.v1.tar"),
            Some(Compression::None)
        );
        assert_eq!(
            Compression::of_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::of_media_type("text/plain"), None);
    }
}
