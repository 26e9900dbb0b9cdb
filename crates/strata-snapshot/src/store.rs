//! [`SnapshotStore`]: the bookkeeping every backend shares, in the metadata
//! store, and the crash-safe ordering of directory work around it.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use strata_core::{Filter, Labels, Mount, id, labels};
use strata_leases::{Hold, LeaseManager, OpCtx, Resource};
use strata_metadata::keys;
use strata_metadata::records::{SNAPSHOT_CHILDREN, SnapshotKind, SnapshotRecord, now};
use strata_metadata::{LastClose, MetaDb, Reader, Violation};

use crate::backend::Backend;
use crate::error::SnapshotError;
use crate::info::{Info, Kind, Usage};
use crate::{Snapshotter, WalkFn};

const NEW_PREFIX: &str = "snap-new-";
const RM_PREFIX: &str = "snap-rm-";

/// True for a name the store keeps in the root's `tmp/` (a snapshot being
/// staged or removed): only the store removes those, through its backend (a
/// btrfs subvolume, read-only perhaps, cannot be emptied file by file), so
/// whoever empties `tmp/` leaves them to it.
pub fn is_store_scratch(name: &str) -> bool {
    name.starts_with(NEW_PREFIX) || name.starts_with(RM_PREFIX)
}

#[derive(Debug)]
struct Inner {
    db: Arc<MetaDb>,
    backend: Arc<dyn Backend>,
    snapshots: PathBuf,
    tmp: PathBuf,
    closed: AtomicBool,
    /// The default namespace's leases, where operations' holds go.
    leases: LeaseManager,
}

/// The shared snapshot store: implements [`Snapshotter`] for any
/// [`Backend`].
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    inner: Arc<Inner>,
    /// The operation whose lease what this handle creates goes into.
    ctx: Option<OpCtx>,
}

fn validate_key(key: &str) -> Result<(), SnapshotError> {
    if key.is_empty() || key.len() > 4096 || key.contains('\0') {
        return Err(SnapshotError::Invalid(format!(
            "snapshot key {key:?} must be 1 to 4096 bytes without NUL"
        )));
    }
    Ok(())
}

/// How the mount table names an attached lazy layer: a FUSE file system
/// whose source is strata-lazy's (`strata-lazy:` and the layer).
fn is_lazy_layer(m: &strata_sys::mount::info::MountEntry) -> bool {
    m.fs_type.split('.').next() == Some("fuse")
        && m.source.as_encoded_bytes().starts_with(b"strata-lazy:")
}

fn sync_dir(path: &Path) -> Result<(), SnapshotError> {
    Ok(strata_sys::sync::fsync_dir(path)?)
}

impl Inner {
    fn dir(&self, id: &str) -> PathBuf {
        self.snapshots.join(id)
    }

    fn get(&self, tx: &impl Reader, key: &str) -> Result<SnapshotRecord, SnapshotError> {
        tx.get::<SnapshotRecord>(key)?
            .ok_or_else(|| SnapshotError::NotFound(key.to_owned()))
    }

    /// The directory a lazy snapshot's layer is attached on: its
    /// placeholder's `fs`, which exists only while it is attached (an
    /// overlay backend's placeholder has none otherwise, so a mount that
    /// names it once the layer has gone fails rather than stacking
    /// nothing).
    fn placeholder(&self, id: &str) -> PathBuf {
        self.dir(id).join("fs")
    }

    /// The lock an attach of the lazy snapshot of `id` holds while it
    /// serves; removing or filling the snapshot takes it too.
    fn attach_lock(&self, id: &str) -> PathBuf {
        self.dir(id).join("attach.lock")
    }

    /// Whether the lazy snapshot of `id` has its layer attached: a file
    /// system that answers is mounted on its placeholder (as `image
    /// attach` mounts one), so it reads as a snapshot holding its layer.
    fn attached(&self, id: &str) -> bool {
        matches!(
            strata_sys::mount::mount_point(&self.placeholder(id)),
            Ok(strata_sys::mount::MountPoint::Live)
        )
    }

