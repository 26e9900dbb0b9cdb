//! OCI images for Strata: image layouts, docker archives and registries
//! into and out of the content store.
//!
//! - [`pull`] resolves what a [`Source`] names (a layout, an archive, a
//!   registry) to one [`Image`] for a [`Platform`], fetching and verifying
//!   every blob into the content store; the cache manager then unpacks its
//!   layers.
//! - [`build_image`] makes the config and manifest of exported layers;
//!   [`write_layout`], [`write_archive`], [`write_oci_archive`] and
//!   [`push`] write an image out.
//! - Every document is read and written with `oci-spec`; manifests,
//!   indexes and configs over [`MAX_DOCUMENT_SIZE`] are refused before
//!   they are read, indexes nest at most [`MAX_INDEX_DEPTH`] deep, and a
//!   digest is validated before it names a path.
//!
//! Registries (`oci-client`, with reqwest and rustls under it) are the
//! default feature `registry`. Without it, layouts and archives work as
//! ever, the registry types are absent, and a [`Location::Registry`] given
//! to [`open_source`] or [`push`] fails at run time with
//! [`OciError::NotBuilt`] naming the reference.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod archive;
#[cfg(feature = "registry")]
mod auth;
#[cfg(feature = "registry")]
mod bearer;
mod build;
mod error;
mod image;
mod layout;
mod location;
mod platform;
#[cfg(feature = "registry")]
mod registry;
// The same entry points, refusing every registry reference by name.
#[cfg(not(feature = "registry"))]
#[path = "no_registry.rs"]
mod registry;
mod remote;
mod source;

use std::sync::Arc;

pub use archive::{write_archive, write_oci_archive};
#[cfg(feature = "registry")]
pub use auth::{Credentials, credentials};
pub use build::{History, build_image};
pub use error::{OciError, Result};
pub use image::{Image, MAX_DOCUMENT_SIZE, MAX_INDEX_DEPTH};
pub use layout::{REF_NAME, blob_path as layout_blob_path, write_layout};
pub use location::Location;
#[cfg(feature = "registry")]
pub use oci_client::RegistryOperation;
pub use platform::Platform;
pub use registry::push;
#[cfg(feature = "registry")]
pub use registry::{DISTRIBUTION_SOURCE_LABEL, Registry};
pub use remote::{PushReport, RegistryOptions, docker_config_dir};
pub use source::{
    IMAGE_NAME_ANNOTATION, PullOptions, Pulled, Roots, Source, fetch_blobs, image_of_manifest, pull,
};

/// The source of images at `location`.
pub async fn open_source(
    location: &Location,
    registry: &RegistryOptions,
) -> Result<Arc<dyn Source>> {
    Ok(match location {
        Location::Layout { dir, tag } => {
            if !dir.is_dir() {
                return Err(OciError::NotFound {
                    object: format!("layout {}", dir.display()),
                    reason: "is not a directory".into(),
                });
            }
            Arc::new(layout::LayoutSource {
                files: Arc::new(layout::DirFiles { dir: dir.clone() }),
                tag: tag.clone(),
            })
        }
        Location::Archive { file, name } => archive::archive_source(file, name.as_deref())?,
        Location::OciArchive { file, reference } => {
            archive::oci_archive_source(file, reference.as_deref())?
        }
        Location::Registry { reference } => registry::source(reference, registry).await?,
    })
}

// The README's examples compile and run as doc tests, so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
