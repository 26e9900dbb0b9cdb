//! Overlays on kernels before 6.8 (Debian 12's 6.1, Ubuntu 22.04's 5.15,
//! RHEL 9's 5.14): no `lowerdir+`, and `fsconfig` takes at most 256 bytes a
//! value, so the layers go to `mount(2)` as one `lowerdir=a:b:...` in a
//! page of options. When absolute paths do not fit, the lower directories
//! are named by one-or-two-character symlinks in a directory next to the
//! target (`.NAME.lowers`, [`super::info::lower_links`]), and a helper
//! thread with a working directory of its own (`unshare(CLONE_FS)`) mounts
//! with those relative names (overlay resolves them once, at mount time).
//! The links stay while the overlay is mounted: mountinfo lists its lowers
//! by the short names, and the links are how [`super::info`] tells which
//! snapshots the mount keeps busy. [`super::unmount`] removes them. When
//! even short names do not fit, the error says how many layers and bytes
//! it would take.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use rustix::mount::{self as rm, MountFlags};
use strata_core::OverlayLayers;

use super::flag_of;
use crate::error::{SysError, SysResult};

/// The most option bytes `mount(2)` copies (one page, with its NUL).
const PAGE: usize = 4095;

/// Characters overlay's option parser would split or unescape.
fn plain(p: &Path) -> SysResult<&str> {
    let s = p.to_str().ok_or_else(|| SysError::InvalidPath {
        path: p.to_path_buf(),
        reason: "an overlay layer path is not UTF-8",
    })?;
    if s.contains([',', ':', '\\']) {
        return Err(SysError::InvalidPath {
            path: p.to_path_buf(),
            reason: "an overlay layer path holds ',', ':' or '\\\\'",
        });
    }
    Ok(s)
}

fn options_with(lowers: &[String], head: &[String]) -> String {
    let mut parts = head.to_vec();
    parts.insert(0, format!("lowerdir={}", lowers.join(":")));
    parts.join(",")
}

/// A short name for lower `i`: base 36, one or two characters for up to
/// 1,296 layers.
fn short_name(mut i: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[i % 36]);
        i /= 36;
        if i == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("base-36 digits are ASCII")
}

fn mount_data(target: &Path, flags: MountFlags, data: &str) -> SysResult<()> {
    let data = CString::new(data).map_err(|_| SysError::InvalidPath {
        path: target.to_path_buf(),
        reason: "overlay options contain a NUL byte",
    })?;
    rm::mount("overlay", target, "overlay", flags, Some(data.as_c_str()))
        .map_err(|e| SysError::io("mount overlay", target, e))?;
    tracing::debug!(
        "overlay mounted on {} with mount(2) and {} bytes of options (no lowerdir+)",
        target.display(),
        data.as_bytes().len()
    );
    Ok(())
}

/// Mounts an overlay of `layers` with `options` on `target` with
/// `mount(2)`.
pub(super) fn mount_overlay(
    layers: &OverlayLayers,
    options: &[String],
    target: &Path,
) -> SysResult<()> {
    let mut flags = MountFlags::empty();
    let mut head = Vec::new();
    for (key, dir) in [("upperdir", &layers.upper), ("workdir", &layers.work)] {
        if let Some(dir) = dir {
            head.push(format!("{key}={}", plain(dir)?));
        }
    }
    for o in options {
        match flag_of(o) {
            Some(f) => flags |= f,
            None if o == "rw" => {}
            None => head.push(o.clone()),
        }
    }
    let absolute: Vec<String> = layers
        .lowers
        .iter()
        .map(|l| plain(l).map(str::to_owned))
        .collect::<SysResult<_>>()?;
    let data = options_with(&absolute, &head);
    if data.len() <= PAGE {
        return mount_data(target, flags, &data);
    }
    let short: Vec<String> = (0..layers.lowers.len()).map(short_name).collect();
    let data = options_with(&short, &head);
    if data.len() > PAGE {
        return Err(SysError::io(
            "mount overlay",
            target,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{} lower directories need {} bytes of mount options, more than the {PAGE} a kernel before 6.8 accepts",
                    layers.lowers.len(),
                    data.len()
                ),
            ),
        ));
    }
    let farm = lowers_dir(target)?;
    let made = (|| {
        for (name, lower) in short.iter().zip(&layers.lowers) {
            std::os::unix::fs::symlink(lower, farm.join(name))
                .map_err(|e| SysError::io("link lower directory", farm.join(name), e))?;
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                // This thread ends right after the mount.
                crate::thread::own_working_directory(&farm, None)?;
                mount_data(target, flags, &data)
            })
            .join()
            .unwrap_or_else(|_| {
                Err(SysError::Refused {
                    op: "mount overlay",
                    path: target.to_path_buf(),
                    reason: "the mounting thread panicked",
                })
            })
        })
    })();
    if made.is_err() {
        remove_links(target);
    }
    made
}

/// A fresh directory for the lower-directory links of the overlay about to
/// be mounted on `target`; what an earlier mount there left (unmounted
/// without [`super::unmount`], or cut short) is cleared first.
fn lowers_dir(target: &Path) -> SysResult<PathBuf> {
    let dir = super::info::lower_links(target);
    // The links of an overlay still mounted there say what it uses.
    if super::is_mount_point(target)? {
        return Err(SysError::Refused {
            op: "mount overlay",
            path: target.to_path_buf(),
            reason: "something is mounted there already",
        });
    }
    remove_links(target);
    std::fs::create_dir(&dir).map_err(|e| SysError::io("create", &dir, e))?;
    Ok(dir)
}

/// Removes the lower-directory links kept beside `target`, if any (only
/// links and their directory: nothing they point to).
pub(super) fn remove_links(target: &Path) {
    let dir = super::info::lower_links(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let link = e.path();
        if e.file_type().is_ok_and(|t| t.is_symlink())
            && let Err(err) = std::fs::remove_file(&link)
        {
            tracing::debug!(link = %link.display(), error = %err, "removing a lower-directory link");
        }
    }
    if let Err(e) = std::fs::remove_dir(&dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove the lower-directory links");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_short_and_distinct() {
        let names: Vec<String> = (0..1296).map(short_name).collect();
        assert!(names.iter().all(|n| n.len() <= 2));
        let set: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(set.len(), names.len());
        assert_eq!(short_name(0), "0");
        assert_eq!(short_name(36), "10");
    }

    #[test]
    fn separators_in_paths_are_refused() {
        assert!(plain(Path::new("/a,b")).is_err());
        assert!(plain(Path::new("/a:b")).is_err());
        assert!(plain(Path::new("/a/b")).is_ok());
    }
}
