//! A mount as data: what to mount, where, and with which options. The
//! snapshotters return these instead of mounting, so callers decide when and
//! where the kernel is involved.
//!
//! The kind of a mount is typed ([`MountKind`]), and an overlay's layer
//! directories and the options that change how its layers are read
//! (`userxattr`, `volatile`) travel typed ([`OverlayLayers`]), never as
//! strings to compare or re-parse; [`Mount::flat_options`] renders
//! containerd's flat form for people and for peers that speak it,
//! [`Mount::from_flat`] reads it back from them, and
//! [`Mount::kernel_options`] gives the mount code what the kernel takes.

use std::fmt;
use std::path::PathBuf;

/// What a mount is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MountKind {
    /// A bind mount of `source` (recursive with the `rbind` option).
    Bind,
    /// Kernel overlayfs over [`Mount::layers`].
    Overlay,
    /// Any other file-system type, by the name the kernel knows.
    Other(String),
}

impl MountKind {
    /// The kind a flat mount's type names (`bind`, `overlay`, ...).
    pub fn from_name(name: &str) -> MountKind {
        match name {
            "bind" | "rbind" => MountKind::Bind,
            "overlay" => MountKind::Overlay,
            other => MountKind::Other(other.to_owned()),
        }
    }

    /// The file-system type's name (`bind`, `overlay`, ...).
    pub fn name(&self) -> &str {
        match self {
            MountKind::Bind => "bind",
            MountKind::Overlay => "overlay",
            MountKind::Other(name) => name,
        }
    }
}

impl fmt::Display for MountKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The directories of an overlay mount, and the options that change how
/// its layers are read and written.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct OverlayLayers {
    /// Lower directories, topmost first (overlay's `lowerdir` order).
    pub lowers: Vec<PathBuf>,
    /// The upper directory of a writable overlay.
    pub upper: Option<PathBuf>,
    /// The work directory that goes with the upper one.
    pub work: Option<PathBuf>,
    /// Overlay keeps its private attributes (opaque directories,
    /// redirects) as `user.overlay.*` instead of `trusted.overlay.*`
    /// (`userxattr`, in a user namespace): whoever writes into the layers
    /// directly must use the same.
    pub userxattr: bool,
    /// Writes are never synced (`volatile`): after a crash the upper
    /// directory must be thrown away.
    pub volatile: bool,
}

impl OverlayLayers {
    /// Every layer bottom first, the upper directory last.
    pub fn bottom_up(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self.lowers.iter().rev().cloned().collect();
        out.extend(self.upper.clone());
        out
    }
}

/// One mount, in the shape containerd uses (`type`, `source`, `options`),
/// plus an optional target relative to the mount root for nested mounts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mount {
    /// What it is: a bind, an overlay, or another file system.
    pub kind: MountKind,
    /// What to mount: a directory for binds, `overlay` for overlays.
    pub source: PathBuf,
    /// Where to mount it, relative to the target root; empty for the root.
    pub target: PathBuf,
    /// Options as the kernel and `mount(8)` know them (`ro`, `rbind`,
    /// `index=off`), without an overlay's layer directories.
    pub options: Vec<String>,
    /// An overlay's layer directories.
    pub layers: Option<OverlayLayers>,
}

impl Mount {
    /// A recursive bind of `source`, read-only or writable.
    pub fn bind(source: PathBuf, read_only: bool) -> Mount {
        Mount {
            kind: MountKind::Bind,
            source,
            target: PathBuf::new(),
            options: vec![if read_only { "ro" } else { "rw" }.into(), "rbind".into()],
            layers: None,
        }
    }

    /// An overlay's layers, bottom first (its upper directory last), or
    /// `None` when it is not an overlay or has options that change what
    /// its layers hold or how a tree over them reads (`userxattr` and
    /// `volatile` are in [`OverlayLayers`], with the layers).
    pub fn overlay_dirs(&self) -> Option<Vec<PathBuf>> {
        if !self.is_overlay() {
            return None;
        }
        let understood = self.options.iter().all(|o| {
            o == "index=off" || o == "index=on" || o == "ro" || o.starts_with("redirect_dir=")
        });
        understood
            .then(|| self.layers.as_ref().map(OverlayLayers::bottom_up))
            .flatten()
    }

    /// The directories a mount list stacks, bottom first: a lone bind's
    /// source, or a lone overlay's layers ([`Mount::overlay_dirs`]);
    /// `None` for anything else.
    pub fn stacked_dirs(mounts: &[Mount]) -> Option<Vec<PathBuf>> {
        match mounts {
            [m] if m.is_bind() => Some(vec![m.source.clone()]),
            [m] => m.overlay_dirs(),
            _ => None,
        }
    }

    /// An overlay of `layers` with further `options`.
    pub fn overlay(layers: OverlayLayers, options: Vec<String>) -> Mount {
        Mount {
            kind: MountKind::Overlay,
            source: "overlay".into(),
            target: PathBuf::new(),
            options,
            layers: Some(layers),
        }
    }

