//! Registries in a build without the `registry` feature: the entry points
//! a [`Location`](crate::Location) leads to are the same, and each refuses
//! the reference by name, saying what the build lacks.

use std::sync::Arc;

use strata_content::ContentStore;
use strata_leases::OpCtx;

use crate::error::{OciError, Result};
use crate::image::Image;
use crate::remote::{PushReport, RegistryOptions};
use crate::source::Source;

/// The error for `reference` (`HOST/REPO[:TAG|@DIGEST]`), naming it as
/// written in a location.
fn refused(reference: &str) -> OciError {
    OciError::NotBuilt {
        object: format!("registry reference docker://{reference}"),
        feature: "registry",
    }
}

/// Refuses the pull of `reference`: no registry client is built in.
pub(crate) async fn source(reference: &str, _: &RegistryOptions) -> Result<Arc<dyn Source>> {
    Err(refused(reference))
}

/// Refuses the push to `reference`: no registry client is built in.
pub async fn push(
    _: &OpCtx,
    _: &ContentStore,
    _: &Image,
    reference: &str,
    _: Option<&str>,
    _: &RegistryOptions,
) -> Result<PushReport> {
    Err(refused(reference))
}

#[cfg(test)]
mod tests {
    use strata_core::{Classify, ErrorKind};

    use crate::{Location, RegistryOptions};

    #[tokio::test]
    async fn a_registry_reference_is_refused_by_name() {
        let location = Location::parse("docker://registry.example/team/app:1").unwrap();
        let err = crate::open_source(&location, &RegistryOptions::default())
            .await
            .err()
            .expect("no registry client is built in");
        assert_eq!(
            err.to_string(),
            "registry reference docker://registry.example/team/app:1: this build of strata-oci lacks its `registry` feature"
        );
        assert_eq!(err.kind(), ErrorKind::Invalid);
    }
}