    /// Clears what an attach that has gone (killed) left on the lazy
    /// snapshot of `id`: a dead mount (a FUSE mount answering ENOTCONN)
    /// is detached, and the placeholder's `fs` removed where placeholders
    /// have none, so that a mount named while the layer served fails
    /// rather than stacking an empty layer. For a caller that holds the
    /// attach lock, with no live mount there.
    fn clear_attach(&self, id: &str) -> Result<(), SnapshotError> {
        let at = self.placeholder(id);
        if let Ok(strata_sys::mount::MountPoint::Dead) = strata_sys::mount::mount_point(&at) {
            tracing::info!(dir = %at.display(), "detaching a lazy layer whose server has gone");
            strata_sys::mount::detach(&at)?;
        }
        if self.backend.capabilities().overlay_layers {
            match fs::remove_dir(&at) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(SnapshotError::io("remove", &at, e)),
            }
        }
        Ok(())
    }

    /// Before `key` (of `r`) goes or is filled: for a lazy one on a
    /// backend that can attach, its attach lock, shared (removals and
    /// fills do not exclude each other), held until its directory has
    /// gone so no attach starts meanwhile; refused while an attach holds
    /// it or a layer is mounted on it (the mount would keep its directory,
    /// and what reads through it would lose the layer). What a killed
    /// attach left is cleared first.
    fn not_attached(
        &self,
        key: &str,
        r: &SnapshotRecord,
    ) -> Result<Option<strata_sys::lock::FileLock>, SnapshotError> {
        if !r.lazy || !self.backend.capabilities().overlay_layers {
            return Ok(None);
        }
        let attached = || {
            SnapshotError::precondition(
                key,
                "its layer is attached (its image is served by `strata image attach`); stop that first",
            )
        };
        let lock = match strata_sys::lock::FileLock::try_shared(&self.attach_lock(&r.id)) {
            Ok(lock) => Some(lock),
            Err(strata_sys::lock::LockError::Held { .. }) => return Err(attached()),
            // A placeholder without its directory: nothing can attach.
            Err(_) => None,
        };
        if self.attached(&r.id) {
            return Err(attached());
        }
        if lock.is_some() {
            self.clear_attach(&r.id)?;
        }
        Ok(lock)
    }

    /// Attaches the lazy snapshot `key`: takes its attach lock, detaches
    /// a dead mount, and makes the placeholder's directory.
    fn attach(&self, key: &str) -> Result<crate::Attachment, SnapshotError> {
        let caps = self.backend.capabilities();
        if !caps.overlay_layers {
            return Err(SnapshotError::precondition(
                key,
                format!(
                    "the {} backend's snapshots hold whole trees, so a single layer cannot be attached",
                    self.backend.name()
                ),
            ));
        }
        if caps.userxattr {
            return Err(SnapshotError::precondition(
                key,
                "this root's overlay reads user.overlay.* attributes (userxattr), and attached layers mark opaque directories with trusted.overlay.opaque",
            ));
        }
        let r = self.get(&self.db.read()?, key)?;
        if !r.lazy {
            return Err(SnapshotError::precondition(
                key,
                "it is not lazy: it holds its layer",
            ));
        }
        let lock = match strata_sys::lock::FileLock::try_exclusive(&self.attach_lock(&r.id)) {
            Ok(lock) => lock,
            Err(strata_sys::lock::LockError::Held { .. }) => {
                return Err(SnapshotError::precondition(
                    key,
                    "its layer is attached already (by another `strata image attach`), or it is being removed or filled",
                ));
            }
            Err(e) => {
                return Err(SnapshotError::io(
                    "lock",
                    self.attach_lock(&r.id),
                    std::io::Error::other(e),
                ));
            }
        };
        let dir = self.placeholder(&r.id);
        if self.attached(&r.id) {
            return Err(SnapshotError::precondition(
                key,
                format!("a file system is mounted on {} already", dir.display()),
            ));
        }
        self.clear_attach(&r.id)?;
        fs::create_dir(&dir).map_err(|e| SnapshotError::io("create", &dir, e))?;
        Ok(crate::Attachment::new(dir, lock))
    }

    /// Directories of `parent` and its ancestors, nearest first. The parent
    /// must exist and be committed; a lazy one must have its layer
    /// attached.
    fn chain(&self, tx: &impl Reader, parent: Option<&str>) -> Result<Vec<PathBuf>, SnapshotError> {
        let mut out = Vec::new();
        let mut next = parent.map(str::to_owned);
        let mut first = true;
        while let Some(key) = next {
            let r = tx.get::<SnapshotRecord>(&key)?.ok_or_else(|| {
                if first {
                    SnapshotError::NotFound(key.clone())
                } else {
                    SnapshotError::precondition(&key, "an ancestor is missing")
                }
            })?;
            if first && r.kind != SnapshotKind::Committed {
                return Err(SnapshotError::precondition(
                    &key,
                    "a parent must be committed",
                ));
            }
            if r.lazy && !self.attached(&r.id) {
                return Err(SnapshotError::Lazy(key));
            }
            first = false;
            out.push(self.dir(&r.id));
            next = r.parent;
        }
        Ok(out)
    }

    /// What a snapshot made on `parent` stacks on: the directories of
    /// `parent`'s chain; none for a lazy snapshot, whose placeholder holds
    /// nothing, and whose parent need only be committed (lazy or not).
    fn lowers(
        &self,
        tx: &impl Reader,
        parent: Option<&str>,
        lazy: bool,
    ) -> Result<Vec<PathBuf>, SnapshotError> {
        if !lazy {
            return self.chain(tx, parent);
        }
        if let Some(p) = parent
            && self.get(tx, p)?.kind != SnapshotKind::Committed
        {
            return Err(SnapshotError::precondition(p, "a parent must be committed"));
        }
        Ok(Vec::new())
    }

    /// Creates `key` of `kind` on `parent`; a `lazy` one (committed) gets
    /// an empty placeholder directory in place of its layer.
    fn create(
        &self,
        key: &str,
        parent: Option<&str>,
        (kind, lazy): (Kind, bool),
        labels: Labels,
        hold: Option<&Hold>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        validate_key(key)?;
        labels::validate_all(&labels).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
        let parents = {
            let tx = self.db.read()?;
            if tx.get::<SnapshotRecord>(key)?.is_some() {
                return Err(SnapshotError::AlreadyExists(key.to_owned()));
            }
            self.lowers(&tx, parent, lazy)?
        };
        let id = id::new_id();
        let staging = self.tmp.join(format!("{NEW_PREFIX}{id}"));
        let built = (|| {
            fs::create_dir(&staging).map_err(|e| SnapshotError::io("create", &staging, e))?;
            if lazy {
                // An empty layer, committed as the backend commits one;
                // where snapshots stack as layers, without its `fs` until
                // a layer is attached there.
                self.backend.create(&staging, Kind::Active, &[])?;
                self.backend.commit(&staging)?;
                if self.backend.capabilities().overlay_layers {
                    let fs = staging.join("fs");
                    fs::remove_dir(&fs).map_err(|e| SnapshotError::io("remove", &fs, e))?;
                }
            } else {
                self.backend.create(&staging, kind, &parents)?;
            }
            sync_dir(&staging)
        })();
        if let Err(e) = built {
            self.discard(&staging);
            return Err(e);
        }
        let dir = self.dir(&id);
        fs::rename(&staging, &dir)
            .map_err(|e| SnapshotError::io("rename into snapshots", &dir, e))?;
        sync_dir(&self.snapshots)?;
        let recorded = (|| {
            let tx = self.db.write()?;
            if tx.get::<SnapshotRecord>(key)?.is_some() {
                return Err(SnapshotError::AlreadyExists(key.to_owned()));
            }
            // The parent may have gone since the first look (its
            // ancestors cannot: they have children). Attached layers are
            // not asked again here: a server that does not answer would
            // hold the write transaction.
            if let Some(p) = parent
                && self.get(&tx, p)?.kind != SnapshotKind::Committed
            {
                return Err(SnapshotError::precondition(p, "a parent must be committed"));
            }
            let ts = now();
            let record = SnapshotRecord {
                id: id.clone(),
                kind: kind.to_record(),
                parent: parent.map(str::to_owned),
                labels,
                created: ts,
                updated: ts,
                usage: lazy.then(Default::default),
                lazy,
            };
            tx.put(key, &record)?;
            if let Some(h) = hold {
                h.add_in(&tx, &Resource::snapshot(self.backend.name(), key))?;
            }
            tx.commit()?;
            Ok(())
        })();
        if let Err(e) = recorded {
            self.remove_dir(&id);
            return Err(e);
        }
        if lazy {
            return Ok(Vec::new());
        }
        Ok(self.backend.mounts(&dir, kind, &parents))
    }

    /// Gives the lazy snapshot `key` the layer of `filled`, a committed
    /// snapshot on the same parent made from the layer's blob, in one
    /// transaction: `key` keeps its name, parent, labels, children and
    /// every row naming it, and takes `filled`'s directory and usage;
    /// `filled` ceases to exist (leaving `hold`), and the placeholder goes.
    fn fill_lazy(&self, key: &str, filled: &str, hold: Option<&Hold>) -> Result<(), SnapshotError> {
        let tx = self.db.write()?;
        let lazy = self.get(&tx, key)?;
        if !lazy.lazy {
            return Err(SnapshotError::precondition(key, "it is not lazy"));
        }
        let _unattachable = self.not_attached(key, &lazy)?;
        let done = self.get(&tx, filled)?;
        if done.kind != SnapshotKind::Committed || done.lazy {
            return Err(SnapshotError::precondition(
                filled,
                "only a committed snapshot holding its layer can fill a lazy one",
            ));
        }
        if done.parent != lazy.parent {
            return Err(SnapshotError::precondition(
                filled,
                format!(
                    "its parent {:?} is not the lazy snapshot's {:?}",
                    done.parent, lazy.parent
                ),
            ));
        }
        if !tx
            .index_scan(SNAPSHOT_CHILDREN, &keys::prefix(&[filled]))?
            .is_empty()
        {
            return Err(SnapshotError::precondition(
                filled,
                "it has children, so it cannot become another snapshot",
            ));
        }
        let placeholder = lazy.id.clone();
        tx.put(
            key,
            &SnapshotRecord {
                id: done.id,
                usage: done.usage,
                lazy: false,
                updated: now(),
                ..lazy
            },
        )?;
        tx.delete::<SnapshotRecord>(filled)?;
        if let Some(h) = hold {
            h.remove_in(&tx, &Resource::snapshot(self.backend.name(), filled))?;
        }
        let gone = std::iter::once(filled.to_owned()).collect();
        strata_metadata::cascade::forget(&tx, &gone, &Default::default())?;
        tx.commit()?;
        self.remove_dir(&placeholder);
        Ok(())
    }

    /// Removes `path`, a directory nothing uses any more, once the lazy
    /// layers still mounted in it (by a server that has gone, moved out
    /// with its snapshot's directory) are detached. Other mounts are left
    /// alone: one that arrived by propagation may be a live peer's.
    fn remove_unmounted(&self, path: &Path) -> Result<(), SnapshotError> {
        for m in strata_sys::mount::info::mounts()? {
            if is_lazy_layer(&m) && m.mount_point.starts_with(path) {
                strata_sys::mount::detach(&m.mount_point)?;
            }
        }
        self.backend.remove(path)
    }

    /// Removes a staging directory after a failure (logged, not fatal).
    fn discard(&self, path: &Path) {
        match self.backend.remove(path) {
            Ok(()) => {}
            Err(e) => {
                self.db.leave_for_next_open();
                tracing::warn!(path = %path.display(), error = %e, "leaving a staging directory for the next open")
            }
        }
    }

    /// Moves a snapshot directory out of `snapshots/` and removes it.
    fn remove_dir(&self, id: &str) {
        let trash = self.tmp.join(format!("{RM_PREFIX}{id}"));
        match fs::rename(self.dir(id), &trash) {
            Ok(()) => self.discard(&trash),
            Err(e) => {
                self.db.leave_for_next_open();
                tracing::warn!(id, error = %e, "leaving a snapshot directory for the next open")
            }
        }
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        let tx = self.db.read()?;
        let r = self.get(&tx, key)?;
        if r.kind == SnapshotKind::Committed {
            return Err(SnapshotError::precondition(
                key,
                "a committed snapshot has no mounts; take a view of it",
            ));
        }
        let parents = self.chain(&tx, r.parent.as_deref())?;
        Ok(self
            .backend
            .mounts(&self.dir(&r.id), Kind::from_record(r.kind), &parents))
    }

    fn commit(
        &self,
        name: &str,
        key: &str,
        labels: Labels,
        hold: Option<&Hold>,
        onto: Option<&str>,
    ) -> Result<(), SnapshotError> {
        validate_key(name)?;
        if onto.is_some() && !self.backend.capabilities().overlay_layers {
            return Err(SnapshotError::precondition(
                key,
                "only overlay-layer backends can commit a snapshot onto a parent",
            ));
        }
        labels::validate_all(&labels).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
        let r = {
            let tx = self.db.read()?;
            let r = self.get(&tx, key)?;
            if r.kind != SnapshotKind::Active {
                return Err(SnapshotError::precondition(
                    key,
                    format!(
                        "only active snapshots can be committed, this one is {}",
                        Kind::from_record(r.kind).as_str()
                    ),
                ));
            }
            if tx.get::<SnapshotRecord>(name)?.is_some() {
                return Err(SnapshotError::AlreadyExists(name.to_owned()));
            }
            r
        };
        let dir = self.dir(&r.id);
        let usage = self.backend.usage(&dir)?;
        self.backend.commit(&dir)?;
        // Past the backend's hook, a failure to record the commit must undo
        // it: the snapshot stays active, and writable.
        let recorded = (|| {
            // What was written into the active snapshot must be durable before
            // the row calls it committed.
            strata_sys::sync::syncfs(&dir)?;
            let tx = self.db.write()?;
            let current = self.get(&tx, key)?;
            if current.id != r.id || current.kind != SnapshotKind::Active {
                return Err(SnapshotError::precondition(key, "changed while committing"));
            }
            if tx.get::<SnapshotRecord>(name)?.is_some() {
                return Err(SnapshotError::AlreadyExists(name.to_owned()));
            }
            let mut current = current;
            if let Some(parent) = onto {
                if current.parent.is_some() {
                    return Err(SnapshotError::precondition(
                        key,
                        "only a snapshot prepared without a parent can be given one",
                    ));
                }
                // The new parent must exist and be committed.
                self.chain(&tx, Some(parent))?;
                current.parent = Some(parent.to_owned());
            }
            let ts = now();
            let committed = SnapshotRecord {
                kind: SnapshotKind::Committed,
                labels,
                created: ts,
                updated: ts,
                usage: Some(usage.into()),
                ..current
            };
            tx.put(name, &committed)?;
            tx.delete::<SnapshotRecord>(key)?;
            if let Some(h) = hold {
                h.add_in(&tx, &Resource::snapshot(self.backend.name(), name))?;
                h.remove_in(&tx, &Resource::snapshot(self.backend.name(), key))?;
            }
            tx.commit()?;
            Ok(())
        })();
        if let Err(e) = &recorded
            && let Err(undo) = self.backend.abort_commit(&dir)
        {
            tracing::warn!(key, error = %e, undo = %undo, "could not undo a backend's commit after the store refused it");
        }
        recorded
    }

    /// Removes `key`; `held_by` (the handle's lease) lets go of it in the
    /// same transaction.
    fn remove(&self, key: &str, held_by: Option<&str>) -> Result<(), SnapshotError> {
        let tx = self.db.write()?;
        let r = self.get(&tx, key)?;
        let _unattachable = self.not_attached(key, &r)?;
        // The parent index: what it costs is the children, not the store.
        let children: Vec<String> = tx
            .index_scan(SNAPSHOT_CHILDREN, &keys::prefix(&[key]))?
            .iter()
            .filter_map(|k| keys::split(k).get(1).map(|c| (*c).to_owned()))
            .take(3)
            .collect();
        if !children.is_empty() {
            return Err(SnapshotError::precondition(
                key,
                format!(
                    "cannot remove it: it has children ({})",
                    children.join(", ")
                ),
            ));
        }
        tx.delete::<SnapshotRecord>(key)?;
        // As a commit does for the key it renames away: a lease left naming
        // a removed key would hold whatever is made under that key later,
        // and one long-lived lease (`strata serve`'s) would grow by every
        // snapshot its client ever removed.
        if let Some(lease) = held_by {
            self.leases.delete_resource_in(
                &tx,
                lease,
                &Resource::snapshot(self.backend.name(), key),
            )?;
        }
        let gone = std::iter::once(key.to_owned()).collect();
        strata_metadata::cascade::forget(&tx, &gone, &Default::default())?;
        tx.commit()?;
        self.remove_dir(&r.id);
        Ok(())
    }

    fn stat(&self, key: &str) -> Result<Info, SnapshotError> {
        let r = self.get(&self.db.read()?, key)?;
        Ok(Info::from_record(key, &r))
    }

    fn update(&self, info: &Info, fieldpaths: &[String]) -> Result<Info, SnapshotError> {
        let tx = self.db.write()?;
        let mut r = self.get(&tx, &info.name)?;
        labels::apply_update(&mut r.labels, &info.labels, fieldpaths).map_err(|path| {
            SnapshotError::Invalid(format!(
                "cannot update field {path:?} of snapshot {:?}: only labels and labels.KEY",
                info.name
            ))
        })?;
        labels::validate_all(&r.labels).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
        r.updated = now();
        tx.put(&info.name, &r)?;
        tx.commit()?;
        Ok(Info::from_record(&info.name, &r))
    }

    fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        let r = self.get(&self.db.read()?, key)?;
        match r.usage {
            Some(u) if r.kind == SnapshotKind::Committed => Ok(u.into()),
            _ => self.backend.usage(&self.dir(&r.id)),
        }
    }

    fn list(&self, filter: &Filter) -> Result<Vec<Info>, SnapshotError> {
        let tx = self.db.read()?;
        // Walks by parent read the parent index: they cost the children.
        let rows = match filter.required_equal("parent") {
            Some(parent) => {
                let mut rows = Vec::new();
                for k in tx.index_scan(SNAPSHOT_CHILDREN, &keys::prefix(&[parent]))? {
                    let Some(child) = keys::split(&k).get(1).map(|c| (*c).to_owned()) else {
                        continue;
                    };
                    if let Some(r) = tx.get::<SnapshotRecord>(&child)? {
                        rows.push((child, r));
                    }
                }
                rows
            }
            None => tx.scan::<SnapshotRecord>("")?,
        };
        Ok(rows
            .iter()
            .map(|(k, r)| Info::from_record(k, r))
            .filter(|i| filter.matches(i))
            .collect())
    }

    /// Makes disk and rows agree after a crash: staging and trash under
    /// `tmp/` go, directories without rows go, rows whose directory is gone
    /// are dropped together with their descendants.
    fn reconcile(&self) -> Result<(), SnapshotError> {
        let tmp = strata_sys::Root::open(&self.tmp)?;
        for (name, _) in tmp.read_dir(Path::new(""))? {
            if is_store_scratch(&name.to_string_lossy()) {
                self.remove_unmounted(&self.tmp.join(&name))?;
            }
        }
        let rows = self.db.read()?.scan::<SnapshotRecord>("")?;
        // A layer attached by a process that has gone answers nothing, and
        // keeps its directory busy; what it left is cleared (unless an
        // attach serves it now).
        for (_, r) in rows.iter().filter(|(_, r)| r.lazy) {
            if !self.backend.capabilities().overlay_layers || !self.dir(&r.id).is_dir() {
                continue;
            }
            if let Ok(_held) = strata_sys::lock::FileLock::try_exclusive(&self.attach_lock(&r.id))
                && !self.attached(&r.id)
            {
                self.clear_attach(&r.id)?;
            }
        }
        let ids: BTreeSet<&str> = rows.iter().map(|(_, r)| r.id.as_str()).collect();
        let snaps = strata_sys::Root::open(&self.snapshots)?;
        for (name, _) in snaps.read_dir(Path::new(""))? {
            if !ids.contains(name.to_string_lossy().as_ref()) {
                tracing::info!(dir = %self.snapshots.join(&name).display(), "removing a snapshot directory without a row");
                self.remove_unmounted(&self.snapshots.join(&name))?;
            }
        }
        let mut gone: BTreeSet<String> = rows
            .iter()
            .filter(|(_, r)| !self.has_dir(r))
            .map(|(k, _)| k.clone())
            .collect();
        // A crash between a backend's commit and the row that records it
        // left an active snapshot committed in the backend's eyes.
        for (_, r) in rows
            .iter()
            .filter(|(k, r)| r.kind == SnapshotKind::Active && !gone.contains(k.as_str()))
        {
            self.backend.abort_commit(&self.dir(&r.id))?;
        }
        if gone.is_empty() {
            return Ok(());
        }
        // Descendants of a vanished snapshot cannot be used either.
        let parent_of: HashMap<&str, Option<&str>> = rows
            .iter()
            .map(|(k, r)| (k.as_str(), r.parent.as_deref()))
            .collect();
        for (key, _) in &rows {
            let mut cur = parent_of.get(key.as_str()).copied().flatten();
            while let Some(p) = cur {
                if gone.contains(p) {
                    gone.insert(key.clone());
                    break;
                }
                cur = parent_of.get(p).copied().flatten();
            }
        }
        let tx = self.db.write()?;
        for key in &gone {
            tracing::warn!(key, "dropping a snapshot whose directory is missing");
            tx.delete::<SnapshotRecord>(key)?;
        }
        strata_metadata::cascade::forget(
            &tx,
            &gone.iter().cloned().collect(),
            &Default::default(),
        )?;
        tx.commit()?;
        for (key, r) in &rows {
            if gone.contains(key) {
                self.remove_dir(&r.id);
            }
        }
        Ok(())
    }

    /// Whether `r`'s directory is there: its `fs`, or for a lazy one (whose
    /// placeholder may have none) the snapshot's own directory.
    fn has_dir(&self, r: &SnapshotRecord) -> bool {
        match r.lazy {
            true => self.dir(&r.id).is_dir(),
            false => self.dir(&r.id).join("fs").is_dir(),
        }
    }

    fn check(&self) -> Result<Vec<Violation>, SnapshotError> {
        let rows = self.db.read()?.scan::<SnapshotRecord>("")?;
        let mut out = Vec::new();
        let ids: BTreeSet<&str> = rows.iter().map(|(_, r)| r.id.as_str()).collect();
        for (key, r) in &rows {
            if r.lazy
                && strata_sys::mount::mount_point(&self.placeholder(&r.id))
                    .is_ok_and(|m| m == strata_sys::mount::MountPoint::Dead)
            {
                out.push(Violation {
                    table: "snapshots",
                    key: key.clone(),
                    problem: format!(
                        "snapshots/{}/fs: the layer attached there is no longer served (its server has gone); attach the image again, or detach it",
                        r.id
                    ),
                });
            } else if !self.has_dir(r) {
                out.push(Violation {
                    table: "snapshots",
                    key: key.clone(),
                    problem: format!("directory snapshots/{}/fs is missing", r.id),
                });
            }
        }
        for entry in fs::read_dir(&self.snapshots)
            .map_err(|e| SnapshotError::io("read directory", &self.snapshots, e))?
        {
            let entry =
                entry.map_err(|e| SnapshotError::io("read directory", &self.snapshots, e))?;
            if !ids.contains(entry.file_name().to_string_lossy().as_ref()) {
                out.push(Violation {
                    table: "snapshots",
                    key: entry.path().display().to_string(),
                    problem: "directory has no row".into(),
                });
            }
        }
        Ok(out)
    }
}

