//! eStargz: a gzip layer laid out so that one file can be read without the
//! rest (the format of the stargz snapshotter, which BuildKit exports and
//! containerd's lazy pullers read).
//!
//! * The blob is a series of gzip members; concatenated they decompress to
//!   an ordinary tar stream, so any gzip reader unpacks it.
//! * Every chunk of a regular file's data (4 MiB by default) starts a new
//!   member; headers and small entries share the member before.
//! * A landmark file comes first (`.no.prefetch.landmark`), or right after
//!   the files to prefetch (`.prefetch.landmark`) when a list is given.
//! * The last tar entry, `stargz.index.json`, in its own member, is the
//!   table of contents (TOC): every entry with its metadata, and for each
//!   chunk the compressed offset of its member and its digest.
//! * A 51-byte empty gzip member closes the blob; its extra field says
//!   where the TOC's member starts.
//!
//! The TOC's digest travels in the layer descriptor's
//! [`ESTARGZ_TOC_DIGEST`](strata_core::media::ESTARGZ_TOC_DIGEST)
//! annotation. The layer's diffID is the digest of the whole uncompressed
//! stream, landmark and TOC included, so it differs from the plain layer's.
//!
//! Writing re-frames the tar stream another writer made (headers kept byte
//! for byte). Reading ([`Index::read`]) finds and parses the TOC;
//! [`apply`](crate::apply) with [`ApplyOptions::estargz`] checks a layer
//! against its TOC while unpacking it and hides the landmark and TOC
//! entries, which are the format's, not the image's.
//!
//! [`ApplyOptions::estargz`]: crate::ApplyOptions::estargz

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use strata_core::{Algorithm, Digest, Digester};

use crate::ordered::OrderedPool;
use crate::tarblock::{BLOCK, Position, RawEntry, clean_name, next_entry, padding};

/// The name of the TOC's tar entry.
pub const TOC_NAME: &str = "stargz.index.json";
/// The landmark after the files to prefetch.
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
/// The landmark that says nothing is to be prefetched.
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
/// The size of the footer.
pub const FOOTER_SIZE: u64 = 51;
/// The footer of the first stargz format (no subfield header).
const LEGACY_FOOTER_SIZE: u64 = 47;
/// The landmarks' one byte of content.
const LANDMARK_CONTENT: u8 = 0x0f;
/// Chunk size when none is given.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;
/// Largest TOC read: about 400,000 entries of 300 bytes. It is parsed
/// into memory whole, which a hostile TOC of tiny entries can make about
/// twelve times larger.
pub const MAX_TOC: u64 = 128 << 20;
/// Largest PAX or GNU record re-framed by the writer.
const MAX_RECORD: u64 = 1 << 20;

/// Whether `name` (a path in a layer) is one of the format's own entries,
/// which never appear in a snapshot.
pub fn is_format_entry(name: &[u8]) -> bool {
    let n = clean_name(name);
    n == TOC_NAME.as_bytes()
        || n == PREFETCH_LANDMARK.as_bytes()
        || n == NO_PREFETCH_LANDMARK.as_bytes()
}

/// The table of contents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toc {
    /// Always 1.
    pub version: u32,
    /// Entries in stream order; a file's chunks after it.
    pub entries: Vec<TocEntry>,
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// One TOC entry (field names as the stargz snapshotter writes them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TocEntry {
    /// The path as the tar stream spells it.
    pub name: String,
    /// `dir`, `reg`, `symlink`, `hardlink`, `char`, `block`, `fifo` or
    /// `chunk` (a later chunk of the file before).
    #[serde(rename = "type")]
    pub kind: String,
    /// A regular file's size.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// Modification time, RFC 3339 in UTC.
    #[serde(default, rename = "modtime", skip_serializing_if = "is_zero")]
    pub mod_time: String,
    /// Symlink or hard link target.
    #[serde(default, rename = "linkName", skip_serializing_if = "is_zero")]
    pub link_name: String,
    /// Mode bits as in the tar header.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mode: u32,
    /// Owner.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uid: u64,
    /// Group.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gid: u64,
    /// Owner's name.
    #[serde(default, rename = "userName", skip_serializing_if = "is_zero")]
    pub user_name: String,
    /// Group's name.
    #[serde(default, rename = "groupName", skip_serializing_if = "is_zero")]
    pub group_name: String,
    /// Compressed offset of the gzip member that starts with this chunk.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    /// Device numbers.
    #[serde(default, rename = "devMajor", skip_serializing_if = "is_zero")]
    pub dev_major: u32,
    /// Device numbers.
    #[serde(default, rename = "devMinor", skip_serializing_if = "is_zero")]
    pub dev_minor: u32,
    /// Extended attributes (values in base64).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "base64_values"
    )]
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// A regular file's content digest.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub digest: String,
    /// Where this chunk starts in the file.
    #[serde(default, rename = "chunkOffset", skip_serializing_if = "is_zero")]
    pub chunk_offset: u64,
    /// The chunk's size; 0 for a file's last (or only) short chunk.
    #[serde(default, rename = "chunkSize", skip_serializing_if = "is_zero")]
    pub chunk_size: u64,
    /// The chunk's digest.
    #[serde(default, rename = "chunkDigest", skip_serializing_if = "is_zero")]
    pub chunk_digest: String,
}

