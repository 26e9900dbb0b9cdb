//! Change walking: what differs between two trees.
//!
//! * [`walk_changes`] is the double walk: both trees are read directory by
//!   directory, names sorted by their bytes, depth first. That visits paths
//!   in the order where `/` sorts before every other byte (`a/b` before
//!   `a.b` before `ab`), the order layer tars are written in. A path only
//!   below is a delete (its children are not reported), only above an add,
//!   in both a modify unless [`same`] says otherwise.
//! * [`walk_upperdir_changes`] reads an overlay upper directory alone: the
//!   cost is what changed, not the whole tree. Whiteouts (0/0 character
//!   devices) become deletes where the base has the path; an opaque
//!   directory is compared against the base with the double walk; a
//!   redirect (`redirect_dir`) cannot be followed and is an error.
//!
//! Every path goes through [`strata_sys::Root`], so no tree can lead the
//! walk elsewhere. Paths are relative to the roots, without a leading `/`.

use std::cmp::Ordering;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use strata_sys::errno::Errno;
use strata_sys::{FileKind, Metadata, Root};

use crate::error::DiffError;
use crate::overlay_xattr;

/// What happened to a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// Present and equal on both sides; reported only for hard-linked files
    /// so a consumer can track link targets.
    Unmodified,
    /// Only in the upper tree.
    Add,
    /// In both, different.
    Modify,
    /// Only in the lower tree (its children are not reported).
    Delete,
}

/// How two entries at the same path are compared (seed §6.6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Comparison {
    /// Trust size and mtime, except when both mtimes have whole seconds
    /// only (a tar round trip), then compare contents.
    #[default]
    Compat,
    /// When the metadata matches, compare contents anyway.
    ContentOnMetadataMatch,
    /// Like `ContentOnMetadataMatch`, but the same inode number with the
    /// same type, size and mtime is the same file (across devices).
    InodeThenContent,
}

/// One change, in walk order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// What happened.
    pub kind: ChangeKind,
    /// The path relative to the roots.
    pub path: PathBuf,
    /// The upper entry's metadata (for overlay deletes: the whiteout's);
    /// `None` for deletes found by the double walk.
    pub meta: Option<Metadata>,
}

/// Receives changes; an error stops the walk.
pub type ChangeFn<'a> = dyn FnMut(Change) -> Result<(), DiffError> + 'a;

const CAPABILITY: &str = "security.capability";

/// Walks the changes from `lower` (an empty tree when `None`) to `upper`.
pub fn walk_changes(
    lower: Option<&Path>,
    upper: &Path,
    comparison: Comparison,
    f: &mut ChangeFn<'_>,
) -> Result<(), DiffError> {
    let upper = Root::open(upper)?;
    let lower = lower.map(Root::open).transpose()?;
    let walker = DoubleWalk {
        lower: lower.as_ref(),
        upper: &upper,
        comparison,
    };
    walker.dir(Path::new(""), lower.is_some(), f)
}

/// Walks the changes an overlay upper directory holds against `base` (the
/// tree below it). `view` is the mounted tree the upper directory belongs
/// to; contents are compared and opaque directories walked through it.
pub fn walk_upperdir_changes(
    upperdir: &Path,
    view: &Path,
    base: &Path,
    comparison: Comparison,
    f: &mut ChangeFn<'_>,
) -> Result<(), DiffError> {
    let upper = Root::open(upperdir)?;
    let view = Root::open(view)?;
    let base = Root::open(base)?;
    let walk = UpperdirWalk {
        upper: &upper,
        view: &view,
        base: &base,
        comparison,
    };
    walk.dir(Path::new(""), f)
}

