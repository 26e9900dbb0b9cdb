//! [`Writer`]: one ingest being written. Bytes go to
//! `content/ingest/<id>/data` and through a digester in the same call, and
//! the disk starts writing them every [`WRITEBACK_WINDOW`] bytes; a commit
//! verifies size and digest, fsyncs, renames the file into `blobs/` and then
//! adds the row, in that order.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use strata_core::{Algorithm, BackgroundDigester, Digest, Labels, id, labels};
use strata_leases::{Hold, OpCtx, Resource};
use strata_metadata::Reader;
use strata_metadata::records::{ContentRecord, IngestRecord, Nanos, now, to_system_time};

use crate::error::ContentError;
use crate::info::Status;
use crate::store::{Inner, hash_file, remove_dir, seal};

/// An open ingest. Dropping it keeps the partial data for a later resume
/// and frees the ref for another writer.
pub struct Writer {
    inner: Arc<Inner>,
    ctx: Option<OpCtx>,
    reference: String,
    id: String,
    file: File,
    /// Hashes on its own thread while this one writes the file.
    digester: BackgroundDigester,
    /// Where the bytes not yet sent on their way to the disk begin.
    writeback_from: u64,
    expected_size: Option<u64>,
    expected: Option<Digest>,
    started: Nanos,
    updated: SystemTime,
    finished: bool,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("reference", &self.reference)
            .field("offset", &self.digester.written())
            .finish()
    }
}

fn parse_expected(reference: &str, r: &IngestRecord) -> Result<Option<Digest>, ContentError> {
    r.expected
        .as_deref()
        .map(Digest::parse)
        .transpose()
        .map_err(|e| {
            ContentError::Invalid(format!("ingest {reference:?}: stored expected digest: {e}"))
        })
}

pub(crate) fn status_of(
    inner: &Inner,
    reference: &str,
    r: &IngestRecord,
) -> Result<Status, ContentError> {
    let data = inner.ingest_dir(&r.id).join("data");
    let meta = fs::metadata(&data).map_err(|e| ContentError::io("stat", &data, e))?;
    Ok(Status {
        reference: reference.to_owned(),
        offset: meta.len(),
        total: r.expected_size.unwrap_or(0),
        expected: parse_expected(reference, r)?,
        started: to_system_time(r.started),
        updated: meta
            .modified()
            .map_err(|e| ContentError::io("stat", &data, e))?,
    })
}

/// How many written bytes gather before the disk is asked to start writing
/// them: the commit's fsync then waits for the last few only, not for the
/// whole blob to be written after it was all read.
const WRITEBACK_WINDOW: u64 = 8 << 20;

fn conflict(reference: &str, existing: impl ToString, requested: impl ToString) -> ContentError {
    ContentError::ExpectationConflict {
        ingest: reference.to_owned(),
        existing: existing.to_string(),
        requested: requested.to_string(),
    }
}

