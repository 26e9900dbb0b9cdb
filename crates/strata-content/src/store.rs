//! [`ContentStore`]: blob queries, label updates, walks, deletes, the
//! reconcile pass at open and the disk-against-rows check.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use strata_core::{Algorithm, Digest, Digester, Filter, labels};
use strata_leases::{Hold, LeaseManager, OpCtx, Resource};
use strata_metadata::records::{ContentRecord, IngestRecord, now};
use strata_metadata::{LastClose, MetaDb, Reader, Violation};

use crate::error::ContentError;
use crate::info::{Info, Status};
use crate::reader::ReaderAt;
use crate::writer::Writer;

pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    pub(crate) db: Arc<MetaDb>,
    active: Mutex<HashSet<String>>,
    /// Serializes the exists-check, rename and row insert of commits and
    /// deletes, so two commits of one digest cannot both rename.
    commit_lock: Mutex<()>,
    /// The default namespace's leases, where operations' holds go.
    pub(crate) leases: LeaseManager,
}

impl Inner {
    pub(crate) fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    pub(crate) fn ingest_dir(&self, id: &str) -> PathBuf {
        self.dir.join("ingest").join(id)
    }

    pub(crate) fn commit_guard(&self) -> MutexGuard<'_, ()> {
        self.commit_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refs with an open writer.
    pub(crate) fn active_refs(&self) -> Vec<String> {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub(crate) fn release(&self, reference: &str) {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(reference);
    }

    /// Removes an ingest's row, then its directory.
    pub(crate) fn drop_ingest(&self, reference: &str, id: &str) -> Result<(), ContentError> {
        let tx = self.db.write()?;
        tx.delete::<IngestRecord>(reference)?;
        tx.commit()?;
        remove_dir(&self.ingest_dir(id))
    }
}

/// Removes a directory the store created (an ingest directory) by fd,
/// without following symlinks or crossing mounts.
pub(crate) fn remove_dir(path: &Path) -> Result<(), ContentError> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    strata_sys::Root::open(parent)?.remove_all(Path::new(name))?;
    Ok(())
}

/// The outcome of [`ContentStore::ingest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ingested {
    /// The content's digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// True when the store already had it (nothing was written).
    pub already_existed: bool,
}

/// The content store of one root.
#[derive(Clone)]
pub struct ContentStore {
    pub(crate) inner: Arc<Inner>,
    /// The operation whose lease what this handle commits goes into.
    ctx: Option<OpCtx>,
}

impl std::fmt::Debug for ContentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentStore")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

fn validate_ref(reference: &str) -> Result<(), ContentError> {
    if reference.is_empty() || reference.len() > 1024 || reference.contains('\0') {
        return Err(ContentError::Invalid(format!(
            "ingest ref {reference:?} must be 1 to 1024 bytes without NUL"
        )));
    }
    Ok(())
}

impl ContentStore {
    /// Opens the store in `dir` (`<root>/content`), creating its layout, and
    /// reconciles disk with rows: blobs without rows and ingest directories
    /// without rows are removed, rows without their files are dropped. The
    /// caller must own the root (its `LOCK`).
    pub fn open(dir: &Path, db: Arc<MetaDb>) -> Result<ContentStore, ContentError> {
        ContentStore::open_after(dir, db, LastClose::Unclean)
    }

