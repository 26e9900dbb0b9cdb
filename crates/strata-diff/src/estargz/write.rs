//! Writing eStargz: a tar stream re-framed into a gzip member per file
//! chunk, with the landmark, the TOC and the footer; and the way back to a
//! plain tar.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

use strata_core::{Algorithm, Digest, Digester};

use super::{
    DEFAULT_CHUNK_SIZE, LANDMARK_CONTENT, MAX_RECORD, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK,
    TOC_NAME, Toc, TocEntry, footer, is_format_entry, toc_entry,
};
use crate::ordered::OrderedPool;
use crate::tarblock::{BLOCK, RawEntry, clean_name, next_entry, padding};

/// How to write an eStargz layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EStargzOptions {
    /// Bytes of a file per chunk ([`DEFAULT_CHUNK_SIZE`] when 0).
    pub chunk_size: u64,
    /// Files (paths in the layer) written first, in this order, each after
    /// the directories above it, then the prefetch landmark. Names the
    /// layer does not have are skipped.
    pub prioritized: Vec<String>,
    /// Where the stream waits while prioritized files are moved first (an
    /// unnamed temporary file; the system's temporary directory when
    /// `None`).
    pub spool_dir: Option<std::path::PathBuf>,
}

/// What an eStargz write made, beyond the blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EStargzWritten {
    /// Digest of the TOC's JSON.
    pub toc_digest: Digest,
    /// Digest of the uncompressed stream (the layer's diffID).
    pub diff_id: Digest,
    /// Size of the uncompressed stream.
    pub uncompressed_size: u64,
    /// Entries of the input (the format's own not counted).
    pub entries: u64,
}

/// Members waiting to be compressed together (one job), with the TOC
/// entries each one's start offset belongs to.
#[derive(Default)]
struct Batch {
    members: Vec<(Vec<u8>, Vec<usize>)>,
    bytes: usize,
}

const BATCH_BYTES: usize = 1 << 20;

/// The member-framing side of the writer: raw tar bytes in, gzip members
/// out (compressed on worker threads, written in order), offsets filled
/// into the TOC as members land.
struct Members<W: Write> {
    sink: W,
    /// Compressed bytes written so far.
    pos: u64,
    level: flate2::Compression,
    pool: OrderedPool<Vec<(Vec<u8>, Vec<usize>)>>,
    current: Vec<u8>,
    marks: Vec<usize>,
    batch: Batch,
    toc: Vec<TocEntry>,
    diff: Digester,
}

fn gzip_member(level: flate2::Compression, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut e = flate2::GzBuilder::new()
        .operating_system(255)
        .write(Vec::with_capacity(data.len() / 2 + 64), level);
    e.write_all(data)?;
    e.finish()
}

impl<W: Write> Members<W> {
    fn raw(&mut self, bytes: &[u8]) {
        self.diff.update(bytes);
        self.current.extend_from_slice(bytes);
    }

    /// Ends the current member; the next starts at the next byte.
    fn close(&mut self) -> io::Result<()> {
        if self.current.is_empty() {
            return Ok(());
        }
        let member = std::mem::take(&mut self.current);
        self.batch.bytes += member.len();
        self.batch
            .members
            .push((member, std::mem::take(&mut self.marks)));
        if self.batch.bytes >= BATCH_BYTES || self.batch.members.len() >= 256 {
            self.submit()?;
        }
        Ok(())
    }

    fn submit(&mut self) -> io::Result<()> {
        let batch = std::mem::take(&mut self.batch);
        if batch.members.is_empty() {
            return Ok(());
        }
        let level = self.level;
        let (sink, pos, toc) = (&mut self.sink, &mut self.pos, &mut self.toc);
        self.pool.submit(
            move || {
                batch
                    .members
                    .into_iter()
                    .map(|(m, marks)| Ok((gzip_member(level, &m)?, marks)))
                    .collect()
            },
            &mut |done| land(sink, pos, toc, done),
        )
    }

    /// The TOC entry `index` starts at the current member, which must be
    /// empty (closed just before).
    fn mark(&mut self, index: usize) {
        debug_assert!(self.current.is_empty());
        self.marks.push(index);
    }

