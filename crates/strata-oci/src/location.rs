//! Where images come from and go to, as users write it:
//! `oci:DIR[:TAG]`, `docker-archive:FILE[:NAME]` and
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
        } else if let Some(rest) = s.strip_prefix("docker-archive:") {
            if rest.is_empty() {
                return Err(bad("docker-archive: needs a file"));
            }
            // The file is the whole rest unless a prefix of it ending
            // before a ':' names an existing file (then the rest is a name).
            let split = rest
                .match_indices(':')
                .map(|(i, _)| i)
                .find(|&i| std::path::Path::new(&rest[..i]).is_file() && i + 1 < rest.len());
            Ok(match split {
                Some(i) if !std::path::Path::new(rest).exists() => Location::Archive {
                    file: rest[..i].into(),
                    name: Some(rest[i + 1..].to_owned()),
                },
                _ => Location::Archive {
                    file: rest.into(),
                    name: None,
                },
            })
        } else if let Some(rest) = s.strip_prefix("docker://") {
            if rest.is_empty() || !rest.contains('/') {
                return Err(bad("docker:// needs HOST/REPO[:TAG|@DIGEST]"));
            }
            Ok(Location::Registry {
                reference: rest.to_owned(),
            })
        } else {
            Err(bad(
                "expected oci:DIR[:TAG], docker-archive:FILE or docker://HOST/REPO[:TAG|@DIGEST]",
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
            Location::Archive { file, name: None }
        );
        for bad in [
            "",
            "oci:",
            "oci:/x:",
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
