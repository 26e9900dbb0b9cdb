//! The merge engine (the seed's MergeSnapshotter, §6.2–6.4): a new
//! committed snapshot made of the changes of a list of diffs, applied in
//! order (later ones win).
//!
//! * `Merge` semantics: diffs with no lower and a whole snapshot as upper;
//!   on overlay the first input becomes the base of the result, its chain
//!   reused as lower directories instead of being copied (base-layer
//!   skipping; the seed does it only for a parentless first input); on a
//!   backend of cheap snapshots (btrfs) the result starts as a snapshot
//!   of the base's whole tree, the same skipping.
//! * `ApplySnapshotDiff` semantics: one diff from a lower to an upper
//!   snapshot onto an empty base: a fresh tree holding what changed, with
//!   deletions dropped.
//!
//! Changes come from the overlay upper directory when the upper snapshot
//! is the lower one plus one layer (cost: what changed), from the double
//! walk otherwise. Files are hard-linked from the committed source
//! snapshot's own directory (never through a mount), falling back to a
//! copy (reflink when the file system can) on `Errno::XDEV` or `Errno::MLINK`. Into an
//! overlay result, deletes become whiteouts where the base has the path and
//! a directory replacing a non-directory is made opaque. Directory mtimes
//! are set at the end. The usage stored with the result leaves out the
//! inodes it shares with its inputs.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use strata_core::{Labels, Mount};
use strata_leases::OpCtx;
use strata_snapshot::mounts::{LocalMount, MountOptions};
use strata_snapshot::{Kind, SnapshotError, SnapshotStore, Snapshotter, Usage};
use strata_sys::copy::{MetadataCopy, copy_metadata};
use strata_sys::errno::Errno;
use strata_sys::{FileKind, Metadata, Root, Times};

use crate::changes::{Change, ChangeKind, Comparison, walk_changes, walk_upperdir_changes};
use crate::error::DiffError;
use crate::overlay_xattr;

/// Label holding a merged snapshot's own size (bytes), which overrides the
/// backend's usage (shared inodes are not its own).
pub const USAGE_SIZE_LABEL: &str = "strata.io/merge.usage.size";
/// Label holding a merged snapshot's own inode count.
pub const USAGE_INODES_LABEL: &str = "strata.io/merge.usage.inodes";

/// One input of a merge: the changes from `lower` (empty when `None`) to
/// `upper` (an empty tree when `None`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// The snapshot the changes are taken against.
    pub lower: Option<String>,
    /// The snapshot holding the changes.
    pub upper: Option<String>,
    /// How entries present on both sides are compared.
    pub comparison: Comparison,
}

impl Diff {
    /// A whole snapshot as a merge input.
    pub fn whole(key: &str) -> Diff {
        Diff {
            upper: Some(key.to_owned()),
            ..Diff::default()
        }
    }
}

/// What a merge did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeStats {
    /// Changes applied.
    pub changes: u64,
    /// Files shared with an input by hard link.
    pub linked: u64,
    /// Files copied.
    pub copied: u64,
    /// The result's own usage.
    pub usage: Usage,
}

/// Merges snapshots of one [`SnapshotStore`].
#[derive(Clone, Debug)]
pub struct Merger {
    store: SnapshotStore,
    tmp: PathBuf,
}

/// The seed's `GetUpperdir`: the one directory by which `upper` extends
/// `lower`, if it does.
pub(crate) fn upperdir_of(lower: &[Mount], upper: &[Mount]) -> Option<PathBuf> {
    let [u] = upper else { return None };
    let up = u.overlay_dirs()?;
    let low = Mount::stacked_dirs(lower)?;
    (up.len() == low.len() + 1 && up[..low.len()] == low[..]).then(|| up[low.len()].clone())
}

/// A tree to read: used in place when it is a single bind, else mounted.
pub(crate) struct Tree {
    pub(crate) path: PathBuf,
    mount: Option<LocalMount>,
    /// Where files really live, topmost first (for hard links).
    layers: Vec<PathBuf>,
    pub(crate) mounts: Vec<Mount>,
}