    /// Writes the last members, the TOC and the footer.
    fn finish(mut self, entries: u64) -> io::Result<(EStargzWritten, W)> {
        self.close()?;
        self.submit()?;
        let Members {
            mut sink,
            mut pos,
            level,
            pool,
            mut toc,
            mut diff,
            ..
        } = self;
        pool.finish(&mut |done| land(&mut sink, &mut pos, &mut toc, done))?;
        let json = serde_json::to_vec(&Toc {
            version: 1,
            entries: toc,
        })
        .map_err(io::Error::other)?;
        let mut tail = Vec::with_capacity(json.len() + 3 * 512);
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(json.len() as u64);
        h.set_mode(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_path(TOC_NAME)?;
        h.set_cksum();
        tail.extend_from_slice(h.as_bytes());
        tail.extend_from_slice(&json);
        let zeros = usize::try_from(padding(json.len() as u64) + 2 * BLOCK).unwrap_or(0);
        tail.resize(tail.len() + zeros, 0);
        diff.update(&tail);
        let toc_offset = pos;
        sink.write_all(&gzip_member(level, &tail)?)?;
        sink.write_all(&footer(toc_offset))?;
        sink.flush()?;
        let uncompressed_size = diff.written();
        Ok((
            EStargzWritten {
                toc_digest: Digest::of_bytes(Algorithm::Sha256, &json),
                diff_id: diff.finish(),
                uncompressed_size,
                entries,
            },
            sink,
        ))
    }
}

/// Writes compressed members in order, giving the TOC entries marked on
/// each their offset.
fn land<W: Write>(
    sink: &mut W,
    pos: &mut u64,
    toc: &mut [TocEntry],
    done: Vec<(Vec<u8>, Vec<usize>)>,
) -> io::Result<()> {
    for (member, marks) in done {
        for i in marks {
            toc[i].offset = *pos;
        }
        sink.write_all(&member)?;
        *pos += member.len() as u64;
    }
    Ok(())
}

/// Reads tar entries from `input` and writes them as eStargz into `sink`.
/// The input's own landmarks and TOC (a layer made eStargz twice) are
/// dropped; anything after its end-of-archive blocks is ignored. Members
/// are compressed at `level` (gzip's default when `None`) on `workers`
/// threads; the bytes do not depend on the number of workers.
pub fn write<R: Read, W: Write>(
    input: R,
    sink: W,
    opts: &EStargzOptions,
    level: Option<u32>,
    workers: usize,
) -> io::Result<(EStargzWritten, W)> {
    let chunk_size = if opts.chunk_size == 0 {
        DEFAULT_CHUNK_SIZE
    } else {
        opts.chunk_size
    };
    let mut w = Writer {
        m: Members {
            sink,
            pos: 0,
            level: level.map_or(flate2::Compression::default(), |l| {
                flate2::Compression::new(l.min(9))
            }),
            pool: OrderedPool::new("strata-estargz", workers)?,
            current: Vec::new(),
            marks: Vec::new(),
            batch: Batch::default(),
            toc: Vec::new(),
            diff: Digester::new(Algorithm::Sha256),
        },
        chunk_size,
        entries: 0,
    };
    let mut input = input;
    if opts.prioritized.is_empty() {
        w.landmark(NO_PREFETCH_LANDMARK)?;
        while let Some(e) = next_entry(&mut input, MAX_RECORD)? {
            let mut data = (&mut input).take(e.size.saturating_add(padding(e.size)));
            w.entry(&e, &mut data)?;
            io::copy(&mut data, &mut io::sink())?;
        }
    } else {
        let dir = opts.spool_dir.clone().unwrap_or_else(std::env::temp_dir);
        let spooled = Spooled::read(&mut input, &dir)?;
        for i in spooled.order(&opts.prioritized) {
            match i {
                Some(i) => {
                    let (e, at) = &spooled.entries[i];
                    let mut data = spooled.data(*at, e.size);
                    w.entry(e, &mut data)?;
                }
                None => w.landmark(PREFETCH_LANDMARK)?,
            }
        }
    }
    io::copy(&mut input, &mut io::sink())?;
    let entries = w.entries;
    w.m.finish(entries)
}

struct Writer<W: Write> {
    m: Members<W>,
    chunk_size: u64,
    entries: u64,
}

impl<W: Write> Writer<W> {
    fn landmark(&mut self, name: &str) -> io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(1);
        h.set_mode(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_path(name)?;
        h.set_cksum();
        let e = RawEntry {
            raw: h.as_bytes().to_vec(),
            name: name.as_bytes().to_vec(),
            kind: b'0',
            size: 1,
            ..RawEntry::default()
        };
        self.put(&e, &mut [LANDMARK_CONTENT].as_slice())
    }

    /// One input entry, unless it is the format's own.
    fn entry(&mut self, e: &RawEntry, data: &mut impl Read) -> io::Result<()> {
        // Global headers change nothing extraction reads; the format's own
        // entries are written afresh.
        if e.kind == b'g' || is_format_entry(&e.name) {
            return Ok(());
        }
        self.entries += 1;
        self.put(e, data)
    }

