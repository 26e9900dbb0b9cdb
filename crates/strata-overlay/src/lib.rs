//! The kernel overlayfs backend: a snapshot's own directory is its upper
//! layer (`fs`, plus `work` for active snapshots); a chain mounts as one
//! overlay whose lower directories are the ancestors' `fs`, nearest first.
//!
//! Mount shapes (containerd's): no parent → a bind of `fs` (read-only for a
//! view); a view of one parent → a read-only bind of the parent's `fs`;
//! otherwise an overlay. `index=off` is added when the kernel has the
//! parameter and the configuration does not set `index`; `userxattr` is
//! added inside a user namespace; `redirect_dir`, `metacopy` and `volatile`
//! only when configured.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::path::{Path, PathBuf};

use strata_core::{Mount, OverlayLayers};
use strata_snapshot::{Backend, Capabilities, Kind, SnapshotError, create_dir};
use strata_sys::Root;

// The configuration lives in strata-snapshot so that a choice of backend
// can carry it without this crate; it is this backend's all the same.
pub use strata_snapshot::OverlayConfig;

/// The overlay backend.
#[derive(Debug)]
pub struct Overlay {
    /// Options for every overlay mount, but the typed ones below.
    options: Vec<String>,
    /// Private attributes as `user.overlay.*` (one source for the mounts
    /// and the capabilities).
    userxattr: bool,
    /// Unsynced upper directories (writable mounts only).
    volatile: bool,
}

/// Whether this process runs in the initial user namespace.
fn in_initial_user_namespace() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"],
        Err(_) => true,
    }
}

/// Refuses a backing file system that does not report entry types in
/// directory listings (XFS with `ftype=0`): overlay cannot work there.
fn check_d_type(root: &Path) -> Result<(), SnapshotError> {
    let probe = tempfile_dir(root)?;
    let result = (|| {
        let dir = Root::open(&probe)?;
        dir.mkdir(Path::new("d"), 0o700)?;
        let entries = dir.read_dir(Path::new(""))?;
        if entries.iter().any(|(_, kind)| kind.is_none()) {
            return Err(SnapshotError::Invalid(format!(
                "{} does not report file types in directory entries (d_type); overlayfs cannot use it",
                root.display()
            )));
        }
        Ok(())
    })();
    Root::open(root)?.remove_all(probe.strip_prefix(root).unwrap_or(&probe))?;
    result
}

fn tempfile_dir(root: &Path) -> Result<PathBuf, SnapshotError> {
    let p = root.join(format!("d_type-probe-{}", strata_core::id::new_id()));
    std::fs::create_dir(&p).map_err(|e| SnapshotError::Io {
        op: "create",
        path: p.clone(),
        source: e,
    })?;
    Ok(p)
}

impl Overlay {
    /// The backend for snapshots under `root` (the state root's
    /// `snapshots/` directory must be on the file system checked here).
    pub fn new(root: &Path, config: OverlayConfig) -> Result<Overlay, SnapshotError> {
        std::fs::create_dir_all(root).map_err(|e| SnapshotError::Io {
            op: "create",
            path: root.to_path_buf(),
            source: e,
        })?;
        check_d_type(root)?;
        let mut options = config.mount_options;
        let sets_index = options.iter().any(|o| o.starts_with("index="));
        if !sets_index && Path::new("/sys/module/overlay/parameters/index").exists() {
            // Last, because the kernel takes the last value of an option.
            options.push("index=off".into());
        }
        // The options the data plane must know travel typed, not as
        // strings in the list.
        let mut typed = |name: &str| {
            let had = options.iter().any(|o| o == name);
            options.retain(|o| o != name);
            had
        };
        let userxattr = typed("userxattr") || !in_initial_user_namespace();
        let volatile = typed("volatile");
        Ok(Overlay {
            options,
            userxattr,
            volatile,
        })
    }

    /// The generic options added to every overlay mount (`userxattr` and
    /// `volatile` travel typed in the mounts' [`OverlayLayers`]).
    pub fn options(&self) -> &[String] {
        &self.options
    }
}