impl Writer {
    pub(crate) fn open(
        inner: Arc<Inner>,
        ctx: Option<OpCtx>,
        reference: &str,
        expected_size: Option<u64>,
        expected: Option<&Digest>,
    ) -> Result<Writer, ContentError> {
        let tx = inner.db.write()?;
        let existing = tx.get::<IngestRecord>(reference)?;
        let (record, file, resumed) = match existing {
            Some(mut r) => {
                let stored = parse_expected(reference, &r)?;
                match (&stored, expected) {
                    (Some(a), Some(b)) if a != b => return Err(conflict(reference, a, b)),
                    (None, Some(b)) => r.expected = Some(b.to_string()),
                    _ => {}
                }
                match (r.expected_size, expected_size) {
                    (Some(a), Some(b)) if a != b => {
                        return Err(conflict(
                            reference,
                            format!("{a} bytes"),
                            format!("{b} bytes"),
                        ));
                    }
                    (None, Some(b)) => r.expected_size = Some(b),
                    _ => {}
                }
                tx.put(reference, &r)?;
                tx.commit()?;
                let path = inner.ingest_dir(&r.id).join("data");
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| ContentError::io("open ingest", &path, e))?;
                (r, file, true)
            }
            None => {
                let id = id::new_id();
                let dir = inner.ingest_dir(&id);
                fs::create_dir(&dir).map_err(|e| ContentError::io("create", &dir, e))?;
                let path = dir.join("data");
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| ContentError::io("create", &path, e))?;
                let r = IngestRecord {
                    id,
                    expected_size,
                    expected: expected.map(ToString::to_string),
                    started: now(),
                    updated: now(),
                };
                tx.put(reference, &r)?;
                tx.commit()?;
                (r, file, false)
            }
        };
        let expected = parse_expected(reference, &record)?;
        let alg = expected
            .as_ref()
            .map_or(Algorithm::Sha256, Digest::algorithm);
        let mut w = Writer {
            inner,
            ctx,
            reference: reference.to_owned(),
            id: record.id,
            file,
            digester: BackgroundDigester::new(alg),
            writeback_from: 0,
            expected_size: record.expected_size,
            expected,
            started: record.started,
            updated: to_system_time(record.updated),
            finished: false,
        };
        if resumed {
            w.rehash(u64::MAX)?;
        }
        Ok(w)
    }

    fn data_path(&self) -> PathBuf {
        self.inner.ingest_dir(&self.id).join("data")
    }

    fn io(&self, op: &'static str, e: io::Error) -> ContentError {
        ContentError::Ingest {
            reference: self.reference.clone(),
            source: Box::new(ContentError::io(op, self.data_path(), e)),
        }
    }

    /// Restores the digest and offset from the first `limit` bytes on disk
    /// and positions the file after them.
    fn rehash(&mut self, limit: u64) -> Result<(), ContentError> {
        self.digester = BackgroundDigester::new(self.digester.algorithm());
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| self.io("seek", e))?;
        let mut src = io::Read::take(&self.file, limit);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match io::Read::read(&mut src, &mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io("re-hash", e)),
            };
            self.digester.update(&buf[..n]);
        }
        let end = self.digester.written();
        self.writeback_from = end;
        self.file
            .seek(SeekFrom::Start(end))
            .map_err(|e| self.io("seek", e))?;
        if let Ok(m) = self.file.metadata().and_then(|meta| meta.modified()) {
            self.updated = m;
        }
        Ok(())
    }

    /// Notes that bytes reached the file: the time, and writeback of every
    /// whole window written since the last one.
    fn wrote(&mut self) {
        self.updated = SystemTime::now();
        let end = self.digester.written();
        if end - self.writeback_from < WRITEBACK_WINDOW {
            return;
        }
        if let Err(e) = strata_sys::sync::start_writeback(
            &self.file,
            &self.data_path(),
            self.writeback_from,
            end - self.writeback_from,
        ) {
            // Only a head start: the commit's fsync writes what is left and
            // reports any failure of the disk.
            tracing::debug!(reference = %self.reference, error = %e, "could not start writeback early");
        }
        self.writeback_from = end;
    }

    /// An empty or stale buffer to fill for [`Writer::write_chunk`].
    pub(crate) fn buffer(&mut self) -> Vec<u8> {
        self.digester.buffer()
    }

    /// Writes the first `len` bytes of `chunk` and hands it to the
    /// digester without copying it. On failure, what reached the file was
    /// hashed, as with `write`.
    pub(crate) fn write_chunk(&mut self, chunk: Vec<u8>, len: usize) -> io::Result<()> {
        self.refuse_after_commit()?;
        let mut done = 0;
        let result = loop {
            if done == len {
                break Ok(());
            }
            match self.file.write(&chunk[done..len]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.digester.update_owned(chunk, done);
        self.wrote();
        result
    }

    fn refuse_after_commit(&self) -> io::Result<()> {
        if self.finished {
            return Err(io::Error::other(format!(
                "ingest {:?} is already committed",
                self.reference
            )));
        }
        Ok(())
    }

    /// The ingest's status as this writer sees it.
    pub fn status(&self) -> Status {
        Status {
            reference: self.reference.clone(),
            offset: self.digester.written(),
            total: self.expected_size.unwrap_or(0),
            expected: self.expected.clone(),
            started: to_system_time(self.started),
            updated: self.updated,
        }
    }

    /// The digest of the bytes written so far.
    pub fn digest(&mut self) -> Digest {
        self.digester.current()
    }

    /// Cuts the ingest back to `size` bytes (0 starts over).
    pub fn truncate(&mut self, size: u64) -> Result<(), ContentError> {
        if size > self.digester.written() {
            return Err(ContentError::Invalid(format!(
                "cannot truncate ingest {:?} to {size} bytes: only {} written",
                self.reference,
                self.digester.written()
            )));
        }
        self.file
            .set_len(size)
            .map_err(|e| self.io("truncate", e))?;
        self.rehash(size)?;
        self.updated = SystemTime::now();
        Ok(())
    }

    /// Verifies and commits the ingest as a blob. `size` 0 and `expected`
    /// `None` accept whatever was written (unless the writer was opened with
    /// expectations). A size or digest mismatch leaves the ingest in place;
    /// content the store already has ends the ingest with
    /// [`ContentError::AlreadyExists`].
    #[tracing::instrument(skip_all, fields(reference = %self.reference))]
    pub fn commit(
        &mut self,
        size: u64,
        expected: Option<&Digest>,
        labels: &Labels,
    ) -> Result<Digest, ContentError> {
        if self.finished {
            return Err(ContentError::Finished(self.reference.clone()));
        }
        labels::validate_all(labels).map_err(|e| ContentError::Invalid(e.to_string()))?;
        let written = self.digester.written();
        let want_size = if size != 0 {
            Some(size)
        } else {
            self.expected_size
        };
        if let Some(want) = want_size.filter(|&w| w != written) {
            return Err(ContentError::SizeMismatch {
                ingest: self.reference.clone(),
                expected: want,
                actual: written,
            });
        }
        let expected = expected.or(self.expected.as_ref());
        let actual = match expected {
            Some(e) if e.algorithm() != self.digester.algorithm() => {
                hash_file(&self.data_path(), e.algorithm())?
            }
            _ => self.digester.current(),
        };
        if let Some(e) = expected.filter(|e| **e != actual) {
            return Err(ContentError::DigestMismatch {
                ingest: self.reference.clone(),
                expected: e.clone(),
                actual,
            });
        }

        // The data is made durable before taking the commit lock, which
        // then covers only the exists check, the rename and the row. The
        // power-loss harness's deliberately broken build (`cargo xtask
        // powerloss --broken`) skips this one fsync and must lose blobs.
        #[cfg(not(feature = "test-skip-blob-fsync"))]
        self.file.sync_all().map_err(|e| self.io("fsync", e))?;
        let inner = Arc::clone(&self.inner);
        let hold = match &self.ctx {
            Some(ctx) => Hold::of(ctx, &inner.leases)?,
            None => None,
        };
        let held = Resource::content(&actual);
        let _guard = inner.commit_guard();
        if inner
            .db
            .read()?
            .get::<ContentRecord>(actual.as_str())?
            .is_some()
        {
            self.finished = true;
            inner.drop_ingest(&self.reference, &self.id)?;
            if let Some(h) = &hold {
                let tx = inner.db.write()?;
                h.add_in(&tx, &held)?;
                tx.commit()?;
            }
            return Err(ContentError::AlreadyExists(actual));
        }
        let data = self.data_path();
        seal(&data)?;
        let blob = inner.blob_path(&actual);
        fs::rename(&data, &blob).map_err(|e| ContentError::io("rename into blobs", &blob, e))?;
        let blob_dir = blob.parent().expect("blob paths have a parent");
        strata_sys::sync::fsync_dir(blob_dir)?;

        let ts = now();
        let row = ContentRecord {
            size: written,
            created: ts,
            updated: ts,
            labels: labels.clone(),
        };
        let committed = (|| -> Result<(), ContentError> {
            let tx = inner.db.write()?;
            tx.put(actual.as_str(), &row)?;
            tx.delete::<IngestRecord>(&self.reference)?;
            if let Some(h) = &hold {
                h.add_in(&tx, &held)?;
            }
            Ok(tx.commit()?)
        })();
        if let Err(e) = committed {
            // Put the data back so the ingest stays resumable.
            if let Err(undo) = fs::rename(&blob, &data) {
                tracing::error!(blob = %blob.display(), error = %undo, "could not return uncommitted blob to its ingest");
            }
            return Err(ContentError::Commit {
                digest: actual,
                source: Box::new(e),
            });
        }
        self.finished = true;
        if let Err(e) = remove_dir(&inner.ingest_dir(&self.id)) {
            // Swept at the next open; the commit itself is durable.
            inner.db.leave_for_next_open();
            tracing::debug!(error = %e, "leaving an empty ingest directory");
        }
        Ok(actual)
    }
}

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.refuse_after_commit()?;
        let n = self.file.write(buf)?;
        self.digester.update(&buf[..n]);
        self.wrote();
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.inner.release(&self.reference);
    }
}
