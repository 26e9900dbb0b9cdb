//! Mounting and unmounting [`Mount`] values.
//!
//! Binds use `mount(2)` followed by a read-only remount where asked (the
//! kernel ignores `MS_RDONLY` on the first bind call). Overlays use the new
//! mount API: `fsopen("overlay")`, one `fsconfig` per option and one
//! `lowerdir+` per layer, `fsmount` and `move_mount`, so the page-sized limit
//! of `mount(2)`'s option string never caps the depth of a chain. Kernels
//! without `lowerdir+` (before 6.8) get a single `lowerdir` option instead.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use rustix::io::Errno;
use rustix::mount::{
    self as rm, FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags,
};
use strata_core::{Mount, MountKind, OverlayLayers};

use crate::error::{SysError, SysResult};

pub mod info;
mod legacy;

/// Mounts every mount in order on `target` (each at its own sub-target).
pub fn mount_all(mounts: &[Mount], target: &Path) -> SysResult<()> {
    for m in mounts {
        let at = target.join(&m.target);
        mount(m, &at)?;
    }
    Ok(())
}

/// Mounts one [`Mount`] on `target`.
pub fn mount(m: &Mount, target: &Path) -> SysResult<()> {
    match m.kind {
        MountKind::Bind => mount_bind(m, target),
        MountKind::Overlay => mount_overlay(m, target),
        MountKind::Other(_) => mount_other(m, target),
    }
}

fn flag_of(option: &str) -> Option<MountFlags> {
    Some(match option {
        "ro" => MountFlags::RDONLY,
        "nosuid" => MountFlags::NOSUID,
        "nodev" => MountFlags::NODEV,
        "noexec" => MountFlags::NOEXEC,
        "noatime" => MountFlags::NOATIME,
        "relatime" => MountFlags::RELATIME,
        _ => return None,
    })
}

fn mount_bind(m: &Mount, target: &Path) -> SysResult<()> {
    let recursive = m.options.iter().any(|o| o == "rbind");
    if recursive {
        rm::mount_bind_recursive(&m.source, target)
    } else {
        rm::mount_bind(&m.source, target)
    }
    .map_err(|e| SysError::io("bind mount", target, e))?;
    let flags = m
        .options
        .iter()
        .filter_map(|o| flag_of(o))
        .fold(MountFlags::empty(), |a, b| a | b);
    if !flags.is_empty() {
        // Binding ignores flags; they take effect on a remount of the bind.
        if let Err(e) = rm::mount_remount(target, MountFlags::BIND | flags, "") {
            let err = SysError::io("remount bind", target, e);
            if let Err(undo) = unmount(target) {
                tracing::warn!(target = %target.display(), error = %undo, "undoing a failed bind mount");
            }
            return Err(err);
        }
    }
    Ok(())
}

fn mount_other(m: &Mount, target: &Path) -> SysResult<()> {
    let mut flags = MountFlags::empty();
    let mut data = Vec::new();
    for o in &m.options {
        match flag_of(o) {
            Some(f) => flags |= f,
            None => data.push(o.as_str()),
        }
    }
    let data = CString::new(data.join(",")).map_err(|_| SysError::InvalidPath {
        path: target.to_path_buf(),
        reason: "mount options contain a NUL byte",
    })?;
    rm::mount(
        &m.source,
        target,
        m.kind.name(),
        flags,
        Some(data.as_c_str()),
    )
    .map_err(|e| SysError::io("mount", target, e))
}

/// An overlay's plain options: flags that become mount attributes, the
/// rest handed to the file system.
fn overlay_options(options: &[String]) -> (Vec<(&str, Option<&str>)>, MountAttrFlags) {
    let mut rest = Vec::new();
    let mut attrs = MountAttrFlags::empty();
    for o in options {
        match o.split_once('=') {
            Some((k, v)) => rest.push((k, Some(v))),
            None => match o.as_str() {
                "ro" => attrs |= MountAttrFlags::MOUNT_ATTR_RDONLY,
                "nosuid" => attrs |= MountAttrFlags::MOUNT_ATTR_NOSUID,
                "nodev" => attrs |= MountAttrFlags::MOUNT_ATTR_NODEV,
                "noexec" => attrs |= MountAttrFlags::MOUNT_ATTR_NOEXEC,
                "rw" => {}
                flag => rest.push((flag, None)),
            },
        }
    }
    (rest, attrs)
}

fn path_str<'a>(p: &'a Path, target: &Path) -> SysResult<&'a str> {
    p.to_str().ok_or_else(|| SysError::InvalidPath {
        path: target.to_path_buf(),
        reason: "an overlay layer path is not UTF-8",
    })
}

/// How overlays are mounted: one `lowerdir+` per layer through the new
/// mount API (Linux 6.8 and newer), or, on older kernels, `mount(2)` with
/// the joined `lowerdir=` in one page of options.
static LEGACY_OVERLAY: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const APPEND: u8 = 1;
const LEGACY: u8 = 2;