/// Byte strings as base64, as Go writes `[]byte`.
mod base64_values {
    use std::collections::BTreeMap;

    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<String, Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(map.iter().map(|(k, v)| (k, STANDARD.encode(v))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| {
                STANDARD
                    .decode(v)
                    .map(|v| (k, v))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

/// The TOC type of a tar entry type, `None` for those eStargz cannot hold.
fn toc_kind(kind: u8) -> Option<&'static str> {
    Some(match kind {
        b'0' | 0 | b'7' => "reg",
        b'1' => "hardlink",
        b'2' => "symlink",
        b'3' => "char",
        b'4' => "block",
        b'5' => "dir",
        b'6' => "fifo",
        _ => return None,
    })
}

/// RFC 3339 in UTC; empty for the epoch, as the reference writer leaves it.
fn rfc3339(seconds: u64) -> String {
    if seconds == 0 {
        return String::new();
    }
    i64::try_from(seconds)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn utf8(what: &str, bytes: &[u8]) -> io::Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "eStargz cannot hold the {what} {:?}: its TOC is JSON, which needs UTF-8",
                String::from_utf8_lossy(bytes)
            ),
        )
    })
}

/// The TOC entry of a tar entry (no chunk fields yet).
fn toc_entry(e: &RawEntry) -> io::Result<TocEntry> {
    let name = utf8("name", &e.name)?;
    let kind = toc_kind(e.kind).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "eStargz cannot hold {name:?}: tar entry type {:?}",
                e.kind as char
            ),
        )
    })?;
    Ok(TocEntry {
        name,
        kind: kind.to_owned(),
        size: if kind == "reg" { e.size } else { 0 },
        mod_time: rfc3339(e.mtime),
        link_name: utf8("link target", &e.link)?,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        user_name: utf8("user name", &e.uname)?,
        group_name: utf8("group name", &e.gname)?,
        dev_major: e.dev_major,
        dev_minor: e.dev_minor,
        xattrs: e.xattrs.clone(),
        ..TocEntry::default()
    })
}

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

/// The footer: an empty gzip member whose extra field holds the TOC's
/// offset (`SG` subfield, 16 hex digits and `STARGZ`).
fn footer(toc_offset: u64) -> [u8; 51] {
    let mut f = [0u8; 51];
    // Magic, deflate, FEXTRA, no mtime, no extra flags, OS unknown.
    f[..10].copy_from_slice(&[0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 255]);
    f[10..12].copy_from_slice(&26u16.to_le_bytes());
    f[12..14].copy_from_slice(b"SG");
    f[14..16].copy_from_slice(&22u16.to_le_bytes());
    f[16..38].copy_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    // An empty stored final block; CRC-32 and size of nothing are zero.
    f[38..43].copy_from_slice(&[1, 0, 0, 0xff, 0xff]);
    f
}

/// The extra field of the gzip header `f` starts with, when it has one of
/// `xlen` bytes.
fn gzip_extra(f: &[u8], xlen: usize) -> Option<&[u8]> {
    let ok = f.len() >= 12 + xlen
        && f[..3] == [0x1f, 0x8b, 8]
        && f[3] & 4 != 0
        && u16::from_le_bytes([f[10], f[11]]) as usize == xlen;
    ok.then(|| &f[12..12 + xlen])
}