impl Backend for Overlay {
    fn name(&self) -> &'static str {
        "overlay"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with_overlay_layers(true)
            .with_cross_snapshot_links(true)
            .with_userxattr(self.userxattr)
    }

    fn create(&self, dir: &Path, kind: Kind, _parents: &[PathBuf]) -> Result<(), SnapshotError> {
        create_dir(&dir.join("fs"), 0o755)?;
        if kind == Kind::Active {
            create_dir(&dir.join("work"), 0o711)?;
        }
        Ok(())
    }

    fn mounts(&self, dir: &Path, kind: Kind, parents: &[PathBuf]) -> Vec<Mount> {
        let read_only = kind != Kind::Active;
        match parents {
            [] => vec![Mount::bind(dir.join("fs"), read_only)],
            [parent] if read_only => vec![Mount::bind(parent.join("fs"), true)],
            _ => {
                let layers = OverlayLayers {
                    lowers: parents.iter().map(|p| p.join("fs")).collect(),
                    upper: (!read_only).then(|| dir.join("fs")),
                    work: (!read_only).then(|| dir.join("work")),
                    userxattr: self.userxattr,
                    volatile: self.volatile && !read_only,
                };
                vec![Mount::overlay(layers, self.options.clone())]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_shapes() {
        let tmp = tempfile::tempdir().unwrap();
        let o = Overlay::new(
            tmp.path(),
            OverlayConfig {
                mount_options: vec!["index=on".into()],
            },
        )
        .unwrap();
        assert_eq!(
            o.options(),
            ["index=on"],
            "a configured index is not overridden"
        );
        let d = Path::new("/s/3");
        let (p1, p2) = (PathBuf::from("/s/2"), PathBuf::from("/s/1"));
        let m = o.mounts(d, Kind::Active, &[]);
        assert_eq!(
            (
                m[0].kind.name(),
                m[0].source.as_path(),
                m[0].options.clone()
            ),
            (
                "bind",
                Path::new("/s/3/fs"),
                vec!["rw".to_string(), "rbind".into()]
            )
        );
        let m = o.mounts(d, Kind::View, &[]);
        assert!(m[0].is_read_only());
        let m = o.mounts(d, Kind::View, std::slice::from_ref(&p1));
        assert_eq!(
            (m[0].source.as_path(), m[0].is_read_only()),
            (Path::new("/s/2/fs"), true)
        );
        let m = o.mounts(d, Kind::Active, &[p1.clone(), p2.clone()]);
        assert_eq!(
            m[0].flat_options(),
            [
                "workdir=/s/3/work",
                "upperdir=/s/3/fs",
                "lowerdir=/s/2/fs:/s/1/fs",
                "index=on"
            ]
        );
        assert_eq!(m[0].options, ["index=on"]);
        let m = o.mounts(d, Kind::View, &[p1, p2]);
        assert_eq!(
            m[0].flat_options(),
            ["lowerdir=/s/2/fs:/s/1/fs", "index=on"]
        );
    }

    #[test]
    fn userxattr_and_volatile_travel_typed() {
        let tmp = tempfile::tempdir().unwrap();
        let o = Overlay::new(
            tmp.path(),
            OverlayConfig {
                mount_options: vec!["volatile".into(), "userxattr".into(), "index=on".into()],
            },
        )
        .unwrap();
        assert_eq!(o.options(), ["index=on"], "no typed option stays a string");
        assert!(o.capabilities().userxattr);
        let (p1, p2) = (PathBuf::from("/s/2"), PathBuf::from("/s/1"));
        let d = Path::new("/s/3");
        let rw = &o.mounts(d, Kind::Active, &[p1.clone(), p2.clone()])[0];
        let l = rw.layers.as_ref().unwrap();
        assert!(l.userxattr && l.volatile);
        assert_eq!(rw.kernel_options(), ["index=on", "userxattr", "volatile"]);
        let ro = &o.mounts(d, Kind::View, &[p1, p2])[0];
        let l = ro.layers.as_ref().unwrap();
        assert!(l.userxattr && !l.volatile, "a view is never volatile");
    }

    #[test]
    fn index_off_is_added_when_the_kernel_has_it() {
        let tmp = tempfile::tempdir().unwrap();
        let o = Overlay::new(tmp.path(), OverlayConfig::default()).unwrap();
        let has = Path::new("/sys/module/overlay/parameters/index").exists();
        assert_eq!(o.options().iter().any(|x| x == "index=off"), has);
        // The probe leaves nothing behind.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}

// The README's examples compile and run as doc tests, so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
