//! Lexical cleaning of relative paths taken from untrusted input (SECURITY.md
//! rule 3): names are bytes, a leading `/` is stripped, `.` and empty
//! components vanish, `..` pops a component and may never climb above the
//! root.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::error::{SysError, SysResult};

/// A cleaned path relative to a root: no empty, `.` or `..` components.
/// The empty path is the root itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(OsString);

impl RelPath {
    /// The root itself.
    pub fn root() -> Self {
        RelPath(OsString::new())
    }

    /// True for the root itself.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// As a `Path`.
    pub fn as_path(&self) -> &Path {
        Path::new(&self.0)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Splits into the parent and the final name; `None` for the root.
    pub fn split_last(&self) -> Option<(&OsStr, &OsStr)> {
        if self.is_root() {
            return None;
        }
        let bytes = self.0.as_bytes();
        Some(match bytes.iter().rposition(|&b| b == b'/') {
            Some(i) => (
                OsStr::from_bytes(&bytes[..i]),
                OsStr::from_bytes(&bytes[i + 1..]),
            ),
            None => (OsStr::new(""), self.0.as_os_str()),
        })
    }

    /// The path extended by one plain name.
    pub fn join(&self, name: &OsStr) -> SysResult<RelPath> {
        let mut joined = self.0.clone().into_vec();
        if !joined.is_empty() {
            joined.push(b'/');
        }
        joined.extend_from_slice(name.as_bytes());
        clean(Path::new(OsStr::from_bytes(&joined)))
    }
}

/// Cleans an untrusted relative (or absolute, re-rooted) path.
pub fn clean(path: &Path) -> SysResult<RelPath> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.contains(&0) {
        return Err(invalid(path, "contains a NUL byte"));
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for component in bytes.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    return Err(invalid(path, "climbs above the root with '..'"));
                }
            }
            name => parts.push(name),
        }
    }
    Ok(RelPath(OsString::from_vec(parts.join(&b'/'))))
}

fn invalid(path: &Path, reason: &'static str) -> SysError {
    SysError::InvalidPath {
        path: PathBuf::from(path),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning() {
        let c = |s: &str| clean(Path::new(s)).map(|p| p.as_path().to_path_buf());
        assert_eq!(c("a/b").unwrap(), Path::new("a/b"));
        assert_eq!(c("/a//./b/").unwrap(), Path::new("a/b"));
        assert_eq!(c("a/../b").unwrap(), Path::new("b"));
        assert_eq!(c("./").unwrap(), Path::new(""));
        assert!(c("..").is_err());
        assert!(c("a/../../b").is_err());
        assert!(c("/../etc").is_err());
        let non_utf8 = OsStr::from_bytes(b"a/\xff\xfe");
        assert_eq!(
            clean(Path::new(non_utf8)).unwrap().as_bytes(),
            b"a/\xff\xfe"
        );
    }

    #[test]
    fn split_last() {
        let p = clean(Path::new("a/b/c")).unwrap();
        assert_eq!(p.split_last(), Some((OsStr::new("a/b"), OsStr::new("c"))));
        let p = clean(Path::new("c")).unwrap();
        assert_eq!(p.split_last(), Some((OsStr::new(""), OsStr::new("c"))));
        assert_eq!(RelPath::root().split_last(), None);
    }
}