impl SnapshotStore {
    /// Opens the store of the state root `root` (`<root>/snapshots`, staging
    /// in `<root>/tmp`) for `backend`, reconciling disk and rows. The caller
    /// must own the root.
    pub fn open(
        root: &Path,
        db: Arc<MetaDb>,
        backend: Arc<dyn Backend>,
    ) -> Result<SnapshotStore, SnapshotError> {
        SnapshotStore::open_after(root, db, backend, LastClose::Unclean)
    }

    /// Opens the store; after a clean close (`last`) the reconciliation is
    /// skipped, so opening costs the same whatever the store holds.
    #[tracing::instrument(skip_all, fields(root = %root.display(), backend = backend.name()))]
    pub fn open_after(
        root: &Path,
        db: Arc<MetaDb>,
        backend: Arc<dyn Backend>,
        last: LastClose,
    ) -> Result<SnapshotStore, SnapshotError> {
        let snapshots = root.join("snapshots");
        let tmp = root.join("tmp");
        for d in [&snapshots, &tmp] {
            fs::create_dir_all(d).map_err(|e| SnapshotError::io("create", d, e))?;
            fs::set_permissions(d, fs::Permissions::from_mode(0o700))
                .map_err(|e| SnapshotError::io("chmod", d, e))?;
        }
        let inner = Inner {
            leases: LeaseManager::new(Arc::clone(&db)),
            db,
            backend,
            snapshots,
            tmp,
            closed: AtomicBool::new(false),
        };
        if last == LastClose::Unclean {
            inner.reconcile()?;
        }
        Ok(SnapshotStore {
            inner: Arc::new(inner),
            ctx: None,
        })
    }