impl Tree {
    pub(crate) fn open(mounts: Vec<Mount>, tmp: &Path) -> Result<Tree, DiffError> {
        let mut layers = Mount::stacked_dirs(&mounts).unwrap_or_default();
        layers.reverse();
        if let [m] = mounts.as_slice()
            && m.is_bind()
        {
            return Ok(Tree {
                path: m.source.clone(),
                mount: None,
                layers,
                mounts,
            });
        }
        let mount = LocalMount::mount(
            &mounts,
            tmp,
            MountOptions {
                force_remount: true,
                temporary: true,
            },
        )?;
        Ok(Tree {
            path: mount.path().to_path_buf(),
            mount: Some(mount),
            layers,
            mounts,
        })
    }
}

/// Where a merge writes: the result's own directory.
struct Dest {
    root: Root,
    /// Overlay result: its lower directories.
    lowers: Vec<Root>,
    overlay: bool,
    userxattr: bool,
    dir_times: HashMap<PathBuf, Times>,
    shared: HashSet<(u64, u64)>,
    stats: MergeStats,
}

impl Merger {
    /// A merger over `store`, mounting inputs under `tmp`.
    pub fn new(store: SnapshotStore, tmp: PathBuf) -> Merger {
        Merger { store, tmp }
    }

    /// The usage of `key`: what a merge stored, else the backend's.
    pub async fn usage(&self, key: &str) -> Result<Usage, DiffError> {
        let info = self.store.stat(key).await?;
        let size = info.labels.get(USAGE_SIZE_LABEL);
        let inodes = info.labels.get(USAGE_INODES_LABEL);
        if size.is_none() && inodes.is_none() {
            return Ok(self.store.usage(key).await?);
        }
        let parse = |v: Option<&String>| -> Result<u64, DiffError> {
            v.map_or(Ok(0), |v| {
                v.parse().map_err(|_| {
                    DiffError::Snapshot(SnapshotError::Invalid(format!(
                        "snapshot {key:?}: usage label {v:?} is not a number"
                    )))
                })
            })
        };
        Ok(Usage {
            size: parse(size)?,
            inodes: parse(inodes)?,
        })
    }

    /// Creates the committed snapshot `key` from `diffs` (later ones win).
    /// A failed merge leaves nothing behind.
    pub async fn merge(
        &self,
        ctx: &OpCtx,
        key: &str,
        diffs: &[Diff],
        labels: Labels,
    ) -> Result<MergeStats, DiffError> {
        let caps = self.store.capabilities();
        let mut base: Option<String> = None;
        let mut skip = 0;
        // Overlay reuses the base's chain as lower directories; a backend
        // of cheap snapshots takes one of the base's whole tree.
        if caps.overlay_layers || caps.cheap_snapshots {
            for (i, d) in diffs.iter().enumerate() {
                let Some(upper) = &d.upper else { break };
                let info = self.store.stat(upper).await?;
                // The first whole snapshot becomes the base with its whole
                // chain (the seed takes it only without a parent); a later
                // diff is skipped when it is exactly the base's child.
                let extends = if i == 0 {
                    d.lower.is_none()
                } else {
                    info.parent == d.lower && d.lower == base
                };
                if info.kind != Kind::Committed || !extends {
                    break;
                }
                base = Some(upper.clone());
                skip += 1;
            }
        }
        // What the merge makes is held by the operation's lease from the
        // transaction that records it.
        let store = self.store.under(ctx);
        let prepare_key = format!("merge-{}", strata_core::id::new_id());
        let mounts = store
            .prepare(&prepare_key, base.as_deref(), Labels::new())
            .await?;
        let result = self.fill(ctx, &mounts, &diffs[skip..]).await;
        let stats = match result {
            Ok(stats) => stats,
            Err(e) => {
                self.discard(&prepare_key).await;
                return Err(e);
            }
        };
        let mut labels = labels;
        labels.insert(USAGE_SIZE_LABEL.into(), stats.usage.size.to_string());
        labels.insert(USAGE_INODES_LABEL.into(), stats.usage.inodes.to_string());
        if let Err(e) = store.commit(key, &prepare_key, labels).await {
            self.discard(&prepare_key).await;
            return Err(e.into());
        }
        Ok(stats)
    }

    async fn discard(&self, key: &str) {
        if let Err(e) = self.store.remove(key).await {
            tracing::warn!(key, error = %e, "could not remove the snapshot of a failed merge");
        }
    }