    /// Opens the store; after a clean close (`last`) the reconciliation is
    /// skipped, so opening costs the same whatever the store holds.
    #[tracing::instrument(skip_all, fields(dir = %dir.display()))]
    pub fn open_after(
        dir: &Path,
        db: Arc<MetaDb>,
        last: LastClose,
    ) -> Result<ContentStore, ContentError> {
        for alg in Algorithm::ALL {
            let d = dir.join("blobs").join(alg.as_str());
            fs::create_dir_all(&d).map_err(|e| ContentError::io("create", &d, e))?;
        }
        let ingest = dir.join("ingest");
        fs::create_dir_all(&ingest).map_err(|e| ContentError::io("create", &ingest, e))?;
        let store = ContentStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                active: Mutex::new(HashSet::new()),
                commit_lock: Mutex::new(()),
                leases: LeaseManager::new(Arc::clone(&db)),
                db,
            }),
            ctx: None,
        };
        if last == LastClose::Unclean {
            store.reconcile()?;
        }
        Ok(store)
    }

    /// This store acting for the operation `ctx`: what its writers commit
    /// goes into `ctx`'s lease (the lazy one made on first need) in the
    /// same transaction that records it; a blob already there is held too.
    pub fn under(&self, ctx: &OpCtx) -> ContentStore {
        ContentStore {
            inner: Arc::clone(&self.inner),
            ctx: Some(ctx.clone()),
        }
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Reconciles disk with rows (what open does after an unclean close):
    /// blobs and ingests without rows go, rows without their files go.
    pub fn reconcile(&self) -> Result<(), ContentError> {
        let scan = self.scan_disk()?;
        let tx = self.inner.db.write()?;
        for d in &scan.rows_without_blob {
            tracing::warn!(digest = %d, "dropping content row whose blob is missing");
            tx.delete::<ContentRecord>(d.as_str())?;
        }
        let gone = scan
            .rows_without_blob
            .iter()
            .map(|d| d.to_string())
            .collect();
        strata_metadata::cascade::forget(&tx, &Default::default(), &gone)?;
        for (reference, _) in &scan.ingest_rows_without_data {
            tracing::info!(reference = %reference, "dropping ingest whose data is missing");
            tx.delete::<IngestRecord>(reference)?;
        }
        tx.commit()?;
        for path in scan.blobs_without_row.iter().chain(&scan.stray_blob_files) {
            tracing::info!(path = %path.display(), "removing blob without a committed row");
            fs::remove_file(path).map_err(|e| ContentError::io("remove", path, e))?;
        }
        for path in scan
            .ingest_dirs_without_row
            .iter()
            .chain(scan.ingest_rows_without_data.iter().map(|(_, p)| p))
        {
            remove_dir(path)?;
        }
        Ok(())
    }

    fn scan_disk(&self) -> Result<DiskScan, ContentError> {
        let read = self.inner.db.read()?;
        let rows = read.scan::<ContentRecord>("")?;
        let ingests = read.scan::<IngestRecord>("")?;
        drop(read);
        let mut scan = DiskScan::default();
        let mut on_disk = HashSet::new();
        let blobs = self.inner.dir.join("blobs");
        for alg_entry in read_dir(&blobs)? {
            let alg_path = alg_entry.path();
            let alg = alg_entry.file_name().to_string_lossy().into_owned();
            if !alg_path.is_dir() {
                scan.stray_blob_files.push(alg_path);
                continue;
            }
            for entry in read_dir(&alg_path)? {
                let name = entry.file_name().to_string_lossy().into_owned();
                match Digest::parse(&format!("{alg}:{name}")) {
                    Ok(d) => {
                        on_disk.insert(d);
                    }
                    Err(_) => scan.stray_blob_files.push(entry.path()),
                }
            }
        }
        let with_rows: HashSet<Digest> = rows
            .iter()
            .filter_map(|(k, _)| Digest::parse(k).ok())
            .collect();
        for d in &on_disk {
            if !with_rows.contains(d) {
                scan.blobs_without_row.push(self.inner.blob_path(d));
            }
        }
        for (k, r) in rows {
            match Digest::parse(&k) {
                Ok(d) if on_disk.contains(&d) => scan.blobs.push((d, r)),
                Ok(d) => scan.rows_without_blob.push(d),
                Err(_) => {} // reported by the metadata check
            }
        }
        let ids: HashSet<&str> = ingests.iter().map(|(_, r)| r.id.as_str()).collect();
        for entry in read_dir(&self.inner.dir.join("ingest"))? {
            if !ids.contains(entry.file_name().to_string_lossy().as_ref()) {
                scan.ingest_dirs_without_row.push(entry.path());
            }
        }
        for (reference, r) in &ingests {
            let dir = self.inner.ingest_dir(&r.id);
            if !dir.join("data").is_file() {
                scan.ingest_rows_without_data.push((reference.clone(), dir));
            }
        }
        Ok(scan)
    }

    /// Compares rows with files; with `verify`, re-hashes every blob.
    /// Reports every problem found.
    pub fn check(&self, verify: bool) -> Result<Vec<Violation>, ContentError> {
        let scan = self.scan_disk()?;
        let mut out = Vec::new();
        let mut report = |table, key: String, problem: String| {
            out.push(Violation {
                table,
                key,
                problem,
            })
        };
        for d in scan.rows_without_blob {
            report("content", d.to_string(), "row has no blob file".into());
        }
        for p in scan.blobs_without_row {
            report(
                "content",
                p.display().to_string(),
                "blob file has no row".into(),
            );
        }
        for p in scan.stray_blob_files {
            report(
                "content",
                p.display().to_string(),
                "file under blobs/ is not a blob".into(),
            );
        }
        for p in scan.ingest_dirs_without_row {
            report(
                "ingests",
                p.display().to_string(),
                "ingest directory has no row".into(),
            );
        }
        for (reference, _) in scan.ingest_rows_without_data {
            report("ingests", reference, "ingest row has no data file".into());
        }
        for (d, r) in scan.blobs {
            let path = self.inner.blob_path(&d);
            let meta =
                fs::symlink_metadata(&path).map_err(|e| ContentError::io("stat", &path, e))?;
            if !meta.is_file() {
                report(
                    "content",
                    d.to_string(),
                    "blob is not a regular file".into(),
                );
                continue;
            }
            if meta.len() != r.size {
                report(
                    "content",
                    d.to_string(),
                    format!("blob has {} bytes, row says {}", meta.len(), r.size),
                );
                continue;
            }
            if verify {
                let actual = hash_file(&path, d.algorithm())?;
                if actual != d {
                    report("content", d.to_string(), format!("blob hashes to {actual}"));
                }
            }
        }
        Ok(out)
    }

    /// The blob's info.
    pub fn info(&self, digest: &Digest) -> Result<Info, ContentError> {
        let r = self
            .inner
            .db
            .read()?
            .get::<ContentRecord>(digest.as_str())?
            .ok_or_else(|| ContentError::NotFound(digest.clone()))?;
        Ok(Info::from_record(digest.clone(), r))
    }

    /// The blob's info, and the blob held by this store's operation (when
    /// it acts for one) in the same transaction that finds it, so a
    /// collection can never take a blob an operation chose to reuse.
    pub fn hold(&self, digest: &Digest) -> Result<Info, ContentError> {
        let Some(hold) = self
            .ctx
            .as_ref()
            .map(|ctx| Hold::of(ctx, &self.inner.leases))
            .transpose()?
            .flatten()
        else {
            return self.info(digest);
        };
        let tx = self.inner.db.write()?;
        let r = tx
            .get::<ContentRecord>(digest.as_str())?
            .ok_or_else(|| ContentError::NotFound(digest.clone()))?;
        hold.add_in(&tx, &Resource::content(digest))?;
        tx.commit()?;
        Ok(Info::from_record(digest.clone(), r))
    }

    /// Updates labels. With no field paths every label is replaced by
    /// `info.labels`; `labels` does the same; `labels.KEY` sets or (when
    /// absent or empty in `info`) removes one label. Other paths are invalid.
    pub fn update(&self, info: &Info, fieldpaths: &[&str]) -> Result<Info, ContentError> {
        self.modify_labels(&info.digest, |labels| {
            labels::apply_update(labels, &info.labels, fieldpaths).map_err(|path| {
                ContentError::Invalid(format!(
                    "cannot update field {path:?} of content {}: only labels and labels.KEY",
                    info.digest
                ))
            })?;
            Ok(true)
        })
    }

    /// Sets label `key` of blob `digest` to what `edit` makes of its current
    /// value, reading and writing in one transaction, so two callers that
    /// each add to a label's value both keep their part. `edit` returning
    /// `None` leaves the blob untouched, and an empty value removes the
    /// label; the result is validated like `update`'s.
    pub fn edit_label(
        &self,
        digest: &Digest,
        key: &str,
        edit: impl FnOnce(Option<&str>) -> Option<String>,
    ) -> Result<Info, ContentError> {
        self.modify_labels(digest, |labels| {
            let Some(value) = edit(labels.get(key).map(String::as_str)) else {
                return Ok(false);
            };
            labels.insert(key.to_owned(), value);
            Ok(true)
        })
    }

    /// Blob `digest`'s labels changed by `change` (which says whether it
    /// changed anything) in one write transaction; empty values are
    /// dropped and the rest validated before anything is written.
    fn modify_labels(
        &self,
        digest: &Digest,
        change: impl FnOnce(&mut strata_core::Labels) -> Result<bool, ContentError>,
    ) -> Result<Info, ContentError> {
        let _guard = self.inner.commit_guard();
        let tx = self.inner.db.write()?;
        let mut r = tx
            .get::<ContentRecord>(digest.as_str())?
            .ok_or_else(|| ContentError::NotFound(digest.clone()))?;
        if !change(&mut r.labels)? {
            return Ok(Info::from_record(digest.clone(), r));
        }
        r.labels.retain(|_, v| !v.is_empty());
        labels::validate_all(&r.labels).map_err(|e| ContentError::Invalid(e.to_string()))?;
        r.updated = now();
        tx.put(digest.as_str(), &r)?;
        tx.commit()?;
        Ok(Info::from_record(digest.clone(), r))
    }

    /// Every blob that passes `filter`, in digest order.
    pub fn list(&self, filter: &Filter) -> Result<Vec<Info>, ContentError> {
        let rows = self.inner.db.read()?.scan::<ContentRecord>("")?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, r)| Digest::parse(&k).ok().map(|d| Info::from_record(d, r)))
            .filter(|i| filter.matches(i))
            .collect())
    }

    /// Calls `f` for every blob that passes `filter`, stopping at its first
    /// error.
    pub fn walk<E: From<ContentError>>(
        &self,
        filter: &Filter,
        mut f: impl FnMut(Info) -> Result<(), E>,
    ) -> Result<(), E> {
        for info in self.list(filter)? {
            f(info)?;
        }
        Ok(())
    }

    /// Deletes a blob: the row first, then the file.
    pub fn delete(&self, digest: &Digest) -> Result<(), ContentError> {
        let _guard = self.inner.commit_guard();
        let tx = self.inner.db.write()?;
        if !tx.delete::<ContentRecord>(digest.as_str())? {
            return Err(ContentError::NotFound(digest.clone()));
        }
        let gone = std::iter::once(digest.to_string()).collect();
        strata_metadata::cascade::forget(&tx, &Default::default(), &gone)?;
        tx.commit()?;
        let path = self.inner.blob_path(digest);
        fs::remove_file(&path).map_err(|e| ContentError::io("remove", &path, e))
    }

    /// Opens a committed blob for reading.
    pub fn reader_at(&self, digest: &Digest) -> Result<ReaderAt, ContentError> {
        let info = self.info(digest)?;
        let path = self.inner.blob_path(digest);
        let file = fs::File::open(&path).map_err(|e| ContentError::io("open", &path, e))?;
        Ok(ReaderAt::new(file, info.size))
    }

    /// Begins the ingest `reference`, or resumes it with the bytes already
    /// written (re-hashed). One writer per ref at a time: a second gets
    /// [`ContentError::RefInUse`].
    pub fn writer(
        &self,
        reference: &str,
        expected_size: Option<u64>,
        expected: Option<&Digest>,
    ) -> Result<Writer, ContentError> {
        validate_ref(reference)?;
        {
            let mut active = self.inner.active.lock().unwrap_or_else(|p| p.into_inner());
            if !active.insert(reference.to_owned()) {
                return Err(ContentError::RefInUse(reference.to_owned()));
            }
        }
        Writer::open(
            Arc::clone(&self.inner),
            self.ctx.clone(),
            reference,
            expected_size,
            expected,
        )
        .map_err(|e| {
            self.inner.release(reference);
            match e {
                e @ (ContentError::Meta(_) | ContentError::Io { .. }) => ContentError::Ingest {
                    reference: reference.to_owned(),
                    source: Box::new(e),
                },
                e => e,
            }
        })
    }

    fn ingest_record(&self, reference: &str) -> Result<IngestRecord, ContentError> {
        self.inner
            .db
            .read()?
            .get::<IngestRecord>(reference)?
            .ok_or_else(|| ContentError::IngestNotFound(reference.to_owned()))
    }

    /// The status of an ingest.
    pub fn status(&self, reference: &str) -> Result<Status, ContentError> {
        let r = self.ingest_record(reference)?;
        crate::writer::status_of(&self.inner, reference, &r)
    }

    /// Every ingest whose status passes `filter` (fields `ref`, `expected`).
    pub fn list_statuses(&self, filter: &Filter) -> Result<Vec<Status>, ContentError> {
        let rows = self.inner.db.read()?.scan::<IngestRecord>("")?;
        let mut out = Vec::new();
        for (reference, r) in rows {
            let st = crate::writer::status_of(&self.inner, &reference, &r)?;
            if filter.matches(&st) {
                out.push(st);
            }
        }
        Ok(out)
    }

    /// Abandons an ingest and its partial data. Refused while a writer holds
    /// it.
    pub fn abort(&self, reference: &str) -> Result<(), ContentError> {
        {
            let active = self.inner.active.lock().unwrap_or_else(|p| p.into_inner());
            if active.contains(reference) {
                return Err(ContentError::RefInUse(reference.to_owned()));
            }
        }
        let r = self.ingest_record(reference)?;
        self.inner.drop_ingest(reference, &r.id)
    }

    /// Writes all of `reader` as the ingest `reference` and commits it,
    /// resuming a partial ingest by skipping the bytes it already has. Content
    /// the store already holds is reported as such, not as an error.
    pub fn ingest(
        &self,
        reference: &str,
        mut reader: impl Read,
        expected_size: Option<u64>,
        expected: Option<&Digest>,
        labels: &strata_core::Labels,
    ) -> Result<Ingested, ContentError> {
        if let Some(d) = expected {
            match self.hold(d) {
                Ok(info) => {
                    return Ok(Ingested {
                        digest: info.digest,
                        size: info.size,
                        already_existed: true,
                    });
                }
                Err(ContentError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let mut w = self.writer(reference, expected_size, expected)?;
        let skip = w.status().offset;
        let skipped = io::copy(&mut (&mut reader).take(skip), &mut io::sink())
            .map_err(|e| ContentError::io("read input for", reference, e))?;
        if skipped != skip {
            // The input is shorter than what was already written: start over.
            w.truncate(0)?;
        }
        copy_into(&mut reader, &mut w, reference)?;
        let size = w.status().offset;
        match w.commit(expected_size.unwrap_or(0), expected, labels) {
            Ok(digest) => Ok(Ingested {
                digest,
                size,
                already_existed: false,
            }),
            Err(ContentError::AlreadyExists(digest)) => Ok(Ingested {
                digest,
                size,
                already_existed: true,
            }),
            // The whole input was read and it is not what was expected: a
            // resume cannot fix that, so the partial ingest goes too.
            Err(e @ (ContentError::DigestMismatch { .. } | ContentError::SizeMismatch { .. })) => {
                drop(w);
                if let Err(abort) = self.abort(reference) {
                    tracing::warn!(reference, error = %abort, "could not abandon a mismatched ingest");
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }
}

/// The most read from the input at a time: each read goes to the file in
/// one write and to the digester without a copy.
const CHUNK: usize = 1 << 20;

fn copy_into(reader: &mut impl Read, w: &mut Writer, reference: &str) -> Result<(), ContentError> {
    loop {
        let mut chunk = w.buffer();
        // A reused chunk is whole already: no zeros are written.
        chunk.resize(CHUNK, 0);
        let n = loop {
            match reader.read(&mut chunk) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                read => break read,
            }
        }
        .map_err(|e| ContentError::io("read input for", reference, e))?;
        if n == 0 {
            return Ok(());
        }
        // Written as soon as read: what arrived is on disk for a resume
        // however slowly the rest comes.
        w.write_chunk(chunk, n)
            .map_err(|e| ContentError::io("write ingest", reference, e))?;
    }
}

fn read_dir(path: &Path) -> Result<Vec<fs::DirEntry>, ContentError> {
    fs::read_dir(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ContentError::io("read directory", path, e))
}

pub(crate) fn hash_file(path: &Path, alg: Algorithm) -> Result<Digest, ContentError> {
    let mut f = fs::File::open(path).map_err(|e| ContentError::io("open", path, e))?;
    let mut d = Digester::new(alg);
    io::copy(&mut f, &mut d).map_err(|e| ContentError::io("read", path, e))?;
    Ok(d.finish())
}

/// Makes a blob file read-only: committed data is never changed in place.
pub(crate) fn seal(path: &Path) -> Result<(), ContentError> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o444))
        .map_err(|e| ContentError::io("chmod", path, e))
}

#[derive(Default)]
struct DiskScan {
    blobs: Vec<(Digest, ContentRecord)>,
    rows_without_blob: Vec<Digest>,
    blobs_without_row: Vec<PathBuf>,
    stray_blob_files: Vec<PathBuf>,
    ingest_dirs_without_row: Vec<PathBuf>,
    ingest_rows_without_data: Vec<(String, PathBuf)>,
}
