//! overlayfs's private xattrs, named in one place: `trusted.overlay.*`, or
//! `user.overlay.*` when overlay runs with `userxattr`.

use std::ffi::OsStr;
use std::path::Path;

use strata_sys::errno::Errno;
use strata_sys::{Root, SysError};

/// The opaque marker's names, in either namespace.
const OPAQUE: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];
/// The redirect's names (`redirect_dir`), in either namespace.
const REDIRECT: [&str; 2] = ["trusted.overlay.redirect", "user.overlay.redirect"];

/// True for any of overlay's own attributes (never copied or exported).
pub(crate) fn is_private(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

/// True for the opaque marker.
pub(crate) fn is_opaque(name: &[u8]) -> bool {
    OPAQUE.iter().any(|n| n.as_bytes() == name)
}

/// The opaque marker to set.
pub(crate) fn opaque_name(userxattr: bool) -> &'static OsStr {
    OsStr::new(OPAQUE[usize::from(userxattr)])
}

/// Marks directory `path` of `root` opaque.
pub(crate) fn set_opaque(root: &Root, path: &Path, userxattr: bool) -> Result<(), SysError> {
    root.set_xattr(path, opaque_name(userxattr), b"y")
}

/// True when `path` of `root` carries the opaque marker (`y`).
pub(crate) fn opaque(root: &Root, path: &Path) -> Result<bool, SysError> {
    any_set(root, path, &OPAQUE, Some(b"y"))
}

/// True when `path` of `root` carries a redirect.
pub(crate) fn redirected(root: &Root, path: &Path) -> Result<bool, SysError> {
    any_set(root, path, &REDIRECT, None)
}

fn any_set(
    root: &Root,
    path: &Path,
    names: &[&str],
    want: Option<&[u8]>,
) -> Result<bool, SysError> {
    for name in names {
        match root.get_xattr(path, OsStr::new(name)) {
            Ok(Some(v)) if !v.is_empty() && want.is_none_or(|w| v == w) => return Ok(true),
            Ok(_) => {}
            // user.* cannot be read on some special files: nothing there.
            Err(e) if e.errno() == Some(Errno::PERM) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}