    /// Mounts of a merge input: a committed snapshot's read-only view, an
    /// active one's own mounts, or an empty tree.
    async fn input(&self, key: Option<&str>) -> Result<(Vec<Mount>, bool), DiffError> {
        let Some(key) = key else {
            let empty = self
                .tmp
                .join(format!("empty-{}", strata_core::id::new_id()));
            std::fs::create_dir(&empty).map_err(|e| DiffError::io("create", &empty, e))?;
            return Ok((vec![Mount::bind(empty, true)], false));
        };
        let info = self.store.stat(key).await?;
        if info.kind == Kind::Committed {
            Ok((self.store.view_mounts(key)?, true))
        } else {
            Ok((self.store.mounts(key).await?, false))
        }
    }

    async fn fill(
        &self,
        ctx: &OpCtx,
        mounts: &[Mount],
        diffs: &[Diff],
    ) -> Result<MergeStats, DiffError> {
        let [m] = mounts else {
            return Err(DiffError::Unsupported {
                path: self.tmp.clone(),
                reason: format!("expected exactly one mount, got {}", mounts.len()),
            });
        };
        let mut inputs = Vec::new();
        let mut scratch = Vec::new();
        for d in diffs {
            let lower = match &d.lower {
                Some(l) => Some(self.input(Some(l)).await?.0),
                None => None,
            };
            let (upper, committed) = self.input(d.upper.as_deref()).await?;
            if d.upper.is_none() {
                scratch.push(upper[0].source.clone());
            }
            inputs.push(Input {
                lower,
                upper,
                // Links only from committed inputs, which never change;
                // and only on the backends whose snapshots are never
                // written in place once committed.
                link: committed && self.store.capabilities().cross_snapshot_links,
                comparison: d.comparison,
            });
        }
        // The file-system work runs on the blocking pool, off the
        // caller's executor.
        let (m, ctx, tmp) = (m.clone(), ctx.clone(), self.tmp.clone());
        let userxattr = m.layers.as_ref().is_some_and(|l| l.userxattr);
        let result =
            tokio::task::spawn_blocking(move || write_merge(&m, &inputs, &ctx, &tmp, userxattr))
                .await
                .unwrap_or_else(|e| Err(DiffError::Snapshot(SnapshotError::Task(e.to_string()))));
        for dir in scratch {
            if let Err(e) = std::fs::remove_dir(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a scratch directory");
            }
        }
        result
    }
}

/// A merge input resolved to mounts.
struct Input {
    lower: Option<Vec<Mount>>,
    upper: Vec<Mount>,
    link: bool,
    comparison: Comparison,
}

/// Applies `inputs` in order into the result mounted as `m`; its usage.
fn write_merge(
    m: &Mount,
    inputs: &[Input],
    ctx: &OpCtx,
    tmp: &Path,
    userxattr: bool,
) -> Result<MergeStats, DiffError> {
    let (root, lowers) = match &m.layers {
        Some(layers) if m.is_overlay() => {
            let upper = layers.upper.clone().ok_or_else(|| DiffError::Unsupported {
                path: tmp.to_path_buf(),
                reason: "the merge's overlay has no upper directory".into(),
            })?;
            (upper, layers.lowers.clone())
        }
        _ => (m.source.clone(), Vec::new()),
    };
    let mut dest = Dest {
        root: Root::open(&root)?,
        lowers: lowers
            .iter()
            .map(|l| Root::open(l))
            .collect::<Result<_, _>>()?,
        overlay: m.is_overlay(),
        userxattr,
        dir_times: HashMap::new(),
        shared: HashSet::new(),
        stats: MergeStats::default(),
    };
    for input in inputs {
        let lower = input
            .lower
            .clone()
            .map(|m| Tree::open(m, tmp))
            .transpose()?;
        let upper = Tree::open(input.upper.clone(), tmp)?;
        dest.diff(ctx, lower.as_ref(), &upper, input.comparison, input.link)?;
    }
    dest.flush()?;
    dest.stats.usage = dest.usage()?;
    Ok(dest.stats)
}

/// A change with the file it came from.
struct Source<'a> {
    root: &'a Root,
    meta: Metadata,
    /// An earlier path of this diff with the same inode.
    link: Option<PathBuf>,
}