/// Mounts overlays the way kernels before 6.8 need from now on, whatever
/// this kernel supports (tests run the legacy path on new kernels).
pub fn force_legacy_overlay() {
    LEGACY_OVERLAY.store(LEGACY, Ordering::Release);
}

/// True when overlays are mounted the legacy way (detected at the first
/// overlay mount, or forced).
pub fn legacy_overlay() -> bool {
    LEGACY_OVERLAY.load(Ordering::Acquire) == LEGACY
}

fn mount_overlay(m: &Mount, target: &Path) -> SysResult<()> {
    let flat;
    let m = match &m.layers {
        Some(_) => m,
        None => {
            // Options in containerd's flat form: read the layers out once.
            flat = Mount::from_flat(m.kind.name(), m.source.clone(), &m.options);
            &flat
        }
    };
    let layers = m.layers.clone().unwrap_or_default();
    let options = m.kernel_options();
    if LEGACY_OVERLAY.load(Ordering::Acquire) == UNKNOWN
        && let Some(release) = release_before(6, 8)
    {
        // No probe on a kernel that says it is older: every new process
        // would otherwise leave one "unrecognized mount option" line in the
        // kernel log. A backport of lowerdir+ costs nothing here, the legacy
        // path works on every kernel.
        tracing::info!(
            "kernel {release} is older than 6.8, which brought overlay lowerdir+: mounting overlays with mount(2)"
        );
        LEGACY_OVERLAY.store(LEGACY, Ordering::Release);
    }
    if legacy_overlay() {
        return legacy::mount_overlay(&layers, &options, target);
    }
    match mount_overlay_append(&layers, &options, target)? {
        true => Ok(()),
        false => {
            tracing::info!(
                "this kernel has no overlay lowerdir+ (before 6.8): mounting overlays with mount(2)"
            );
            LEGACY_OVERLAY.store(LEGACY, Ordering::Release);
            legacy::mount_overlay(&layers, &options, target)
        }
    }
}

/// The running kernel's release when it is older than `major.minor`
/// (`None` when newer or unreadable, so the mount API probe decides).
fn release_before(major: u32, minor: u32) -> Option<String> {
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    older_than(&release, major, minor).then_some(release)
}

/// Whether a kernel release string ("6.1.0-57-cloud-amd64") names a
/// version before `major.minor`; false when it cannot be read.
fn older_than(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    match (parts.next(), parts.next()) {
        (Some(Ok(have_major)), Some(Ok(have_minor))) => (have_major, have_minor) < (major, minor),
        _ => false,
    }
}

/// The new mount API with one `lowerdir+` per layer; `Ok(false)` when the
/// kernel does not know `lowerdir+`.
fn mount_overlay_append(
    layers: &OverlayLayers,
    options: &[String],
    target: &Path,
) -> SysResult<bool> {
    let (rest, attrs) = overlay_options(options);
    let fs = rm::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| SysError::io("fsopen overlay", target, e))?;
    let fail = |what: &'static str, e: Errno| overlay_error(&fs, what, target, e);
    for (key, dir) in [("workdir", &layers.work), ("upperdir", &layers.upper)] {
        if let Some(dir) = dir {
            rm::fsconfig_set_string(&fs, key, path_str(dir, target)?)
                .map_err(|e| fail("configure overlay", e))?;
        }
    }
    for (key, value) in &rest {
        match value {
            Some(v) => rm::fsconfig_set_string(&fs, *key, *v),
            None => rm::fsconfig_set_flag(&fs, *key),
        }
        .map_err(|e| fail("configure overlay", e))?;
    }
    for (i, dir) in layers.lowers.iter().enumerate() {
        match rm::fsconfig_set_string(&fs, "lowerdir+", path_str(dir, target)?) {
            Ok(()) => {}
            Err(Errno::INVAL) if i == 0 && LEGACY_OVERLAY.load(Ordering::Acquire) == UNKNOWN => {
                return Ok(false);
            }
            Err(e) => return Err(fail("set overlay lowerdir+", e)),
        }
    }
    match rm::fsconfig_create(&fs) {
        Ok(()) => {}
        // Before 6.5 overlay had no mount-API context of its own: the
        // options go through the legacy context, which accepts any string
        // and refuses `lowerdir+` only here (Debian 12's 6.1, 5.15).
        Err(Errno::INVAL) if LEGACY_OVERLAY.load(Ordering::Acquire) == UNKNOWN => {
            return Ok(false);
        }
        Err(e) => return Err(fail("create overlay", e)),
    }
    LEGACY_OVERLAY
        .compare_exchange(UNKNOWN, APPEND, Ordering::AcqRel, Ordering::Acquire)
        .ok();
    let mnt = rm::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)
        .map_err(|e| fail("fsmount overlay", e))?;
    rm::move_mount(
        mnt.as_fd(),
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| SysError::io("move overlay mount", target, e))?;
    Ok(true)
}