    /// True when the options make the mount read-only.
    pub fn is_read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }

    /// True for a bind mount.
    pub fn is_bind(&self) -> bool {
        self.kind == MountKind::Bind
    }

    /// True for an overlay.
    pub fn is_overlay(&self) -> bool {
        self.kind == MountKind::Overlay
    }

    /// The options as the kernel takes them: the generic ones, then an
    /// overlay's typed `userxattr` and `volatile` (its layer directories
    /// are passed apart, by the mount code).
    pub fn kernel_options(&self) -> Vec<String> {
        let mut out = self.options.clone();
        if let Some(l) = &self.layers {
            for (on, name) in [(l.userxattr, "userxattr"), (l.volatile, "volatile")] {
                if on && !out.iter().any(|o| o == name) {
                    out.push(name.to_owned());
                }
            }
        }
        out
    }

    /// containerd's flat options: `workdir=`, `upperdir=` and a joined
    /// `lowerdir=` first for an overlay, then the others (an overlay's
    /// typed ones included).
    pub fn flat_options(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(l) = &self.layers {
            if let Some(w) = &l.work {
                out.push(format!("workdir={}", w.display()));
            }
            if let Some(u) = &l.upper {
                out.push(format!("upperdir={}", u.display()));
            }
            if !l.lowers.is_empty() {
                let joined: Vec<String> =
                    l.lowers.iter().map(|p| p.display().to_string()).collect();
                out.push(format!("lowerdir={}", joined.join(":")));
            }
        }
        out.extend(self.kernel_options());
        out
    }

    /// A mount in containerd's flat form (from a peer): a `bind`/`rbind`
    /// option makes a bind whatever the type says; an overlay's
    /// `lowerdir=`, `lowerdir+=`, `upperdir=`, `workdir=`, `userxattr` and
    /// `volatile` options become its typed layers.
    pub fn from_flat(kind: &str, source: PathBuf, options: &[String]) -> Mount {
        let bind = options.iter().any(|o| o == "bind" || o == "rbind");
        let mut m = Mount {
            kind: if bind {
                MountKind::Bind
            } else {
                MountKind::from_name(kind)
            },
            source,
            target: PathBuf::new(),
            options: Vec::new(),
            layers: None,
        };
        if m.kind != MountKind::Overlay {
            m.options = options.to_vec();
            return m;
        }
        let mut layers = OverlayLayers::default();
        for o in options {
            match o.split_once('=') {
                Some(("lowerdir", v)) => layers
                    .lowers
                    .extend(v.split(':').filter(|s| !s.is_empty()).map(PathBuf::from)),
                Some(("lowerdir+", v)) => layers.lowers.push(PathBuf::from(v)),
                Some(("upperdir", v)) => layers.upper = Some(PathBuf::from(v)),
                Some(("workdir", v)) => layers.work = Some(PathBuf::from(v)),
                None if o == "userxattr" => layers.userxattr = true,
                None if o == "volatile" => layers.volatile = true,
                _ => m.options.push(o.clone()),
            }
        }
        m.layers = Some(layers);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_form_round_trips() {
        let flat: Vec<String> = [
            "workdir=/w",
            "upperdir=/u",
            "lowerdir=/l2:/l1",
            "index=off",
            "userxattr",
        ]
        .map(String::from)
        .into();
        let m = Mount::from_flat("overlay", "overlay".into(), &flat);
        assert!(m.is_overlay());
        let layers = m.layers.clone().unwrap();
        assert_eq!(layers.lowers, [PathBuf::from("/l2"), PathBuf::from("/l1")]);
        assert_eq!(layers.upper.as_deref(), Some(std::path::Path::new("/u")));
        assert!(layers.userxattr && !layers.volatile);
        assert_eq!(m.options, ["index=off"]);
        assert_eq!(m.kernel_options(), ["index=off", "userxattr"]);
        assert_eq!(m.flat_options(), flat);
        assert_eq!(layers.bottom_up(), ["/l1", "/l2", "/u"].map(PathBuf::from));
        let b = Mount::from_flat("bind", "/x".into(), &["ro".into(), "rbind".into()]);
        assert!(b.is_bind() && b.is_read_only() && b.layers.is_none());
        let none = Mount::from_flat("none", "/x".into(), &["rbind".into()]);
        assert!(none.is_bind(), "a bind option makes a bind");
        assert_eq!(
            Mount::from_flat("tmpfs", "tmpfs".into(), &[]).kind,
            MountKind::Other("tmpfs".into())
        );
    }

    #[test]
    fn stacked_dirs_are_a_lone_bind_or_a_plain_overlay() {
        let layers = OverlayLayers {
            lowers: ["/l2", "/l1"].map(PathBuf::from).into(),
            upper: None,
            work: None,
            userxattr: false,
            volatile: false,
        };
        let plain = Mount::overlay(layers.clone(), vec!["ro".into(), "index=off".into()]);
        assert_eq!(
            Mount::stacked_dirs(std::slice::from_ref(&plain)),
            Some(["/l1", "/l2"].map(PathBuf::from).into())
        );
        let bind = Mount::bind("/t".into(), true);
        assert_eq!(
            Mount::stacked_dirs(std::slice::from_ref(&bind)),
            Some(vec![PathBuf::from("/t")])
        );
        // Options that change what the layers read as, and more than one
        // mount, have no plain stack.
        let metacopy = Mount::overlay(layers, vec!["metacopy=on".into()]);
        assert_eq!(metacopy.overlay_dirs(), None);
        assert_eq!(Mount::stacked_dirs(&[bind.clone(), bind]), None);
        assert_eq!(Mount::stacked_dirs(&[]), None);
    }
}