    /// Writes the headers and the data (`e.size` bytes read from `data`),
    /// each chunk of a regular file in a member of its own.
    fn put(&mut self, e: &RawEntry, data: &mut impl Read) -> io::Result<()> {
        let mut ent = toc_entry(e)?;
        self.m.raw(&e.raw);
        if ent.kind != "reg" {
            if e.size > 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{:?}: a {} entry with data", ent.name, ent.kind),
                ));
            }
            self.m.toc.push(ent);
            return Ok(());
        }
        let mut file = Digester::new(Algorithm::Sha256);
        let first = self.m.toc.len();
        let mut written = 0u64;
        let mut buf = vec![0u8; 256 << 10];
        while written < e.size {
            let n = (e.size - written).min(self.chunk_size);
            self.m.close()?;
            let index = self.m.toc.len();
            self.m.mark(index);
            if written > 0 {
                ent = TocEntry {
                    name: ent.name.clone(),
                    kind: "chunk".into(),
                    ..TocEntry::default()
                };
            }
            ent.chunk_offset = written;
            if n == self.chunk_size {
                ent.chunk_size = n;
            }
            let mut chunk = Digester::new(Algorithm::Sha256);
            let mut left = n;
            while left > 0 {
                let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
                data.read_exact(&mut buf[..want]).map_err(|err| {
                    io::Error::new(err.kind(), format!("{:?}: data ends early", ent.name))
                })?;
                chunk.update(&buf[..want]);
                file.update(&buf[..want]);
                self.m.raw(&buf[..want]);
                left -= want as u64;
            }
            ent.chunk_digest = chunk.finish().to_string();
            self.m.toc.push(ent.clone());
            written += n;
        }
        if e.size == 0 {
            self.m.toc.push(ent);
        }
        self.m.toc[first].digest = file.finish().to_string();
        let pad = usize::try_from(padding(e.size)).unwrap_or(0);
        self.m.raw(&vec![0u8; pad]);
        Ok(())
    }
}

/// A tar stream kept in an unnamed temporary file, with its entries.
struct Spooled {
    file: std::fs::File,
    /// Each entry and where its data starts in `file`.
    entries: Vec<(RawEntry, u64)>,
}

impl Spooled {
    fn read(input: &mut impl Read, dir: &std::path::Path) -> io::Result<Spooled> {
        let mut file = tempfile::tempfile_in(dir)?;
        let mut entries = Vec::new();
        let mut at = 0u64;
        {
            let mut out = io::BufWriter::with_capacity(1 << 20, &mut file);
            while let Some(e) = next_entry(input, MAX_RECORD)? {
                let len = e.size.saturating_add(padding(e.size));
                let copied = io::copy(&mut input.take(len), &mut out)?;
                if copied != len {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the tar stream ends inside an entry",
                    ));
                }
                entries.push((e, at));
                at += len;
            }
            out.flush()?;
        }
        Ok(Spooled { file, entries })
    }

    fn data(&self, at: u64, size: u64) -> impl Read + '_ {
        AtReader {
            file: &self.file,
            pos: at,
        }
        .take(size)
    }

    /// Puts the entry `name` in `order` after the directories above it
    /// and, for a hard link, its target (each once).
    fn move_first(
        &self,
        name: &[u8],
        index: &HashMap<&[u8], usize>,
        moved: &mut HashSet<usize>,
        order: &mut Vec<Option<usize>>,
    ) {
        let Some(&i) = index.get(name) else { return };
        // Marked before its dependencies: a link to itself ends here.
        if !moved.insert(i) {
            return;
        }
        if let Some(p) = name.iter().rposition(|&b| b == b'/') {
            self.move_first(&name[..p], index, moved, order);
        }
        let e = &self.entries[i].0;
        if e.kind == b'1' {
            self.move_first(clean_name(&e.link), index, moved, order);
        }
        order.push(Some(i));
    }

    /// The order to write in: prioritized entries (with the directories
    /// above them and a hard link's target before the link), `None` for the
    /// landmark, then the rest in stream order. A name twice in the stream
    /// counts by its last entry, as readers see it.
    fn order(&self, prioritized: &[String]) -> Vec<Option<usize>> {
        let index: HashMap<&[u8], usize> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, (e, _))| (clean_name(&e.name), i))
            .collect();
        let mut moved = HashSet::new();
        let mut order = Vec::new();
        for name in prioritized {
            self.move_first(clean_name(name.as_bytes()), &index, &mut moved, &mut order);
        }
        order.push(None);
        // Earlier entries of a name written twice are dropped, as the
        // reference writer drops them: moved first, the later one must
        // not be overwritten by a stale copy after the landmark.
        order.extend(
            (0..self.entries.len())
                .filter(|i| !moved.contains(i))
                .filter(|&i| index.get(clean_name(&self.entries[i].0.name)) == Some(&i))
                .map(Some),
        );
        order
    }
}

/// Sequential reads at a position of a file shared by reference.
struct AtReader<'a> {
    file: &'a std::fs::File,
    pos: u64,
}

impl Read for AtReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Copies the tar stream of an eStargz layer without the format's own
/// entries (landmarks, TOC), ending it with the end-of-archive blocks: the
/// layer as a plain tar, for a conversion to another compression.
pub fn strip(mut input: impl Read, mut out: impl Write) -> io::Result<()> {
    while let Some(e) = next_entry(&mut input, MAX_RECORD)? {
        let mut data = (&mut input).take(e.size.saturating_add(padding(e.size)));
        if is_format_entry(&e.name) {
            io::copy(&mut data, &mut io::sink())?;
        } else {
            out.write_all(&e.raw)?;
            io::copy(&mut data, &mut out)?;
        }
    }
    out.write_all(&[0u8; 1024])?;
    io::copy(&mut input, &mut io::sink())?;
    Ok(())
}
