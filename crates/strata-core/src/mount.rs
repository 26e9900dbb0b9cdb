//! A mount as data: what to mount, where, and with which options. The
//! snapshotters return these instead of mounting, so callers decide when and
//! where the kernel is involved.

use std::path::PathBuf;

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
    /// `lowerdir=...`).
    pub options: Vec<String>,
}

impl Mount {
    /// A recursive bind of `source`, read-only or writable.
    pub fn bind(source: PathBuf, read_only: bool) -> Mount {
        Mount {
            kind: "bind".into(),
            source,
            target: PathBuf::new(),
            options: vec![if read_only { "ro" } else { "rw" }.into(), "rbind".into()],
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
}