impl Dest {
    fn diff(
        &mut self,
        ctx: &OpCtx,
        lower: Option<&Tree>,
        upper: &Tree,
        comparison: Comparison,
        link: bool,
    ) -> Result<(), DiffError> {
        let view = Root::open(&upper.path)?;
        let layers: Vec<Root> = upper
            .layers
            .iter()
            .map(|l| Root::open(l))
            .collect::<Result<_, _>>()?;
        let fast = lower.and_then(|l| upperdir_of(&l.mounts, &upper.mounts));
        let bind = upper.mount.is_none();
        let mut seen: HashMap<(u64, u64), PathBuf> = HashMap::new();
        let mut handle = |c: Change| -> Result<(), DiffError> {
            if ctx.is_cancelled() {
                return Err(DiffError::Cancelled);
            }
            if c.kind == ChangeKind::Unmodified {
                return Ok(());
            }
            self.check_parents(&c.path, &view)?;
            let src = match (&c.kind, &c.meta) {
                (ChangeKind::Delete, _) | (_, None) => None,
                (_, Some(m)) => {
                    // A single bind is its own only layer: the walk's
                    // metadata is the real file's.
                    let (root, meta) = if m.kind == FileKind::Dir || bind {
                        (&view, m.clone())
                    } else {
                        resolve(&layers, &view, &c.path)?
                    };
                    let mut linked = None;
                    if meta.kind != FileKind::Dir && meta.nlink > 1 {
                        match seen.get(&(meta.dev, meta.ino)) {
                            Some(first) => linked = Some(first.clone()),
                            None => {
                                seen.insert((meta.dev, meta.ino), c.path.clone());
                            }
                        }
                    }
                    Some(Source {
                        root,
                        meta,
                        link: linked,
                    })
                }
            };
            self.apply(&c, src, link)
        };
        match (fast, lower) {
            (Some(upperdir), Some(lower)) => {
                walk_upperdir_changes(&upperdir, &upper.path, &lower.path, comparison, &mut handle)
            }
            _ => walk_changes(
                lower.map(|l| l.path.as_path()),
                &upper.path,
                comparison,
                &mut handle,
            ),
        }
    }

    /// Creates or updates the directories above `path` first (the seed's
    /// `checkParent`), from the upper view.
    fn check_parents(&mut self, path: &Path, view: &Root) -> Result<(), DiffError> {
        let mut missing = Vec::new();
        let mut p = path.parent();
        while let Some(dir) = p.filter(|d| !d.as_os_str().is_empty()) {
            if self.dir_times.contains_key(dir) {
                break;
            }
            missing.push(dir.to_path_buf());
            p = dir.parent();
        }
        for dir in missing.into_iter().rev() {
            let meta = view.stat(&dir)?;
            let change = Change {
                kind: ChangeKind::Modify,
                path: dir,
                meta: Some(meta.clone()),
            };
            self.apply(
                &change,
                Some(Source {
                    root: view,
                    meta,
                    link: None,
                }),
                false,
            )?;
        }
        Ok(())
    }

