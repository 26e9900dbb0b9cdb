//! A resolved image: its manifest, config and layers, every blob in the
//! content store; the limits that bound the documents describing it; and
//! reading those documents back from the store.

use std::io::{self, Read, Write};

use oci_spec::image as oci;
use serde::de::DeserializeOwned;
use strata_content::ContentStore;
use strata_core::{Descriptor, Digest, media};

use crate::error::{OciError, Result};

/// The largest manifest, index or config accepted (4 MiB).
pub const MAX_DOCUMENT_SIZE: u64 = 4 << 20;
/// The deepest nesting of indexes accepted.
pub const MAX_INDEX_DEPTH: usize = 8;

/// An image whose blobs are in the content store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The image's name, for descriptions and progress.
    pub reference: String,
    /// The manifest.
    pub manifest: Descriptor,
    /// The config.
    pub config: Descriptor,
    /// The layers, bottom first; each carries its diffID in the
    /// `containerd.io/uncompressed` annotation.
    pub layers: Vec<Descriptor>,
    /// Other blobs to keep with the image (the indexes that led to it).
    pub nonlayers: Vec<Descriptor>,
}

impl Image {
    /// Every blob of the image: manifest, config, layers and the rest.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        [&self.manifest, &self.config]
            .into_iter()
            .chain(&self.layers)
            .chain(&self.nonlayers)
    }

    /// Where a lazy pull stops fetching: the first layer that can be read
    /// before it is downloaded (eStargz: its descriptor names its table of
    /// contents), if any. That layer and every one above it are left to be
    /// fetched later; nothing can be unpacked over a layer not here.
    pub fn first_lazy_layer(&self) -> Option<usize> {
        self.layers
            .iter()
            .position(|l| l.annotations.contains_key(media::ESTARGZ_TOC_DIGEST))
    }

    /// The diffID of layer `desc`.
    pub fn diff_id(desc: &Descriptor) -> Result<Digest> {
        let v = desc
            .annotations
            .get(media::UNCOMPRESSED_LABEL)
            .ok_or_else(|| {
                OciError::invalid(
                    &desc.digest,
                    format!("layer has no {} annotation", media::UNCOMPRESSED_LABEL),
                )
            })?;
        Digest::parse(v)
            .map_err(|e| OciError::invalid(&desc.digest, format!("bad diffID {v:?}: {e}")))
    }
}

/// Refuses a document larger than [`MAX_DOCUMENT_SIZE`] before it is read.
pub(crate) fn check_document_size(what: &str, desc: &Descriptor) -> Result<()> {
    if desc.size > MAX_DOCUMENT_SIZE {
        return Err(OciError::invalid(
            format!("{what} {}", desc.digest),
            format!(
                "is {} bytes; documents over {MAX_DOCUMENT_SIZE} bytes are refused",
                desc.size
            ),
        ));
    }
    Ok(())
}

/// Reads the document `desc` (a config) from the store (it must be there)
/// and parses it.
pub(crate) fn read_document<T: DeserializeOwned>(
    store: &ContentStore,
    what: &str,
    desc: &Descriptor,
) -> Result<T> {
    check_document_size(what, desc)?;
    parse_document(&format!("{what} {}", desc.digest), &read_blob(store, desc)?)
}

/// Reads the manifest or index `desc` from the store (it must be there)
/// and parses it with [`parse_described`].
pub(crate) fn read_described<T: Described>(store: &ContentStore, desc: &Descriptor) -> Result<T> {
    check_document_size(T::KIND, desc)?;
    parse_described(
        &format!("{} {}", T::KIND, desc.digest),
        &read_blob(store, desc)?,
        &desc.media_type,
    )
}

/// The bytes of a small blob in the store.
pub(crate) fn read_blob(store: &ContentStore, desc: &Descriptor) -> Result<Vec<u8>> {
    let reader = store.reader_at(&desc.digest)?;
    let mut bytes =
        Vec::with_capacity(usize::try_from(desc.size.min(MAX_DOCUMENT_SIZE)).unwrap_or(0));
    let mut at = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = reader
            .read_at(&mut buf, at)
            .map_err(|e| OciError::io("read blob", &desc.digest, e))?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n]);
        at += n as u64;
        if at > MAX_DOCUMENT_SIZE {
            return Err(OciError::invalid(
                &desc.digest,
                format!("is over {MAX_DOCUMENT_SIZE} bytes"),
            ));
        }
    }
    Ok(bytes)
}

/// Parses JSON `bytes` of `object`, with the parser's words on failure.
pub(crate) fn parse_document<T: DeserializeOwned>(object: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| OciError::invalid(object, format!("is not valid: {e}")))
}

/// A manifest or an index: the two documents that must never be readable
/// as each other (CVE-2021-41190).
pub(crate) trait Described: DeserializeOwned {
    /// What it is, for messages.
    const KIND: &'static str;
    /// The fields only the other kind has.
    const FOREIGN: &'static [&'static str];
}

impl Described for oci::ImageManifest {
    const KIND: &'static str = "manifest";
    const FOREIGN: &'static [&'static str] = &["manifests"];
}

impl Described for oci::ImageIndex {
    const KIND: &'static str = "index";
    const FOREIGN: &'static [&'static str] = &["layers", "config"];
}

