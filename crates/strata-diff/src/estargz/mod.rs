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

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom};

use serde::{Deserialize, Serialize};
use strata_core::{Algorithm, Digest};

use crate::tarblock::{RawEntry, clean_name, next_entry};

mod verify;
mod write;

pub(crate) use verify::{ChunkAt, MemberDecoder, MemberStarts, check_offsets, verify_stream};
pub use write::{EStargzOptions, EStargzWritten, strip, write};

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

/// RFC 3339 in UTC, with the fraction of a second when there is one;
/// empty for the epoch, as the reference writer leaves it.
fn rfc3339(seconds: u64, nanos: u32) -> String {
    if seconds == 0 && nanos == 0 {
        return String::new();
    }
    i64::try_from(seconds)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.replace_nanosecond(nanos).ok())
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
        mod_time: rfc3339(e.mtime, e.mtime_nanos),
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

/// Where the TOC's member starts, as the footer at the end of `tail` (a
/// blob's last bytes, at least [`FOOTER_SIZE`] of them) says; `None` when
/// there is no eStargz footer.
pub fn footer_toc_offset(tail: &[u8]) -> Option<u64> {
    parse_footer(tail).map(|(offset, _)| offset)
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

/// A failure reading the blob: the blob's fault (bad or short data) is
/// `InvalidData` saying `what`; a failure of the reading itself (the disk)
/// stays what it is, so it is never taken for a bad layer.
fn bad_bytes(e: io::Error, what: &str) -> io::Error {
    match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof => {
            invalid(format!("{what}: {e}"))
        }
        _ => e,
    }
}

/// The blob `r` reads: its size and its last bytes, as many as a footer
/// may take.
fn read_tail(r: &mut (impl Read + Seek)) -> io::Result<(u64, Vec<u8>)> {
    let size = r.seek(SeekFrom::End(0))?;
    let mut tail = vec![0u8; usize::try_from(size.min(FOOTER_SIZE)).unwrap_or(0)];
    r.seek(SeekFrom::Start(size - tail.len() as u64))?;
    r.read_exact(&mut tail)?;
    Ok((size, tail))
}

/// Whether the blob `r` reads ends with an eStargz footer; its TOC is
/// not read (for a blob already checked, such as one imported).
pub fn has_footer(r: &mut (impl Read + Seek)) -> io::Result<bool> {
    Ok(parse_footer(&read_tail(r)?.1).is_some())
}

impl Index {
    /// The TOC of the blob `r` reads, or `None` when it does not end with
    /// an eStargz footer (it is no eStargz layer). A footer whose TOC
    /// cannot be read is an `InvalidData` error saying why; an error of the
    /// reading itself keeps its kind.
    pub fn read(r: &mut (impl Read + Seek)) -> io::Result<Option<Index>> {
        let (size, tail) = read_tail(r)?;
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
            .map_err(|e| bad_bytes(e, &format!("the eStargz TOC at {toc_offset} is unreadable")))?
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
            .map_err(|err| bad_bytes(err, "the eStargz TOC is cut short"))?;
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

/// Where the TOC's member of a blob of `size` bytes starts, as the footer
/// at the end of `footer` (the blob's last [`FOOTER_SIZE`] bytes, or all
/// of a smaller one) says: what a reader fetching by range asks for next,
/// from there to the end. `None` without an eStargz footer; an offset
/// that leaves no room for a TOC, or more than a TOC of [`MAX_TOC`] bytes
/// can take, is an `InvalidData` error.
pub fn toc_offset_in(footer: &[u8], size: u64) -> io::Result<Option<u64>> {
    let Some(toc_offset) = footer_toc_offset(footer) else {
        return Ok(None);
    };
    // The TOC's member holds at most MAX_TOC bytes of JSON; deflate at
    // its worst adds 5 bytes per 32 KiB block, plus the tar header.
    let bound = MAX_TOC + MAX_TOC / 4096 + (1 << 20);
    if toc_offset >= size || size - toc_offset > bound {
        return Err(invalid(format!(
            "the eStargz footer puts the TOC at {toc_offset} of {size} bytes, which cannot hold a TOC"
        )));
    }
    Ok(Some(toc_offset))
}

/// The TOC of a blob whose end, from `offset` on, is `bytes` (its TOC's
/// member, then the footer: what [`toc_offset_in`] says to fetch), read as
/// [`Index::read`] reads a whole blob.
pub fn index_of_tail(offset: u64, bytes: &[u8]) -> io::Result<Option<Index>> {
    Index::read(&mut Tail {
        start: offset,
        bytes,
        pos: 0,
    })
}

/// The end of a blob, from some offset on, read as if it were the whole
/// blob: what [`Index::read`] needs of it (the footer, then the TOC).
struct Tail<'a> {
    start: u64,
    bytes: &'a [u8],
    pos: u64,
}

impl Read for Tail<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(at) = self.pos.checked_sub(self.start) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a read before the fetched tail of the blob",
            ));
        };
        let rest = self
            .bytes
            .get(usize::try_from(at).unwrap_or(usize::MAX)..)
            .unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Tail<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let end = self.start + self.bytes.len() as u64;
        self.pos = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => end.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))?;
        Ok(self.pos)
    }
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