    fn apply(&mut self, c: &Change, src: Option<Source<'_>>, link: bool) -> Result<(), DiffError> {
        self.stats.changes += 1;
        let path = c.path.as_path();
        // The entry's parent is resolved once; everything below acts
        // relative to it.
        let at = self.root.at(path)?;
        let delete_only = c.kind == ChangeKind::Delete;
        let mut link = link;
        // The common case first: a file shared by hard link where nothing
        // is in the way yet.
        if let Some(s) = src.as_ref().filter(|s| {
            link && !delete_only
                && s.link.is_none()
                && !matches!(
                    s.meta.kind,
                    FileKind::Dir | FileKind::Fifo | FileKind::Socket
                )
        }) {
            match at.link_from(s.root, path) {
                Ok(()) => {
                    self.shared.insert((s.meta.dev, s.meta.ino));
                    self.stats.linked += 1;
                    return Ok(());
                }
                // Something is there: the phases below replace it.
                Err(e) if e.errno() == Some(Errno::EXIST) => {}
                // Another file system, or too many links: copy.
                Err(e) if matches!(e.errno(), Some(Errno::XDEV | Errno::MLINK)) => link = false,
                Err(e) => return Err(e.into()),
            }
        }
        let existing = at.stat()?;
        let both_dirs = matches!((&existing, &src), (Some(d), Some(s)) if d.kind == FileKind::Dir && s.meta.kind == FileKind::Dir);
        let overwrite = !delete_only && existing.is_some() && !both_dirs;
        let mut opaque = false;
        if delete_only || overwrite {
            if existing.is_some() {
                at.remove_all()?;
            }
            if overwrite
                && self.overlay
                && src.as_ref().is_some_and(|s| s.meta.kind == FileKind::Dir)
            {
                opaque = true;
            }
            if delete_only {
                if self.overlay && self.lower_has(path)? {
                    at.mknod(FileKind::CharDevice, 0, 0)?;
                }
                return Ok(());
            }
        }
        let Some(src) = src else { return Ok(()) };
        let m = &src.meta;
        if !matches!(m.kind, FileKind::Dir | FileKind::Fifo | FileKind::Socket) {
            if let Some(first) = &src.link {
                at.link_from(&self.root, first)?;
                return Ok(());
            }
            if link {
                match at.link_from(src.root, path) {
                    Ok(()) => {
                        self.shared.insert((m.dev, m.ino));
                        self.stats.linked += 1;
                        return Ok(());
                    }
                    // Another file system, or too many links: copy.
                    Err(e) if matches!(e.errno(), Some(Errno::XDEV | Errno::MLINK)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        match m.kind {
            FileKind::File => {
                let from = src.root.open_file(path)?;
                let to = at.create_file(0o600)?;
                strata_sys::copy::copy_contents(&from, &to)
                    .map_err(|e| DiffError::io("copy", self.root.path().join(path), e))?;
                self.stats.copied += 1;
            }
            FileKind::Dir => {
                if existing.is_none() || overwrite {
                    at.mkdir(0o700)?;
                }
            }
            FileKind::Symlink => {
                let target = src.root.read_link(path)?;
                at.symlink(&target)?;
            }
            kind => at.mknod(kind, m.mode, m.rdev)?,
        }
        // Directory times are set at the end, after their children.
        let what = MetadataCopy {
            skip_xattr: overlay_xattr::is_opaque,
            times: m.kind != FileKind::Dir,
        };
        copy_metadata(src.root, path, m, &at, what)?;
        if opaque {
            at.set_xattr(overlay_xattr::opaque_name(self.userxattr), b"y")?;
        }
        if m.kind == FileKind::Dir {
            self.dir_times.insert(path.to_path_buf(), m.mtime);
        }
        Ok(())
    }

    fn lower_has(&self, path: &Path) -> Result<bool, DiffError> {
        for lower in &self.lowers {
            match lower.try_stat(path) {
                Ok(Some(_)) => return Ok(true),
                Ok(None) => {}
                Err(e) if e.errno() == Some(Errno::NOTDIR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(false)
    }

    /// Sets the recorded directory mtimes (creating children changed them).
    fn flush(&self) -> Result<(), DiffError> {
        for (dir, mtime) in &self.dir_times {
            match self.root.stat(dir) {
                Ok(m) if m.kind == FileKind::Dir => self.root.set_times(dir, m.atime, *mtime)?,
                Ok(_) => {}
                Err(e) if matches!(e.errno(), Some(Errno::NOENT | Errno::NOTDIR)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Size and inodes of the result's own directory, each inode once,
    /// without the ones shared with inputs.
    fn usage(&self) -> Result<Usage, DiffError> {
        let mut seen = HashSet::new();
        let mut usage = Usage::default();
        let mut count = |m: &Metadata| {
            if seen.insert((m.dev, m.ino)) && !self.shared.contains(&(m.dev, m.ino)) {
                usage.inodes += 1;
                usage.size += m.blocks * 512;
            }
        };
        count(&self.root.stat(Path::new(""))?);
        let mut stack = vec![PathBuf::new()];
        while let Some(dir) = stack.pop() {
            for (name, m) in self.root.read_dir_stat(&dir)? {
                count(&m);
                if m.kind == FileKind::Dir {
                    stack.push(dir.join(name));
                }
            }
        }
        Ok(usage)
    }
}

/// The real file behind `path` of an upper tree: the topmost layer that has
/// it, else the view itself.
fn resolve<'a>(
    layers: &'a [Root],
    view: &'a Root,
    path: &Path,
) -> Result<(&'a Root, Metadata), DiffError> {
    for layer in layers {
        match layer.try_stat(path) {
            Ok(Some(m)) => return Ok((layer, m)),
            Ok(None) => {}
            Err(e) if e.errno() == Some(Errno::NOTDIR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok((view, view.stat(path)?))
}
