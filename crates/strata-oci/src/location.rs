//! Where images come from and go to, as users write it, with the
//! transport names skopeo, podman and buildah use: `oci:DIR[:TAG]`,
//! `oci-archive:FILE[:REF]`, `docker-archive:FILE[:NAME]` and
//! `docker://HOST/REPO[:TAG|@DIGEST]`.

use std::fmt;
use std::path::PathBuf;

use crate::error::{OciError, Result};

/// An image source or destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// An OCI image layout directory, and the tag
    /// (`org.opencontainers.image.ref.name`) picked in it.
    Layout {
        /// The directory.
        dir: PathBuf,
        /// The tag.
        tag: Option<String>,
    },
    /// A `docker save` tar (its manifest.json form or its OCI form), and
    /// the name (one of its `RepoTags`) picked in it.
    Archive {
        /// The tar file.
        file: PathBuf,
        /// The name.
        name: Option<String>,
    },
    /// An OCI image layout in a tar (what `skopeo copy ... oci-archive:`
    /// writes), and the reference (`org.opencontainers.image.ref.name`)
    /// picked in it.
    OciArchive {
        /// The tar file.
        file: PathBuf,
        /// The reference.
        reference: Option<String>,
    },
    /// An image in a registry.
    Registry {
        /// `HOST/REPO[:TAG|@DIGEST]`.
        reference: String,
    },
}

/// Splits `rest` into a path and an optional tag: the part after the last
/// `:` that follows the last `/` (a tag never contains `/`). Archive names
/// may (a repository), so archives split at the file that exists instead.
fn split_tag(rest: &str) -> (String, Option<String>) {
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    match rest[last_slash..].rfind(':') {
        Some(i) if i > 0 => {
            let at = last_slash + i;
            (rest[..at].to_owned(), Some(rest[at + 1..].to_owned()))
        }
        _ => (rest.to_owned(), None),
    }
}

/// Splits the rest of an archive location into the file and what follows
/// it (a name, which may itself hold `:` and `/`): the whole rest when it
/// names an existing file; else at the `:` after the longest prefix that
/// names an existing file; else (a file still to be written) at the first
/// `:`, as skopeo splits. A path holding `:` is read as one only when it
/// exists.
fn split_archive(rest: &str) -> (PathBuf, Option<String>) {
    let at = |i: usize| (rest[..i].into(), Some(rest[i + 1..].to_owned()));
    if std::path::Path::new(rest).exists() {
        return (rest.into(), None);
    }
    let colons: Vec<usize> = rest
        .match_indices(':')
        .map(|(i, _)| i)
        .filter(|&i| i > 0 && i + 1 < rest.len())
        .collect();
    if let Some(&i) = colons
        .iter()
        .rev()
        .find(|&&i| std::path::Path::new(&rest[..i]).is_file())
    {
        return at(i);
    }
    match colons.first() {
        Some(&i) => at(i),
        None => (rest.into(), None),
    }
}

impl Location {
    /// Parses a location.
    pub fn parse(s: &str) -> Result<Location> {
        let bad = |why: &str| OciError::invalid(format!("image location {s:?}"), why);
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = split_tag(rest);
            if dir.is_empty() {
                return Err(bad("oci: needs a directory"));
            }
            if tag.as_deref() == Some("") {
                return Err(bad("the tag after ':' is empty"));
            }
            Ok(Location::Layout {
                dir: dir.into(),
                tag,
            })
        } else if let Some(rest) = s.strip_prefix("oci-archive:") {
            if rest.is_empty() {
                return Err(bad("oci-archive: needs a file"));
            }
            let (file, reference) = split_archive(rest);
            Ok(Location::OciArchive { file, reference })
        } else if let Some(rest) = s.strip_prefix("docker-archive:") {
            if rest.is_empty() {
                return Err(bad("docker-archive: needs a file"));
            }
            let (file, name) = split_archive(rest);
            Ok(Location::Archive { file, name })
        } else if let Some(rest) = s.strip_prefix("docker://") {
            if rest.is_empty() || !rest.contains('/') {
                return Err(bad("docker:// needs HOST/REPO[:TAG|@DIGEST]"));
            }
            Ok(Location::Registry {
                reference: rest.to_owned(),
            })
        } else {
            Err(bad(
                "expected oci:DIR[:TAG], oci-archive:FILE[:REF], docker-archive:FILE[:NAME] or docker://HOST/REPO[:TAG|@DIGEST]",
            ))
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Layout { dir, tag } => {
                write!(f, "oci:{}", dir.display())?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                Ok(())
            }
            Location::Archive { file, name } => {
                write!(f, "docker-archive:{}", file.display())?;
                if let Some(n) = name {
                    write!(f, ":{n}")?;
                }
                Ok(())
            }
            Location::OciArchive { file, reference } => {
                write!(f, "oci-archive:{}", file.display())?;
                if let Some(r) = reference {
                    write!(f, ":{r}")?;
                }
                Ok(())
            }
            Location::Registry { reference } => write!(f, "docker://{reference}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(
            Location::parse("oci:/tmp/img:v1").unwrap(),
            Location::Layout {
                dir: "/tmp/img".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            Location::parse("oci:/tmp/a:b/img").unwrap(),
            Location::Layout {
                dir: "/tmp/a:b/img".into(),
                tag: None
            }
        );
        assert_eq!(
            Location::parse("docker://127.0.0.1:5000/x/y:latest").unwrap(),
            Location::Registry {
                reference: "127.0.0.1:5000/x/y:latest".into()
            }
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("img.tar");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(
            Location::parse(&format!("docker-archive:{}:app:v2", file.display())).unwrap(),
            Location::Archive {
                file: file.clone(),
                name: Some("app:v2".into())
            }
        );
        assert_eq!(
            Location::parse(&format!("docker-archive:{}", file.display())).unwrap(),
            Location::Archive {
                file: file.clone(),
                name: None
            }
        );
        // skopeo's name for an OCI layout in a tar; the reference may hold
        // ':' and '/'.
        let oci = Location::parse(&format!(
            "oci-archive:{}:example.com/app:v3",
            file.display()
        ))
        .unwrap();
        assert_eq!(
            oci,
            Location::OciArchive {
                file: file.clone(),
                reference: Some("example.com/app:v3".into())
            }
        );
        assert_eq!(
            oci.to_string(),
            format!("oci-archive:{}:example.com/app:v3", file.display())
        );
        assert_eq!(
            Location::parse(&format!("oci-archive:{}", file.display())).unwrap(),
            Location::OciArchive {
                file,
                reference: None
            }
        );
        // A file still to be written splits at the first ':', as skopeo's.
        let new = dir.path().join("new.tar");
        assert_eq!(
            Location::parse(&format!("docker-archive:{}:app:1.0", new.display())).unwrap(),
            Location::Archive {
                file: new.clone(),
                name: Some("app:1.0".into())
            }
        );
        assert_eq!(
            Location::parse(&format!("oci-archive:{}:example.com/app:1", new.display())).unwrap(),
            Location::OciArchive {
                file: new,
                reference: Some("example.com/app:1".into())
            }
        );
        for bad in [
            "",
            "oci:",
            "oci:/x:",
            "oci-archive:",
            "dir:/x",
            "docker://",
            "docker://host",
        ] {
            let e = Location::parse(bad).unwrap_err();
            assert!(e.to_string().contains("image location"), "{bad}: {e}");
        }
        assert_eq!(
            Location::parse("oci:/tmp/img:v1").unwrap().to_string(),
            "oci:/tmp/img:v1"
        );
    }
}