/// The TOC offset a footer names, `None` when `tail` (the blob's last
/// bytes) ends with no eStargz footer.
fn parse_footer(tail: &[u8]) -> Option<(u64, u64)> {
    let hex = |b: &[u8]| {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
    };
    if tail.len() >= FOOTER_SIZE as usize {
        let f = &tail[tail.len() - FOOTER_SIZE as usize..];
        if let Some(extra) = gzip_extra(f, 26)
            && &extra[..2] == b"SG"
            && extra[2..4] == 22u16.to_le_bytes()
            && &extra[20..] == b"STARGZ"
            && let Some(off) = hex(&extra[4..20])
        {
            return Some((off, FOOTER_SIZE));
        }
    }
    if tail.len() >= LEGACY_FOOTER_SIZE as usize {
        let f = &tail[tail.len() - LEGACY_FOOTER_SIZE as usize..];
        if let Some(extra) = gzip_extra(f, 22)
            && &extra[16..] == b"STARGZ"
            && let Some(off) = hex(&extra[..16])
        {
            return Some((off, LEGACY_FOOTER_SIZE));
        }
    }
    None
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

/// A layer's TOC, found through its footer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    /// The TOC.
    pub toc: Toc,
    /// Digest of the TOC's JSON.
    pub digest: Digest,
    /// Where the TOC's gzip member starts.
    pub toc_offset: u64,
    /// The blob's size.
    pub blob_size: u64,
}

fn invalid(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.into())
}

impl Index {
    /// The TOC of the blob `r` reads, or `None` when it does not end with
    /// an eStargz footer (it is no eStargz layer). A footer whose TOC
    /// cannot be read is an `InvalidData` error saying why.
    pub fn read(r: &mut (impl Read + Seek)) -> io::Result<Option<Index>> {
        let size = r.seek(SeekFrom::End(0))?;
        let mut tail = vec![0u8; usize::try_from(size.min(FOOTER_SIZE)).unwrap_or(0)];
        r.seek(SeekFrom::Start(size - tail.len() as u64))?;
        r.read_exact(&mut tail)?;
        let Some((toc_offset, footer_size)) = parse_footer(&tail) else {
            return Ok(None);
        };
        let end = size - footer_size;
        if toc_offset >= end {
            return Err(invalid(format!(
                "the eStargz footer puts the TOC at {toc_offset}, past the data ({end} bytes)"
            )));
        }
        r.seek(SeekFrom::Start(toc_offset))?;
        let member = io::BufReader::new(r.take(end - toc_offset));
        let mut tar = flate2::bufread::MultiGzDecoder::new(member);
        let e = next_entry(&mut tar, MAX_RECORD)
            .map_err(|e| {
                invalid(format!(
                    "the eStargz TOC at {toc_offset} is unreadable: {e}"
                ))
            })?
            .ok_or_else(|| invalid(format!("no TOC entry at {toc_offset}")))?;
        if clean_name(&e.name) != TOC_NAME.as_bytes() {
            return Err(invalid(format!(
                "the entry at the TOC offset {toc_offset} is {:?}, not {TOC_NAME}",
                String::from_utf8_lossy(&e.name)
            )));
        }
        if e.size > MAX_TOC {
            return Err(invalid(format!(
                "a TOC of {} bytes (more than {MAX_TOC})",
                e.size
            )));
        }
        let mut json = vec![0u8; usize::try_from(e.size).unwrap_or(0)];
        tar.read_exact(&mut json)
            .map_err(|err| invalid(format!("the eStargz TOC is cut short: {err}")))?;
        let toc: Toc = serde_json::from_slice(&json)
            .map_err(|err| invalid(format!("the eStargz TOC is not valid: {err}")))?;
        if toc.version != 1 {
            return Err(invalid(format!(
                "eStargz TOC version {} (only 1 is known)",
                toc.version
            )));
        }
        Ok(Some(Index {
            toc,
            digest: Digest::of_bytes(Algorithm::Sha256, &json),
            toc_offset,
            blob_size: size,
        }))
    }
}

/// Where each gzip member of a blob starts: compressed offset to
/// uncompressed offset, recorded while decompressing.
pub(crate) type MemberStarts = HashMap<u64, u64>;

