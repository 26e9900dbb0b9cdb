//! A content descriptor (media type, digest, size, annotations, URLs) whose
//! digest is already validated, with lossless conversions to and from the
//! `oci-spec` descriptor used at the OCI boundary (feature `oci`).

use std::collections::BTreeMap;

use crate::digest::Digest;

/// Describes a blob: what it is, its digest and its size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// The OCI media type.
    pub media_type: String,
    /// The validated digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Annotations, ordered by key.
    pub annotations: BTreeMap<String, String>,
    /// Alternative download locations.
    pub urls: Vec<String>,
}

impl Descriptor {
    /// A descriptor with no annotations or URLs.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            annotations: BTreeMap::new(),
            urls: Vec::new(),
        }
    }
}

#[cfg(feature = "oci")]
mod oci_conversions {
    use std::collections::HashMap;
    use std::str::FromStr;

    use oci_spec::image as oci;

    use super::Descriptor;
    use crate::digest::{Digest, DigestError};

    impl TryFrom<&oci::Descriptor> for Descriptor {
        type Error = DigestError;

        fn try_from(d: &oci::Descriptor) -> Result<Self, Self::Error> {
            Ok(Descriptor {
                media_type: d.media_type().to_string(),
                digest: Digest::parse(d.digest().as_ref())?,
                size: d.size(),
                annotations: d
                    .annotations()
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                urls: d.urls().clone().unwrap_or_default(),
            })
        }
    }

    impl From<&Descriptor> for oci::Descriptor {
        fn from(d: &Descriptor) -> Self {
            let digest = oci_spec::image::Digest::from_str(d.digest.as_str())
                .expect("a validated digest is a valid OCI digest");
            let mut out =
                oci::Descriptor::new(oci::MediaType::from(d.media_type.as_str()), d.size, digest);
            if !d.annotations.is_empty() {
                let annotations: HashMap<String, String> = d
                    .annotations
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                out.set_annotations(Some(annotations));
            }
            if !d.urls.is_empty() {
                out.set_urls(Some(d.urls.clone()));
            }
            out
        }
    }
}

#[cfg(all(test, feature = "oci"))]
mod tests {
    use oci_spec::image as oci;

    use super::*;
    use crate::digest::Algorithm;

    #[test]
    fn round_trips_through_oci_spec() {
        let mut d = Descriptor::new(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            Digest::of_bytes(Algorithm::Sha256, b"layer"),
            5,
        );
        d.annotations
            .insert("containerd.io/uncompressed".into(), "sha256:x".into());
        d.urls.push("https://example.invalid/blob".into());
        let theirs = oci::Descriptor::from(&d);
        assert_eq!(theirs.size(), 5);
        assert_eq!(theirs.media_type(), &oci::MediaType::ImageLayerGzip);
        assert_eq!(Descriptor::try_from(&theirs).unwrap(), d);
    }

    #[test]
    fn rejects_foreign_digest_it_cannot_use() {
        let json = r#"{"mediaType":"application/octet-stream","size":1,
            "digest":"sha256:ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789"}"#;
        if let Ok(theirs) = serde_json::from_str::<oci::Descriptor>(json) {
            assert!(Descriptor::try_from(&theirs).is_err());
        }
    }
}
