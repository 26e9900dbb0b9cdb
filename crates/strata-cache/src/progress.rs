//! The short display names of image references (the tracker of progress
//! lives with the operation context, in strata-leases).

/// A short name of an image reference for people: the digest dropped, the
/// tag kept, Docker Hub's `docker.io/` and `library/` left out. Anything
/// that is not a reference comes back unchanged.
pub fn display_ref(reference: &str) -> String {
    let valid = !reference.is_empty()
        && reference.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_uppercase()
                || b.is_ascii_digit()
                || b"._-/:@+".contains(&b)
        });
    if !valid {
        return reference.to_owned();
    }
    let name = reference.split('@').next().unwrap_or(reference);
    let name = name.strip_prefix("docker.io/").unwrap_or(name);
    let name = name.strip_prefix("index.docker.io/").unwrap_or(name);
    let name = match name.split_once('/') {
        Some(("library", rest)) if !rest.contains('/') => rest,
        _ => name,
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_refs() {
        for (input, want) in [
            ("docker.io/library/nginx:latest@sha256:0123", "nginx:latest"),
            ("docker.io/library/nginx@sha256:0123", "nginx"),
            (
                "ghcr.io/dagger/engine:v0.18.6",
                "ghcr.io/dagger/engine:v0.18.6",
            ),
            ("nginx", "nginx"),
            ("not a ref", "not a ref"),
            ("docker.io/someone/tool:1", "someone/tool:1"),
        ] {
            assert_eq!(display_ref(input), want, "{input}");
        }
    }
}