/// A gzip decoder over a whole blob that records where members start.
pub(crate) struct MemberDecoder<'a, R: BufRead> {
    idle: Option<&'a mut R>,
    active: Option<flate2::bufread::GzDecoder<&'a mut R>>,
    /// Compressed bytes `R` has handed out so far.
    consumed: Box<dyn Fn(&R) -> u64 + 'a>,
    out: u64,
    /// The compressed offsets worth recording (the TOC's chunk offsets):
    /// memory stays bounded by the TOC, whatever the member count.
    wanted: HashSet<u64>,
    starts: Rc<RefCell<MemberStarts>>,
}

impl<'a, R: BufRead> MemberDecoder<'a, R> {
    /// Decodes `input`, recording into `starts` where the members the
    /// TOC of `index` points at start; `consumed` tells how many
    /// compressed bytes `input` has handed out.
    pub(crate) fn new(
        input: &'a mut R,
        consumed: impl Fn(&R) -> u64 + 'a,
        index: &Index,
        starts: Rc<RefCell<MemberStarts>>,
    ) -> Self {
        MemberDecoder {
            idle: Some(input),
            active: None,
            consumed: Box::new(consumed),
            out: 0,
            wanted: index
                .toc
                .entries
                .iter()
                .filter(|e| e.offset != 0)
                .map(|e| e.offset)
                .collect(),
            starts,
        }
    }
}

impl<R: BufRead> Read for MemberDecoder<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(d) = &mut self.active {
                let n = d.read(buf)?;
                if n > 0 || buf.is_empty() {
                    self.out += n as u64;
                    return Ok(n);
                }
                let d = self.active.take().expect("checked above");
                self.idle = Some(d.into_inner());
            }
            let input = self.idle.take().expect("one of the two is set");
            match input.fill_buf() {
                Ok([]) => {
                    self.idle = Some(input);
                    return Ok(0);
                }
                Ok(_) => {}
                Err(e) => {
                    self.idle = Some(input);
                    return Err(e);
                }
            }
            let at = (self.consumed)(input);
            if self.wanted.contains(&at) {
                self.starts.borrow_mut().insert(at, self.out);
            }
            self.active = Some(flate2::bufread::GzDecoder::new(input));
        }
    }
}

/// A chunk as the stream walk found it: the TOC's compressed offset for
/// it, and where its data is in the uncompressed stream.
pub(crate) struct ChunkAt {
    name: String,
    offset: u64,
    data: u64,
}