    /// This store acting for the operation `ctx`: what it prepares, views
    /// and commits goes into `ctx`'s lease (the lazy one made on first
    /// need) in the same transaction that records it, and what it removes
    /// leaves that lease the same way.
    pub fn under(&self, ctx: &OpCtx) -> SnapshotStore {
        SnapshotStore {
            inner: Arc::clone(&self.inner),
            ctx: Some(ctx.clone()),
        }
    }

    fn hold(&self) -> Result<Option<Hold>, SnapshotError> {
        match &self.ctx {
            Some(ctx) => Ok(Hold::of(ctx, &self.inner.leases)?),
            None => Ok(None),
        }
    }

    /// Commits the active snapshot `key`, prepared without a parent, as
    /// `name` on top of the committed `parent` (containerd's rebase): on a
    /// backend of overlay layers a layer written before its lowers were
    /// known (whiteouts unconditional) takes its place in a chain this way.
    pub async fn commit_onto(
        &self,
        name: &str,
        key: &str,
        parent: &str,
        labels: Labels,
    ) -> Result<(), SnapshotError> {
        let (name, key, parent) = (name.to_owned(), key.to_owned(), parent.to_owned());
        let hold = self.hold()?;
        self.blocking(move |i| i.commit(&name, &key, labels, hold.as_ref(), Some(&parent)))
            .await
    }

