//! Platforms (`os/arch[/variant]`) and picking one manifest from an index.

use std::fmt;

use oci_spec::image as oci;

use crate::error::{OciError, Result};

/// An image platform as users write it: `linux/amd64`, `linux/arm64/v8`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// The operating system (`linux`).
    pub os: String,
    /// The CPU architecture in Go's names (`amd64`, `arm64`).
    pub architecture: String,
    /// The CPU variant (`v7`, `v8`), if one is asked for.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of this machine.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        };
        match parts[..] {
            [os, arch] if ok(&os) && ok(&arch) => Ok(Platform {
                os: os.to_owned(),
                architecture: arch.to_owned(),
                variant: None,
            }),
            [os, arch, variant] if ok(&os) && ok(&arch) && ok(&variant) => Ok(Platform {
                os: os.to_owned(),
                architecture: arch.to_owned(),
                variant: Some(variant.to_owned()),
            }),
            _ => Err(OciError::invalid(
                format!("platform {s:?}"),
                "expected OS/ARCH or OS/ARCH/VARIANT, for example linux/amd64",
            )),
        }
    }

    /// Whether an index entry's platform runs here (see
    /// [`Platform::accepts`]).
    pub fn matches(&self, p: &oci::Platform) -> bool {
        self.accepts(&Platform {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone(),
        })
    }

    /// Whether an image built for `built_for` runs here. A variant is
    /// compared only when one was asked for (arm64 without one counts as
    /// v8).
    pub fn accepts(&self, built_for: &Platform) -> bool {
        if built_for.os != self.os || built_for.architecture != self.architecture {
            return false;
        }
        match &self.variant {
            None => true,
            Some(want) => {
                let have = built_for
                    .variant
                    .as_deref()
                    .or(match self.architecture.as_str() {
                        "arm64" => Some("v8"),
                        _ => None,
                    });
                have == Some(want.as_str())
            }
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// How an index entry is shown in errors.
fn describe(d: &oci::Descriptor) -> String {
    match d.platform() {
        Some(p) => {
            let mut s = format!("{}/{}", p.os(), p.architecture());
            if let Some(v) = p.variant() {
                s.push('/');
                s.push_str(v);
            }
            s
        }
        None => format!("{} (no platform)", d.digest()),
    }
}

/// Picks the one entry of `entries` (an index's manifests, or what a
/// layout's tag names) for `platform`: the only entry, else the only one
/// whose platform matches. Several matches, or several entries without
/// platforms, are ambiguous. No entry for the platform is bad input, like
/// an ambiguous one: the image cannot be used here as it is.
pub(crate) fn pick<'a>(
    object: &str,
    entries: &'a [oci::Descriptor],
    platform: &Platform,
) -> Result<&'a oci::Descriptor> {
    match entries {
        [] => return Err(OciError::invalid(object, "lists no manifests")),
        [only] => {
            if let Some(p) = only.platform()
                && !platform.matches(p)
            {
                return Err(OciError::invalid(
                    object,
                    format!("has no manifest for {platform} (only {})", describe(only)),
                ));
            }
            return Ok(only);
        }
        _ => {}
    }
    let matching: Vec<&oci::Descriptor> = entries
        .iter()
        .filter(|d| d.platform().as_ref().is_some_and(|p| platform.matches(p)))
        .collect();
    match matching[..] {
        [one] => Ok(one),
        [] => {
            let have: Vec<String> = entries.iter().map(describe).collect();
            if entries.iter().all(|d| d.platform().is_none()) {
                Err(OciError::invalid(
                    object,
                    format!(
                        "is ambiguous: {} manifests and no platform or tag picks one ({})",
                        entries.len(),
                        have.join(", ")
                    ),
                ))
            } else {
                Err(OciError::invalid(
                    object,
                    format!("has no manifest for {platform} (has {})", have.join(", ")),
                ))
            }
        }
        _ => Err(OciError::invalid(
            object,
            format!(
                "is ambiguous: {} manifests match {platform} ({})",
                matching.len(),
                matching
                    .iter()
                    .map(|d| d.digest().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(os: &str, arch: &str, variant: Option<&str>, hex: char) -> oci::Descriptor {
        let mut p = oci::PlatformBuilder::default()
            .os(oci::Os::from(os))
            .architecture(oci::Arch::from(arch));
        if let Some(v) = variant {
            p = p.variant(v.to_owned());
        }
        let digest: oci::Digest = format!("sha256:{}", hex.to_string().repeat(64))
            .parse()
            .unwrap();
        let mut d = oci::Descriptor::new(oci::MediaType::ImageManifest, 10, digest);
        d.set_platform(Some(p.build().unwrap()));
        d
    }

    #[test]
    fn parses_and_prints() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert_eq!(Platform::parse("linux/amd64").unwrap().variant, None);
        for bad in ["", "linux", "linux/", "a/b/c/d", "linux/am d64"] {
            assert!(Platform::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Platform::host().os, "linux");
    }

    #[test]
    fn picks_by_platform() {
        let entries = vec![
            entry("linux", "amd64", None, 'a'),
            entry("linux", "arm64", Some("v8"), 'b'),
            entry("linux", "arm", Some("v7"), 'c'),
        ];
        let amd = Platform::parse("linux/amd64").unwrap();
        assert!(
            pick("x", &entries, &amd)
                .unwrap()
                .digest()
                .to_string()
                .ends_with('a')
        );
        let arm64 = Platform::parse("linux/arm64/v8").unwrap();
        assert!(
            pick("x", &entries, &arm64)
                .unwrap()
                .digest()
                .to_string()
                .ends_with('b')
        );
        let err = pick("x", &entries, &Platform::parse("linux/s390x").unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("no manifest for linux/s390x"),
            "{err}"
        );
        let twice = vec![entries[0].clone(), entry("linux", "amd64", None, 'd')];
        let err = pick("x", &twice, &amd).unwrap_err();
        assert!(err.to_string().contains("ambiguous"), "{err}");
    }
}