/// Walks a layer's uncompressed stream against `index`: the same entries
/// in the same order with the same metadata, every chunk and file digest
/// right, the TOC entry last and equal to `index`'s. Returns where each
/// chunk's data is, for [`check_offsets`]; the error says what differs.
pub(crate) fn verify_stream(stream: impl Read, index: &Index) -> Result<Vec<ChunkAt>, String> {
    let mut r = Position {
        inner: stream,
        pos: 0,
    };
    let mut toc = index.toc.entries.iter().peekable();
    let mut chunks = Vec::new();
    let mut buf = vec![0u8; 256 << 10];
    let io = |e: io::Error| format!("not a valid tar stream: {e}");
    while let Some(e) = next_entry(&mut r, MAX_RECORD).map_err(io)? {
        let name = String::from_utf8_lossy(&e.name).into_owned();
        if clean_name(&e.name) == TOC_NAME.as_bytes() {
            let mut json = Digester::new(Algorithm::Sha256);
            let copied = io::copy(&mut (&mut r).take(e.size), &mut json).map_err(io)?;
            if copied != e.size || json.finish() != index.digest {
                return Err(
                    "the TOC entry in the stream is not the TOC the footer points to".into(),
                );
            }
            io::copy(&mut (&mut r).take(padding(e.size)), &mut io::sink()).map_err(io)?;
            if next_entry(&mut r, MAX_RECORD).map_err(io)?.is_some() {
                return Err(format!("an entry follows the TOC entry {TOC_NAME}"));
            }
            if let Some(left) = toc.next() {
                return Err(format!(
                    "the TOC lists {:?}, which the layer lacks",
                    left.name
                ));
            }
            return Ok(chunks);
        }
        let want = toc_entry(&e).map_err(|err| err.to_string())?;
        let Some(have) = toc.next() else {
            return Err(format!("{name:?} is in the layer but not in its TOC"));
        };
        let same = have.name == want.name
            && have.kind == want.kind
            && have.size == want.size
            && have.link_name == want.link_name
            && have.mode == want.mode
            && have.uid == want.uid
            && have.gid == want.gid
            && have.dev_major == want.dev_major
            && have.dev_minor == want.dev_minor
            && have.xattrs == want.xattrs
            && same_time(&have.mod_time, &want.mod_time);
        if !same {
            return Err(format!(
                "the TOC describes {:?} ({} {} bytes mode {:o} {}:{}) unlike the layer ({} {} bytes mode {:o} {}:{})",
                have.name,
                have.kind,
                have.size,
                have.mode,
                have.uid,
                have.gid,
                want.kind,
                want.size,
                want.mode,
                want.uid,
                want.gid
            ));
        }
        if want.kind != "reg" {
            if e.size > 0 {
                return Err(format!("{name:?}: a {} entry with data", want.kind));
            }
            continue;
        }
        let mut file = Digester::new(Algorithm::Sha256);
        let mut done = 0u64;
        let mut entry = have;
        while done < e.size {
            if entry.chunk_offset != done {
                return Err(format!(
                    "the TOC's chunk of {name:?} at {} leaves a gap at {done}",
                    entry.chunk_offset
                ));
            }
            let next_is_chunk = toc.peek().is_some_and(|n| n.kind == "chunk");
            let n = if next_is_chunk {
                entry.chunk_size
            } else {
                e.size - done
            };
            if n == 0 || n > e.size - done || (entry.chunk_size != 0 && entry.chunk_size != n) {
                return Err(format!(
                    "the TOC's chunk of {name:?} at {done} has a wrong size ({})",
                    entry.chunk_size
                ));
            }
            chunks.push(ChunkAt {
                name: name.clone(),
                offset: entry.offset,
                data: r.pos,
            });
            let mut chunk = Digester::new(Algorithm::Sha256);
            let mut left = n;
            while left > 0 {
                let k = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
                r.read_exact(&mut buf[..k]).map_err(io)?;
                chunk.update(&buf[..k]);
                file.update(&buf[..k]);
                left -= k as u64;
            }
            let got = chunk.finish().to_string();
            if entry.chunk_digest != got {
                return Err(format!(
                    "the chunk of {name:?} at {done} has digest {got}, the TOC says {:?}",
                    entry.chunk_digest
                ));
            }
            done += n;
            if done < e.size {
                match toc.next() {
                    Some(c) if c.kind == "chunk" && c.name == have.name => entry = c,
                    _ => {
                        return Err(format!(
                            "the TOC's chunks of {name:?} stop at {done} of {} bytes",
                            e.size
                        ));
                    }
                }
            }
        }
        let got = file.finish().to_string();
        if !have.digest.is_empty() && have.digest != got {
            return Err(format!(
                "{name:?} has digest {got}, the TOC says {}",
                have.digest
            ));
        }
        io::copy(&mut (&mut r).take(padding(e.size)), &mut io::sink()).map_err(io)?;
    }
    Err(format!("the layer ends without its TOC entry {TOC_NAME}"))
}

/// Whether two TOC times name the same second (empty is the epoch, as
/// readers take it).
fn same_time(a: &str, b: &str) -> bool {
    let parse = |s: &str| {
        if s.is_empty() {
            return Some(0);
        }
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(time::OffsetDateTime::unix_timestamp)
    };
    parse(a).is_some() && parse(a) == parse(b)
}

/// Checks that every chunk's TOC offset is where a gzip member starts
/// with that chunk's data (what a reader of one chunk relies on).
pub(crate) fn check_offsets(chunks: &[ChunkAt], starts: &MemberStarts) -> Result<(), String> {
    for c in chunks {
        if starts.get(&c.offset) != Some(&c.data) {
            return Err(format!(
                "the TOC puts a chunk of {:?} at compressed offset {}, where no gzip member starts with it",
                c.name, c.offset
            ));
        }
    }
    Ok(())
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

/// The annotations an eStargz layer's descriptor carries.
pub fn annotations(toc_digest: &Digest, uncompressed_size: u64) -> [(String, String); 2] {
    [
        (
            strata_core::media::ESTARGZ_TOC_DIGEST.to_owned(),
            toc_digest.to_string(),
        ),
        (
            strata_core::media::ESTARGZ_UNCOMPRESSED_SIZE.to_owned(),
            uncompressed_size.to_string(),
        ),
    ]
}