    /// Reconciles directories with rows (what open does after an unclean
    /// close): staging and directories without rows go, rows without
    /// directories go with their descendants.
    pub fn reconcile(&self) -> Result<(), SnapshotError> {
        self.inner.reconcile()
    }

    /// Removes what removals left behind (directories moved out of
    /// `snapshots/` whose deletion failed or was interrupted); safe while
    /// the store is in use, unlike [`SnapshotStore::reconcile`]. Returns
    /// how many went.
    pub fn cleanup(&self) -> Result<usize, SnapshotError> {
        let tmp = strata_sys::Root::open(&self.inner.tmp)?;
        let mut removed = 0;
        for (name, _) in tmp.read_dir(Path::new(""))? {
            if !name.to_string_lossy().starts_with(RM_PREFIX) {
                continue;
            }
            // A removal may be deleting this one right now: what it takes
            // first is not an error.
            match self.inner.remove_unmounted(&self.inner.tmp.join(&name)) {
                Ok(()) => removed += 1,
                Err(e) if strata_core::Classify::is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    /// The ids of the snapshots some mount keeps busy: a bind of its tree,
    /// an overlay using it as a layer (one the legacy overlay path mounted
    /// through short links included). Snapshot ids are random, so any path
    /// component of a busy directory equal to an id is that snapshot,
    /// whatever file system the root is on. An unreadable mount table is an
    /// error.
    pub fn mounted(&self) -> Result<std::collections::HashSet<String>, SnapshotError> {
        Ok(strata_sys::mount::info::directories_in_use()?
            .iter()
            .flat_map(|d| d.components())
            .filter_map(|c| c.as_os_str().to_str())
            .map(str::to_owned)
            .collect())
    }

    /// What the backend's snapshots allow.
    pub fn capabilities(&self) -> crate::Capabilities {
        self.inner.backend.capabilities()
    }

    /// The directory holding `key`'s tree (`.../snapshots/<id>/fs`): the
    /// upper directory for overlay, which the diff engine reads directly.
    /// A lazy snapshot's is refused ([`SnapshotError::Lazy`]): it holds
    /// no layer yet.
    pub fn fs_dir(&self, key: &str) -> Result<PathBuf, SnapshotError> {
        let r = self.inner.get(&self.inner.db.read()?, key)?;
        if r.lazy {
            return Err(SnapshotError::Lazy(key.to_owned()));
        }
        Ok(self.inner.dir(&r.id).join("fs"))
    }

    /// Attaches the lazy snapshot `key`: what [`Attachment::dir`](crate::Attachment::dir) names
    /// (its placeholder's directory, made now) is where the caller mounts
    /// its layer, served through FUSE, say. While a file system that
    /// answers is mounted there, `key` reads as any committed snapshot
    /// (views, prepares on it and mounts stack it), and it is neither
    /// removed nor filled; while the [`Attachment`](crate::Attachment) lives, no other
    /// attach of it starts. A mount left there by a server that has gone
    /// is detached first. Only for backends whose snapshots hold one
    /// layer each ([`crate::Capabilities::overlay_layers`]), without
    /// `userxattr`; for a snapshot not lazy, a precondition error.
    pub fn attach(&self, key: &str) -> Result<crate::Attachment, SnapshotError> {
        self.inner.attach(key)
    }

    /// A precondition error when `key` is lazy and attached
    /// ([`SnapshotStore::attach`]): what would remove or fill it asks
    /// first, before any work.
    pub fn not_attached(&self, key: &str) -> Result<(), SnapshotError> {
        let r = self.inner.get(&self.inner.db.read()?, key)?;
        self.inner.not_attached(key, &r).map(drop)
    }

    /// True when `key` is lazy: committed, its layer not fetched yet
    /// ([`SnapshotStore::create_lazy`]).
    pub fn is_lazy(&self, key: &str) -> Result<bool, SnapshotError> {
        Ok(self.inner.get(&self.inner.db.read()?, key)?.lazy)
    }

    /// Records the committed snapshot `key` on `parent` (committed, lazy
    /// or not) as lazy: a layer known by name whose files are not here
    /// yet. Its directory is an empty placeholder; every call that would
    /// read it, or stack on it (a view, a prepare, [`SnapshotStore::fs_dir`],
    /// [`SnapshotStore::view_mounts`]), is refused with
    /// [`SnapshotError::Lazy`] until [`SnapshotStore::fill_lazy`] gives
    /// it its layer. It is held, removed and collected like any other.
    pub async fn create_lazy(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<(), SnapshotError> {
        self.create(key, parent, (Kind::Committed, true), labels)
            .await
            .map(drop)
    }

    /// Creates `key` of `kind` (lazy or not) on `parent`, held by the
    /// handle's operation.
    async fn create(
        &self,
        key: &str,
        parent: Option<&str>,
        kind: (Kind, bool),
        labels: Labels,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let (key, parent) = (key.to_owned(), parent.map(str::to_owned));
        let hold = self.hold()?;
        self.blocking(move |i| i.create(&key, parent.as_deref(), kind, labels, hold.as_ref()))
            .await
    }

    /// Turns the lazy snapshot `key` into an ordinary one, atomically: it
    /// takes the layer of `filled`, a committed snapshot made on the same
    /// parent (which must hold its layer) from the layer's blob, which
    /// ceases to exist. `key` keeps its name, labels, children and
    /// everything that names it. A crash leaves either the lazy snapshot
    /// and `filled`, or the filled snapshot alone.
    pub async fn fill_lazy(&self, key: &str, filled: &str) -> Result<(), SnapshotError> {
        let (key, filled) = (key.to_owned(), filled.to_owned());
        let hold = self.hold()?;
        self.blocking(move |i| i.fill_lazy(&key, &filled, hold.as_ref()))
            .await
    }

    /// Mounts of a read-only view of committed `key` without creating a view
    /// snapshot (for `strata mount` of a committed snapshot).
    pub fn view_mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        let tx = self.inner.db.read()?;
        let parents = self.inner.chain(&tx, Some(key))?;
        let empty = self.inner.tmp.join("empty-view");
        Ok(self.inner.backend.mounts(&empty, Kind::View, &parents))
    }

    pub(crate) fn db(&self) -> &MetaDb {
        &self.inner.db
    }

    /// Moves a swept snapshot's directory out and removes it (a failure is
    /// logged; the next open sweeps the rest).
    pub(crate) fn remove_snapshot_dir(&self, id: &str) {
        self.inner.remove_dir(id);
    }

    /// Rows against directories: every problem found.
    pub fn check(&self) -> Result<Vec<Violation>, SnapshotError> {
        self.inner.check()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, SnapshotError> + Send + 'static,
    ) -> Result<T, SnapshotError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(SnapshotError::closed());
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| SnapshotError::Task(e.to_string()))?
    }
}

#[async_trait::async_trait]
impl Snapshotter for SnapshotStore {
    fn name(&self) -> &str {
        self.inner.backend.name()
    }

