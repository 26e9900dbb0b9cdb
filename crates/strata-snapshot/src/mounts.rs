//! Mount helpers: mount a list of [`Mount`]s on a temporary directory and
//! unmount on drop, and the read-only transformation of mounts.
//!
//! A [`LocalMount`] never removes a directory that may still be a mount
//! point: it unmounts, checks, and only then removes the now-empty directory.
//! After unmounting a `volatile` overlay it removes `<workdir>/work/incompat`,
//! which the kernel leaves behind and which would refuse the next mount.

use std::path::{Path, PathBuf};

use strata_core::Mount;
use strata_sys::mount as sysmount;

use crate::error::SnapshotError;

/// Options of [`LocalMount::mount`].
#[derive(Clone, Copy, Debug, Default)]
pub struct MountOptions {
    /// Mount even a single writable bind, instead of handing out its source
    /// directory as is.
    pub force_remount: bool,
    /// A short-lived mount (to read or diff a snapshot): `volatile` is
    /// stripped, because overlay refuses to reuse an upper directory that a
    /// volatile mount marked.
    pub temporary: bool,
}

/// Mounts made for local use; unmounted when dropped.
#[derive(Debug)]
pub struct LocalMount {
    path: PathBuf,
    target: Option<PathBuf>,
    incompat: Vec<PathBuf>,
}

fn is_volatile(m: &Mount) -> bool {
    m.layers.as_ref().is_some_and(|l| l.volatile)
}

impl LocalMount {
    /// Makes `mounts` available at a local path: a single writable bind
    /// mount is its source (unless `force_remount`); anything else is
    /// mounted on a new directory under `parent`.
    pub fn mount(
        mounts: &[Mount],
        parent: &Path,
        opts: MountOptions,
    ) -> Result<LocalMount, SnapshotError> {
        if let [single] = mounts
            && single.is_bind()
            && !single.is_read_only()
            && !opts.force_remount
        {
            return Ok(LocalMount {
                path: single.source.clone(),
                target: None,
                incompat: Vec::new(),
            });
        }
        let stripped;
        let mounts = if opts.temporary {
            stripped = without_volatile(mounts);
            stripped.as_slice()
        } else {
            mounts
        };
        let target = parent.join(format!("mount-{}", strata_core::id::new_id()));
        std::fs::create_dir(&target)
            .map_err(|e| SnapshotError::io("create mount point", &target, e))?;
        let incompat = mounts
            .iter()
            .filter(|m| is_volatile(m))
            .filter_map(|m| m.layers.as_ref().and_then(|l| l.work.as_ref()))
            .map(|w| w.join("work/incompat"))
            .collect();
        let mut guard = LocalMount {
            path: target.clone(),
            target: Some(target.clone()),
            incompat,
        };
        if let Err(e) = sysmount::mount_all(mounts, &target) {
            // Undo whatever part was mounted; the guard's drop cleans up.
            return Err(SnapshotError::from(e)).inspect_err(|_| guard.release_quietly());
        }
        Ok(guard)
    }

    /// Where the mounts can be reached.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts and removes the mount point.
    pub fn unmount(mut self) -> Result<(), SnapshotError> {
        self.release()
    }

    fn release(&mut self) -> Result<(), SnapshotError> {
        let Some(target) = self.target.take() else {
            return Ok(());
        };
        while sysmount::is_mount_point(&target)? {
            sysmount::unmount(&target)?;
        }
        std::fs::remove_dir(&target)
            .map_err(|e| SnapshotError::io("remove mount point", &target, e))?;
        for dir in self.incompat.drain(..) {
            remove_incompat(&dir)?;
        }
        Ok(())
    }

    fn release_quietly(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!(path = %self.path.display(), error = %e, "could not release a local mount");
        }
    }
}

fn remove_incompat(dir: &Path) -> Result<(), SnapshotError> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Ok(());
    };
    if parent.is_dir() {
        strata_sys::Root::open(parent)?.remove_all(Path::new(name))?;
    }
    Ok(())
}

impl Drop for LocalMount {
    fn drop(&mut self) {
        self.release_quietly();
    }
}

/// The read-only form of `mounts`: an overlay's upper directory becomes its
/// top lower directory and the work directory and `volatile` go; any other
/// mount gets `ro` instead of `rw`.
pub fn read_only(mounts: &[Mount]) -> Vec<Mount> {
    mounts
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if let Some(layers) = &mut m.layers {
                if let Some(upper) = layers.upper.take() {
                    layers.lowers.insert(0, upper);
                }
                layers.work = None;
                layers.volatile = false;
                m.options.retain(|o| o != "rw");
            } else {
                m.options.retain(|o| o != "rw");
                if !m.is_read_only() {
                    m.options.push("ro".into());
                }
            }
            m
        })
        .collect()
}

/// `mounts` without `volatile`, for temporary remounts of an upper directory
/// that a volatile mount may also use.
fn without_volatile(mounts: &[Mount]) -> Vec<Mount> {
    mounts
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if let Some(layers) = &mut m.layers {
                layers.volatile = false;
            }
            m
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(options: &[&str]) -> Mount {
        let flat: Vec<String> = options.iter().map(|s| s.to_string()).collect();
        Mount::from_flat("overlay", "overlay".into(), &flat)
    }

    #[test]
    fn read_only_overlay_moves_upper_to_top_lower() {
        let m = overlay(&[
            "workdir=/w",
            "upperdir=/u",
            "lowerdir=/a:/b",
            "index=off",
            "volatile",
        ]);
        assert_eq!(
            read_only(&[m])[0].flat_options(),
            ["lowerdir=/u:/a:/b", "index=off"]
        );
        let single = overlay(&["workdir=/w", "upperdir=/u"]);
        assert_eq!(read_only(&[single])[0].flat_options(), ["lowerdir=/u"]);
    }

    #[test]
    fn read_only_bind_gets_ro() {
        let ro = read_only(&[Mount::bind("/x".into(), false)]);
        assert_eq!(ro[0].options, ["rbind", "ro"]);
        assert!(ro[0].is_read_only());
    }

    #[test]
    fn volatile_is_stripped() {
        let m = overlay(&["volatile", "index=off"]);
        assert!(is_volatile(&m));
        let m = &without_volatile(&[m])[0];
        assert!(!is_volatile(m));
        assert_eq!(m.kernel_options(), ["index=off"]);
    }
}