/// `lstat` that treats Errno::NOTDIR (a parent is not a directory) as absent.
fn lookup(root: &Root, path: &Path) -> Result<Option<Metadata>, DiffError> {
    match root.try_stat(path) {
        Ok(m) => Ok(m),
        Err(e) if e.errno() == Some(Errno::NOTDIR) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// True when a hard-linked file should be reported even when unchanged.
fn hardlinked(m: &Metadata) -> bool {
    m.kind != FileKind::Dir && m.nlink > 1
}

/// The seed's `samePathInfo`: whether `path` in `lower` (metadata `l`) and
/// in `upper` (metadata `u`) are the same.
pub(crate) fn same(
    lower: &Root,
    upper: &Root,
    path: &Path,
    l: &Metadata,
    u: &Metadata,
    comparison: Comparison,
) -> Result<bool, DiffError> {
    if l.dev == u.dev && l.ino == u.ino {
        return Ok(true);
    }
    if comparison == Comparison::InodeThenContent
        && l.ino == u.ino
        && l.kind == u.kind
        && l.size == u.size
        && l.mtime == u.mtime
    {
        return Ok(true);
    }
    if l.kind != u.kind || l.mode != u.mode || l.uid != u.uid || l.gid != u.gid || l.rdev != u.rdev
    {
        return Ok(false);
    }
    // Every test must pass for "same"; the cheap ones go first, the
    // capability xattr (two reads) only when metadata says nothing differs.
    if l.kind != FileKind::Dir && (l.size != u.size || l.mtime != u.mtime) {
        return Ok(false);
    }
    let cap = OsStr::new(CAPABILITY);
    if lower.get_xattr(path, cap)?.unwrap_or_default()
        != upper.get_xattr(path, cap)?.unwrap_or_default()
    {
        return Ok(false);
    }
    if l.kind == FileKind::Dir {
        return Ok(true);
    }
    if comparison == Comparison::Compat && (l.mtime.nsec != 0 || u.mtime.nsec != 0) {
        return Ok(true);
    }
    if l.kind == FileKind::Symlink {
        return Ok(lower.read_link(path)? == upper.read_link(path)?);
    }
    if l.size == 0 || l.kind != FileKind::File {
        return Ok(true);
    }
    same_contents(lower, upper, path)
}

fn same_contents(lower: &Root, upper: &Root, path: &Path) -> Result<bool, DiffError> {
    let io = |e| DiffError::io("compare", path, e);
    let (mut a, mut b) = (lower.open_file(path)?, upper.open_file(path)?);
    let (mut x, mut y) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        let n = read_full(&mut a, &mut x).map_err(io)?;
        let m = read_full(&mut b, &mut y).map_err(io)?;
        if x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

struct DoubleWalk<'a> {
    lower: Option<&'a Root>,
    upper: &'a Root,
    comparison: Comparison,
}

/// One directory being compared: both sides' entries sorted by name and
/// how far the merge of the two lists has come.
struct Pair {
    dir: PathBuf,
    lows: Vec<(OsString, Metadata)>,
    ups: Vec<(OsString, Metadata)>,
    i: usize,
    j: usize,
}

impl DoubleWalk<'_> {
    fn pair(&self, dir: PathBuf, below: bool) -> Result<Pair, DiffError> {
        let ups = self.upper.read_dir_stat(&dir)?;
        let lows = match self.lower {
            Some(lower) if below => lower.read_dir_stat(&dir)?,
            _ => Vec::new(),
        };
        Ok(Pair {
            dir,
            lows,
            ups,
            i: 0,
            j: 0,
        })
    }

    /// Compares directory `top` (present below when `below`) and
    /// everything under it, depth first, with a stack of its own: a tree
    /// as deep as a path may be costs no call stack.
    fn dir(&self, top: &Path, below: bool, f: &mut ChangeFn<'_>) -> Result<(), DiffError> {
        let mut stack = vec![self.pair(top.to_path_buf(), below)?];
        while let Some(p) = stack.last_mut() {
            let order = match (p.lows.get(p.i), p.ups.get(p.j)) {
                (None, None) => {
                    stack.pop();
                    continue;
                }
                (Some(l), Some(u)) => l.0.as_bytes().cmp(u.0.as_bytes()),
                (Some(_), None) => Ordering::Less,
                _ => Ordering::Greater,
            };
            let next = match order {
                Ordering::Less => {
                    f(Change {
                        kind: ChangeKind::Delete,
                        path: p.dir.join(&p.lows[p.i].0),
                        meta: None,
                    })?;
                    p.i += 1;
                    None
                }
                Ordering::Greater => {
                    let (name, u) = &p.ups[p.j];
                    let path = p.dir.join(name);
                    f(Change {
                        kind: ChangeKind::Add,
                        path: path.clone(),
                        meta: Some(u.clone()),
                    })?;
                    let below = (u.kind == FileKind::Dir).then_some((path, false));
                    p.j += 1;
                    below
                }
                Ordering::Equal => {
                    let path = p.dir.join(&p.ups[p.j].0);
                    let (l, u) = (&p.lows[p.i].1, &p.ups[p.j].1);
                    self.both(&path, l, u, f)?;
                    let below =
                        (u.kind == FileKind::Dir).then_some((path, l.kind == FileKind::Dir));
                    p.i += 1;
                    p.j += 1;
                    below
                }
            };
            if let Some((path, below)) = next {
                stack.push(self.pair(path, below)?);
            }
        }
        Ok(())
    }

    /// An entry on both sides: reported when it changed, or as unmodified
    /// when hard-linked (for the link's later paths).
    fn both(
        &self,
        path: &Path,
        l: &Metadata,
        u: &Metadata,
        f: &mut ChangeFn<'_>,
    ) -> Result<(), DiffError> {
        let lower = self.lower.expect("only called with a lower tree");
        let kind = if !same(lower, self.upper, path, l, u, self.comparison)? {
            Some(ChangeKind::Modify)
        } else if hardlinked(u) {
            Some(ChangeKind::Unmodified)
        } else {
            None
        };
        if let Some(kind) = kind {
            f(Change {
                kind,
                path: path.to_path_buf(),
                meta: Some(u.clone()),
            })?;
        }
        Ok(())
    }
}

struct UpperdirWalk<'a> {
    upper: &'a Root,
    view: &'a Root,
    base: &'a Root,
    comparison: Comparison,
}