/// Parses manifest or index `bytes` of `object`, which `declared` (the
/// media type of the descriptor that pointed at it) says it is. One with a
/// field of the other kind (a manifest's `manifests`, an index's `layers`
/// or `config`) is ambiguous and refused, and so is one whose own
/// `mediaType` is not `declared`. Every manifest and index is read here.
pub(crate) fn parse_described<T: Described>(
    object: &str,
    bytes: &[u8],
    declared: &str,
) -> Result<T> {
    let fields: serde_json::Map<String, serde_json::Value> = parse_document(object, bytes)?;
    if let Some(field) = T::FOREIGN.iter().find(|f| fields.contains_key(**f)) {
        return Err(OciError::invalid(
            object,
            format!("is ambiguous: read as {} it has {field:?} as well", T::KIND),
        ));
    }
    if let Some(own) = fields.get("mediaType").and_then(serde_json::Value::as_str)
        && own != declared
    {
        return Err(OciError::invalid(
            object,
            format!("says its media type is {own:?}, not {declared:?}"),
        ));
    }
    parse_document(object, bytes)
}

/// Reads at most [`MAX_DOCUMENT_SIZE`] bytes of a file that is not
/// content-addressed (a layout's `index.json`, an archive's
/// `manifest.json`).
pub(crate) fn read_bounded(object: &str, reader: impl Read) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_DOCUMENT_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| OciError::io("read", object, e))?;
    if bytes.len() as u64 > MAX_DOCUMENT_SIZE {
        return Err(OciError::invalid(
            object,
            format!("is over {MAX_DOCUMENT_SIZE} bytes"),
        ));
    }
    Ok(bytes)
}

/// A blob of the store as a reader, checked for its full size at the end.
pub(crate) struct BlobReader {
    reader: strata_content::ReaderAt,
    at: u64,
    desc: Descriptor,
}

impl BlobReader {
    pub(crate) fn new(store: &ContentStore, desc: &Descriptor) -> Result<BlobReader> {
        Ok(BlobReader {
            reader: store.reader_at(&desc.digest)?,
            at: 0,
            desc: desc.clone(),
        })
    }

    pub(crate) fn finish(self) -> Result<()> {
        if self.at != self.desc.size {
            return Err(OciError::invalid(
                &self.desc.digest,
                format!(
                    "stored blob has {} bytes, its descriptor {}",
                    self.at, self.desc.size
                ),
            ));
        }
        Ok(())
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.reader.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// Copies blob `desc` from `store` into `w`, checked for its full size.
pub(crate) fn copy_blob(store: &ContentStore, desc: &Descriptor, w: &mut impl Write) -> Result<()> {
    let mut r = BlobReader::new(store, desc)?;
    io::copy(&mut r, w).map_err(|e| OciError::io("copy blob", &desc.digest, e))?;
    r.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use strata_core::{Classify, ErrorKind};

    fn parse<T: Described>(doc: &serde_json::Value, declared: &str) -> Result<T> {
        parse_described("doc sha256:x", &serde_json::to_vec(doc).unwrap(), declared)
    }

    /// What `parse_described` refuses, in its own words.
    #[track_caller]
    fn refused<T: Described + std::fmt::Debug>(doc: &serde_json::Value, declared: &str) -> String {
        let e = parse::<T>(doc, declared).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
        e.to_string()
    }

    #[test]
    fn manifests_and_indexes_are_never_each_other() {
        let config = json!({"mediaType": media::OCI_CONFIG, "digest": format!("sha256:{}", "a".repeat(64)), "size": 2});
        let manifest = json!({"schemaVersion": 2, "mediaType": media::OCI_MANIFEST, "config": config, "layers": []});
        let index = json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": []});
        parse::<oci::ImageManifest>(&manifest, media::OCI_MANIFEST).unwrap();
        parse::<oci::ImageIndex>(&index, media::OCI_INDEX).unwrap();
        // Without a media type of their own, only the descriptor's counts.
        let mut bare = manifest.clone();
        bare.as_object_mut().unwrap().remove("mediaType");
        parse::<oci::ImageManifest>(&bare, media::DOCKER_MANIFEST).unwrap();

        let mut both = manifest.clone();
        both["manifests"] = json!([]);
        assert_eq!(
            refused::<oci::ImageManifest>(&both, media::OCI_MANIFEST),
            r#"doc sha256:x: is ambiguous: read as manifest it has "manifests" as well"#
        );
        for field in ["layers", "config"] {
            let mut both = index.clone();
            both[field] = manifest[field].clone();
            assert_eq!(
                refused::<oci::ImageIndex>(&both, media::OCI_INDEX),
                format!("doc sha256:x: is ambiguous: read as index it has {field:?} as well")
            );
        }
        assert_eq!(
            refused::<oci::ImageManifest>(&manifest, media::DOCKER_MANIFEST),
            format!(
                "doc sha256:x: says its media type is {:?}, not {:?}",
                media::OCI_MANIFEST,
                media::DOCKER_MANIFEST
            )
        );
        assert!(
            refused::<oci::ImageIndex>(&index, media::DOCKER_MANIFEST_LIST)
                .contains("says its media type is")
        );
    }
}
