//! A mount as data: what to mount, where, and with which options. The
//! snapshotters return these instead of mounting, so callers decide when and
//! where the kernel is involved.
//!
//! An overlay's layer directories travel typed ([`OverlayLayers`]), never
//! as option strings to re-parse; [`Mount::flat_options`] renders
//! containerd's flat form for people and for peers that speak it, and
//! [`Mount::from_flat`] reads it back from them.

use std::path::PathBuf;

/// The directories of an overlay mount.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct OverlayLayers {
    /// Lower directories, topmost first (overlay's `lowerdir` order).
    pub lowers: Vec<PathBuf>,
    /// The upper directory of a writable overlay.
    pub upper: Option<PathBuf>,
    /// The work directory that goes with the upper one.
    pub work: Option<PathBuf>,
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
    /// File-system type: `bind`, `overlay`, ...
    pub kind: String,
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
            kind: "bind".into(),
            source,
            target: PathBuf::new(),
            options: vec![if read_only { "ro" } else { "rw" }.into(), "rbind".into()],
            layers: None,
        }
    }

    /// An overlay of `layers` with further `options`.
    pub fn overlay(layers: OverlayLayers, options: Vec<String>) -> Mount {
        Mount {
            kind: "overlay".into(),
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

    /// True for a bind mount (by type or by a `bind`/`rbind` option).
    pub fn is_bind(&self) -> bool {
        self.kind == "bind" || self.options.iter().any(|o| o == "bind" || o == "rbind")
    }

    /// True when `option` is among the options.
    pub fn has_option(&self, option: &str) -> bool {
        self.options.iter().any(|o| o == option)
    }

    /// containerd's flat options: `workdir=`, `upperdir=` and a joined
    /// `lowerdir=` first for an overlay, then the others.
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
        out.extend(self.options.iter().cloned());
        out
    }

    /// A mount in containerd's flat form (from a peer): an overlay's
    /// `lowerdir=`, `lowerdir+=`, `upperdir=` and `workdir=` options become
    /// its typed layers.
    pub fn from_flat(kind: &str, source: PathBuf, options: &[String]) -> Mount {
        let mut m = Mount {
            kind: kind.to_owned(),
            source,
            target: PathBuf::new(),
            options: Vec::new(),
            layers: None,
        };
        if kind != "overlay" {
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
        let flat: Vec<String> = ["workdir=/w", "upperdir=/u", "lowerdir=/l2:/l1", "index=off"]
            .map(String::from)
            .into();
        let m = Mount::from_flat("overlay", "overlay".into(), &flat);
        let layers = m.layers.clone().unwrap();
        assert_eq!(layers.lowers, [PathBuf::from("/l2"), PathBuf::from("/l1")]);
        assert_eq!(layers.upper.as_deref(), Some(std::path::Path::new("/u")));
        assert_eq!(m.options, ["index=off"]);
        assert_eq!(m.flat_options(), flat);
        assert_eq!(layers.bottom_up(), ["/l1", "/l2", "/u"].map(PathBuf::from));
        let b = Mount::from_flat("bind", "/x".into(), &["ro".into(), "rbind".into()]);
        assert!(b.is_bind() && b.is_read_only() && b.layers.is_none());
    }
}