    async fn prepare(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.create(key, parent, (Kind::Active, false), labels)
            .await
    }

    async fn view(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.create(key, parent, (Kind::View, false), labels).await
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        let key = key.to_owned();
        self.blocking(move |i| i.mounts(&key)).await
    }

    async fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<(), SnapshotError> {
        let (name, key) = (name.to_owned(), key.to_owned());
        let hold = self.hold()?;
        self.blocking(move |i| i.commit(&name, &key, labels, hold.as_ref(), None))
            .await
    }

    async fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        let key = key.to_owned();
        // The lease as it is: a removal never makes a lazy one.
        let lease = self.ctx.as_ref().and_then(OpCtx::lease);
        self.blocking(move |i| i.remove(&key, lease.as_deref()))
            .await
    }

    async fn stat(&self, key: &str) -> Result<Info, SnapshotError> {
        let key = key.to_owned();
        self.blocking(move |i| i.stat(&key)).await
    }

    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info, SnapshotError> {
        let fieldpaths = fieldpaths.to_vec();
        self.blocking(move |i| i.update(&info, &fieldpaths)).await
    }

    async fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        let key = key.to_owned();
        self.blocking(move |i| i.usage(&key)).await
    }

    async fn walk(&self, filter: &Filter, f: WalkFn<'_>) -> Result<(), SnapshotError> {
        let filter = filter.clone();
        let infos = self.blocking(move |i| i.list(&filter)).await?;
        for info in infos {
            f(info).await?;
        }
        Ok(())
    }

    async fn close(&self) -> Result<(), SnapshotError> {
        self.inner.closed.store(true, Ordering::Release);
        Ok(())
    }
}