/// Turns an fsconfig failure into an error carrying the kernel's own message,
/// which it queues on the file-system context fd.
fn overlay_error(fs: &OwnedFd, op: &'static str, target: &Path, e: Errno) -> SysError {
    let mut buf = [0u8; 512];
    let mut messages = Vec::new();
    while let Ok(n) = rustix::io::read(fs, &mut buf) {
        if n == 0 {
            break;
        }
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let source = if messages.is_empty() {
        std::io::Error::from(e)
    } else {
        std::io::Error::new(
            std::io::Error::from(e).kind(),
            format!("{e}: {}", messages.join("; ")),
        )
    };
    SysError::io(op, target, source)
}

/// Unmounts `target`, retrying a few times while it is busy, then removes
/// the lower-directory links the legacy overlay path kept beside it.
pub fn unmount(target: &Path) -> SysResult<()> {
    const ATTEMPTS: u32 = 50;
    let mut attempt = 0;
    loop {
        match rm::unmount(target, UnmountFlags::NOFOLLOW) {
            Ok(()) => {
                legacy::remove_links(target);
                return Ok(());
            }
            Err(Errno::BUSY) if attempt + 1 < ATTEMPTS => {
                attempt += 1;
                // A process may still be leaving the mount; the kernel offers
                // no event to wait on, so back off briefly.
                std::thread::sleep(Duration::from_millis(10 * u64::from(attempt.min(10))));
            }
            Err(e) => return Err(SysError::io("unmount", target, e)),
        }
    }
}

/// Detaches every mount at or below `dir` (deepest first), as listed in
/// `/proc/self/mountinfo`: what a killed process left mounted in a
/// directory that only it used. Returns how many were detached.
pub fn detach_below(dir: &Path) -> SysResult<usize> {
    let mut targets: Vec<PathBuf> = info::mounts()?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|t| t.starts_with(dir))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.components().count()));
    targets.dedup();
    let mut detached = 0;
    for t in &targets {
        match rm::unmount(t, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW) {
            Ok(()) => detached += 1,
            // Stacked mounts: an earlier detach took this one too.
            Err(Errno::INVAL | Errno::NOENT) => {}
            Err(e) => return Err(SysError::io("detach", t, e)),
        }
    }
    Ok(detached)
}

/// True when `path` is the root of a mount.
pub fn is_mount_point(path: &Path) -> SysResult<bool> {
    let st = rustix::fs::statx(
        rustix::fs::CWD,
        path,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        rustix::fs::StatxFlags::TYPE,
    )
    .map_err(|e| SysError::io("stat", path, e))?;
    let attr = rustix::fs::StatxAttributes::MOUNT_ROOT;
    Ok(st.stx_attributes_mask.contains(attr) && st.stx_attributes.contains(attr))
}

/// What is mounted on a directory, for one that a server's file system
/// (FUSE) may be mounted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountPoint {
    /// Nothing: it is an ordinary directory.
    No,
    /// A file system that answers.
    Live,
    /// A FUSE file system whose server has gone: every call on it fails
    /// with ENOTCONN, until it is detached.
    Dead,
}

/// Whether `path` is the root of a mount, and whether that mount answers.
pub fn mount_point(path: &Path) -> SysResult<MountPoint> {
    match is_mount_point(path) {
        Ok(true) => Ok(MountPoint::Live),
        Ok(false) => Ok(MountPoint::No),
        Err(SysError::Io { source, .. })
            if source.raw_os_error() == Some(Errno::NOTCONN.raw_os_error()) =>
        {
            Ok(MountPoint::Dead)
        }
        Err(e) => Err(e),
    }
}

/// Detaches the mount on `target` (lazily: what still uses it keeps it
/// until done); nothing mounted there is not an error.
pub fn detach(target: &Path) -> SysResult<()> {
    match rm::unmount(target, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW) {
        Ok(()) | Err(Errno::INVAL) => Ok(()),
        Err(e) => Err(SysError::io("detach", target, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_compare() {
        assert!(older_than("6.1.0-57-cloud-amd64", 6, 8));
        assert!(older_than("5.15.0-91-generic", 6, 8));
        assert!(!older_than("6.8.0", 6, 8));
        assert!(!older_than("6.18.2-arch1", 6, 8));
        assert!(!older_than("7.0", 6, 8));
        assert!(
            !older_than("weird", 6, 8),
            "unreadable: let the probe decide"
        );
    }

    #[test]
    fn overlay_options_split() {
        let opts: Vec<String> = ["index=off", "ro", "userxattr", "rw"]
            .map(String::from)
            .into();
        let (rest, attrs) = overlay_options(&opts);
        assert_eq!(rest, [("index", Some("off")), ("userxattr", None)]);
        assert!(attrs.contains(MountAttrFlags::MOUNT_ATTR_RDONLY));
    }
}
