//! Making an image of exported layers: an OCI config (`rootfs.diff_ids`,
//! history, platform) and manifest written to the content store.

use std::time::SystemTime;

use oci_spec::image as oci;
use strata_content::ContentStore;
use strata_core::{Algorithm, Descriptor, Digest, Labels, media};

use crate::error::{OciError, Result};
use crate::image::Image;
use crate::platform::Platform;
use crate::source::ingest_ref;

/// One layer's line of history.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// When the layer was made.
    pub created: Option<SystemTime>,
    /// What made it.
    pub created_by: String,
}

fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Stores `bytes` (a document) and describes it.
fn put(store: &ContentStore, media_type: &str, bytes: &[u8]) -> Result<Descriptor> {
    let digest = Digest::of_bytes(Algorithm::Sha256, bytes);
    let got = store.ingest(
        &ingest_ref(&digest),
        bytes,
        Some(bytes.len() as u64),
        Some(&digest),
        &Labels::new(),
    )?;
    Ok(Descriptor::new(media_type, got.digest, got.size))
}

/// Makes the image of `layers` (bottom first, each with its diffID in the
/// `containerd.io/uncompressed` annotation, blobs already in `store`):
/// config and manifest are written to `store` (acting for the caller's
/// operation, so they are held).
pub fn build_image(
    store: &ContentStore,
    reference: &str,
    layers: &[Descriptor],
    history: &[History],
    platform: &Platform,
) -> Result<Image> {
    let object = format!("image {reference}");
    let bad = |e: oci_spec::OciSpecError| OciError::invalid(&object, e.to_string());
    let diff_ids = layers
        .iter()
        .map(|l| Image::diff_id(l).map(|d| d.to_string()))
        .collect::<Result<Vec<_>>>()?;
    let rootfs = oci::RootFsBuilder::default()
        .typ("layers")
        .diff_ids(diff_ids)
        .build()
        .map_err(bad)?;
    let history = history
        .iter()
        .map(|h| {
            let mut b = oci::HistoryBuilder::default().created_by(h.created_by.clone());
            if let Some(t) = h.created {
                b = b.created(rfc3339(t));
            }
            b.build().map_err(bad)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut config = oci::ImageConfigurationBuilder::default()
        .os(oci::Os::from(platform.os.as_str()))
        .architecture(oci::Arch::from(platform.architecture.as_str()))
        .rootfs(rootfs)
        .history(history)
        .created(rfc3339(SystemTime::now()));
    if let Some(v) = &platform.variant {
        config = config.variant(v.clone());
    }
    let config = config.build().map_err(bad)?;
    let config_bytes = config.to_string().map_err(bad)?;
    let config_desc = put(store, media::OCI_CONFIG, config_bytes.as_bytes())?;

    let layer_descs = layers
        .iter()
        .map(|l| {
            let mut d = l.clone();
            d.annotations.remove(media::UNCOMPRESSED_LABEL);
            oci::Descriptor::from(&d)
        })
        .collect::<Vec<_>>();
    let manifest = oci::ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(oci::MediaType::ImageManifest)
        .config(oci::Descriptor::from(&config_desc))
        .layers(layer_descs)
        .build()
        .map_err(bad)?;
    let manifest_bytes = manifest.to_string().map_err(bad)?;
    let manifest_desc = put(store, media::OCI_MANIFEST, manifest_bytes.as_bytes())?;
    Ok(Image {
        reference: reference.to_owned(),
        manifest: manifest_desc,
        config: config_desc,
        layers: layers.to_vec(),
        nonlayers: Vec::new(),
    })
}