impl UpperdirWalk<'_> {
    /// Walks the upper directory from `top`, depth first, with a stack of
    /// its own.
    fn dir(&self, top: &Path, f: &mut ChangeFn<'_>) -> Result<(), DiffError> {
        let mut stack = vec![(top.to_path_buf(), self.upper.read_dir_stat(top)?, 0usize)];
        while let Some((dir, entries, next)) = stack.last_mut() {
            let Some((name, u)) = entries.get(*next).cloned() else {
                stack.pop();
                continue;
            };
            *next += 1;
            let path = dir.join(&name);
            if let Some(sub) = self.entry(path, u, f)? {
                let entries = self.upper.read_dir_stat(&sub)?;
                stack.push((sub, entries, 0));
            }
        }
        Ok(())
    }

    /// Reports one upper-directory entry; the directory to walk next, if
    /// its children are to be read from the upper directory.
    fn entry(
        &self,
        path: PathBuf,
        u: Metadata,
        f: &mut ChangeFn<'_>,
    ) -> Result<Option<PathBuf>, DiffError> {
        let is_dir = u.kind == FileKind::Dir;
        if is_dir && overlay_xattr::redirected(self.upper, &path)? {
            return Err(DiffError::Unsupported {
                path,
                reason: "the overlay directory was renamed (redirect_dir); its changes cannot be read from the upper directory".into(),
            });
        }
        if u.kind == FileKind::CharDevice && u.rdev == 0 {
            if lookup(self.base, &path)?.is_some() {
                f(Change {
                    kind: ChangeKind::Delete,
                    path,
                    meta: Some(u),
                })?;
            }
            return Ok(None);
        }
        // Reported as the view shows it: inode numbers of copied-up files
        // are their origin's there, and names read through the view (in
        // opaque directories) must agree with these on every hard link.
        let u = self.view.stat(&path)?;
        let b = lookup(self.base, &path)?;
        let kind = match &b {
            None => Some(ChangeKind::Add),
            // Unchanged but sharing its inode with other upper names: said,
            // so the writer can link those names to it (as the double walk
            // does).
            Some(b) if same(self.base, self.view, &path, b, &u, self.comparison)? => {
                hardlinked(&u).then_some(ChangeKind::Unmodified)
            }
            Some(_) => Some(ChangeKind::Modify),
        };
        if let Some(kind) = kind {
            f(Change {
                kind,
                path: path.clone(),
                meta: Some(u),
            })?;
        }
        if !is_dir {
            return Ok(None);
        }
        let base_dir = b.is_some_and(|b| b.kind == FileKind::Dir);
        if base_dir && overlay_xattr::opaque(self.upper, &path)? {
            DoubleWalk {
                lower: Some(self.base),
                upper: self.view,
                comparison: self.comparison,
            }
            .dir(&path, true, f)?;
            return Ok(None);
        }
        Ok(Some(path))
    }
}
